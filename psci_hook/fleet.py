"""A fleet of hosts: where a guest can go now, and what changing some hosts' profiles does.

A fleet is thousands of hosts but a few dozen distinct host profiles (same kernel, CPU,
firmware and QEMU). Every verdict here is ``engine.decide()`` on exactly the inputs ``check``
gives it (the guest's state, one host profile, that profile's QEMU generation unless one is
forced, and the vCPU the guest's domain XML asks for on that host), computed once per distinct
(guest state, vCPU request, profile) and shared by every host with that profile. Pure: the
profiles and guests come in parsed; commands/_fleet.py reads them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Callable, NamedTuple

from psci_hook.codes import Severity, severity
from psci_hook.domainxml import VcpuRequest
from psci_hook.engine import Decision, GuestState, decide
from psci_hook.profile import HostProfile
from psci_hook.report import psci_remedy_version, psci_setting

# Keys of a probed profile that say which host was probed, when and how, not what its kernel
# does (psci_hook/probe.py writes the first three; provenance is free text). Every other key
# counts, known to this version or not: two profiles that differ anywhere else are decided
# separately, which costs time but never a wrong verdict.
HOST_IDENTITY_KEYS = frozenset({"hostname", "boot_id", "probed_at", "provenance"})


def profile_identity(data: Mapping[str, Any]) -> str:
    """The identity of a profile's content (a profile's JSON object): equal exactly when the
    two profiles are the same apart from HOST_IDENTITY_KEYS."""
    kept = {k: v for k, v in data.items() if k not in HOST_IDENTITY_KEYS}
    canonical = json.dumps(kept, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


class Fleet(NamedTuple):
    """Hosts and the distinct profiles they run."""

    hosts: Mapping[str, str]  # host name -> profile identity, sorted by host name
    profiles: Mapping[str, HostProfile]  # profile identity -> the profile

    def profile_of(self, host: str) -> HostProfile:
        return self.profiles[self.hosts[host]]

    def hosts_by_profile(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for host, identity in self.hosts.items():
            out.setdefault(identity, []).append(host)
        return out

    def changed(self, changes: Mapping[str, tuple[str, HostProfile]]) -> Fleet:
        """The fleet with some hosts on new profiles (host -> (identity, profile))."""
        profiles = dict(self.profiles)
        hosts = dict(self.hosts)
        for host, (identity, profile) in changes.items():
            if host not in hosts:
                raise KeyError(host)
            hosts[host] = identity
            profiles[identity] = profile
        used = set(hosts.values())
        return Fleet(hosts, {i: p for i, p in profiles.items() if i in used})


def profile_label(profile: HostProfile, identity: str) -> str:
    """A short name for a distinct profile: its kernel release and the start of its identity."""
    return f"{profile.kernel_release} [{identity[:6]}]"


# ---------------------------------------------------------------------------------------------
# Verdicts
# ---------------------------------------------------------------------------------------------


class Verdict(NamedTuple):
    """What ``check`` says for one guest state and one host profile, in brief."""

    allowed: bool
    codes: tuple[str, ...]  # check's "codes": warning and blocking, most severe first
    one_way: bool  # allowed, and the guest's WORKAROUND levels rise (WA_RATCHET)
    # How a refused move is made to work: "kvm-psci-version=1.1" when a cold boot with that
    # property makes the same engine allow it (movable_with_psci).
    remedy: str | None = None

    @classmethod
    def of(cls, decision: Decision) -> Verdict:
        return cls(allowed=not decision.vetoed, codes=tuple(decision.codes),
                   one_way=not decision.vetoed and decision.one_way)

    @property
    def blocking_codes(self) -> tuple[str, ...]:
        return tuple(c for c in self.codes if severity(c) is Severity.BLOCKING)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"allowed": self.allowed, "codes": list(self.codes),
                               "one_way": self.one_way}
        if self.remedy is not None:
            out["remedy"] = self.remedy
        return out


def movable_with_psci(guest: GuestState, decision: Decision,
                      decide_again: Callable[[GuestState], Decision]) -> str | None:
    """The kvm-psci-version setting that makes a refused move work, or None.

    When the PSCI version is all that blocks the guest (report.psci_remedy_version), the guest
    as a cold boot with the destination's highest version would make it is decided again, by
    the caller's own ``decide_again``; only an allowed decision counts. The source implements
    that version: it is below the guest's own, and every kernel implements 0.2 up to its own
    (engine.psci_versions_known).
    """
    version = psci_remedy_version(decision.findings)
    if version is None or decide_again(guest.with_psci_version(version)).vetoed:
        return None
    return psci_setting(version)


def remedy_note(remedy: str | None) -> str:
    """How `where`, `plan` and `matrix` mark a refused move that a remedy makes work."""
    return f" (Y(psci): movable after a cold boot with {remedy})" if remedy else ""


GuestKey = tuple[Any, ...]


def guest_key(state: GuestState) -> GuestKey:
    """A hashable identity of a guest state, from every one of its fields (the SVE lengths
    decide SVE_LENGTH_LOST, for one): equal states are decided once."""
    return tuple(tuple(sorted(value.items())) if isinstance(value, Mapping) else value
                 for value in state)


class Guest(NamedTuple):
    """A guest as `where` and `plan` judge it: the state its record says the source QEMU will
    send, and what its domain XML asks of the vCPU, which each destination's QEMU creates from
    that and the destination's features (as the hook and ``check --domain-xml`` decide). The
    request, not the XML tree, is kept: a fleet's guests cost a few small values each."""

    name: str
    state: GuestState
    vcpu: VcpuRequest


class Decider:
    """``engine.decide`` memoised on (guest state, vCPU request, profile identity).

    ``generation`` None means each profile's own QEMU generation, as ``check`` does without
    ``--qemu``. A guest's ``vcpu`` request is resolved against each profile's features
    (VcpuRequest.on), as the hook does; None, for a guest that has no domain XML (a freshly
    booted guest of `plan`'s host pairs), judges it with its own vCPU: each destination creates
    a vCPU with the guest's features, SVE lengths and PSCI 0.1 or not (engine.decide without
    ``vcpu``).
    """

    def __init__(self, generation: str | None = None) -> None:
        self.generation = generation
        self._verdicts: dict[tuple[GuestKey, VcpuRequest | None, str], Verdict] = {}
        self.decisions = 0  # engine calls made (the benchmark reports it)

    def verdict(self, guest: GuestState, key: GuestKey, identity: str, profile: HostProfile,
                request: VcpuRequest | None = None) -> Verdict:
        memo = (key, request, identity)
        found = self._verdicts.get(memo)
        if found is None:
            vcpu = None if request is None else request.on(profile.default_features())

            def decide_here(state: GuestState) -> Decision:
                self.decisions += 1
                return decide(state, profile, self.generation, vcpu=vcpu)

            decision = decide_here(guest)
            found = Verdict.of(decision)
            if decision.vetoed:
                found = found._replace(remedy=movable_with_psci(guest, decision, decide_here))
            self._verdicts[memo] = found
        return found

    def per_profile(self, guest: GuestState, fleet: Fleet,
                    request: VcpuRequest | None = None) -> dict[str, Verdict]:
        """The guest's verdict on each distinct profile of the fleet."""
        key = guest_key(guest)
        return {identity: self.verdict(guest, key, identity, profile, request)
                for identity, profile in fleet.profiles.items()}


class HostVerdict(NamedTuple):
    host: str
    verdict: Verdict


def where(guest: GuestState, fleet: Fleet, decider: Decider,
          request: VcpuRequest | None = None) -> list[HostVerdict]:
    """Every host of the fleet, in host order, with what ``check`` says for the guest there
    (``request``: what its domain XML asks of the vCPU, as Decider takes it)."""
    by_profile = decider.per_profile(guest, fleet, request)
    return [HostVerdict(host, by_profile[identity]) for host, identity in fleet.hosts.items()]


# ---------------------------------------------------------------------------------------------
# Plans: the fleet before and after some hosts change profile
# ---------------------------------------------------------------------------------------------


class HostClass(NamedTuple):
    """Hosts that run the same profile before the change and the same one after it."""

    before: str  # profile identity
    after: str
    hosts: tuple[str, ...]

    @property
    def changed(self) -> bool:
        return self.before != self.after


class PairChange(NamedTuple):
    """Host pairs (every source host of one class, every destination host of another) whose
    verdict for a guest freshly booted on the source changes."""

    source: int  # index into Plan.classes
    destination: int
    pairs: int  # host pairs (a host never migrates to itself)
    before: Verdict
    after: Verdict


class GuestImpact(NamedTuple):
    """What the change does to one guest's destinations."""

    name: str
    destinations_before: int
    destinations_after: int
    lost: tuple[tuple[int, Verdict], ...]  # (class index, verdict after) allowed before, not now
    new_one_way: tuple[int, ...]  # class indexes: one-way after and not before

    @property
    def stranded(self) -> bool:
        return self.destinations_after == 0


class Plan(NamedTuple):
    before: Fleet
    after: Fleet
    classes: tuple[HostClass, ...]
    pairs: tuple[PairChange, ...]
    guests: tuple[GuestImpact, ...]

    def class_label(self, index: int) -> str:
        cls = self.classes[index]
        before = profile_label(self.before.profiles[cls.before], cls.before)
        if not cls.changed:
            return before
        return f"{before} -> {profile_label(self.after.profiles[cls.after], cls.after)}"


def host_classes(before: Fleet, after: Fleet) -> tuple[HostClass, ...]:
    grouped: dict[tuple[str, str], list[str]] = {}
    for host, identity in before.hosts.items():
        grouped.setdefault((identity, after.hosts[host]), []).append(host)
    return tuple(HostClass(b, a, tuple(hosts)) for (b, a), hosts in grouped.items())


def _changed(before: Verdict, after: Verdict) -> bool:
    return (before.allowed, before.one_way) != (after.allowed, after.one_way)


def plan(before: Fleet, after: Fleet, guests: Sequence[Guest], decider: Decider) -> Plan:
    """What moving from ``before`` to ``after`` (the same hosts) does: the host pairs whose
    verdict changes for a freshly booted guest, and each given guest's lost destinations.

    Each given guest is judged with the vCPU its domain XML asks for on each destination, as
    `where` and ``check --domain-xml`` judge it. The freshly booted guests of the host pairs have
    no domain XML: they are judged with their own vCPU (the source's -cpu host features), as
    `matrix` judges them.
    """
    classes = host_classes(before, after)
    fresh_before = {i: GuestState.booted_on(p) for i, p in before.profiles.items()}
    fresh_after = {i: GuestState.booted_on(p) for i, p in after.profiles.items()}
    pairs: list[PairChange] = []
    for s, source in enumerate(classes):
        for d, destination in enumerate(classes):
            if not (source.changed or destination.changed):
                continue
            count = len(source.hosts) * len(destination.hosts) - (
                len(source.hosts) if s == d else 0)
            if count == 0:
                continue
            was = decider.verdict(fresh_before[source.before], ("booted", source.before),
                                  destination.before, before.profiles[destination.before])
            now = decider.verdict(fresh_after[source.after], ("booted", source.after),
                                  destination.after, after.profiles[destination.after])
            if _changed(was, now):
                pairs.append(PairChange(s, d, count, was, now))

    impacts: list[GuestImpact] = []
    for guest in guests:
        was_by = decider.per_profile(guest.state, before, guest.vcpu)
        now_by = decider.per_profile(guest.state, after, guest.vcpu)
        lost: list[tuple[int, Verdict]] = []
        new_one_way: list[int] = []
        count_before = count_after = 0
        for index, cls in enumerate(classes):
            was, now = was_by[cls.before], now_by[cls.after]
            count_before += len(cls.hosts) if was.allowed else 0
            count_after += len(cls.hosts) if now.allowed else 0
            if was.allowed and not now.allowed:
                lost.append((index, now))
            if now.one_way and not was.one_way:
                new_one_way.append(index)
        impacts.append(GuestImpact(guest.name, count_before, count_after, tuple(lost),
                                   tuple(new_one_way)))
    return Plan(before, after, classes, tuple(pairs), tuple(impacts))


def first_hosts(hosts: Iterable[str], limit: int = 3) -> str:
    """``a, b, c`` or ``a, b, c and 7 more``: host lists readable at fleet scale."""
    hosts = list(hosts)
    shown = ", ".join(hosts[:limit])
    return shown if len(hosts) <= limit else f"{shown} and {len(hosts) - limit} more"
