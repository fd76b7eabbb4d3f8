"""The libvirt qemu hook for `migrate begin` and `restore begin` on the destination host.

libvirt runs /etc/libvirt/hooks/qemu.d/50-psci-hook with argv `<domain> <op> <sub-op> <extra>`
and the domain XML on stdin, before any guest memory moves. This module decides and answers:
- veto: a non-zero exit and exactly one stderr line, which libvirt shows the user;
- allow: exit 0 and, when annotating, the domain XML on stdout with our record updated (every
  other byte unchanged); without annotation nothing on stdout, so the domain is not tainted.
Every decision is one structured event in the journal or syslog (psci_hook.auditlog).
This module never talks to libvirt: the daemon is waiting for us (deadlock). The contract with
libvirt, and the source it comes from: docs/design.md#hook-contract.
"""

from __future__ import annotations

import collections
import os
import re
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

from psci_hook import __version__, auditlog, rehearsal
from psci_hook.codes import Severity
from psci_hook.domainxml import (
    MAX_DOMAIN_XML,
    Domain,
    DomainXMLError,
    parse_domain,
    requested_vcpu,
)
from psci_hook.engine import (
    Decision,
    Finding,
    FindingOutcome,
    decide,
    significant_codes,
)
from psci_hook.environment import Environment
from psci_hook.errors import first_line, with_type
from psci_hook.policy import Policy, PolicyReading, read_policy
from psci_hook.profile import FeatureSet, HostProfile, feature_key
from psci_hook.record import (
    GuestRecord,
    HistoryEntry,
    HistoryOp,
    Origin,
    OriginEvent,
    RecordError,
    RecordStatus,
    RecordVersionUnknown,
    read_record,
    record_xml,
)
from psci_hook.report import guest_summary, psci_remedy, veto_reason
from psci_hook.splice import SpliceError, splice_record
from psci_hook.status import ExitStatus
from psci_hook.thishost import host_identity, host_profile, utc_now
from psci_hook.vocab import HookVerdict

ACTED_ON = {("migrate", "begin"), ("restore", "begin")}


# BaseException, not Exception: raised from a signal handler anywhere in the decision, they must
# not be swallowed by an ``except Exception`` on the way (the profile load, the rehearsal, the
# capabilities read): a timeout is reported as a timeout.
class HookTimeout(BaseException):
    pass


class HookInterrupted(BaseException):
    pass


class Outcome:
    """What one hook run decided: the exit status, the stderr line, the stdout bytes.

    A plain class: per-run state, filled in as the decision goes
    (docs/architecture.md#the-hook-path).
    """

    def __init__(self, status: ExitStatus, decision: HookVerdict, codes: list[str],
                 message: str = "",
                 output: bytes = b"", event: dict[str, Any] | None = None) -> None:
        self.status = status
        self.decision = decision  # the audit event's "decision"
        self.codes = codes
        self.message = message  # the one stderr line, for vetoes and errors
        self.output = output  # the new domain XML, or nothing
        self.event: dict[str, Any] = event if event is not None else {}
        # The engine's decision, when the engine ran (`psci-hook check` prints its findings).
        self.engine: Decision | None = None


def _error_outcome(policy: Policy, code: str, detail: str, domain: str) -> Outcome:
    """An internal error, a timeout or an unusable input: the policy's on_error decides."""
    fail_closed = policy.on_error == "veto"
    status = (ExitStatus.TIMEOUT if code == "TIMEOUT" else ExitStatus.INTERNAL_ERROR
              if code in ("INTERNAL_ERROR", "PROFILE_UNAVAILABLE") else ExitStatus.BAD_INPUT)
    consequence = "migration refused (on_error = veto)" if fail_closed else \
        "migration allowed unchecked (on_error = allow)"
    message = f"psci-hook: ERROR {code} domain {domain or '?'}: {detail}; {consequence}"
    return Outcome(status if fail_closed else ExitStatus.OK, HookVerdict.ERROR, [code], message)


def _apply_override(record: GuestRecord, findings: list[Finding], policy: Policy
                    ) -> Finding | None:
    """The override finding, when the record's override covers every blocking code."""
    blocking = {f.code for f in findings if f.blocking}
    override = record.override
    if not blocking or override is None or not policy.allow_domain_override:
        return None
    if not blocking <= override.codes:
        return None
    return Finding("OVERRIDE", FindingOutcome.OVERRIDE,
                   f"the domain's record overrides {' '.join(sorted(blocking))}: "
                   f"{override.reason}")


def decide_hook(op: str, data: bytes, policy: Policy, env: Environment) -> Outcome:
    """The whole decision for one migrate/restore: pure apart from the host profile read."""
    try:
        domain = parse_domain(data)
    except DomainXMLError as exc:
        name = env.argv[1] if len(env.argv) > 1 else ""
        return _error_outcome(policy, "XML_INVALID", str(exc), name)
    base: dict[str, Any] = {"domain": domain.name, "uuid": domain.uuid}
    if domain.type not in policy.domain_types or not (domain.is_aarch64 or domain.is_aarch32):
        return _not_applicable(domain, base)
    try:
        record, unvouched = _guest_record(domain)
    except RecordError as exc:
        return _veto_or_warn(policy, op, domain,
                             [Finding("RECORD_INVALID", FindingOutcome.INVALID,
                                      f"the psci-hook record is invalid: {exc}")], base)
    try:
        profile = host_profile(policy, env)
    except Exception as exc:  # missing, stale, corrupt, unreadable, not probeable
        outcome = _error_outcome(policy, "PROFILE_UNAVAILABLE", first_line(exc),
                                 domain.name)
        outcome.event.update(base)
        return outcome
    identity = host_identity(env, profile)
    base["destination"] = identity
    if domain.is_aarch32 and not profile.runs_aarch32():
        return _not_applicable(domain, base, aarch32_not_applicable(domain, profile))
    if record is None or unvouched:
        return _unrecorded(policy, op, domain, unvouched, base)

    # The vCPU this host's QEMU will create for the incoming guest: from the domain XML and
    # this host's features, not the source's (a feature the guest lacked is on here).
    vcpu = requested_vcpu(domain, profile.default_features())
    generation = None if policy.qemu_generation == "auto" else policy.qemu_generation
    decision = decide(record.state, profile, generation, policy.veto_dropped_workarounds,
                      vcpu=vcpu)
    findings = [*decision.findings, *_unknown_register_findings(record)]
    findings = _rehearse(record, vcpu.features, vcpu.psci_0_1, findings, policy, env, base)
    override = _apply_override(record, findings, policy)
    if override is not None:
        findings.append(override)
        base["override"] = override.message  # who allowed a veto away, and why: for the audit
    # `psci-hook check` shows the engine's decision with every finding the hook judged.
    decision = decision._replace(findings=tuple(findings))
    base.update(_decision_fields(record, decision, vcpu.features))
    if decision.vetoed and override is None:
        outcome = _veto_or_warn(policy, op, domain, findings, base)
        outcome.engine = decision
        return outcome

    codes = significant_codes(findings)
    outcome = Outcome(ExitStatus.OK, HookVerdict.ALLOW, codes, event=base)
    outcome.engine = decision
    if policy.annotate:
        updated = _record_here(op, record, decision, profile, identity, codes, policy, env)
        try:
            outcome.output = splice_record(data, lambda indent: record_xml(updated, indent)).data
        except SpliceError as exc:
            return _error_outcome(policy, "INTERNAL_ERROR", f"cannot annotate: {exc}",
                                  domain.name)
    return outcome


def _not_applicable(domain: Domain, base: dict[str, Any], reason: str = "") -> Outcome:
    """Allowed untouched: not an arm64 domain of a type the policy acts on, or a 32-bit guest
    this host cannot check (``reason``)."""
    return Outcome(ExitStatus.OK, HookVerdict.ALLOW, ["NOT_APPLICABLE"], event={
        **base, "reason": reason or f"type={domain.type} arch={domain.arch or '?'}"})


def aarch32_not_applicable(domain: Domain, profile: HostProfile) -> str:
    """Why a 32-bit guest is not checked on this host (profile.runs_aarch32() is not True)."""
    what = (f"type={domain.type} arch={domain.arch}: a 32-bit guest (-cpu host,aarch64=off, "
            "KVM_ARM_VCPU_EL1_32BIT)")
    refusals = profile.aarch32_refusals()
    if profile.runs_aarch32() is False and refusals:
        key, error = next(iter(refusals.items()))
        return (f"{what}, and this host's KVM refused every 32-bit vCPU its QEMU could create "
                f"({key}: {error}): the guest cannot start here, before any memory moves; "
                "unchecked")
    if profile.runs_aarch32() is False:
        return (f"{what}, and this host's KVM has no 32-bit EL1 (no KVM_CAP_ARM_EL1_32BIT): its "
                "QEMU refuses aarch64=off and cannot start the guest here, before any memory "
                "moves (target/arm/cpu.c aarch64_cpu_set_aarch64); unchecked")
    return (f"{what}, and this host's profile has no 32-bit vCPU (probed by an older "
            "psci-hook: run psci-hook probe --write); unchecked")


def _guest_record(domain: Domain) -> tuple[GuestRecord | None, str]:
    """The domain's record, and why it does not count as the guest's register state ("" when
    it does). Raises RecordError for a malformed record."""
    try:
        record = read_record(domain.root)
    except RecordVersionUnknown as exc:
        return None, str(exc)
    if record is not None and not record.vouched:
        return record, _UNVOUCHED.get(record.status,
                                      f"its record's status is {record.status!r}")
    return record, ""


def _unrecorded(policy: Policy, op: str, domain: Domain, unvouched: str,
                base: dict[str, Any]) -> Outcome:
    """No record that vouches for the guest's registers: the policy's `unrecorded` decides."""
    finding = Finding("NO_RECORD", FindingOutcome.UNKNOWN, (
        f"the domain's psci-hook record does not vouch for the guest's register state "
        f"({unvouched})" if unvouched else
        "the domain carries no psci-hook record, so the source's register values are "
        "unknown"))
    if unvouched:
        base["record_not_used"] = unvouched
    if policy.unrecorded == "veto":
        return _veto_or_warn(policy, op, domain, [finding], base)
    return Outcome(ExitStatus.OK, HookVerdict.ALLOW, ["NO_RECORD"], event={
        **base, "policy_unrecorded": policy.unrecorded})


def _unknown_register_findings(record: GuestRecord) -> list[Finding]:
    return [Finding("FW_UNVERIFIED", FindingOutcome.UNVERIFIED,
                    f"the record names {name}, which this version of psci-hook does not "
                    "know (a newer release wrote it): not judged") for name in record.unknown]


def _rehearse(record: GuestRecord, features: FeatureSet, psci_0_1_vcpu: bool,
              findings: list[Finding], policy: Policy, env: Environment,
              base: dict[str, Any]) -> list[Finding]:
    """The findings with the rehearsal's verdicts (docs/design.md#rehearsal),
    where this host can rehearse and the policy asks for it; the event says how it went.
    ``psci_0_1_vcpu``: this host's vCPU is created for PSCI 0.1 (rehearsal.values_to_rehearse)."""
    rehearser = env.rehearser or (rehearsal.kvm_rehearser if rehearsal.available() else None)
    if rehearser is None or not policy.rehearse:
        return findings
    try:
        result = rehearser(features, rehearsal.values_to_rehearse(record.state, psci_0_1_vcpu))
    except Exception as exc:  # e.g. KVM refused the scratch VM: the model's verdict stands
        base["rehearsal"] = f"not run: {first_line(exc)}"
        return findings
    base["rehearsal"] = "refused" if result.refused_id is not None else "accepted"
    return rehearsal.reconcile(findings, result)


def _decision_fields(record: GuestRecord, decision: Decision, features: FeatureSet
                     ) -> dict[str, Any]:
    """What the audit event says of a decision: the facts, not the prose."""
    return {
        "guest": guest_summary(record.state),
        "guest_origin": {"host": record.origin.host, "kernel": record.origin.kernel,
                         "event": record.origin.event},
        "destination_registers": guest_summary(decision.guest_after),
        "qemu_generation": decision.generation,
        "lists_compared": decision.lists_compared,
        "vcpu_features": {"guest": feature_key(record.state.features),
                          "destination": feature_key(features)},
    }


def _record_here(op: str, record: GuestRecord, decision: Decision, profile: HostProfile,
                 identity: dict[str, str], codes: list[str], policy: Policy,
                 env: Environment) -> GuestRecord:
    """The record an allowed arrival carries on: the guest's state on this host, this host as
    its origin, and this check in its history."""
    now = utc_now(env)
    entry = HistoryEntry(now, HistoryOp.MIGRATE if op == "migrate" else HistoryOp.RESTORE,
                         identity["hostname"], HookVerdict.ALLOW, tuple(codes))
    return GuestRecord(
        state=decision.guest_after,
        origin=Origin(OriginEvent.MIGRATED if op == "migrate" else OriginEvent.RESTORED,
                      identity["hostname"], profile.kernel_release, now,
                      identity.get("uuid", "")),
        history=record.history,
        override=record.override,
    ).with_check(entry, policy.history_limit)


# What a record's status says (psci_hook.record), for the NO_RECORD finding. libvirt passes the
# same XML for `virsh migrate --offline` as for a live migration (qemu_migration.c,
# qemuMigrationDstPrepareAny runs the hook before it looks at VIR_MIGRATE_OFFLINE), so a
# shut-off guest's definition is told apart by its record only.
_UNVOUCHED: dict[str, str] = {
    RecordStatus.PERSISTENT_COPY: "it is the persistent definition's copy from the guest's last "
                                  "run: an offline migration, or a guest started since without "
                                  "psci-hook recording it",
    RecordStatus.UNVERIFIED: "psci-hook could not tell whether the guest cold-booted after it "
                             "was written",
}


# Why a veto matters, by code and operation. QEMU loads the vCPU's registers (and fails on them)
# with the device state, after RAM: at the end of a migration's memory copy, or after the whole
# image of a restore has been read (migration/savevm.c, qemu_loadvm_state). Some codes fail
# earlier, some would not fail at all, some are the operator's own policy.
_VETO_CONSEQUENCE = {
    "FEATURE_MISSING": "QEMU would fail to create the vCPU when it starts here, before any "
                       "memory moves",
    "SVE_LENGTH_LOST": "the migration would succeed and the running guest would lose SVE "
                       "vector lengths it uses",
    "WA_DROPPED": "QEMU would accept the guest and silently drop the register; the guest "
                  "would keep relying on a mitigation this host does not provide",
    "NO_RECORD": "the policy vetoes guests without a record (unrecorded = veto)",
    "RECORD_INVALID": "the record cannot be trusted, so the migration cannot be checked",
}
LATE_FAILURE = {
    "migrate": "the destination would refuse this only after copying all guest memory",
    "restore": "QEMU would refuse this only after reading all guest memory from the saved "
               "image",
}
EVENT_FINDINGS = 12  # findings listed in an audit event; a syslog datagram must stay small


def veto_consequence(code: str, op: str) -> str:
    """What would happen without the veto, for the code the veto line names."""
    return _VETO_CONSEQUENCE.get(code, LATE_FAILURE.get(op, LATE_FAILURE["migrate"]))


def other_blocking(findings: list[Finding], first: Finding) -> str:
    """The blocking findings besides ``first``, compactly: `` (+3: REG_MISSING x2, WA_...)``."""
    others = [f.code for f in findings if f.blocking and f is not first]
    if not others:
        return ""
    listed = ", ".join(code if n == 1 else f"{code} x{n}"
                       for code, n in collections.Counter(others).items())  # in order seen
    return f" (+{len(others)}: {listed})"


def _veto_or_warn(policy: Policy, op: str, domain: Domain, findings: list[Finding],
                  base: dict[str, Any]) -> Outcome:
    # The reason shown: the first blocking finding, or the one the policy made decisive; then
    # every other blocking code, so that fixing one does not reveal the next.
    first = next((f for f in findings if f.blocking), findings[0])
    message = (f"psci-hook: VETO {first.code} domain {domain.name}: {veto_reason(first)}"
               f"{other_blocking(findings, first)} ({veto_consequence(first.code, op)})")
    remedy = psci_remedy(findings)
    if remedy:
        message += f"; remedy: {remedy}"
    codes = significant_codes(findings)
    notable = [f for f in findings if f.severity > Severity.INFO]
    event = {**base, "reason": veto_reason(first),
             "findings": [_event_finding(f) for f in notable[:EVENT_FINDINGS]]}
    if remedy:
        event["remedy"] = remedy
    if len(notable) > EVENT_FINDINGS:
        event["more_findings"] = len(notable) - EVENT_FINDINGS
    if not policy.enforcing:
        return Outcome(ExitStatus.OK, HookVerdict.WARN, codes,
                       message.replace("VETO", "WOULD VETO", 1),
                       event=event)
    return Outcome(ExitStatus.VETO, HookVerdict.VETO, codes, message, event=event)


def _event_finding(finding: Finding) -> dict[str, Any]:
    """A finding as the audit event carries it: the facts, not the prose."""
    full = finding.to_dict()
    return {k: full[k] for k in ("code", "register", "guest", "destination") if k in full}


# ---------------------------------------------------------------------------------------------
# The process edge: time bound, signals, one write to stdout, one event
# ---------------------------------------------------------------------------------------------


@contextmanager
def _bounded(seconds: float) -> Iterator[None]:
    def alarm(_signum: int, _frame: FrameType | None) -> None:
        raise HookTimeout()

    def term(_signum: int, _frame: FrameType | None) -> None:
        raise HookInterrupted()

    old_alarm = signal.signal(signal.SIGALRM, alarm)
    old_term = signal.signal(signal.SIGTERM, term)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.01))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old_alarm)
        signal.signal(signal.SIGTERM, old_term)


def main(env: Environment, sink: auditlog.Sink | None = None) -> ExitStatus:
    """Run the hook for ``env.argv`` and ``env.stdin``; returns the exit status."""
    started = env.monotonic()
    argv = list(env.argv)
    op, sub_op = (argv[2], argv[3]) if len(argv) >= 4 else ("", "")
    data = _read_input(env)
    if (op, sub_op) not in ACTED_ON:
        return ExitStatus.OK
    domain_arg = argv[1]
    # A mistake in the configuration never switches the checks off: the settings that can be
    # read apply, the documented defaults the rest, and every run says so.
    reading = read_policy(env.config_path)
    policy = reading.policy

    try:
        remaining = policy.timeout - (env.monotonic() - started)
        with _bounded(remaining):
            outcome = decide_hook(op, data, policy, env)
    except HookTimeout:
        outcome = _error_outcome(policy, "TIMEOUT", f"no decision within {policy.timeout:g} s",
                                 domain_arg)
    except HookInterrupted:
        outcome = _error_outcome(policy, "INTERNAL_ERROR", "interrupted by SIGTERM", domain_arg)
    except Exception as exc:  # a bug must not block evacuations unless the policy says so
        outcome = _error_outcome(policy, "INTERNAL_ERROR", with_type(exc), domain_arg)

    event = {
        "decision": outcome.decision,
        "op": op,
        "domain": outcome.event.pop("domain", domain_arg),
        "codes": outcome.codes,
        **outcome.event,
        "policy": policy.summary(),
        **_config_problems(reading),
        "message": outcome.message,
        "duration_ms": round((env.monotonic() - started) * 1000, 1),
        "version": __version__,
    }
    sink = sink or auditlog.Sink.for_target(policy.log_target, policy.journal_socket,
                                            policy.syslog_socket)
    if reading.problems and not outcome.message:  # the one stderr line, when it is free
        outcome.message = f"psci-hook: CONFIG {reading.summary_line()}"
    # Decided: a SIGTERM from here on is ignored, so that the answer is written whole and the
    # hook exits with the decided status (its default action would kill an allowed migration).
    old_term = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        auditlog.emit_decision(sink, **event)
        _write_once(env, outcome)
    finally:
        signal.signal(signal.SIGTERM, old_term)
    return outcome.status


def _read_input(env: Environment) -> bytes:
    """stdin, but at most one byte more than the parser accepts: the rest of an oversized input
    is drained (so that libvirt can finish writing) without being kept in memory."""
    try:
        data = env.stdin.read(MAX_DOMAIN_XML + 1)
        if len(data) > MAX_DOMAIN_XML:
            while env.stdin.read(1 << 16):
                pass
        return data
    except (OSError, ValueError):  # unreadable stdin: empty input, an XML_INVALID error
        return b""


def _config_problems(reading: PolicyReading) -> dict[str, Any]:
    """The configuration's problems for the audit event (at most EVENT_FINDINGS of them)."""
    if not reading.problems:
        return {}
    fields: dict[str, Any] = {"config_problems": reading.messages[:EVENT_FINDINGS]}
    if len(reading.problems) > EVENT_FINDINGS:
        fields["more_config_problems"] = len(reading.problems) - EVENT_FINDINGS
    return fields


def _one_line(message: str) -> str:
    """The stderr line without line breaks or control characters (libvirt shows it to the
    user; a domain name from the XML may hold "&#10;")."""
    return re.sub(r"[\x00-\x1f\x7f\x85\u2028\u2029]+", " ", message)


def _write_once(env: Environment, outcome: Outcome) -> None:
    """stdout gets the whole new XML or nothing; stderr gets at most one line.

    A stream whose reader went away is pointed at /dev/null, so that the interpreter's final
    flush of the unwritten rest does not fail too: that would exit 120 with "Exception ignored
    ... BrokenPipeError" on stderr, a refusal where the decision was allow.
    """
    if outcome.output:
        try:
            env.stdout.write(outcome.output)
            env.stdout.flush()
        except BrokenPipeError:  # libvirt went away; nothing useful can be done
            _to_devnull(env.stdout)
    if outcome.message:
        try:
            env.stderr.write(_one_line(outcome.message) + "\n")
            env.stderr.flush()
        except (BrokenPipeError, ValueError):
            _to_devnull(env.stderr)


def _to_devnull(stream: Any) -> None:
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, stream.fileno())
        os.close(null)
    except (OSError, ValueError):  # not a real file (tests), or no /dev/null
        pass

