"""The decision engine against every rule of docs/design.md (accepted values, migrated list, ID
registers and cache geometry)."""

from __future__ import annotations

import pytest

from psci_hook import registers as regs
from psci_hook.engine import (
    GuestState,
    candidate_values,
    decide,
    judge_firmware_value,
    predict_value,
    psci_versions_known,
)
from psci_hook.profile import HostProfile
from tests.helpers import fw, make_profile

PSCI = regs.PSCI_VERSION.reg_id
WA1 = regs.SMCCC_ARCH_WORKAROUND_1.reg_id
WA2 = regs.SMCCC_ARCH_WORKAROUND_2.reg_id
WA3 = regs.SMCCC_ARCH_WORKAROUND_3.reg_id
STD = regs.STD_BMAP.reg_id
VENDOR = regs.VENDOR_HYP_BMAP.reg_id
BMAP2 = regs.VENDOR_HYP_BMAP_2.reg_id
TCR2 = regs.SYSREG_BY_NAME["TCR2_EL1"]
OSLSR = regs.SYSREG_BY_NAME["OSLSR_EL1"]
V = regs.psci_value


def dest(release: str = "6.12.0", **values: int) -> HostProfile:
    return make_profile(release, fw(**values))


# ---------------------------------------------------------------------------------------------
# PSCI_VERSION (docs/design.md#psci-version): the kernel accepts only versions it implements.
# ---------------------------------------------------------------------------------------------

PSCI_CASES = [
    # destination default, guest value, accepted
    *[(V(1, 0), g, g in (V(0, 2), V(1, 0))) for g in
      (V(0, 1), V(0, 2), V(1, 0), V(1, 1), V(1, 2), V(1, 3))],
    *[(V(1, 1), g, g in (V(0, 2), V(1, 0), V(1, 1))) for g in
      (V(0, 1), V(0, 2), V(1, 0), V(1, 1), V(1, 2), V(1, 3))],
    *[(V(1, 3), g, g in (V(0, 2), V(1, 0), V(1, 1), V(1, 2), V(1, 3))) for g in
      (V(0, 1), V(0, 2), V(1, 0), V(1, 1), V(1, 2), V(1, 3), V(2, 0))],
]


@pytest.mark.parametrize(("default", "guest", "accepted"), PSCI_CASES)
def test_psci_version_against_each_destination(default: int, guest: int, accepted: bool) -> None:
    judgement = judge_firmware_value(PSCI, guest, dest(PSCI_VERSION=default))
    assert judgement.accepted is accepted
    assert judgement.code == ("ACCEPTED" if accepted else "PSCI_UNSUPPORTED")


@pytest.mark.parametrize("default", [V(1, 0), V(1, 1), V(1, 3)])
def test_a_psci_0_1_vcpu_takes_0_1_and_nothing_else(default: int) -> None:
    """kvm_arm_set_fw_reg: a vCPU without KVM_ARM_VCPU_PSCI_0_2 (QEMU's kvm-psci-version=0.1)
    takes 0.1 whatever the kernel's default; PSCI_CASES above are vCPUs with the feature."""
    for guest in (V(0, 1), V(0, 2), V(1, 0), V(1, 1), V(1, 3)):
        judgement = judge_firmware_value(PSCI, guest, dest(PSCI_VERSION=default),
                                         psci_0_1_vcpu=True)
        assert judgement.accepted is (guest == V(0, 1)), guest


@pytest.mark.parametrize(("vcpu_0_1", "guest", "judgement"), [
    (True, V(0, 1), ("ACCEPTED", "a vCPU created for PSCI 0.1 (kvm-psci-version=0.1) takes it "
                                 "on every kernel")),
    (True, V(1, 0), ("PSCI_UNSUPPORTED", "the destination's vCPU is created for PSCI 0.1 "
                                         "(kvm-psci-version=0.1 in its domain XML), which takes "
                                         "no other version")),
    (False, V(0, 1), ("PSCI_UNSUPPORTED", "PSCI 0.1 loads only into a vCPU created for it, and "
                                          "the destination's domain XML does not set "
                                          "kvm-psci-version=0.1")),
])
def test_each_psci_0_1_judgement_says_why_in_its_own_words(vcpu_0_1: bool, guest: int,
                                                          judgement: tuple[str, str]) -> None:
    """The reason is the finding's line in the veto libvirt shows and in the event."""
    got = judge_firmware_value(PSCI, guest, dest(PSCI_VERSION=V(1, 1)), psci_0_1_vcpu=vcpu_0_1)
    assert (got.code, got.reason) == judgement


def test_psci_known_versions_follow_the_default() -> None:
    assert psci_versions_known(V(1, 1)) == [V(0, 2), V(1, 0), V(1, 1)]
    assert psci_versions_known(V(1, 3))[-1] == V(1, 3)


# ---------------------------------------------------------------------------------------------
# WORKAROUND_1 and _3 (docs/design.md#workaround-levels): a pure check, destination level >=
# guest value.
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("reg", [WA1, WA3])
@pytest.mark.parametrize("guest", [0, 1, 2])
@pytest.mark.parametrize("level", [0, 1, 2])
def test_wa1_wa3_every_level_pair(reg: int, guest: int, level: int) -> None:
    name = regs.FW_BY_ID[reg].name
    judgement = judge_firmware_value(reg, guest, dest(**{name: level}))
    assert judgement.accepted is (guest <= level)
    assert judgement.code == ("ACCEPTED" if guest <= level else "WA_LEVEL_TOO_HIGH")


@pytest.mark.parametrize("value", [0x10, 0x12, 0x100, 1 << 63])
def test_wa1_bits_outside_the_level_are_invalid(value: int) -> None:
    judgement = judge_firmware_value(WA1, value, dest(SMCCC_ARCH_WORKAROUND_1=2))
    assert (judgement.accepted, judgement.code) == (False, "WA_INVALID_VALUE")


def test_wa1_levels_above_the_scale_are_refused() -> None:
    assert judge_firmware_value(WA1, 3, dest(SMCCC_ARCH_WORKAROUND_1=2)).accepted is False


# ---------------------------------------------------------------------------------------------
# WORKAROUND_2 (docs/design.md#workaround-2): 5.10+ narrows to NOT_AVAIL / NOT_REQUIRED; 5.3-5.9
# compares levels.
# ---------------------------------------------------------------------------------------------


def _mapped(value: int) -> int:
    return 0 if value & 0xF <= 1 else 3


@pytest.mark.parametrize("guest", [0, 1, 2, 3, 0x12])
@pytest.mark.parametrize("level", [0, 3])
def test_wa2_narrowed_on_5_10_and_later(guest: int, level: int) -> None:
    judgement = judge_firmware_value(WA2, guest, dest("5.10.0-32-arm64",
                                                      SMCCC_ARCH_WORKAROUND_2=level))
    assert judgement.accepted is (_mapped(guest) <= level)
    assert judgement.inferred  # levels 0 and 3 exist in both eras: the release decides


@pytest.mark.parametrize("guest", [0, 1, 2, 3, 0x12])
@pytest.mark.parametrize("level", [0, 1, 2, 3])
def test_wa2_compared_as_is_on_5_3_to_5_9(guest: int, level: int) -> None:
    judgement = judge_firmware_value(WA2, guest, dest("5.4.0-100-generic",
                                                      SMCCC_ARCH_WORKAROUND_2=level))
    assert judgement.accepted is ((guest & 0xF) <= level)


def test_wa2_old_encoding_is_read_from_the_profile_not_the_release() -> None:
    # AVAIL (2) is never reported by a 5.10+ kernel: the profile proves the 5.3-5.9 handling.
    judgement = judge_firmware_value(WA2, 3, dest("9.9.9-odd", SMCCC_ARCH_WORKAROUND_2=2))
    assert (judgement.accepted, judgement.inferred) == (False, False)


@pytest.mark.parametrize("guest", [0, 1, 3])
def test_wa2_of_a_release_without_a_version_is_narrowed_by_inference(guest: int) -> None:
    """A release that does not start with X.Y (a custom kernel) and a level both eras report:
    taken for the current handling (5.10+, narrowed), said to be inferred."""
    judgement = judge_firmware_value(WA2, guest, dest("custom-kernel",
                                                      SMCCC_ARCH_WORKAROUND_2=0))
    assert (judgement.accepted, judgement.inferred) == (_mapped(guest) == 0, True)


@pytest.mark.parametrize("value", [0x10, 0x11, 0x13, 0x20, 0x32])
@pytest.mark.parametrize("release", ["5.4.0", "6.1.0"])
def test_wa2_enabled_only_with_avail_and_no_other_bits(value: int, release: str) -> None:
    judgement = judge_firmware_value(WA2, value, dest(release, SMCCC_ARCH_WORKAROUND_2=3))
    assert (judgement.accepted, judgement.code) == (False, "WA_INVALID_VALUE")


def test_wa2_enabled_with_avail_is_accepted_where_the_level_allows() -> None:
    assert judge_firmware_value(WA2, 0x12, dest("5.4.0", SMCCC_ARCH_WORKAROUND_2=2)).accepted
    assert judge_firmware_value(WA2, 0x12, dest("6.1.0", SMCCC_ARCH_WORKAROUND_2=3)).accepted


def test_wa2_levels_above_not_required_are_invalid_on_5_10_plus() -> None:
    judgement = judge_firmware_value(WA2, 4, dest("6.1.0", SMCCC_ARCH_WORKAROUND_2=3))
    assert (judgement.accepted, judgement.code) == (False, "WA_INVALID_VALUE")


# ---------------------------------------------------------------------------------------------
# Bitmaps (docs/design.md#bitmaps): a subset of the destination's supported bits.
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("guest", "supported", "accepted"), [
    (0x0, 0x3, True), (0x1, 0x3, True), (0x2, 0x3, True), (0x3, 0x3, True),
    (0x3, 0x1, False), (0x4, 0x7, True), (0x8, 0x7, False),
])
def test_bitmap_subsets(guest: int, supported: int, accepted: bool) -> None:
    judgement = judge_firmware_value(VENDOR, guest, dest(VENDOR_HYP_BMAP=supported))
    assert judgement.accepted is accepted
    assert judgement.code == ("ACCEPTED" if accepted else "BITMAP_UNSUPPORTED")


@pytest.mark.parametrize(("guest", "accepted"), [(0, True), (1, True), (3, True), (4, False)])
def test_vendor_hyp_bmap_2_supports_bits_0_and_1_although_it_resets_to_0(
        guest: int, accepted: bool) -> None:
    assert judge_firmware_value(BMAP2, guest, dest(VENDOR_HYP_BMAP_2=0)).accepted is accepted


@pytest.mark.parametrize("reg", [STD, VENDOR, regs.STD_HYP_BMAP.reg_id])
def test_a_bitmap_bit_0_the_destination_lacks_is_refused(reg: int) -> None:
    """Only VENDOR_HYP_BMAP_2 has bits the kernel accepts beyond its own value; every other
    bitmap's bit 0 counts like any other."""
    name = regs.FW_BY_ID[reg].name
    judgement = judge_firmware_value(reg, 0x1, dest(**{name: 0x2}))
    assert (judgement.accepted, judgement.reason) == (
        False, "bits 0x1 are not implemented by the destination kernel (it supports 0x2)")


def test_unknown_firmware_register_is_unverified() -> None:
    unknown = regs.fw_reg_id(9)
    profile = make_profile("6.12.0", {**fw(PSCI_VERSION=V(1, 1)), unknown: 5})
    judgement = judge_firmware_value(unknown, 5, profile)
    assert (judgement.accepted, judgement.code) == (None, "FW_UNVERIFIED")
    assert predict_value(unknown, 5, profile) is None
    assert predict_value(WA3, 0, profile) is False  # not listed: ENOENT


def test_candidate_values_cover_every_register_kind() -> None:
    for reg in regs.FIRMWARE_REGISTERS:
        assert candidate_values(reg.reg_id), reg.name
    assert V(1, 3) in candidate_values(PSCI) and 0x12 in candidate_values(WA2)


# ---------------------------------------------------------------------------------------------
# docs/design.md#migrated-list: the whole list. Count check, merge (missing below the top,
# dropped above), write.
# ---------------------------------------------------------------------------------------------

SYS = [regs.sysreg_id(3, 0, 1, 0, 0), regs.sysreg_id(3, 0, 2, 0, 0), OSLSR]
FW4 = fw(PSCI_VERSION=V(1, 1), SMCCC_ARCH_WORKAROUND_1=2, SMCCC_ARCH_WORKAROUND_2=0,
         SMCCC_ARCH_WORKAROUND_3=1)


def listed(registers: dict[int, int], *others: int) -> tuple[int, ...]:
    return tuple(sorted(set(others) | set(registers)))


def host(release: str, registers: dict[int, int], *others: int) -> HostProfile:
    return make_profile(release, registers, {"pmu": listed(registers, *others)})


def guest_of(profile: HostProfile) -> GuestState:
    return GuestState.booted_on(profile, frozenset({"pmu"}))


def codes(decision: object) -> list[str]:
    return decision.codes  # type: ignore[attr-defined,no-any-return]


def test_count_check_legacy_fails_on_one_register_more() -> None:
    source = host("6.1.0", FW4, *SYS)
    destination = host("6.1.0", FW4, *SYS[:2])
    decision = decide(guest_of(source), destination, "legacy")
    assert decision.vetoed and "CPREG_COUNT" in codes(decision)
    assert "REG_MISSING" in codes(decision)  # OSLSR_EL1 sorts below the firmware registers


def test_count_check_tolerant_allows_ten_anomalies_plus_the_tolerances() -> None:
    extra = [regs.sysreg_id(3, 0, crn, 2, i) for crn in (5, 6, 7) for i in range(1, 8)]
    destination = host("6.1.0", FW4, *SYS)
    within = host("6.1.0", FW4, *SYS, *extra[:14])
    beyond = host("6.1.0", FW4, *SYS, *extra[:15])
    assert "CPREG_COUNT" not in codes(decide(guest_of(within), destination, "tolerant"))
    assert "CPREG_COUNT" in codes(decide(guest_of(beyond), destination, "tolerant"))


def test_legacy_drops_silently_what_sorts_above_the_destinations_last_register() -> None:
    source = host("5.19.0", {**FW4, **fw(STD_BMAP=1)}, *SYS)
    destination = host("5.17.0", FW4, *SYS, regs.sysreg_id(3, 0, 13, 0, 4))  # room for count
    decision = decide(guest_of(source), destination, "legacy")
    dropped = [f for f in decision.findings if f.register == "STD_BMAP"]
    assert [(f.code, f.outcome) for f in dropped] == [("REG_DROPPED", "dropped")]
    assert not decision.vetoed
    assert STD not in decision.guest_after.registers  # not carried


def test_dropped_workaround_above_not_avail_is_vetoed_with_its_own_code() -> None:
    source = host("5.17.0", FW4, *SYS)
    no_wa3 = {k: v for k, v in FW4.items() if k != WA3}
    destination = host("5.4.0", no_wa3, *SYS, regs.sysreg_id(3, 0, 13, 0, 4))
    decision = decide(guest_of(source), destination, "legacy")
    assert decision.vetoed and codes(decision) == ["WA_DROPPED"]
    relaxed = decide(guest_of(source), destination, "legacy", veto_dropped_workarounds=False)
    assert not relaxed.vetoed and "REG_DROPPED" in codes(relaxed)


def test_dropped_workaround_at_not_avail_is_only_a_warning() -> None:
    source_regs = {**FW4, WA3: 0}
    no_wa3 = {k: v for k, v in FW4.items() if k != WA3}
    decision = decide(guest_of(host("5.17.0", source_regs, *SYS)),
                      host("5.4.0", no_wa3, *SYS, regs.sysreg_id(3, 0, 13, 0, 4)), "legacy")
    assert not decision.vetoed and "REG_DROPPED" in codes(decision)


def test_tolerant_qemu_tolerates_tcr2_and_zero_bmap2_but_nothing_else() -> None:
    destination = host("6.12.0", FW4, *SYS)
    tolerated = host("7.2.0", {**FW4, BMAP2: 0}, *SYS, TCR2)
    decision = decide(guest_of(tolerated), destination, "tolerant")
    assert not decision.vetoed
    assert {f.register for f in decision.findings if f.code == "REG_TOLERATED"} == {
        "TCR2_EL1", "VENDOR_HYP_BMAP_2"}
    nonzero = decide(guest_of(host("7.2.0", {**FW4, BMAP2: 3}, *SYS)), destination, "tolerant")
    assert nonzero.vetoed and "REG_MISSING" in codes(nonzero)
    above = decide(guest_of(host("5.19.0", {**FW4, **fw(STD_BMAP=1)}, *SYS)), destination,
                   "tolerant")
    assert above.vetoed and "REG_MISSING" in codes(above)  # tolerant QEMU drops nothing


def test_destination_default_applies_for_registers_the_source_lacks() -> None:
    source = host("5.10.0", FW4, *SYS)
    destination = host("6.1.0", {**FW4, **fw(STD_BMAP=1)}, *SYS)
    decision = decide(guest_of(source), destination, "legacy")
    default = [f for f in decision.findings if f.register == "STD_BMAP"]
    assert [(f.code, f.outcome) for f in default] == [("DEST_DEFAULT", "destination-default")]
    assert decision.guest_after.registers[STD] == 1


def test_guest_after_keeps_psci_and_bitmaps_and_takes_the_destinations_workarounds() -> None:
    source = host("6.1.0", {**FW4, **fw(VENDOR_HYP_BMAP=1)}, *SYS)
    dest_regs = {**FW4, **fw(PSCI_VERSION=V(1, 3), SMCCC_ARCH_WORKAROUND_1=2,
                             SMCCC_ARCH_WORKAROUND_3=2, VENDOR_HYP_BMAP=3)}
    destination = host("6.13.0", dest_regs, *SYS)
    decision = decide(guest_of(source), destination, "legacy")
    after = decision.guest_after.registers
    assert after[PSCI] == V(1, 1) and after[VENDOR] == 1  # kept for life
    assert after[WA3] == 2  # GET returns the new host's level
    assert decision.one_way and "WA_RATCHET" in codes(decision)
    assert decision.guest_after.cpreg_list == destination.cpreg_list(frozenset({"pmu"}))


def test_a_vcpu_feature_the_destination_lacks_is_vetoed() -> None:
    source = make_profile("6.1.0", FW4, {"pmu+pauth": listed(FW4, *SYS)})
    destination = make_profile("6.1.0", FW4, {"pmu": listed(FW4, *SYS)})
    decision = decide(GuestState.booted_on(source), destination, "legacy")
    assert decision.vetoed and "FEATURE_MISSING" in codes(decision)


def test_firmware_only_profiles_say_what_was_not_compared() -> None:
    decision = decide(GuestState(registers=FW4), make_profile("6.1.0", FW4), "legacy")
    assert not decision.vetoed and not decision.lists_compared
    (not_compared,) = [f for f in decision.findings if f.code == "LISTS_NOT_COMPARED"]
    assert not_compared.to_dict()["outcome"] == "not-compared"  # what check --json shows
    assert all(f.outcome != "count-check" for f in decision.findings)


def test_firmware_only_merge_is_still_exact() -> None:
    no_wa3 = {k: v for k, v in FW4.items() if k != WA3}
    decision = decide(GuestState(registers=FW4), make_profile("5.4.0", no_wa3), "legacy")
    assert codes(decision) == ["WA_DROPPED"]


# ---------------------------------------------------------------------------------------------
# docs/design.md#id-registers and #cache-geometry.
# ---------------------------------------------------------------------------------------------


def _with_ids(profile: HostProfile, mmfr1: int, ccsidr0: int) -> HostProfile:
    return profile._replace(id_registers={"ID_AA64MMFR1_EL1": mmfr1},
                               cache_geometry={"CCSIDR_0": ccsidr0})


@pytest.mark.parametrize(("release", "code", "vetoed"), [
    ("6.1.0-26-arm64", "ID_REG_MISMATCH", True),
    ("6.12.118+deb13-arm64", "ID_REG_UNVERIFIED", False),
])
def test_differing_id_registers(release: str, code: str, vetoed: bool) -> None:
    mmfr1 = regs.SYSREG_BY_NAME["ID_AA64MMFR1_EL1"]
    source = _with_ids(host("6.1.0", FW4, mmfr1, regs.ccsidr_id(0)), 0x1010211122, 2)
    destination = _with_ids(host(release, FW4, mmfr1, regs.ccsidr_id(0)), 0x11010211122, 2)
    decision = decide(guest_of(source), destination, "legacy")
    finding = next(f for f in decision.findings if f.register == "ID_AA64MMFR1_EL1")
    assert finding.code == code and finding.inferred and "HCX" in finding.message
    assert decision.vetoed is vetoed


def test_equal_id_registers_and_differing_cache_geometry() -> None:
    mmfr1 = regs.SYSREG_BY_NAME["ID_AA64MMFR1_EL1"]
    source = _with_ids(host("6.12.0", FW4, mmfr1, regs.ccsidr_id(0)), 5, 0x2)
    destination = _with_ids(host("5.10.0", FW4, mmfr1, regs.ccsidr_id(0)), 5, 0x701FE00A)
    decision = decide(guest_of(source), destination, "legacy")
    assert [f.code for f in decision.findings if f.register in ("ID_AA64MMFR1_EL1", "CCSIDR_0")
            ] == ["CACHE_MISMATCH"]


# ---------------------------------------------------------------------------------------------
# Real kernels: the list-level verdicts (legacy QEMU, docs/design.md#list-sizes) and the value
# failures of real QEMU (docs/design.md#real-migrations), from the measured profiles.
# ---------------------------------------------------------------------------------------------

LIST_CODES = {"CPREG_COUNT", "REG_MISSING"}
# (source, destination) -> list-level verdict, qemu-default features (identical for max, a57).
QEMU_DEFAULT_LEGACY = {
    ("5.10", "6.1"): True, ("5.10", "6.12"): True, ("6.1", "6.12"): True,
    ("6.1", "5.10"): False, ("6.12", "5.10"): False, ("6.12", "6.1"): False,
}


@pytest.mark.parametrize("cpu", ["max", "a57"])
@pytest.mark.parametrize(("pair", "ok"), QEMU_DEFAULT_LEGACY.items())
def test_list_verdicts_match_real_kernels(bundled: dict[str, HostProfile], cpu: str,
                                          pair: tuple[str, str], ok: bool) -> None:
    source, destination = (bundled[f"{k}__{cpu}"] for k in pair)
    decision = decide(GuestState.booted_on(source), destination, "legacy")
    assert (not LIST_CODES & set(decision.codes)) is ok


@pytest.mark.parametrize("cpu", ["max", "a57"])
@pytest.mark.parametrize("destination", ["6.1", "6.12"])
def test_5_10_lists_pmu_registers_without_pmu_so_psci_only_guests_cannot_leave(
        bundled: dict[str, HostProfile], cpu: str, destination: str) -> None:
    decision = decide(GuestState.booted_on(bundled[f"5.10__{cpu}"], frozenset()),
                      bundled[f"{destination}__{cpu}"], "legacy")
    assert "CPREG_COUNT" in decision.codes


def test_value_failures_seen_by_real_qemu(bundled: dict[str, HostProfile]) -> None:
    # 5.10 -> 6.1 on max: SMCCC_ARCH_WORKAROUND_3 = 2 (own 0).
    d = decide(GuestState.booted_on(bundled["5.10__max"]), bundled["6.1__max"], "legacy")
    rejected = [f for f in d.findings if f.outcome == "rejected"]
    assert [(f.register, f.guest_value, f.destination_value) for f in rejected] == [
        ("SMCCC_ARCH_WORKAROUND_3", 2, 0)]
    # 6.1 -> 5.10: PSCI_VERSION = 1.1 is refused (among the list failures).
    d = decide(GuestState.booted_on(bundled["6.1__max"]), bundled["5.10__max"], "legacy")
    assert any(f.code == "PSCI_UNSUPPORTED" and f.guest_value == V(1, 1) for f in d.findings)


def _kernel_7_2(k612: HostProfile) -> HostProfile:
    """7.2's list is 6.12's without TCR2/PIRE0/PIR and with VENDOR_HYP_BMAP_2 (measured
    counts 269 -> 267), and its PSCI default is 1.3."""
    hidden = {regs.SYSREG_BY_NAME[n] for n in ("TCR2_EL1", "PIRE0_EL1", "PIR_EL1")}
    registers = {**k612.registers, PSCI: V(1, 3), BMAP2: 0}
    lists = {k: tuple(sorted((set(ids) - hidden) | {BMAP2}))
             for k, ids in (k612.cpreg_lists or {}).items()}
    return k612._replace(kernel_release="7.2.13+deb14-arm64", registers=registers,
                               cpreg_lists=lists)


def test_section_9_consequences_between_6_12_and_7_2(bundled: dict[str, HostProfile]) -> None:
    k612 = bundled["6.12__max"]
    k72 = _kernel_7_2(k612)
    assert len(k72.cpreg_lists["pmu+pauth+sve"]) == 267  # type: ignore[index]
    # 7.2 -> 6.12: the lists pass on both generations (BMAP_2 dropped / tolerated) ...
    legacy = decide(GuestState.booted_on(k72), k612, "legacy")
    tolerant = decide(GuestState.booted_on(k72), k612, "tolerant")
    assert not LIST_CODES & set(legacy.codes) and not LIST_CODES & set(tolerant.codes)
    assert "REG_DROPPED" in legacy.codes and "REG_TOLERATED" in tolerant.codes
    # ... and PSCI 1.3 is what fails, as real QEMU saw.
    assert legacy.blocking[0].code == "PSCI_UNSUPPORTED"
    # 6.12 -> 7.2 fails on legacy QEMU (269 > 267) and passes on tolerant QEMU.
    assert "CPREG_COUNT" in decide(GuestState.booted_on(k612), k72, "legacy").codes
    assert not decide(GuestState.booted_on(k612), k72, "tolerant").vetoed


def test_unknown_generation_is_an_error(bundled: dict[str, HostProfile]) -> None:
    with pytest.raises(ValueError, match=r"^unknown QEMU generation 'newest'$"):
        decide(GuestState.booted_on(bundled["6.1__a57"]), bundled["6.1__a57"], "newest")


def test_decision_json_shape(bundled: dict[str, HostProfile]) -> None:
    d = decide(GuestState.booted_on(bundled["6.1__max"]), bundled["5.10__max"], "legacy")
    out = d.to_dict()
    assert out["verdict"] == "veto"
    assert {"register", "outcome", "code", "message"} <= set(out["findings"][0])
    psci = next(f for f in out["findings"] if f["register"] == "PSCI_VERSION")
    assert (psci["guest"], psci["destination"]) == ("1.1", "1.0")
    assert out["guest_after"]["registers"]["PSCI_VERSION"] == V(1, 1)


def test_a_finding_in_json_names_register_values_severity_and_inference() -> None:
    """What `check --json` prints for each finding (Decision.to_dict)."""
    guest = GuestState(registers=fw(PSCI_VERSION=V(1, 0), SMCCC_ARCH_WORKAROUND_2=1))
    decision = decide(guest, make_profile("5.4.0", fw(PSCI_VERSION=V(1, 0),
                                                      SMCCC_ARCH_WORKAROUND_2=0)), "legacy")
    findings = {f["code"]: f for f in decision.to_dict()["findings"]}
    assert findings["WA_LEVEL_TOO_HIGH"] == {
        "code": "WA_LEVEL_TOO_HIGH", "outcome": "rejected", "severity": "blocking",
        "register": "SMCCC_ARCH_WORKAROUND_2",
        "message": "the guest's SMCCC_ARCH_WORKAROUND_2 is UNKNOWN but the destination has "
        "NOT_AVAIL: KVM refuses a level above the destination host's own; WORKAROUND_2 "
        "handling of a 5.3-5.9 (levels compared as they are) kernel, inferred from kernel "
        "release 5.4.0.",
        "id": "0x6030000000140002", "guest_value": 1, "guest": "UNKNOWN",
        "destination_value": 0, "destination": "NOT_AVAIL", "inferred": True}
    # A finding of no register, from the profiles' facts: no id, values nor inference.
    assert findings["LISTS_NOT_COMPARED"] == {
        "code": "LISTS_NOT_COMPARED", "outcome": "not-compared", "severity": "info",
        "register": None, "message": "no migrated register list on either side: only the "
        "firmware registers were compared; the count check and the other registers were not."}


@pytest.mark.parametrize(("release", "refused"), [("6.1.0", ["CCSIDR_0", "CCSIDR_1"]),
                                                  ("6.7.0", ["CCSIDR_0"])])
def test_a_cache_finding_in_json_names_the_register_and_both_values(release: str,
                                                                    refused: list[str]) -> None:
    """Before 6.3 any other geometry is refused; from 6.3 a smaller line size is, and the
    rest is left to the rehearsal (arch/arm64/kvm/sys_regs.c set_ccsidr)."""
    guest = GuestState(registers={}, cache_geometry={"CCSIDR_0": 2, "CCSIDR_1": 3})
    decision = decide(guest, make_profile(release, {}, cache_geometry={"CCSIDR_0": 3,
                                                                       "CCSIDR_1": 2}), "legacy")
    found = [{k: v for k, v in f.to_dict().items() if k != "message"}
             for f in decision.findings if f.code.startswith("CACHE_")]

    def expected(name: str, reg_id: str, g: int, d: int) -> dict[str, object]:
        judged = (("CACHE_MISMATCH", "rejected", "blocking") if name in refused
                  else ("CACHE_UNVERIFIED", "unverified", "warning"))
        return {**dict(zip(("code", "outcome", "severity"), judged)), "register": name,
                "id": reg_id, "guest_value": g, "guest": f"0x{g:x}", "destination_value": d,
                "destination": f"0x{d:x}", "inferred": True}

    assert found == [expected("CCSIDR_0", "0x6020000000110000", 2, 3),
                     expected("CCSIDR_1", "0x6020000000110001", 3, 2)]


@pytest.mark.parametrize(("release", "code", "outcome", "severity"), [
    ("6.1.0", "ID_REG_MISMATCH", "rejected", "blocking"),
    ("6.7.0", "ID_REG_UNVERIFIED", "unverified", "warning"),
])
def test_id_register_findings_in_json_come_in_register_order(release: str, code: str,
                                                             outcome: str, severity: str) -> None:
    """In the order KVM lists the registers (by id: ID_DFR0_EL1 before ID_AA64MMFR1_EL1), so
    the veto line names the first one the destination's QEMU would meet."""
    guest = GuestState(registers={}, id_registers={"ID_AA64MMFR1_EL1": 0x1010211122,
                                                   "ID_DFR0_EL1": 0x10009})
    destination = make_profile(release, {}, id_registers={"ID_AA64MMFR1_EL1": 0x11010211122,
                                                          "ID_DFR0_EL1": 0x6010008})
    found = [f.to_dict() for f in decide(guest, destination, "legacy").findings
             if f.code.startswith("ID_REG_")]
    messages = [f.pop("message") for f in found]
    assert messages[0].startswith(
        "ID_DFR0_EL1 differs in CopDbg, PerfMon (guest 0x10009, destination 0x6010008); ")
    assert found == [
        {"code": code, "outcome": outcome, "severity": severity, "register": "ID_DFR0_EL1",
         "id": "0x603000000013c00a", "guest_value": 0x10009, "guest": "0x10009",
         "destination_value": 0x6010008, "destination": "0x6010008", "inferred": True},
        {"code": code, "outcome": outcome, "severity": severity, "register": "ID_AA64MMFR1_EL1",
         "id": "0x603000000013c039", "guest_value": 0x1010211122, "guest": "0x1010211122",
         "destination_value": 0x11010211122, "destination": "0x11010211122", "inferred": True}]


def test_id_values_of_a_register_only_the_source_lists_are_not_judged() -> None:
    """Compared: the registers in both lists, not in either (the destination never sets one it
    does not list)."""
    mmfr1 = regs.SYSREG_BY_NAME["ID_AA64MMFR1_EL1"]
    guest = GuestState(registers=fw(PSCI_VERSION=V(1, 0)), cpreg_list=(PSCI, mmfr1),
                       id_registers={"ID_AA64MMFR1_EL1": 0x1010211122})
    destination = make_profile("6.1.0", fw(PSCI_VERSION=V(1, 0)), {"none": (PSCI,)},
                               id_registers={"ID_AA64MMFR1_EL1": 0x11010211122})
    decision = decide(guest, destination, "tolerant")
    assert decision.lists_compared
    assert not [f for f in decision.findings if f.code.startswith("ID_REG")]


def test_without_lists_every_id_value_both_sides_have_is_judged() -> None:
    """A guest whose record carries no migrated list: its ID values are still compared with
    the destination's, all of them (docs/design.md#id-registers)."""
    guest = GuestState(registers=fw(PSCI_VERSION=V(1, 0)),
                       id_registers={"ID_AA64MMFR1_EL1": 0x1010211122})
    destination = make_profile("6.1.0", fw(PSCI_VERSION=V(1, 0)),
                               id_registers={"ID_AA64MMFR1_EL1": 0x11010211122})
    decision = decide(guest, destination, "legacy")
    assert not decision.lists_compared
    assert [(f.code, f.register) for f in decision.findings if f.code.startswith("ID_REG")] == [
        ("ID_REG_MISMATCH", "ID_AA64MMFR1_EL1")]


@pytest.mark.parametrize("sent", [False, True])
def test_id_and_cache_values_count_only_for_registers_both_lists_carry(sent: bool) -> None:
    """A register the source does not send, or the destination does not list, is never set
    on the destination: its value cannot be refused (docs/design.md#id-registers)."""
    mmfr1 = regs.SYSREG_BY_NAME["ID_AA64MMFR1_EL1"]
    ccsidr0 = regs.cache_geometry_id("CCSIDR_0")
    listed = tuple(sorted([PSCI, *((mmfr1, ccsidr0) if sent else ())]))
    guest = GuestState(registers=fw(PSCI_VERSION=V(1, 0)), cpreg_list=listed,
                       id_registers={"ID_AA64MMFR1_EL1": 0x1010211122},
                       cache_geometry={"CCSIDR_0": 2})
    destination = make_profile("6.1.0", fw(PSCI_VERSION=V(1, 0)), {"none": listed},
                               id_registers={"ID_AA64MMFR1_EL1": 0x11010211122},
                               cache_geometry={"CCSIDR_0": 3})
    decision = decide(guest, destination, "legacy")
    assert decision.lists_compared
    assert [f.register for f in decision.findings if f.code.endswith("_MISMATCH")] == (
        ["ID_AA64MMFR1_EL1", "CCSIDR_0"] if sent else [])


@pytest.mark.parametrize(("value", "code", "outcome", "severity", "shown"), [
    (0, "REG_TOLERATED", "tolerated", "warning", "0x0 (none)"),
    (1, "REG_MISSING", "missing-on-destination", "blocking", "0x1 (DISCOVER_IMPL_VER)"),
])
def test_a_register_tolerant_qemu_meets_unlisted_is_named_with_the_value_sent(
        value: int, code: str, outcome: str, severity: str, shown: str) -> None:
    """VENDOR_HYP_BMAP_2 is tolerated only while its value is 0 (tolerant QEMU)."""
    guest = GuestState(registers=fw(PSCI_VERSION=V(1, 0), VENDOR_HYP_BMAP_2=value))
    decision = decide(guest, make_profile("6.1.0", fw(PSCI_VERSION=V(1, 0))), "tolerant")
    (found,) = [f.to_dict() for f in decision.findings if f.code.startswith("REG_")]
    del found["message"]
    assert found == {"code": code, "outcome": outcome, "severity": severity,
                     "register": "VENDOR_HYP_BMAP_2", "id": "0x6030000000160003",
                     "guest_value": value, "guest": shown}


def test_registers_legacy_qemu_meets_unlisted_are_named_with_the_value_sent() -> None:
    """Below the destination's last register legacy QEMU fails the load; above it, it drops
    the register silently (a workaround the guest relies on: vetoed)."""
    guest = GuestState(registers=fw(PSCI_VERSION=V(1, 0), SMCCC_ARCH_WORKAROUND_1=1,
                                    SMCCC_ARCH_WORKAROUND_3=1, STD_BMAP=1))
    destination = make_profile("6.1.0", fw(PSCI_VERSION=V(1, 0), SMCCC_ARCH_WORKAROUND_2=0))
    found = [f.to_dict() for f in decide(guest, destination, "legacy").findings
             if f.code in ("REG_MISSING", "WA_DROPPED", "REG_DROPPED")]
    for f in found:
        del f["message"]
    assert found == [
        {"code": "REG_MISSING", "outcome": "missing-on-destination", "severity": "blocking",
         "register": "SMCCC_ARCH_WORKAROUND_1", "id": "0x6030000000140001", "guest_value": 1,
         "guest": "AVAIL"},
        {"code": "WA_DROPPED", "outcome": "dropped", "severity": "blocking",
         "register": "SMCCC_ARCH_WORKAROUND_3", "id": "0x6030000000140003", "guest_value": 1,
         "guest": "AVAIL"},
        {"code": "REG_DROPPED", "outcome": "dropped", "severity": "warning",
         "register": "STD_BMAP", "id": "0x6030000000160000", "guest_value": 1,
         "guest": "0x1 (TRNG_V1_0)"}]


def test_registers_only_the_destination_lists_take_its_values_named_in_json() -> None:
    """A firmware register: the destination's default, with its value; another register: its
    reset value, which no profile holds."""
    guest = GuestState(registers=fw(PSCI_VERSION=V(1, 0)), cpreg_list=(PSCI,))
    destination = make_profile("6.1.0", fw(PSCI_VERSION=V(1, 0), SMCCC_ARCH_WORKAROUND_2=0),
                               {"none": tuple(sorted((PSCI, WA2, TCR2)))})
    found = [f.to_dict() for f in decide(guest, destination, "legacy").findings
             if f.code.endswith("DEST_DEFAULT")]
    assert found == [
        {"code": "REG_DEST_DEFAULT", "outcome": "destination-default", "severity": "info",
         "register": "TCR2_EL1", "id": regs.format_id(TCR2), "message": "the source does not "
         "send TCR2_EL1; the destination's reset value applies."},
        {"code": "DEST_DEFAULT", "outcome": "destination-default", "severity": "warning",
         "register": "SMCCC_ARCH_WORKAROUND_2", "id": "0x6030000000140002", "message": "the "
         "source does not send SMCCC_ARCH_WORKAROUND_2; the destination's default (NOT_AVAIL) "
         "applies to the guest from now on.", "destination_value": 0,
         "destination": "NOT_AVAIL"}]


WA_LEVELS = {0: "NOT_AVAIL", 1: "UNKNOWN", 2: "AVAIL", 3: "NOT_REQUIRED"}


@pytest.mark.parametrize(("release", "own", "guest", "code", "message"), [
    ("6.1.0", 0, 1, "ACCEPTED", "SMCCC_ARCH_WORKAROUND_2 = UNKNOWN is accepted (the "
     "destination's level is sufficient; WORKAROUND_2 handling of a 5.10+ (level narrowed to "
     "NOT_AVAIL or NOT_REQUIRED) kernel, inferred from kernel release 6.1.0)."),
    ("6.1.0", 0, 2, "WA_LEVEL_TOO_HIGH", "the guest's SMCCC_ARCH_WORKAROUND_2 is AVAIL but the "
     "destination has NOT_AVAIL: KVM refuses a level above the destination host's own; "
     "WORKAROUND_2 handling of a 5.10+ (level narrowed to NOT_AVAIL or NOT_REQUIRED) kernel, "
     "inferred from kernel release 6.1.0."),
    ("5.4.0", 3, 3, "ACCEPTED", "SMCCC_ARCH_WORKAROUND_2 = NOT_REQUIRED is accepted (the "
     "destination's level is sufficient; WORKAROUND_2 handling of a 5.3-5.9 (levels compared "
     "as they are) kernel, inferred from kernel release 5.4.0)."),
])
def test_a_wa2_judgement_from_the_release_says_so_in_json(release: str, own: int, guest: int,
                                                          code: str, message: str) -> None:
    """Levels 0 and 3 exist in both eras: the kernel release decides, and the finding is
    marked inferred."""
    decision = decide(GuestState(registers=fw(PSCI_VERSION=V(1, 0),
                                              SMCCC_ARCH_WORKAROUND_2=guest)),
                      dest(release, PSCI_VERSION=V(1, 0), SMCCC_ARCH_WORKAROUND_2=own), "legacy")
    (found,) = [f.to_dict() for f in decision.findings if f.reg_id == WA2]
    assert found == {
        "code": code, "outcome": "accepted" if code == "ACCEPTED" else "rejected",
        "severity": "info" if code == "ACCEPTED" else "blocking",
        "register": "SMCCC_ARCH_WORKAROUND_2", "message": message, "id": "0x6030000000140002",
        "guest_value": guest, "guest": WA_LEVELS[guest], "destination_value": own,
        "destination": WA_LEVELS[own], "inferred": True}


def test_a_firmware_register_this_release_does_not_know_is_unverified_not_judged() -> None:
    """A register a newer kernel lists under an id the catalogue lacks (a profile names it by
    its hex id): its value cannot be judged offline."""
    unknown = 0x6030000000160009
    decision = decide(GuestState(registers={unknown: 5}), make_profile("6.1.0", {unknown: 7}),
                      "legacy")
    (found,) = [f.to_dict() for f in decision.findings if f.reg_id == unknown]
    assert found == {
        "code": "FW_UNVERIFIED", "outcome": "unverified", "severity": "warning",
        "register": "0x6030000000160009", "message": "0x6030000000160009 = 0x5: "
        "0x6030000000160009 is not known to this version of psci-hook; its value cannot be "
        "judged offline.", "id": "0x6030000000160009", "guest_value": 5, "guest": "0x5",
        "destination_value": 7, "destination": "0x7"}
