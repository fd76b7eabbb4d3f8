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
- reconcile (`record`, and `watch` at start-up, after every reconnection and periodically):
  what happened is read from facts libvirt and the host keep, not from events, so a boot nobody
  watched (autostart before the watcher connects, a watcher stopped or restarting) is found:
  libvirt's state reason of the running domain (virDomainGetState: RUNNING_BOOTED for a QEMU
  process that cold-booted the guest, MIGRATED, RESTORED or FROM_SNAPSHOT for one that loaded
  state; qemu_process.c qemuProcessStart sets it and keeps it across daemon restarts in the
  domain's status XML) and, when a pause/resume replaced that reason (UNPAUSED and the like),
  the QEMU process's start time against the time the record was written here.
  * cold-booted here: the guest has this host's values; a record that is not this host's boot
    record with exactly those values is stale and replaced;
  * loaded state here (migration, restore, snapshot revert): the record came with the state;
    it is brought to the guest's state on this host as after an arrival;
  * cannot tell (no reason, and no record written here for this very QEMU process): the live
    record is marked `unverified` -- the hook then treats the domain as unrecorded and the
    policy decides -- never trusted, never silently replaced.
- the persistent definition always gets the record marked `persistent-copy`: it is what the
  guest ran with last, not live state (a shut-off guest's record; what `virsh migrate
  --offline` sends).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from psci_hook.domainxml import (
    Domain,
    DomainXMLError,
    parse_domain,
    requested_vcpu,
)
from psci_hook.engine import GuestState, decide
from psci_hook.policy import Policy
from psci_hook.profile import HostProfile
from psci_hook.record import (
    GuestRecord,
    HistoryEntry,
    HistoryOp,
    Origin,
    OriginEvent,
    RecordError,
    RecordStatus,
    read_record,
    record_xml,
    time_epoch,
    time_text,
)
from psci_hook.report import guest_summary
from psci_hook.vocab import StrEnum


class RecordAction(StrEnum):
    """What a plan does to a domain's records (the record event's ``action``)."""

    RECORDED = "recorded"  # there was no record: one was written
    REPLACED = "replaced"  # a record was replaced by this host's boot values
    UPDATED = "updated"  # the live record was brought to the guest's state on this host
    SYNCED = "synced"  # only the persistent definition got the live record
    UNCHANGED = "unchanged"  # nothing to write: the record is current
    MARKED = "unverified"  # the live record marked unverified: nothing tells whether it is current
    SKIPPED = "skipped"  # left alone on purpose (reason says why)
    FAILED = "failed"  # could not be done (set by the caller: libvirt, profile, XML)


class Trigger(StrEnum):
    """What made the recorder plan (the record event's ``trigger``)."""

    BOOTED = "booted"  # the QEMU process cold-booted the guest here
    MIGRATED = "migrated"  # an incoming migration ended here
    RESTORED = "restored"  # the guest was restored from a saved image here
    FROM_SNAPSHOT = "from-snapshot"  # a snapshot revert loaded saved vCPU state here
    RECONCILE = "reconcile"  # no event: `record`, or the watcher's periodic pass


# How a QEMU process got its vCPU state, in libvirt's words as psci_hook.libvirt_client names
# them: a STARTED lifecycle event's detail (virDomainEventStartedDetailType) or a running
# domain's state reason (virDomainRunningReason). Any other reason (unpaused, wakeup,
# migration-canceled ...) replaced the one that told.
LIBVIRT_HOW_STARTED = {"booted": Trigger.BOOTED, "migrated": Trigger.MIGRATED,
                       "restored": Trigger.RESTORED, "from-snapshot": Trigger.FROM_SNAPSHOT}
LOADED_STATE = (Trigger.MIGRATED, Trigger.RESTORED, Trigger.FROM_SNAPSHOT)
# The record's origin event, as the trigger that wrote it here.
_ORIGIN_TRIGGER: dict[str, Trigger] = {OriginEvent.BOOTED: Trigger.BOOTED,
                                       OriginEvent.MIGRATED: Trigger.MIGRATED,
                   OriginEvent.RESTORED: Trigger.RESTORED}

MIGRATING = "migrating"  # Started.reason of a domain paused for a migration under way

# The hook writes an arrival's record at `migrate begin`/`restore begin`, just before libvirt
# starts the QEMU process (qemuMigrationDstPrepareAny, qemuSaveImageStartVM): a record this
# host wrote that long before the process started came with it.
ARRIVAL_WINDOW = 120.0
CLOCK_SLACK = 2.0  # records carry whole seconds; the process start time is to the tick


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
class Started:
    """How the running QEMU process came to be, as libvirt and the host know it."""

    reason: str = ""  # libvirt's running reason: booted, migrated, ... ("" unknown)
    process_start: float | None = None  # the QEMU process's start (epoch seconds), if known


@dataclasses.dataclass(frozen=True)
class Observed:
    """A running domain as libvirt shows it."""

    live: bytes  # the live XML
    persistent: bytes | None = None  # the persistent XML; None for a transient domain
    # The running QEMU's command line (/proc/<pid>/cmdline), when readable: what its vCPU
    # really is where the XML's <qemu:commandline> and the process could differ.
    qemu_argv: tuple[str, ...] | None = None
    started: Started = Started()


@dataclasses.dataclass(frozen=True)
class Plan:
    domain: str
    uuid: str
    trigger: Trigger
    action: RecordAction
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


def _skip(domain: Domain, trigger: Trigger, reason: str, previous: Origin | None = None,
          action: RecordAction = RecordAction.SKIPPED) -> Plan:
    return Plan(domain.name, domain.uuid, trigger, action, reason, previous=previous)


def origin_text(origin: Origin) -> str:
    return f"{origin.event} on {origin.host} at {origin.time}"


def _status_text(record: GuestRecord) -> str:
    return f", {record.status}" if record.status else ""


def applicable(domain: Domain, policy: Policy) -> str | None:
    """Why psci-hook does not record this domain, or None if it does (the hook's rule)."""
    if domain.type not in policy.domain_types or not (domain.is_aarch64 or domain.is_aarch32):
        types = ", ".join(sorted(policy.domain_types))
        return (f"not an aarch64 or armv7l domain of a type psci-hook acts on (type={domain.type}, "
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
    return record_xml(a, "") == record_xml(b, "")


def persistent_copy(record: GuestRecord) -> GuestRecord:
    """What the persistent definition carries: the record, marked as not live state."""
    return record.with_status(RecordStatus.PERSISTENT_COPY)


def _with_config(plan: Plan, persistent: Domain | None, has_persistent: bool) -> Plan:
    """The plan, also writing the persistent definition where it lacks the resulting record."""
    record = plan.live
    if record is None or not has_persistent:
        return plan
    copy = persistent_copy(record)
    if _same(_config_record(persistent), copy):
        return plan
    return dataclasses.replace(plan, config=copy)


def booted_record(domain: Domain, host: ThisHost, now: str, old: GuestRecord | None,
                  argv: Sequence[str] | None = None) -> GuestRecord:
    """The record of a guest cold-booted here: this host's values for the vCPU features the
    domain XML (or the running QEMU's command line ``argv``) asks for, and the PSCI version
    its kvm-psci-version sets, if any. A previous record's override and history are kept."""
    vcpu = requested_vcpu(domain, host.profile.default_features(), argv)
    state = GuestState.booted_on(host.profile, vcpu.features, vcpu.psci_version,
                                 vcpu.sve_lengths)
    return GuestRecord(state, host.origin("booted", now),
                       history=old.history if old else (),
                       override=old.override if old else None)


def plan_boot(observed: Observed, host: ThisHost, now: str, trigger: Trigger = Trigger.BOOTED,
              why_boot: str = "cold boot on this host") -> Plan:
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
        action, reason = RecordAction.REPLACED, (f"{why_boot}: the record "
                                    f"({origin_text(old.origin)}{_status_text(old)}) replaced "
                                    f"by this host's values: {summary}")
    elif broken:
        action, reason = RecordAction.REPLACED, (f"{why_boot}: an invalid record ({broken}) "
                                    f"replaced by this host's values: {summary}")
    else:
        action, reason = RecordAction.RECORDED, f"this host's values: {summary}" + (
            "" if trigger == Trigger.BOOTED else f" ({why_boot})")
    plan = Plan(live.name, live.uuid, trigger, action, reason, live=record,
                previous=old.origin if old else None)
    return _with_config(plan, persistent, observed.persistent is not None)


_NOT_ANNOTATED = {
    Trigger.MIGRATED: "the hook did not annotate this migrate (annotation off or no hook)",
    Trigger.RESTORED: "the hook did not annotate this restore (annotation off or no hook)",
    Trigger.FROM_SNAPSHOT: "a snapshot revert loads state without a hook call (qemu_snapshot.c)",
}


def plan_arrival(observed: Observed, host: ThisHost, now: str, trigger: Trigger) -> Plan:
    """A migration (``trigger`` migrated) or restore (restored) onto this host has finished."""
    live, persistent = parse(observed)
    why = applicable(live, host.policy)
    if why:
        return _skip(live, trigger, why)
    # A snapshot revert is recorded as a restore (the state was loaded from a file) by the
    # recorder's own check: version-1 readers know no other word for it.
    op = {Trigger.MIGRATED: HistoryOp.MIGRATE, Trigger.RESTORED: HistoryOp.RESTORE}.get(
        trigger, HistoryOp.RECORD)
    event = OriginEvent.MIGRATED if trigger == Trigger.MIGRATED else OriginEvent.RESTORED
    try:
        old = read_record(live.root)
    except RecordError as exc:
        return _skip(live, trigger, f"the live record is invalid ({exc}): left alone "
                     "(the source's register values are unknown)")
    if old is not None and not old.vouched:
        old = None  # a persistent copy or an unverified record: its values are not the state
    if old is None:
        # The source sent no record: its values are unknown. This host accepted the guest, so
        # its PSCI version and bitmaps are at most this host's, and its WORKAROUND levels are
        # exactly this host's: this host's values are a safe upper bound.
        record = booted_record(live, host, now, None, observed.qemu_argv)
        record = record._replace(origin=host.origin(event, now)).with_check(
            HistoryEntry(now, op, host.hostname, "allow", ("NO_RECORD",)),
            host.policy.history_limit)
        plan = Plan(live.name, live.uuid, trigger, RecordAction.RECORDED,
                    f"arrived without a record: this host's values recorded as an upper bound "
                    f"(PSCI version and bitmaps may be lower): {guest_summary(record.state)}",
                    live=record, codes=("NO_RECORD",))
        return _with_config(plan, persistent, observed.persistent is not None)

    policy = host.policy
    generation = None if policy.qemu_generation == "auto" else policy.qemu_generation
    # The vCPU this host's QEMU created for the guest, judged as the hook judges it.
    decision = decide(old.state, host.profile, generation, policy.veto_dropped_workarounds,
                      requested_vcpu(live, host.profile.default_features(), observed.qemu_argv))
    after = decision.guest_after
    codes = tuple(decision.codes)
    arrived = came_with_this_process(old, observed.started, host)
    if after == old.state and not old.unknown and arrived:
        plan = Plan(live.name, live.uuid, trigger, RecordAction.UNCHANGED,
                    f"the live record is current for this host ({origin_text(old.origin)})",
                    previous=old.origin)
        return _synced_if_needed(plan, observed, persistent, old)
    verdict = "warn" if decision.vetoed else "allow"
    record = GuestRecord(after, host.origin(event, now), old.history, old.override).with_check(
        HistoryEntry(now, op, host.hostname, verdict, codes), policy.history_limit)
    # Same values, but the record does not say this arrival (the hook's annotation did not
    # reach the live definition, or there was no hook call): it is written again as this
    # arrival's, so that a later reconcile can tell it belongs to this QEMU process.
    brought = ("brought to the guest's state on this host" if after != old.state else
               "written again as this arrival's (same values)")
    plan = Plan(live.name, live.uuid, trigger, RecordAction.UPDATED,
                f"{_NOT_ANNOTATED[trigger]}: the record "
                f"({origin_text(old.origin)}) {brought}: "
                f"{guest_summary(after)}", live=record, previous=old.origin, codes=codes)
    return _with_config(plan, persistent, observed.persistent is not None)


def came_with_this_process(record: GuestRecord, started: Started, host: ThisHost) -> bool:
    """Whether a vouched record is this host's record of the arrival (migration, restore) that
    started the running QEMU process: written here as an arrival, by the hook at most
    ARRIVAL_WINDOW before the process started or by psci-hook after it. When the process start
    is unknown, an arrival record written here is taken as this one's."""
    if not host.wrote(record.origin) or record.origin.event not in (OriginEvent.MIGRATED,
                                                                    OriginEvent.RESTORED):
        return False
    begun, written = started.process_start, time_epoch(record.origin.time)
    if begun is None:
        return True
    return written is not None and written >= begun - ARRIVAL_WINDOW


def how_started(started: Started, record: GuestRecord | None, host: ThisHost
                ) -> Trigger | None:
    """How the running QEMU process got its vCPU state: Trigger.BOOTED (cold boot here), one of
    LOADED_STATE, or None when nothing tells. The state reason decides; when a pause/resume
    replaced it, a record this host wrote for this very process (after it started for a boot;
    for an arrival just before it, by the hook, or after it) still tells."""
    told = LIBVIRT_HOW_STARTED.get(started.reason)
    if told is not None:
        return told
    if record is None or not record.vouched or not host.wrote(record.origin):
        return None
    begun, written = started.process_start, time_epoch(record.origin.time)
    if begun is None or written is None:
        return None
    trigger = _ORIGIN_TRIGGER.get(record.origin.event)
    if trigger == Trigger.BOOTED and written >= begun - CLOCK_SLACK:
        return trigger
    # An arrival's record: the hook's, written just before the process started, or psci-hook's
    # own (watch, record), written after it about this very process.
    if trigger in (Trigger.MIGRATED, Trigger.RESTORED) and written >= begun - ARRIVAL_WINDOW:
        return trigger
    return None


def _facts(started: Started) -> str:
    reason = f"libvirt's state reason: {started.reason}" if started.reason else \
        "no state reason from libvirt"
    if started.process_start is None:
        return reason + ", QEMU process start unknown"
    begun = time_text(started.process_start)
    return f"{reason}, QEMU process started {begun}"


def plan_reconcile(observed: Observed, host: ThisHost, now: str, force: bool = False,
                   trigger: Trigger = Trigger.RECONCILE) -> Plan:
    """A running domain, with no event saying how it got here (`record`, the watcher's
    start-up, reconnections and periodic passes): how its QEMU process started is read from
    libvirt's state reason and the process start time (how_started)."""
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
    if observed.started.reason == MIGRATING:
        return _skip(live, trigger, "paused for a migration under way: recorded when it ends",
                     previous=old.origin if old else None)
    if force:
        return plan_boot(observed, host, now, trigger, "replaced on request (--force)")
    how = how_started(observed.started, old, host)
    facts = _facts(observed.started)
    if how == Trigger.BOOTED:
        booted = booted_record(live, host, now, old)
        if (old is not None and old.vouched and host.wrote(old.origin)
                and old.origin.event == "booted" and old.state == booted.state):
            plan = Plan(live.name, live.uuid, trigger, RecordAction.UNCHANGED,
                        f"its record is current ({origin_text(old.origin)}; {facts})",
                        previous=old.origin)
            return _synced_if_needed(plan, observed, persistent, old)
        return plan_boot(observed, host, now, trigger,
                         f"cold-booted on this host after its record was written ({facts})"
                         if old is not None else f"cold-booted on this host ({facts})")
    if how in LOADED_STATE:
        plan = plan_arrival(observed, host, now, how)
        return dataclasses.replace(plan, trigger=trigger,
                                   reason=f"{plan.reason} ({facts})")
    # Nothing tells how this process started.
    if old is None:
        return plan_boot(observed, host, now, trigger,
                         f"no record; how the guest started is unknown ({facts}): this host's "
                         "values are an upper bound for any guest running here")
    if not old.vouched:
        return Plan(live.name, live.uuid, trigger, RecordAction.UNCHANGED,
                    f"its record is {old.status} ({origin_text(old.origin)}) and nothing tells "
                    f"how the guest started ({facts}): the policy's 'unrecorded' setting "
                    "decides at a migration; --force records this host's values",
                    previous=old.origin)
    marked = old.with_status(RecordStatus.UNVERIFIED)
    return Plan(live.name, live.uuid, trigger, RecordAction.MARKED,
                f"cannot tell whether the guest cold-booted after its record "
                f"({origin_text(old.origin)}) was written ({facts}): marked unverified, so "
                "the policy's 'unrecorded' setting decides at a migration; if it cold-booted "
                "here, --force records this host's values", live=marked, previous=old.origin)


def _synced_if_needed(plan: Plan, observed: Observed, persistent: Domain | None,
                      old: GuestRecord) -> Plan:
    """``plan``, or a copy of the live record into a persistent definition that lacks it."""
    copy = persistent_copy(old)
    if observed.persistent is None or _same(_config_record(persistent), copy):
        return plan
    return dataclasses.replace(
        plan, action=RecordAction.SYNCED, config=copy,
        reason=f"the persistent definition now carries the live record "
               f"({origin_text(old.origin)})")


def plan_failed(name: str, trigger: Trigger, reason: str, uuid: str = "") -> Plan:
    return Plan(name, uuid, trigger, RecordAction.FAILED, reason)


def plan_for(trigger: Trigger, observed: Observed, host: ThisHost, now: str, force: bool = False
             ) -> Plan:
    """The plan for one trigger; FAILED with a one-line reason if libvirt's XML is unusable."""
    try:
        if trigger == Trigger.BOOTED:
            return plan_boot(observed, host, now)
        if trigger in LOADED_STATE:
            return plan_arrival(observed, host, now, trigger)
        return plan_reconcile(observed, host, now, force)
    except DomainXMLError as exc:
        return plan_failed("?", trigger, f"unusable domain XML from libvirt: {exc}")
