"""``psci-hook record``: write the guest record of running domains through libvirt.

For each domain (named, or every running one with ``--all``) the plan of psci_hook.recorder
(reconcile) is applied with virDomainSetMetadata: how the domain's QEMU process started is
read from libvirt's state reason and the process start time; a guest that cold-booted here
gets this host's values (replacing a stale record), one that loaded its state here (migration,
restore, snapshot revert) keeps the record that came with it, brought to its state here, and
one nobody can tell has its record marked unverified (``--force``: this host's values). One
line per domain on stdout says what was done and why, and one event per domain goes to the log.

The per-domain procedure here (observe, plan, write, log) is also what ``watch`` runs.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from psci_hook import __version__, auditlog
from psci_hook import hook as hook_mod
from psci_hook.environment import Environment
from psci_hook.errors import first_line
from psci_hook.libvirt_client import (
    Client,
    LibvirtCallFailed,
    LibvirtUnavailable,
    process_start,
)
from psci_hook.policy import Policy, read_policy
from psci_hook.qemuproc import running_qemu_argv
from psci_hook.recorder import (
    ACTIONS,
    FAILED,
    RECONCILE,
    SKIPPED,
    Observed,
    Plan,
    Started,
    ThisHost,
    plan_failed,
    plan_for,
)
from psci_hook.report import guest_summary
from psci_hook.status import ExitStatus

HELP = ("write the psci-hook guest record of running domains through libvirt (this host's "
        "values for guests that cold-booted here; a record that came with a migration is kept)")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("domains", nargs="*", metavar="DOMAIN", help="domain names or UUIDs")
    parser.add_argument("--all", action="store_true", help="every running domain")
    parser.add_argument("--force", action="store_true",
                        help="replace any record (also one that came with a migration) with "
                        "this host's values: for guests that cold-booted here")
    parser.add_argument("--uri", default=None,
                        help="libvirt connection URI (default: libvirt's default, "
                        "qemu:///system for root)")


# ---------------------------------------------------------------------------------------------
# What record and watch share: this host's facts, and one domain observed, planned, written
# ---------------------------------------------------------------------------------------------


class ContextError(Exception):
    """No policy or no host profile: nothing can be recorded (one line, an exit status)."""

    def __init__(self, message: str, status: ExitStatus) -> None:
        super().__init__(message)
        self.status = status


@dataclasses.dataclass(frozen=True)
class Context:
    host: ThisHost
    identity: dict[str, str]
    sink: auditlog.Sink
    env: Environment

    def now(self) -> str:
        return hook_mod.utc_now(self.env)


def load_context(env: Environment) -> Context:
    """The policy, this host's profile (as the hook finds it: [host] profile, else the
    boot-time cache) and identity (hostname; UUID from the cached capabilities)."""
    # Read as the hook reads it: a mistake in the file must not stop guests from being
    # recorded (the hook would then see no records); each problem is said once per run.
    reading = read_policy(env.config_path)
    for message in reading.messages:
        env.error(f"{message} (`psci-hook config --check` lists every problem)")
    policy = reading.policy
    try:
        profile = hook_mod.load_host_profile(policy, env)
    except Exception as exc:  # missing, stale, corrupt, unreadable, not probeable
        status = getattr(exc, "status", ExitStatus.INTERNAL_ERROR)
        raise ContextError(f"no usable host profile: {first_line(exc)}",
                           ExitStatus(status)) from None
    identity = hook_mod.host_identity(env, profile)
    host = ThisHost(profile, identity["hostname"], identity.get("uuid", ""), policy)
    return Context(host, identity, sink_for(policy), env)


def sink_for(policy: Policy) -> auditlog.Sink:
    return auditlog.Sink.for_target(policy.log_target, policy.journal_socket,
                                    policy.syslog_socket)


def observe(client: Client, dom: Any) -> Observed:
    """The live and persistent XML, and how the QEMU process started (state reason, start
    time). The reason is read before the XML: a reason from after a restart of the guest would
    be taken for the record's."""
    started = Started(client.running_reason(dom), process_start(client.name(dom)))
    live = client.live_xml(dom)
    persistent = client.persistent_xml(dom) if client.is_persistent(dom) else None
    return Observed(live, persistent, running_qemu_argv(client.name(dom)), started)


def apply(client: Client, dom: Any, plan: Plan) -> None:
    """Write the plan's records, the persistent definition's copy first: once the live record
    shows, the whole plan is written."""
    if plan.config is not None:
        client.set_record(dom, plan.config, live=False, config=True)
    if plan.live is not None:
        client.set_record(dom, plan.live, live=True, config=False)


def record_domain(client: Client, dom: Any, trigger: str, ctx: Context, force: bool = False
                  ) -> Plan:
    """Observe, plan, write and log one running domain. LibvirtUnavailable propagates (the
    connection is gone); a failed call becomes a FAILED plan."""
    name = client.name(dom)
    try:
        plan = plan_for(trigger, observe(client, dom), ctx.host, ctx.now(), force)
        if plan.action == FAILED:
            plan = dataclasses.replace(plan, domain=name)
        if plan.writes:
            apply(client, dom, plan)
    except LibvirtCallFailed as exc:
        plan = plan_failed(name, trigger, str(exc))
    log_plan(ctx, plan)
    return plan


def log_plan(ctx: Context, plan: Plan) -> None:
    event: dict[str, Any] = {
        "action": plan.action,
        "trigger": plan.trigger,
        "domain": plan.domain,
        "uuid": plan.uuid,
        "reason": plan.reason,
        "written": [w for w, r in (("live", plan.live), ("persistent", plan.config)) if r],
        "codes": list(plan.codes),
    }
    record = plan.record
    if record is not None:
        event["guest"] = guest_summary(record.state)
        event["origin"] = {"event": record.origin.event, "host": record.origin.host,
                           "time": record.origin.time}
    if plan.previous is not None:
        event["previous_origin"] = {"event": plan.previous.event, "host": plan.previous.host,
                                    "time": plan.previous.time}
    event["host"] = {k: v for k, v in ctx.identity.items() if k in ("hostname", "uuid",
                                                                     "kernel")}
    event["version"] = __version__
    auditlog.emit_record(ctx.sink, **event)


def plan_line(plan: Plan) -> str:
    wrote = f" [wrote the {plan.targets()}]" if plan.writes else ""
    return f"{plan.domain}: {plan.action}: {plan.reason}{wrote}\n"


# ---------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------


def run(args: argparse.Namespace, env: Environment) -> ExitStatus:
    if bool(args.domains) == bool(args.all):
        env.error("record: name one or more domains, or give --all (not both)")
        return ExitStatus.BAD_INPUT
    try:
        ctx = load_context(env)
    except ContextError as exc:
        env.error(f"record: {exc}")
        return exc.status
    try:
        client = Client.open(args.uri)
    except LibvirtUnavailable as exc:
        env.error(f"record: {exc}")
        return ExitStatus.LIBVIRT_UNAVAILABLE
    plans: list[Plan] = []
    try:
        targets = _targets(client, args, ctx, plans)
        for dom in targets:
            plan = record_domain(client, dom, RECONCILE, ctx, force=args.force)
            plans.append(plan)
            env.write_out(plan_line(plan))
    except LibvirtUnavailable as exc:
        env.error(f"record: {exc}")
        return ExitStatus.LIBVIRT_UNAVAILABLE
    finally:
        client.close()
    counts: dict[str, int] = {}
    for plan in plans:
        counts[plan.action] = counts.get(plan.action, 0) + 1
    summary = ", ".join(f"{counts[a]} {a}" for a in ACTIONS if a in counts) or "no domain"
    env.write_out(f"{len(plans)} domain{'s' if len(plans) != 1 else ''}: {summary}\n")
    # 1 (as conformance's "a disagreement"): some domains could not be recorded.
    return ExitStatus.VETO if counts.get(FAILED) else ExitStatus.OK


def _targets(client: Client, args: argparse.Namespace, ctx: Context, plans: list[Plan]
             ) -> list[Any]:
    """The running domains to record; named ones that are missing or not running are
    reported (failed, skipped) in ``plans`` and on stdout."""
    if args.all:
        return sorted(client.running(), key=client.name)
    found: list[Any] = []
    for key in dict.fromkeys(args.domains):
        try:
            dom = client.lookup(key)
            running = client.is_active(dom)
        except LibvirtCallFailed as exc:
            plan = plan_failed(key, RECONCILE, str(exc))
        else:
            if running:
                found.append(dom)
                continue
            plan = Plan(client.name(dom), "", RECONCILE, SKIPPED,
                        "not running (a record is written for running domains only)")
        plans.append(plan)
        log_plan(ctx, plan)
        ctx.env.write_out(plan_line(plan))
    return found
