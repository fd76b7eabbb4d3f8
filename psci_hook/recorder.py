"""What `psci-hook record` and `psci-hook watch` write into a running domain, decided purely.

Given a domain's live XML (and its persistent XML, for persistent domains), this host's profile
and identity, and what happened to the domain, a ``Plan`` says which guest record goes into
which definition and why. No libvirt, no files, no clock (the caller passes the time); the
record format is psci_hook.record's, the state after an arrival is the engine's.

The rules (docs/design.md#state-after-a-migration):
- cold boot on this host (STARTED_BOOTED): the guest takes this host's values, whatever record
  it carried (a record that survived a cold boot on another host is stale). Override kept.
- migration or restore onto this host (STARTED_MIGRATED / STARTED_RESTORED): the hook has
  normally annotated the live definition with the guest's state here; when it did not
  (annotation off, hook absent), the live record is brought to that state (engine.decide's
  guest_after). Either way the persistent definition gets the live record (the hook's
  annotation never reaches it).
- reconcile (`record`, and `watch` at start-up and after every reconnection): a domain without
  a record gets this host's boot values; a record written on this host is kept (and copied
  into the persistent definition); a record from elsewhere (it came with a migration or a
  restore, or survived a cold boot: nothing tells which) is left alone unless forced.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from psci_hook.domainxml import (
    Domain,
    DomainXMLError,
    parse_domain,
    psci_version_override,
    requested_features,
)
from psci_hook.engine import GuestState, decide
from psci_hook.policy import Policy
from psci_hook.profile import HostProfile
from psci_hook.record import (
    GuestRecord,
    HistoryEntry,
    Origin,
    RecordError,
    read_record,
    record_xml,
)
from psci_hook.report import guest_summary

# Plan actions.
RECORDED = "recorded"  # there was no record: one was written
REPLACED = "replaced"  # a record was replaced by this host's boot values
UPDATED = "updated"  # the live record was brought to the guest's state on this host
SYNCED = "synced"  # only the persistent definition got the live record
UNCHANGED = "unchanged"  # nothing to write: the record is current
SKIPPED = "skipped"  # left alone on purpose (reason says why)
FAILED = "failed"  # could not be done (set by the caller: libvirt, profile, XML)
ACTIONS = (RECORDED, REPLACED, UPDATED, SYNCED, UNCHANGED, SKIPPED, FAILED)

# What triggered a plan.
BOOTED = "booted"
MIGRATED = "migrated"
RESTORED = "restored"
RECONCILE = "reconcile"


@dataclasses.dataclass(frozen=True)
class ThisHost:
    """The host writing records: its profile, its name and libvirt host UUID, the policy."""

    profile: HostProfile
    hostname: str
    uuid: str = ""
    policy: Policy = dataclasses.field(default_factory=Policy)

    def origin(self, event: str, now: str) -> Origin:
        return Origin(event, self.hostname, self.profile.kernel_release, now, self.uuid)

    def wrote(self, origin: Origin) -> bool:
        """Whether a record's origin is this host: by libvirt host UUID when both have one
        (hostnames are not unique), else by hostname."""
        if origin.host_uuid and self.uuid:
            return origin.host_uuid.lower() == self.uuid.lower()
        return origin.host == self.hostname


@dataclasses.dataclass(frozen=True)
class Observed:
    """A running domain as libvirt shows it."""

    live: bytes  # the live XML
    persistent: bytes | None = None  # the persistent XML; None for a transient domain
    # The running QEMU's command line (/proc/<pid>/cmdline), when readable: what its vCPU
    # really is where the XML's <qemu:commandline> and the process could differ.
    qemu_argv: tuple[str, ...] | None = None


@dataclasses.dataclass(frozen=True)
class Plan:
    domain: str
    uuid: str
    trigger: str
    action: str
    reason: str
    live: GuestRecord | None = None  # write into the live definition
    config: GuestRecord | None = None  # write into the persistent definition
    previous: Origin | None = None  # the origin of the record found, if any
    codes: tuple[str, ...] = ()

    @property
    def writes(self) -> bool:
        return self.live is not None or self.config is not None

    @property
    def record(self) -> GuestRecord | None:
        """The record the domain carries once the plan is applied (None if it has none)."""
        return self.live or self.config

    def targets(self) -> str:
        """Which definitions the plan writes, in words."""
        both = [n for n, r in (("live", self.live), ("persistent", self.config)) if r]
        return " and ".join(both) + (" definitions" if len(both) > 1 else " definition")


def _skip(domain: Domain, trigger: str, reason: str, previous: Origin | None = None,
          action: str = SKIPPED) -> Plan:
    return Plan(domain.name, domain.uuid, trigger, action, reason, previous=previous)


def origin_text(origin: Origin) -> str:
    return f"{origin.event} on {origin.host} at {origin.time}"


def applicable(domain: Domain, policy: Policy) -> str | None:
    """Why psci-hook does not record this domain, or None if it does (the hook's rule)."""
    if domain.type not in policy.domain_types or not domain.is_aarch64:
        types = ", ".join(sorted(policy.domain_types))
        return (f"not an aarch64 domain of a type psci-hook acts on (type={domain.type}, "
                f"arch={domain.arch or '?'}; [hook] domain_types = {types})")
    return None


def parse(observed: Observed) -> tuple[Domain, Domain | None]:
    """The live and persistent definitions; DomainXMLError if libvirt gave unusable XML."""
    live = parse_domain(observed.live)
    persistent = None if observed.persistent is None else parse_domain(observed.persistent)
    return live, persistent


def _config_record(persistent: Domain | None) -> GuestRecord | None:
    if persistent is None:
        return None
    try:
        return read_record(persistent.root)
    except RecordError:
        return None


def _same(a: GuestRecord | None, b: GuestRecord | None) -> bool:
    if a is None or b is None:
        return a is b
    return record_xml(a) == record_xml(b)


def _with_config(plan: Plan, persistent: Domain | None, has_persistent: bool) -> Plan:
    """The plan, also writing the persistent definition where it lacks the resulting record."""
    record = plan.record
    if record is None or not has_persistent or _same(_config_record(persistent), record):
        return plan
    return dataclasses.replace(plan, config=record)


def booted_record(domain: Domain, host: ThisHost, now: str, old: GuestRecord | None,
                  argv: Sequence[str] | None = None) -> GuestRecord:
    """The record of a guest cold-booted here: this host's values for the vCPU features the
    domain XML (or the running QEMU's command line ``argv``) asks for, and the PSCI version
    its kvm-psci-version sets, if any. A previous record's override and history are kept."""
    features = requested_features(domain, host.profile.default_features(), argv)
    state = GuestState.booted_on(host.profile, features, psci_version_override(domain, argv))
    return GuestRecord(state, host.origin("booted", now),
                       history=old.history if old else (),
                       override=old.override if old else None)


def plan_boot(observed: Observed, host: ThisHost, now: str, trigger: str = BOOTED) -> Plan:
    """A cold boot on this host: record this host's values, replacing any record."""
    live, persistent = parse(observed)
    why = applicable(live, host.policy)
    if why:
        return _skip(live, trigger, why)
    try:
        old: GuestRecord | None = read_record(live.root)
        broken = ""
    except RecordError as exc:
        old, broken = None, str(exc)
    record = booted_record(live, host, now, old, observed.qemu_argv)
    summary = guest_summary(record.state)
    if old is not None:
        action, reason = REPLACED, (f"cold boot on this host: the record "
                                    f"({origin_text(old.origin)}) replaced by this host's "
                                    f"values: {summary}")
    elif broken:
        action, reason = REPLACED, (f"cold boot on this host: an invalid record ({broken}) "
                                    f"replaced by this host's values: {summary}")
    else:
        action, reason = RECORDED, f"this host's values: {summary}"
    plan = Plan(live.name, live.uuid, trigger, action, reason, live=record,
                previous=old.origin if old else None)
    return _with_config(plan, persistent, observed.persistent is not None)


def plan_arrival(observed: Observed, host: ThisHost, now: str, trigger: str) -> Plan:
    """A migration (``trigger`` migrated) or restore (restored) onto this host has finished."""
    live, persistent = parse(observed)
    why = applicable(live, host.policy)
    if why:
        return _skip(live, trigger, why)
    op = "migrate" if trigger == MIGRATED else "restore"
    event = MIGRATED if trigger == MIGRATED else RESTORED
    try:
        old = read_record(live.root)
    except RecordError as exc:
        return _skip(live, trigger, f"the live record is invalid ({exc}): left alone "
                     "(the source's register values are unknown)")
    if old is None:
        # The source sent no record: its values are unknown. This host accepted the guest, so
        # its PSCI version and bitmaps are at most this host's, and its WORKAROUND levels are
        # exactly this host's: this host's values are a safe upper bound.
        record = booted_record(live, host, now, None, observed.qemu_argv)
        record = dataclasses.replace(record, origin=host.origin(event, now)).with_check(
            HistoryEntry(now, op, host.hostname, "allow", ("NO_RECORD",)),
            host.policy.history_limit)
        plan = Plan(live.name, live.uuid, trigger, RECORDED,
                    f"arrived without a record: this host's values recorded as an upper bound "
                    f"(PSCI version and bitmaps may be lower): {guest_summary(record.state)}",
                    live=record, codes=("NO_RECORD",))
        return _with_config(plan, persistent, observed.persistent is not None)

    policy = host.policy
    generation = None if policy.qemu_generation == "auto" else policy.qemu_generation
    decision = decide(old.state, host.profile, generation, policy.veto_dropped_workarounds,
                      requested_features(live, host.profile.default_features(),
                                         observed.qemu_argv))
    after = decision.guest_after
    codes = tuple(decision.codes)
    if after == old.state:
        plan = Plan(live.name, live.uuid, trigger, UNCHANGED,
                    f"the live record is current for this host ({origin_text(old.origin)})",
                    previous=old.origin)
        return _synced_if_needed(plan, observed, persistent, old)
    verdict = "warn" if decision.vetoed else "allow"
    record = GuestRecord(after, host.origin(event, now), old.history, old.override).with_check(
        HistoryEntry(now, op, host.hostname, verdict, codes), policy.history_limit)
    plan = Plan(live.name, live.uuid, trigger, UPDATED,
                f"the hook did not annotate this {op} (annotation off or no hook): the record "
                f"({origin_text(old.origin)}) brought to the guest's state on this host: "
                f"{guest_summary(after)}", live=record, previous=old.origin, codes=codes)
    return _with_config(plan, persistent, observed.persistent is not None)


def plan_reconcile(observed: Observed, host: ThisHost, now: str, force: bool = False,
                   trigger: str = RECONCILE) -> Plan:
    """A running domain, with nothing known of how it got here (`record`, watch start-up)."""
    live, persistent = parse(observed)
    why = applicable(live, host.policy)
    if why:
        return _skip(live, trigger, why)
    try:
        old = read_record(live.root)
    except RecordError as exc:
        if force:
            return plan_boot(observed, host, now, trigger)
        return _skip(live, trigger, f"its record is invalid ({exc}); --force replaces it with "
                     "this host's values")
    if old is None or force:
        return plan_boot(observed, host, now, trigger)
    if not host.wrote(old.origin):
        return _skip(live, trigger,
                     f"its record is from another host ({origin_text(old.origin)}): it came "
                     "with a migration or restore, or survived a cold boot, which psci-hook "
                     "cannot tell apart; if the guest cold-booted here, --force replaces it "
                     "with this host's values", previous=old.origin)
    plan = Plan(live.name, live.uuid, trigger, UNCHANGED,
                f"its record is current ({origin_text(old.origin)})", previous=old.origin)
    return _synced_if_needed(plan, observed, persistent, old)


def _synced_if_needed(plan: Plan, observed: Observed, persistent: Domain | None,
                      old: GuestRecord) -> Plan:
    """``plan``, or a copy of the live record into a persistent definition that lacks it."""
    if observed.persistent is None or _same(_config_record(persistent), old):
        return plan
    return dataclasses.replace(
        plan, action=SYNCED, config=old,
        reason=f"the persistent definition now carries the live record "
               f"({origin_text(old.origin)})")


def plan_failed(name: str, trigger: str, reason: str, uuid: str = "") -> Plan:
    return Plan(name, uuid, trigger, FAILED, reason)


def plan_for(trigger: str, observed: Observed, host: ThisHost, now: str, force: bool = False
             ) -> Plan:
    """The plan for one trigger; FAILED with a one-line reason if libvirt's XML is unusable."""
    try:
        if trigger == BOOTED:
            return plan_boot(observed, host, now)
        if trigger in (MIGRATED, RESTORED):
            return plan_arrival(observed, host, now, trigger)
        return plan_reconcile(observed, host, now, force)
    except DomainXMLError as exc:
        return plan_failed("?", trigger, f"unusable domain XML from libvirt: {exc}")
