"""The decision engine: what QEMU and the destination kernel will do with a guest's registers.

The model: docs/design.md#migrated-list (the whole list: count check, merge, write),
docs/design.md#accepted-values (which firmware register values a kernel accepts) and
docs/design.md#id-registers (ID registers, cache geometry).
Pure functions over immutable values (named tuples): no files, no clock,
no libvirt, no lxml.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

from psci_hook import registers as regs
from psci_hook.codes import Severity, severity
from psci_hook.profile import AARCH32, FeatureSet, HostProfile, IdValues, feature_key
from psci_hook.vocab import HookVerdict, QemuGeneration, StrEnum

# docs/design.md#tolerant-qemu: QEMU with the tolerance series enlarges the incoming array by the
# number of registered tolerances plus MAX_CPREG_VMSTATE_ANOMALIES = 10 (cpu_pre_load).
MAX_CPREG_VMSTATE_ANOMALIES = 10
# ToleranceNotOnBothEnds for -cpu host: skipped whichever side lacks them.
TOLERATED_NOT_ON_BOTH_ENDS = frozenset(
    regs.SYSREG_BY_NAME[n] for n in ("TCR2_EL1", "PIRE0_EL1", "PIR_EL1")
)
# ToleranceOnlySrcTestValue: VENDOR_HYP_BMAP_2 may be missing on the destination while it is 0.
TOLERATED_IF_ZERO = {regs.VENDOR_HYP_BMAP_2.reg_id: 0}
TOLERANCE_COUNT = len(TOLERATED_NOT_ON_BOTH_ENDS) + len(TOLERATED_IF_ZERO)

WRITABLE_ID_REGS_SINCE = (6, 7)  # before 6.7 an ID register must equal the host's value
WRITABLE_CACHE_GEOMETRY_SINCE = (6, 3)  # before 6.3 CLIDR_EL1 and CCSIDR must equal the host's
CCSIDR_LINE_SIZE = 0x7  # CCSIDR_EL1.LineSize, bits [2:0]: log2(bytes per line) - 4
WA2_SIMPLIFIED_SINCE = (5, 10)  # 29e8910a566a: WA2 narrowed to NOT_AVAIL / NOT_REQUIRED



class FindingOutcome(StrEnum):
    """What happens to one register (docs/design.md#migrated-list), or to the whole list, and
    the outcomes of the findings the hook adds around the engine's."""

    ACCEPTED = "accepted"  # the destination kernel takes the value
    REJECTED = "rejected"  # the destination kernel (or the model of it) refuses the value
    MISSING = "missing-on-destination"  # sent, but the destination kernel does not list it
    DROPPED = "dropped"  # legacy QEMU skips it without a word
    TOLERATED = "tolerated"  # the destination QEMU's migration tolerances skip it
    DESTINATION_DEFAULT = "destination-default"  # not sent: the destination's value applies
    UNVERIFIED = "unverified"  # may be accepted: only the rehearsal can tell
    COUNT_CHECK = "count-check"  # the list is longer than the destination QEMU accepts
    NOT_COMPARED = "not-compared"  # one side lacks what the comparison needs
    FEATURES = "features"  # a vCPU feature missing or gained
    OVERRIDE = "override"  # the hook: the record's override covers the blocking codes
    INVALID = "invalid"  # the hook: the record is malformed
    UNKNOWN = "unknown"  # the hook: no usable record, the source's values are unknown


# ---------------------------------------------------------------------------------------------
# Inputs and outputs
# ---------------------------------------------------------------------------------------------


def _has_sve(features: FeatureSet) -> bool:
    """A vCPU whose SVE vector lengths QEMU sets (a 32-bit one never gets any: see decide)."""
    return "sve" in features and AARCH32 not in features


class RequestedVcpu(NamedTuple):
    """The vCPU a domain's QEMU asks a host's KVM for: what domainxml.requested_vcpu reads from
    the domain XML (or the running QEMU's command line) for that host. QEMU creates it from its
    own command line before any state arrives (target/arm/kvm.c kvm_arch_init_vcpu), so a
    destination's QEMU creates the vCPU the domain XML asks for there, whatever the source's
    was; the engine judges the guest's state against it, and a cold boot records it.

    * ``features``: the KVM_ARM_VCPU_INIT features (PMU, SVE, pointer authentication, 32-bit
      EL1) -cpu gets on that host;
    * ``sve_lengths``: the SVE vector lengths (bits) the domain names (sveNNN=on), from which
      QEMU derives KVM_REG_ARM64_SVE_VLS, set at creation and never migrated
      (target/arm/cpu64.c arm_cpu_sve_finalize);
    * ``psci_version``: the PSCI_VERSION value kvm-psci-version sets at creation, None where
      the domain sets none (the kernel's default). A migration then writes the guest's own
      value, so for a destination only ``psci_0_1`` counts.
    """

    features: FeatureSet
    sve_lengths: frozenset[int] = frozenset()
    psci_version: int | None = None

    @property
    def psci_0_1(self) -> bool:
        """Created without KVM_ARM_VCPU_PSCI_0_2 (kvm-psci-version=0.1): such a vCPU takes
        PSCI 0.1 and nothing else (see PSCI_0_1)."""
        return self.psci_version == PSCI_0_1


class GuestState(NamedTuple):
    """What the source QEMU will send: register values, vCPU features and the migrated list."""

    registers: Mapping[int, int]  # firmware register id -> value
    features: FeatureSet = frozenset()
    cpreg_list: tuple[int, ...] | None = None
    id_registers: Mapping[str, int] | None = None
    cache_geometry: Mapping[str, int] | None = None
    # The SVE vector lengths (bits) the vCPU has: QEMU sets them when it creates the vCPU
    # (KVM_REG_ARM64_SVE_VLS) and does not migrate them. None: no SVE, or not known.
    sve_lengths: tuple[int, ...] | None = None

    @classmethod
    def booted_on(cls, host: HostProfile, features: FeatureSet | None = None,
                  psci_version: int | None = None,
                  sve_named: frozenset[int] = frozenset()) -> GuestState:
        """A guest cold-booted on ``host`` with ``features`` (default: -cpu host's, all) and,
        when its QEMU sets one (kvm-psci-version), ``psci_version`` instead of the host's;
        with SVE, the vector lengths its QEMU gives it for the lengths it names
        (``sve_named``; none: all the host offers). For a domain, these three are the
        RequestedVcpu domainxml.requested_vcpu reads for ``host``.

        Its ID registers and cache geometry are those of a vCPU with exactly these features;
        where the profile cannot tell them (it predates per-feature values), the record
        carries none rather than another vCPU's (the engine then says they were not
        compared, and the rehearsal does not write them).
        """
        chosen = host.default_features() if features is None else features
        values = host.id_values(chosen)
        registers = dict(host.registers)
        own_psci = registers.get(regs.PSCI_VERSION.reg_id)
        if psci_version is not None and own_psci is not None and (
                psci_version == PSCI_0_1 or psci_version in psci_versions_known(own_psci)):
            # A version the host does not implement stops QEMU at start (kvm_arch_init_vcpu:
            # "PSCI version ... is not supported by KVM"): no guest runs with it. 0.1 is every
            # kernel's, on a vCPU QEMU creates without KVM_ARM_VCPU_PSCI_0_2 for it.
            registers[regs.PSCI_VERSION.reg_id] = psci_version
        return cls(
            registers=registers,
            features=chosen,
            cpreg_list=host.cpreg_list(chosen),
            id_registers=None if values is None else values.id_registers,
            cache_geometry=None if values is None else values.cache_geometry,
            sve_lengths=host.guest_sve_lengths(sve_named) if _has_sve(chosen) else None,
        )

    def with_psci_version(self, version: int) -> GuestState:
        """This guest as a cold boot with kvm-psci-version=``version`` would make it (the
        rest of the vCPU is the same)."""
        return self._replace(registers={**self.registers, regs.PSCI_VERSION.reg_id: version})


class Finding(NamedTuple):
    """One outcome of the decision: a code, the register and both values where they apply,
    and one sentence an operator understands."""

    code: str
    outcome: FindingOutcome
    message: str
    register: str | None = None
    reg_id: int | None = None
    guest_value: int | None = None
    destination_value: int | None = None
    inferred: bool = False  # relies on the kernel release, not on the profile's own facts

    @property
    def severity(self) -> Severity:
        return severity(self.code)

    @property
    def blocking(self) -> bool:
        return self.severity is Severity.BLOCKING

    def value_text(self, value: int | None) -> str | None:
        if value is None or self.reg_id is None:
            return None if value is None else f"0x{value:x}"
        return regs.value_text(self.reg_id, value)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "code": self.code,
            "outcome": self.outcome,
            "severity": self.severity.name.lower(),
            "register": self.register,
            "message": self.message,
        }
        if self.reg_id is not None:
            out["id"] = regs.format_id(self.reg_id)
        if self.guest_value is not None:
            out["guest_value"] = self.guest_value
            out["guest"] = self.value_text(self.guest_value)
        if self.destination_value is not None:
            out["destination_value"] = self.destination_value
            out["destination"] = self.value_text(self.destination_value)
        if self.inferred:
            out["inferred"] = True
        return out


class Decision(NamedTuple):
    """The verdict, every finding, and the guest's state after the migration."""

    findings: tuple[Finding, ...]
    guest_after: GuestState
    generation: str
    lists_compared: bool

    @property
    def verdict(self) -> HookVerdict:
        """VETO exactly when a finding is blocking (the default policy), else ALLOW."""
        return HookVerdict.VETO if self.vetoed else HookVerdict.ALLOW

    @property
    def vetoed(self) -> bool:
        return any(f.blocking for f in self.findings)

    @property
    def blocking(self) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.blocking)

    @property
    def codes(self) -> list[str]:
        return significant_codes(self.findings)

    @property
    def one_way(self) -> bool:
        return any(f.code == "WA_RATCHET" for f in self.findings)

    def to_dict(self) -> dict[str, Any]:
        after = self.guest_after
        return {
            "verdict": self.verdict,
            "codes": self.codes,
            "qemu_generation": self.generation,
            "lists_compared": self.lists_compared,
            "findings": [f.to_dict() for f in self.findings],
            "guest_after": {
                "registers": {regs.firmware_name(i): v for i, v in sorted(after.registers.items())},
                "features": feature_key(after.features),
                "cpreg_list_length": None if after.cpreg_list is None else len(after.cpreg_list),
            },
        }


def significant_codes(findings: Iterable[Finding]) -> list[str]:
    """Distinct warning and blocking codes, most severe first, else in order of appearance;
    informational codes would drown the audit trail."""
    seen: dict[str, Severity] = {}
    for f in findings:
        if f.severity > Severity.INFO:
            seen.setdefault(f.code, f.severity)
    return sorted(seen, key=lambda c: -seen[c])


# ---------------------------------------------------------------------------------------------
# Firmware register values: what a destination kernel accepts (docs/design.md#accepted-values)
# ---------------------------------------------------------------------------------------------


class Judgement(NamedTuple):
    """Whether a destination kernel accepts one firmware register value, and why."""

    accepted: bool | None  # None: the model cannot tell (unknown register)
    code: str
    reason: str
    inferred: bool = False


# PSCI 0.1 (include/kvm/arm_psci.h KVM_ARM_PSCI_0_1): the version of a vCPU created without
# KVM_ARM_VCPU_PSCI_0_2, which QEMU 11.x does for kvm-psci-version=0.1 (target/arm/kvm.c
# kvm_arch_init_vcpu) and for nothing else.
PSCI_0_1 = regs.psci_value(0, 1)


def psci_versions_known(default: int) -> list[int]:
    """PSCI versions a kernel whose default is ``default`` implements: 0.2, then 1.0..default.

    The kernel accepts only versions from its own enumeration (docs/design.md#psci-version);
    its default is the newest it implements, and every 1.x below it is implemented too.
    """
    known = [regs.psci_value(0, 2)]
    major, minor = default >> 16, default & 0xFFFF
    if major >= 1:
        known += [regs.psci_value(1, m) for m in range(0, (minor if major == 1 else 0) + 1)]
    return known


def wa2_simplified(profile: HostProfile) -> tuple[bool, bool]:
    """Whether the destination narrows WORKAROUND_2 (5.10+), and whether that was inferred.

    A 5.10+ kernel only ever reports NOT_AVAIL or NOT_REQUIRED; a value of UNKNOWN, AVAIL or
    the ENABLED bit proves the older 5.3-5.9 handling. Otherwise only the release can tell.
    """
    value = profile.registers.get(regs.SMCCC_ARCH_WORKAROUND_2.reg_id)
    if value is not None and (value & regs.WA_LEVEL_MASK in (1, 2) or value & regs.WA2_ENABLED):
        return False, False
    version = profile.kernel_version()
    if version is None:
        return True, True
    return version >= WA2_SIMPLIFIED_SINCE, True


def judge_firmware_value(reg_id: int, value: int, destination: HostProfile,
                         psci_0_1_vcpu: bool = False) -> Judgement:
    """Would the destination kernel's KVM_SET_ONE_REG accept ``value`` for ``reg_id``?

    Assumes the register is listed by the destination (the merge decides the rest).
    ``psci_0_1_vcpu``: the destination's vCPU is created without KVM_ARM_VCPU_PSCI_0_2
    (kvm-psci-version=0.1); arch/arm64/kvm/hypercalls.c kvm_arm_set_fw_reg then takes PSCI
    0.1 and nothing else, and a vCPU with the feature takes every version but 0.1.
    """
    reg = regs.FW_BY_ID.get(reg_id)
    own = destination.registers.get(reg_id)
    if reg is None or own is None:
        return Judgement(None, "FW_UNVERIFIED",
                         f"{regs.firmware_name(reg_id)} is not known to this version of "
                         "psci-hook; its value cannot be judged offline")
    if reg.kind is regs.FwKind.PSCI:
        if psci_0_1_vcpu:
            if value == PSCI_0_1:
                return Judgement(True, "ACCEPTED", "a vCPU created for PSCI 0.1 "
                                 "(kvm-psci-version=0.1) takes it on every kernel")
            return Judgement(False, "PSCI_UNSUPPORTED",
                             "the destination's vCPU is created for PSCI 0.1 (kvm-psci-version"
                             "=0.1 in its domain XML), which takes no other version")
        known = psci_versions_known(own)
        if value in known:
            return Judgement(True, "ACCEPTED", "the destination implements this PSCI version")
        if value == PSCI_0_1:
            return Judgement(False, "PSCI_UNSUPPORTED",
                             "PSCI 0.1 loads only into a vCPU created for it, and the "
                             "destination's domain XML does not set kvm-psci-version=0.1")
        offered = ", ".join(regs.psci_version_text(v) for v in known)
        return Judgement(False, "PSCI_UNSUPPORTED",
                         f"the destination kernel implements PSCI {offered} only")
    if reg.kind is regs.FwKind.WORKAROUND:
        return _judge_workaround(reg, value, own, destination)
    supported = own | (regs.BMAP2_SUPPORTED_BITS if reg is regs.VENDOR_HYP_BMAP_2 else 0)
    if value & ~supported:
        return Judgement(False, "BITMAP_UNSUPPORTED",
                         f"bits 0x{value & ~supported:x} are not implemented by the destination "
                         f"kernel (it supports 0x{supported:x})")
    return Judgement(True, "ACCEPTED", "every service bit is implemented by the destination")


def _judge_workaround(reg: regs.FirmwareRegister, value: int, own: int,
                      destination: HostProfile) -> Judgement:
    name = reg.name
    if reg is not regs.SMCCC_ARCH_WORKAROUND_2:
        if value & ~regs.WA_LEVEL_MASK:
            return Judgement(False, "WA_INVALID_VALUE",
                             f"{name} has bits outside the level field (0x{value:x})")
        if value > own:
            return Judgement(False, "WA_LEVEL_TOO_HIGH",
                             "KVM refuses a level above the destination host's own")
        return Judgement(True, "ACCEPTED", "the destination's level is at least the guest's")
    if value & ~(regs.WA_LEVEL_MASK | regs.WA2_ENABLED):
        return Judgement(False, "WA_INVALID_VALUE",
                         f"{name} has bits outside the level and ENABLED (0x{value:x})")
    level = value & regs.WA_LEVEL_MASK
    if value & regs.WA2_ENABLED and level != 2:
        return Judgement(False, "WA_INVALID_VALUE", "ENABLED is only valid with AVAIL")
    simplified, inferred = wa2_simplified(destination)
    era = ("5.10+ (level narrowed to NOT_AVAIL or NOT_REQUIRED)" if simplified
           else "5.3-5.9 (levels compared as they are)")
    how = f"; WORKAROUND_2 handling of a {era} kernel" + (
        f", inferred from kernel release {destination.kernel_release}" if inferred else "")
    if simplified:
        if level > 3:
            return Judgement(False, "WA_INVALID_VALUE",
                             f"level {level} is not a WORKAROUND_2 level{how}", inferred)
        mapped = 0 if level <= 1 else 3
        if mapped > (own & regs.WA_LEVEL_MASK):
            return Judgement(False, "WA_LEVEL_TOO_HIGH",
                             f"KVM refuses a level above the destination host's own{how}",
                             inferred)
        return Judgement(True, "ACCEPTED", f"the destination's level is sufficient{how}",
                         inferred)
    if level > (own & regs.WA_LEVEL_MASK):
        return Judgement(False, "WA_LEVEL_TOO_HIGH",
                         f"KVM refuses a level above the destination host's own{how}", inferred)
    return Judgement(True, "ACCEPTED", f"the destination's level is sufficient{how}", inferred)


def candidate_values(reg_id: int) -> list[int]:
    """The values the engine reasons about for one firmware register (for conformance runs)."""
    reg = regs.FW_BY_ID.get(reg_id)
    if reg is None:
        return []
    if reg.kind is regs.FwKind.PSCI:
        return [regs.psci_value(0, 1), regs.psci_value(0, 2)] + [
            regs.psci_value(1, m) for m in range(0, 5)] + [regs.psci_value(2, 0)]
    if reg is regs.SMCCC_ARCH_WORKAROUND_2:
        return [0, 1, 2, 3, 4, 0xF, 0x10, 0x12, 0x13, 0x20]
    if reg.kind is regs.FwKind.WORKAROUND:
        return [0, 1, 2, 3, 0xF, 0x10]
    return [0, 1, 2, 3, 4, 7, 1 << 63]


def predict_value(reg_id: int, value: int, destination: HostProfile) -> bool | None:
    """True if the destination kernel accepts the value, False if it refuses, None if unknown.

    Only for registers the destination lists; one it does not list is refused (ENOENT).
    """
    if reg_id not in destination.registers:
        return False
    return judge_firmware_value(reg_id, value, destination).accepted


# ---------------------------------------------------------------------------------------------
# The decision (docs/design.md#migrated-list)
# ---------------------------------------------------------------------------------------------


def _fw_finding(reg_id: int, guest_value: int, dest: HostProfile, psci_0_1_vcpu: bool
                ) -> Finding:
    reg = regs.FW_BY_ID.get(reg_id)
    name = regs.firmware_name(reg_id)
    own = dest.registers.get(reg_id)
    judgement = judge_firmware_value(reg_id, guest_value, dest, psci_0_1_vcpu)
    g_text = regs.value_text(reg_id, guest_value)
    d_text = regs.value_text(reg_id, own) if own is not None else "?"
    if judgement.accepted is None:
        outcome, message = FindingOutcome.UNVERIFIED, f"{name} = {g_text}: {judgement.reason}."
    elif judgement.accepted:
        outcome = FindingOutcome.ACCEPTED
        code = "ACCEPTED"
        message = f"{name} = {g_text} is accepted ({judgement.reason})."
        if (reg is not None and reg.kind is regs.FwKind.WORKAROUND and own is not None
                and own & regs.WA_LEVEL_MASK > guest_value & regs.WA_LEVEL_MASK):
            code = "WA_RATCHET"
            message = (f"{name} rises from {g_text} to {d_text} on this host; afterwards the "
                       f"guest cannot migrate back to hosts at {g_text} until it cold-boots.")
        return Finding(code, outcome, message, name, reg_id, guest_value, own, judgement.inferred)
    else:
        outcome = FindingOutcome.REJECTED
        message = (f"the guest's {name} is {g_text} but the destination has {d_text}: "
                   f"{judgement.reason}.")
    return Finding(judgement.code, outcome, message, name, reg_id, guest_value, own,
                   judgement.inferred)


def _value_findings(guest: GuestState, dest: HostProfile, values: IdValues,
                    compared_ids: Iterable[int]) -> list[Finding]:
    """Findings for ID registers and cache geometry present in both (docs/design.md#id-registers,
    docs/design.md#cache-geometry)."""
    out: list[Finding] = []
    compared = set(compared_ids)
    version = dest.kernel_version()
    release = f"the destination kernel ({dest.kernel_release})"
    for name, g, d in _differing_values(guest.id_registers, values.id_registers,
                                        regs.SYSREG_BY_NAME.__getitem__, compared):
        reg_id = regs.SYSREG_BY_NAME[name]
        differs = (f"{name} differs in {', '.join(regs.differing_fields(name, g, d))} "
                   f"(guest 0x{g:x}, destination 0x{d:x})")
        if version is not None and version >= WRITABLE_ID_REGS_SINCE:
            out.append(Finding(
                "ID_REG_UNVERIFIED", FindingOutcome.UNVERIFIED,
                f"{differs}; {release} has writable ID registers (6.7+), so only a rehearsal "
                "on the destination can tell whether it is accepted.",
                name, reg_id, g, d, inferred=True))
        else:
            out.append(Finding(
                "ID_REG_MISMATCH", FindingOutcome.REJECTED,
                f"{differs}; {release} predates writable ID registers (6.7) and accepts only "
                "its own value.", name, reg_id, g, d, inferred=True))
    for name, g, d in _differing_values(guest.cache_geometry, values.cache_geometry,
                                        regs.cache_geometry_id, compared):
        out.append(_cache_finding(name, g, d, version, release))
    return out


def _differing_values(guest_values: Mapping[str, int] | None,
                      dest_values: Mapping[str, int] | None, to_id: Any,
                      compared: set[int]) -> list[tuple[str, int, int]]:
    """(name, guest value, destination value) of the registers both sides have and the
    destination will be sent (``compared``: the ids in both lists, empty for all)."""
    if guest_values is None or dest_values is None:
        return []
    return [(name, guest_values[name], dest_values[name])
            for name in sorted(set(guest_values) & set(dest_values), key=to_id)
            if (not compared or to_id(name) in compared)
            and guest_values[name] != dest_values[name]]


def _cache_finding(name: str, g: int, d: int, version: tuple[int, int] | None,
                   release: str) -> Finding:
    """The destination kernel's cache geometry rule (arch/arm64/kvm/sys_regs.c):

    - before 6.3 CLIDR_EL1 is an invariant register and demux_c15_set refuses any CCSIDR but
      the host's own ("This is also invariant: you can't change it");
    - from 6.3 (7af0c2534f4c "KVM: arm64: Normalize cache configuration") both are settable:
      set_ccsidr refuses RES0 bits and a line size below the minimum the host derives from
      CTR_EL0, which is the line size of its own (fabricated) CCSIDR; set_clidr has checks of
      its own (RES0, IDC against CTR_EL0) that only the rehearsal settles.
    """
    reg_id = regs.cache_geometry_id(name)
    differs = f"{name} differs in geometry (guest 0x{g:x}, destination 0x{d:x})"
    if version is None or version < WRITABLE_CACHE_GEOMETRY_SINCE:
        return Finding("CACHE_MISMATCH", FindingOutcome.REJECTED,
                       f"{differs}; {release} predates settable cache geometry (6.3) and "
                       "accepts only its own value.", name, reg_id, g, d, inferred=True)
    if name != regs.CLIDR_EL1 and g & CCSIDR_LINE_SIZE < d & CCSIDR_LINE_SIZE:
        return Finding("CACHE_MISMATCH", FindingOutcome.REJECTED,
                       f"{differs}; {release} refuses a cache line size below its own minimum "
                       f"(LineSize {g & CCSIDR_LINE_SIZE} < {d & CCSIDR_LINE_SIZE}, "
                       "set_ccsidr).", name, reg_id, g, d, inferred=True)
    return Finding("CACHE_UNVERIFIED", FindingOutcome.UNVERIFIED,
                   f"{differs}; {release} has settable cache geometry (6.3+), so only a "
                   "rehearsal on the destination can tell whether it is accepted.",
                   name, reg_id, g, d, inferred=True)


def decide(
    guest: GuestState,
    destination: HostProfile,
    generation: str | None = None,
    veto_dropped_workarounds: bool = True,
    vcpu: RequestedVcpu | None = None,
) -> Decision:
    """What QEMU (``generation``: legacy or tolerant; default: the destination's) and the
    destination kernel will do with ``guest``, and whether to veto (default policy).

    ``vcpu``: the vCPU the destination's QEMU will create, all of it from the domain XML
    (domainxml.requested_vcpu for the destination: -cpu host enables every feature the
    destination supports unless the domain XML turns it off; the SVE lengths it names; its
    kvm-psci-version). Without one (no domain XML, as `matrix` compares profiles), the guest's
    own: its features, no SVE length named, and a PSCI 0.1 vCPU exactly when its PSCI_VERSION
    is 0.1, the destination's QEMU being started from the same domain XML.
    """
    if vcpu is None:
        own_psci = guest.registers.get(regs.PSCI_VERSION.reg_id)
        vcpu = RequestedVcpu(guest.features,
                             psci_version=PSCI_0_1 if own_psci == PSCI_0_1 else None)
    generation = generation or destination.generation
    if generation not in tuple(QemuGeneration):
        raise ValueError(f"unknown QEMU generation {generation!r}")
    # A profile without migrated lists says nothing of the vCPU features its host offers: the
    # guest's own are assumed (what the lists cannot show is LISTS_NOT_COMPARED, not missing).
    features = vcpu.features if destination.cpreg_lists else guest.features
    findings = _feature_findings(guest.features, features, destination)
    unstartable = _aarch32_sve_findings(features)
    findings += unstartable
    lacking = _sve_findings(vcpu.sve_lengths, destination)
    findings += lacking
    dest_sve = destination.guest_sve_lengths(vcpu.sve_lengths) if _has_sve(features) else None
    if not lacking:
        findings += _sve_length_findings(guest, features, dest_sve)
    dest_list, missing = _destination_list(guest, destination, features)
    findings += [] if unstartable else missing
    lists_compared = guest.cpreg_list is not None and dest_list is not None
    if lists_compared:
        assert guest.cpreg_list is not None and dest_list is not None
        source_ids, dest_ids = guest.cpreg_list, dest_list
        findings += _count_check(source_ids, dest_ids, generation)
    else:
        source_ids = tuple(sorted(guest.registers))
        dest_ids = tuple(sorted(destination.registers))
        findings.append(_lists_not_compared(guest, destination))
    findings += _merge_findings(guest, source_ids, dest_ids, generation, veto_dropped_workarounds)
    findings += _write_findings(guest, destination, source_ids, dest_ids, generation,
                                vcpu.psci_0_1)
    dest_values = destination.id_values(features)
    compared = set(dest_ids) & set(source_ids) if lists_compared else set()
    findings += _id_findings(guest, destination, features, dest_values, compared)
    return Decision(
        findings=tuple(findings),
        guest_after=_guest_after(guest, destination, dest_list, features, dest_values,
                                 dest_sve),
        generation=generation,
        lists_compared=lists_compared,
    )


def _aarch32_sve_findings(features: FeatureSet) -> list[Finding]:
    """A 32-bit vCPU with SVE: QEMU cannot create it (see domainxml._aarch32_features)."""
    if AARCH32 not in features or "sve" not in features:
        return []
    return [Finding(
        "FEATURE_MISSING", FindingOutcome.FEATURES,
        "the domain's 32-bit vCPU (-cpu host,aarch64=off) would get SVE, whose vector "
        "lengths QEMU never sets for a CPU without AArch64 (target/arm/cpu.c "
        "arm_cpu_finalize_features); KVM refuses the empty set (KVM_REG_ARM64_SVE_VLS, "
        "EINVAL) and QEMU cannot create the vCPU: turn SVE off in the domain XML "
        "(<feature policy='disable' name='sve'/>).")]


def _sve_length_findings(guest: GuestState, features: FeatureSet,
                         dest_sve: tuple[int, ...] | None) -> list[Finding]:
    """The guest's SVE vector lengths the destination's QEMU would not give its vCPU."""
    if not guest.sve_lengths or dest_sve is None or not _has_sve(features):
        return []
    lost = sorted(set(guest.sve_lengths) - set(dest_sve))
    if not lost:
        return []
    return [Finding(
        "SVE_LENGTH_LOST", FindingOutcome.FEATURES,
        f"the guest booted with SVE vector lengths {_lengths(guest.sve_lengths)} bits; "
        f"this host's QEMU gives its vCPU {_lengths(dest_sve)} "
        f"(KVM_REG_ARM64_SVE_VLS, set when the vCPU is created and not migrated), so "
        f"{_lengths(lost)} would vanish under the running guest.")]


def _sve_findings(sve_lengths: frozenset[int], destination: HostProfile) -> list[Finding]:
    """The SVE vector lengths the domain asks for and the destination's KVM does not offer."""
    vls = destination.sve_lengths
    lacking = sorted(sve_lengths - set(vls)) if vls is not None else []
    if not lacking:
        return []
    return [Finding(
        "FEATURE_MISSING", FindingOutcome.FEATURES,
        f"the domain asks for SVE vector length(s) {', '.join(map(str, lacking))} bits, "
        f"which this host's KVM does not offer ({', '.join(map(str, vls or ())) or 'none'}"
        "): its QEMU refuses to start (\"cannot enable sve...\").")]


def _destination_list(guest: GuestState, destination: HostProfile, features: FeatureSet
                      ) -> tuple[tuple[int, ...] | None, list[Finding]]:
    """The destination's migrated list for the vCPU it will create, or FEATURE_MISSING when
    its profile has lists but none for these features."""
    if destination.cpreg_lists is None:
        return None, []
    dest_list = destination.cpreg_list(features)
    if dest_list is not None:
        return dest_list, []
    offered = ", ".join(sorted(destination.cpreg_lists)) or "none"
    whose = ("the guest's vCPU features" if features == guest.features
             else "the vCPU features the domain gets")
    return None, [Finding(
        "FEATURE_MISSING", FindingOutcome.FEATURES,
        f"{whose} ({feature_key(features)}) are not available "
        f"on the destination (it offers: {offered}); QEMU cannot create the vCPU.")]


def _lists_not_compared(guest: GuestState, destination: HostProfile) -> Finding:
    return Finding(
        "LISTS_NOT_COMPARED", FindingOutcome.NOT_COMPARED,
        "no migrated register list on "
        + ("either side" if guest.cpreg_list is None and destination.cpreg_lists is None
           else "the guest's side" if guest.cpreg_list is None
           else "the destination's side for these vCPU features")
        + ": only the firmware registers were compared; the count check and the other "
        "registers were not.")


def _count_check(source_ids: tuple[int, ...], dest_ids: tuple[int, ...], generation: str
                 ) -> list[Finding]:
    """docs/design.md#count-check: legacy QEMU takes at most the destination's own count;
    tolerant QEMU leaves room for the anomalies and tolerances (docs/design.md#tolerant-qemu)."""
    limit = len(dest_ids) + (
        MAX_CPREG_VMSTATE_ANOMALIES + TOLERANCE_COUNT
        if generation == QemuGeneration.TOLERANT else 0)
    if len(source_ids) <= limit:
        return []
    return [Finding(
        "CPREG_COUNT", FindingOutcome.COUNT_CHECK,
        f"the source QEMU will send {len(source_ids)} registers but the destination "
        f"{generation} QEMU accepts at most {limit} (Failed to load "
        "cpu:cpreg_vmstate_array_len).")]


def _merge_findings(guest: GuestState, source_ids: tuple[int, ...], dest_ids: tuple[int, ...],
                    generation: str, veto_dropped_workarounds: bool) -> list[Finding]:
    """docs/design.md#merge: the registers the source sends that the destination does not
    list."""
    highest = max(dest_ids) if dest_ids else 0
    return [_merge_finding(reg_id, guest, highest, generation, veto_dropped_workarounds)
            for reg_id in sorted(set(source_ids) - set(dest_ids))]


def _write_findings(guest: GuestState, destination: HostProfile, source_ids: tuple[int, ...],
                    dest_ids: tuple[int, ...], generation: str, psci_0_1_vcpu: bool
                    ) -> list[Finding]:
    """docs/design.md#write: every destination register, with the stream's value where it has
    one (``psci_0_1_vcpu``: the destination's vCPU is created for PSCI 0.1)."""
    source_set = set(source_ids)
    findings = []
    for reg_id in dest_ids:
        if reg_id not in source_set:
            findings.append(_default_finding(reg_id, destination, generation))
        elif regs.is_firmware(reg_id) and reg_id in guest.registers:
            findings.append(_fw_finding(reg_id, guest.registers[reg_id], destination,
                                        psci_0_1_vcpu))
    return findings


def _id_findings(guest: GuestState, destination: HostProfile, features: FeatureSet,
                 dest_values: IdValues | None, compared: set[int]) -> list[Finding]:
    """docs/design.md#id-registers: the ID registers and cache geometry, or why they were not
    compared."""
    findings = [] if dest_values is None else \
        _value_findings(guest, destination, dest_values, compared)
    if guest.id_registers is None or dest_values is None or dest_values.id_registers is None:
        if guest.id_registers is not None and destination.id_registers is not None:
            why = (f"the destination's profile has no ID register values for a vCPU with "
                   f"features {feature_key(features)} (it was probed before psci-hook read "
                   "them per feature set)")
        else:
            why = "ID register and cache geometry values are not in both profiles"
        findings.append(Finding(
            "ID_REGS_NOT_COMPARED", FindingOutcome.NOT_COMPARED,
            f"{why}: not compared; a rehearsal on the destination settles them."))
    return findings


def _feature_findings(source: FeatureSet, destination_features: FeatureSet,
                      destination: HostProfile) -> list[Finding]:
    """What the vCPU features gained or lost on the way do (the destination's QEMU creates
    the vCPU from the domain XML and its own host, not from the source's vCPU)."""
    out: list[Finding] = []
    lost = source - destination_features
    if lost:
        offered = feature_key(destination.default_features())
        out.append(Finding(
            "FEATURE_MISSING", FindingOutcome.FEATURES,
            f"the guest's vCPU has {feature_key(lost)}, which the destination's QEMU will not "
            f"give it (this host offers {offered}); its registers and ID fields would vanish "
            "under the running guest."))
    gained = destination_features - source
    if gained:
        out.append(Finding(
            "FEATURE_GAINED", FindingOutcome.FEATURES,
            f"the destination's QEMU enables {feature_key(gained)}, which the guest's vCPU did "
            "not have (-cpu host takes every feature this host offers unless the domain XML "
            "turns it off): its registers start at this host's reset values, and the ID "
            "fields KVM derives from it differ from the guest's."))
    return out


def _merge_finding(reg_id: int, guest: GuestState, highest: int, generation: str,
                   veto_dropped_workarounds: bool) -> Finding:
    name = regs.register_name(reg_id)
    value = guest.registers.get(reg_id)
    shown = "" if value is None else f" = {regs.value_text(reg_id, value)}"
    if generation == QemuGeneration.TOLERANT:
        if reg_id in TOLERATED_NOT_ON_BOTH_ENDS or (
                reg_id in TOLERATED_IF_ZERO and value == TOLERATED_IF_ZERO[reg_id]):
            return Finding("REG_TOLERATED", FindingOutcome.TOLERATED,
                           f"{name}{shown} is not on the destination; its QEMU tolerates and "
                           "skips it.", name, reg_id, value)
        why = (" (tolerated only while its value is 0)" if reg_id in TOLERATED_IF_ZERO else "")
        return Finding("REG_MISSING", FindingOutcome.MISSING,
                       f"the source sends {name}{shown}, which the destination kernel does not "
                       f"list{why}; QEMU fails the load.", name, reg_id, value)
    if reg_id < highest:
        return Finding("REG_MISSING", FindingOutcome.MISSING,
                       f"the source sends {name}{shown}, which the destination kernel does not "
                       "list; legacy QEMU fails the load on it.", name, reg_id, value)
    fw = regs.FW_BY_ID.get(reg_id)
    if (fw is not None and fw.kind is regs.FwKind.WORKAROUND and value is not None
            and value & regs.WA_LEVEL_MASK > regs.WA_NOT_AVAIL and veto_dropped_workarounds):
        return Finding("WA_DROPPED", FindingOutcome.DROPPED,
                       f"legacy QEMU on the destination would silently drop {name}{shown}: the "
                       f"guest would keep relying on a firmware mitigation ({fw.meaning}) that "
                       "the destination kernel does not offer.", name, reg_id, value)
    return Finding("REG_DROPPED", FindingOutcome.DROPPED,
                   f"{name}{shown} sorts above the destination's last register; legacy QEMU "
                   "drops it silently (neither checked nor applied).", name, reg_id, value)


def _default_finding(reg_id: int, destination: HostProfile, generation: str) -> Finding:
    name = regs.register_name(reg_id)
    own = destination.registers.get(reg_id)
    if regs.is_firmware(reg_id):
        shown = "" if own is None else f" ({regs.value_text(reg_id, own)})"
        return Finding("DEST_DEFAULT", FindingOutcome.DESTINATION_DEFAULT,
                       f"the source does not send {name}; the destination's default{shown} "
                       "applies to the guest from now on.", name, reg_id, None, own)
    return Finding("REG_DEST_DEFAULT", FindingOutcome.DESTINATION_DEFAULT,
                   f"the source does not send {name}; the destination's reset value applies.",
                   name, reg_id)


def _lengths(values: Iterable[int]) -> str:
    return ", ".join(map(str, values)) or "none"


def _guest_after(guest: GuestState, dest: HostProfile, dest_list: tuple[int, ...] | None,
                 features: FeatureSet, dest_values: IdValues | None,
                 sve_lengths: tuple[int, ...] | None) -> GuestState:
    """The guest's state once the migration is done: what this host's QEMU will send next."""
    after: dict[int, int] = {}
    for reg_id, own in dest.registers.items():
        fw = regs.FW_BY_ID.get(reg_id)
        if fw is not None and not fw.kept:
            after[reg_id] = own  # GET returns the current host's level; nothing is stored
        else:
            after[reg_id] = guest.registers.get(reg_id, own)

    def merged(mine: Mapping[str, int] | None, theirs: Mapping[str, int] | None
               ) -> Mapping[str, int] | None:
        if mine is None:
            return theirs
        if theirs is None:
            return mine
        return {name: mine.get(name, value) for name, value in theirs.items()}

    if dest_values is None:
        # This host cannot tell its values for these features: keep the guest's only where
        # the vCPU kept its features (else nothing is known).
        kept = features == guest.features
        return GuestState(
            registers=dict(sorted(after.items())), features=features, cpreg_list=dest_list,
            id_registers=guest.id_registers if kept else None,
            cache_geometry=guest.cache_geometry if kept else None, sve_lengths=sve_lengths)
    return GuestState(
        registers=dict(sorted(after.items())),
        features=features,
        cpreg_list=dest_list,
        id_registers=merged(guest.id_registers, dest_values.id_registers),
        cache_geometry=merged(guest.cache_geometry, dest_values.cache_geometry),
        sve_lengths=sve_lengths,
    )
