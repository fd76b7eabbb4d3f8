"""32-bit guests and SVE vector lengths: the vCPUs QEMU really creates, recorded and checked.

32-bit guests: libvirt runs an arch='armv7l' KVM domain on an arm64 host as -cpu host,aarch64=off
(src/qemu/qemu_command.c; tests/qemuxmlconfdata/aarch64-kvm-32-on-64), and QEMU's
kvm_arch_init_vcpu (target/arm/kvm.c) initialises that vCPU with KVM_ARM_VCPU_EL1_32BIT.
SVE vector lengths: QEMU gives an SVE vCPU its lengths when it creates it
(KVM_REG_ARM64_SVE_VLS), from the lengths the domain names and those the host's KVM offers
(target/arm/cpu64.c arm_cpu_sve_finalize), and never migrates them.

The fake KVM (tests/kvmfake.py) stands in for arm64 KVM on this x86 machine; the real kernels
answer in tests/nested.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from psci_hook import kvm
from psci_hook import probe as probe_mod
from psci_hook.domainxml import parse_domain, requested_vcpu, vcpu_request
from psci_hook.engine import GuestState, RequestedVcpu, decide
from psci_hook.environment import Environment
from psci_hook.hook import main as hook_main
from psci_hook.profile import AARCH32, HostProfile, loads_profile
from psci_hook.record import GuestRecord, Origin, RecordError, parse_record, record_element
from psci_hook.rehearsal import values_to_rehearse
from psci_hook.status import ExitStatus
from tests import kvmfake
from tests.hooktools import CollectingSink, profile_file, run_hook_on, stamped, write_config
from tests.test_guest_features import ALL, host, xml

ARMV7L = xml().replace(b"arch='aarch64'", b"arch='armv7l'")
ARMV7L_NO_SVE = xml("<cpu mode='host-passthrough'><feature policy='disable' name='sve'/></cpu>"
                    ).replace(b"arch='aarch64'", b"arch='armv7l'")


def with_aarch32(profile: HostProfile) -> HostProfile:
    """``profile`` with the 32-bit vCPUs the probe reads where KVM has 32-bit EL1."""
    lists = dict(profile.cpreg_lists or {})
    base = lists["none"]
    for key in ("pauth+aarch32", "pmu+pauth+aarch32"):
        lists[key] = base
    values = dict(profile.feature_values or {})
    values.update({"pauth+aarch32": dict(values["pauth"]),
                   "pmu+pauth+aarch32": dict(values["sve"])})
    return profile._replace(cpreg_lists=lists, feature_values=values)


def probed(tmp_path: Path, fake: kvmfake.FakeKvm) -> dict[str, object]:
    boot_id = tmp_path / "boot_id"
    boot_id.write_text("b\n")
    with kvm.Kvm(fake) as handle:
        return probe_mod.probe_host(handle, clock=lambda: 0.0, boot_id_path=boot_id)


# ---------------------------------------------------------------------------------------------
# 32-bit guests
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("data", "supported", "expected"), [
    # -cpu host,aarch64=off: PMU, SVE and pointer auth from the host, plus EL1_32BIT.
    (ARMV7L, ALL, {"aarch32", "pmu", "pauth", "sve"}),
    (ARMV7L_NO_SVE, ALL, {"aarch32", "pmu", "pauth"}),
    (ARMV7L.replace(b"</os>", b"</os><features><pmu state='off'/></features>"), ALL,
     {"aarch32", "pauth", "sve"}),
    # pauth=off does not act without AArch64 (arm_cpu_pauth_finalize is skipped)...
    (xml("<cpu mode='host-passthrough'><feature policy='disable' name='sve'/>"
         "<feature policy='disable' name='pauth'/></cpu>").replace(b"arch='aarch64'",
                                                                   b"arch='armv7l'"),
     ALL, {"aarch32", "pmu", "pauth"}),
    # ... and pauth=on gives nothing the host lacks.
    (xml("<cpu mode='host-passthrough'><feature policy='require' name='pauth'/></cpu>"
         ).replace(b"arch='aarch64'", b"arch='armv7l'"), frozenset({"pmu"}), {"aarch32", "pmu"}),
    # A <qemu:commandline> -cpu replaces libvirt's: its aarch64 property decides.
    (xml(extra="<qemu:commandline><qemu:arg value='-cpu'/><qemu:arg value='host,aarch64=off,"
               "sve=off'/></qemu:commandline>"), ALL, {"aarch32", "pmu", "pauth"}),
    (ARMV7L.replace(b"</domain>", b"<qemu:commandline><qemu:arg value='-cpu'/><qemu:arg "
                    b"value='host'/></qemu:commandline></domain>"), ALL, ALL),
])
def test_the_32_bit_vcpu_qemu_creates(data: bytes, supported: frozenset[str],
                                      expected: set[str]) -> None:
    assert requested_vcpu(parse_domain(data), supported).features == expected


def test_the_probe_reads_32_bit_vcpus_where_kvm_has_32_bit_el1(tmp_path: Path) -> None:
    caps = {**kvmfake.DEFAULT_CAPS, kvm.KVM_CAP_ARM_EL1_32BIT: 1}
    fake = kvmfake.FakeKvm(caps=caps)
    data = probed(tmp_path, fake)
    lists = data["cpreg_lists"]
    assert isinstance(lists, dict)
    # With pointer auth wherever the host has it (pauth=off does not act without AArch64).
    assert list(lists) == ["none", "pmu", "pauth", "sve", "pmu+pauth+sve", "pauth+aarch32",
                           "pmu+pauth+aarch32"]
    inits = [features for _, features in fake.inits]
    assert kvm.vcpu_init_features({AARCH32, "pauth"}) in inits
    assert kvm.vcpu_init_features({AARCH32, "pauth"}) >> kvm.KVM_ARM_VCPU_EL1_32BIT & 1
    assert not any(f >> kvm.KVM_ARM_VCPU_EL1_32BIT & 1 and f >> kvm.KVM_ARM_VCPU_SVE & 1
                   for f in inits)  # QEMU never starts a 32-bit vCPU with SVE
    profile = HostProfile.from_dict(data)
    assert profile.runs_aarch32() is True
    assert profile.default_features() == ALL  # -cpu host stays the 64-bit vCPU
    assert profile.cpreg_list(frozenset({AARCH32, "pmu", "pauth"})) is not None
    assert profile.id_values(frozenset({AARCH32, "pmu", "pauth"})) is not None
    assert data["kvm"]["capabilities"]["el1_32bit"] is True  # type: ignore[index]


def test_without_32_bit_el1_the_probe_says_so(tmp_path: Path) -> None:
    data = probed(tmp_path, kvmfake.FakeKvm())
    assert not any(AARCH32 in key for key in data["cpreg_lists"])  # type: ignore[union-attr]
    assert HostProfile.from_dict(data).runs_aarch32() is False
    old = dict(data, kvm={"preferred_target": "GENERIC_V8"})  # a profile of an older probe
    assert HostProfile.from_dict(old).runs_aarch32() is None


def test_a_32_bit_vcpu_the_kernel_refuses_is_named(tmp_path: Path) -> None:
    caps = {**kvmfake.DEFAULT_CAPS, kvm.KVM_CAP_ARM_EL1_32BIT: 1}
    fake = kvmfake.FakeKvm(caps=caps)
    fake.refuse_init = lambda features: bool(
        features >> kvm.KVM_ARM_VCPU_EL1_32BIT & 1 and features >> kvm.KVM_ARM_VCPU_PMU_V3 & 1)
    data = probed(tmp_path, fake)
    assert list(data["cpreg_lists"])[-1] == "pauth+aarch32"  # type: ignore[arg-type]
    errors = data["kvm"]["feature_errors"]  # type: ignore[index]
    assert list(errors) == ["pmu+pauth+aarch32"]
    assert "KVM_ARM_VCPU_INIT" in errors["pmu+pauth+aarch32"]
    assert "EINVAL" in errors["pmu+pauth+aarch32"]


def test_without_pointer_auth_the_32_bit_vcpus_have_none(tmp_path: Path) -> None:
    caps = {k: v for k, v in kvmfake.DEFAULT_CAPS.items() if k not in (
        kvm.KVM_CAP_ARM_PTRAUTH_ADDRESS, kvm.KVM_CAP_ARM_PTRAUTH_GENERIC, kvm.KVM_CAP_ARM_SVE)}
    data = probed(tmp_path, kvmfake.FakeKvm(caps={**caps, kvm.KVM_CAP_ARM_EL1_32BIT: 1}))
    assert list(data["cpreg_lists"]) == ["none", "pmu", "aarch32", "pmu+aarch32"]  # type: ignore[arg-type]


def test_a_32_bit_guest_on_its_own_host_is_allowed_through_the_hook(tmp_path: Path) -> None:
    profile = with_aarch32(host())
    domain = parse_domain(ARMV7L_NO_SVE)
    features = requested_vcpu(domain, profile.default_features()).features
    assert features == {AARCH32, "pmu", "pauth"}
    guest = GuestState.booted_on(profile, features)
    assert guest.cpreg_list is not None and guest.sve_lengths is None
    decision = decide(guest, profile, vcpu=RequestedVcpu(features))
    assert not decision.vetoed and not [f for f in decision.findings
                                        if f.code.startswith(("FEATURE_", "ID_REG_"))]
    # Across: a 64-bit record on a 32-bit domain is a lost/gained vCPU width, never allowed.
    wrong = decide(GuestState.booted_on(profile, ALL), profile, vcpu=RequestedVcpu(features))
    assert wrong.vetoed and "FEATURE_MISSING" in wrong.codes


def test_a_32_bit_guest_with_sve_cannot_start() -> None:
    """QEMU sets no SVE lengths for a CPU without AArch64, and KVM refuses an empty set."""
    profile = with_aarch32(host())
    features = requested_vcpu(parse_domain(ARMV7L), profile.default_features()).features
    decision = decide(GuestState.booted_on(profile, features - {"sve"}), profile,
                      vcpu=RequestedVcpu(features))
    (finding,) = [f for f in decision.findings if f.code == "FEATURE_MISSING"]
    assert finding.to_dict()["outcome"] == "features"
    assert finding.message == (
        "the domain's 32-bit vCPU (-cpu host,aarch64=off) would get SVE, whose vector lengths "
        "QEMU never sets for a CPU without AArch64 (target/arm/cpu.c "
        "arm_cpu_finalize_features); KVM refuses the empty set (KVM_REG_ARM64_SVE_VLS, EINVAL) "
        "and QEMU cannot create the vCPU: turn SVE off in the domain XML "
        "(<feature policy='disable' name='sve'/>).")
    assert decision.vetoed


def test_a_32_bit_guest_where_the_host_cannot_run_one_says_why(tmp_path: Path) -> None:
    """The event's reason, exactly, for each way a host cannot check a 32-bit guest: no 32-bit
    EL1, every 32-bit vCPU refused, or a profile from before the probe tried one."""
    guest = "type=kvm arch=armv7l: a 32-bit guest (-cpu host,aarch64=off, KVM_ARM_VCPU_EL1_32BIT)"
    no_el1_32 = host()._replace(extra={
        "kvm": {"capabilities": {"el1_32bit": False}}})
    event = run_hook_on(tmp_path, no_el1_32, ARMV7L_NO_SVE)
    assert event["codes"] == ["NOT_APPLICABLE"]
    assert event["reason"] == (
        f"{guest}, and this host's KVM has no 32-bit EL1 (no KVM_CAP_ARM_EL1_32BIT): its QEMU "
        "refuses aarch64=off and cannot start the guest here, before any memory moves "
        "(target/arm/cpu.c aarch64_cpu_set_aarch64); unchecked")
    refused = host()._replace(extra={"kvm": {
        "capabilities": {"el1_32bit": True},
        "feature_errors": {"pauth+aarch32": "KVM_ARM_VCPU_INIT: EINVAL (Invalid argument)"}}})
    assert refused.runs_aarch32() is False
    event = run_hook_on(tmp_path, refused, ARMV7L_NO_SVE)
    assert event["codes"] == ["NOT_APPLICABLE"]
    assert event["reason"] == (
        f"{guest}, and this host's KVM refused every 32-bit vCPU its QEMU could create "
        "(pauth+aarch32: KVM_ARM_VCPU_INIT: EINVAL (Invalid argument)): the guest cannot start "
        "here, before any memory moves; unchecked")
    event = run_hook_on(tmp_path, host(), ARMV7L_NO_SVE)  # a profile of an older probe
    assert event["codes"] == ["NOT_APPLICABLE"]
    assert event["reason"] == (
        f"{guest}, and this host's profile has no 32-bit vCPU (probed by an older psci-hook: "
        "run psci-hook probe --write); unchecked")


def test_a_host_with_32_bit_el1_but_no_32_bit_vcpu_read_is_not_said_to_lack_it(
        tmp_path: Path) -> None:
    """The capability without a 32-bit list or a refusal (a profile whose lists were left
    out): whether KVM creates the vCPU is unknown, not refused."""
    unread = host()._replace(extra={"kvm": {"capabilities": {"el1_32bit": True}}})
    assert unread.runs_aarch32() is None
    event = run_hook_on(tmp_path, unread, ARMV7L_NO_SVE)
    assert event["codes"] == ["NOT_APPLICABLE"]
    assert "no 32-bit vCPU (probed by an older psci-hook" in str(event["reason"])
    assert "KVM_CAP_ARM_EL1_32BIT" not in str(event["reason"])


def test_the_rehearsal_creates_the_32_bit_vcpu() -> None:
    caps = {**kvmfake.DEFAULT_CAPS, kvm.KVM_CAP_ARM_EL1_32BIT: 1}
    fake = kvmfake.FakeKvm(caps=caps)
    guest = GuestState(registers={kvmfake.PSCI: 0x10001})
    assert kvm.rehearse({AARCH32, "pmu"}, values_to_rehearse(guest), syscalls=fake,
                        only_listed=True) is None
    (init,) = [features for _, features in fake.inits]
    assert init >> kvm.KVM_ARM_VCPU_EL1_32BIT & 1 and init >> kvm.KVM_ARM_VCPU_PMU_V3 & 1
    with pytest.raises(kvm.KvmError, match="EINVAL"):  # a host without 32-bit EL1
        kvm.rehearse({AARCH32}, {}, syscalls=kvmfake.FakeKvm())


# ---------------------------------------------------------------------------------------------
# SVE vector lengths a guest names none of
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("offered", "named", "expected"), [
    ((128, 256, 512), (), (128, 256, 512)),  # none named: every length KVM offers
    ((128, 256, 512), (256,), (128, 256)),  # KVM cannot hide lengths below the maximum
    ((128, 384, 512, 1024), (512,), (128, 384, 512)),
    (None, (), None),  # a profile without lengths cannot tell
])
def test_the_lengths_qemu_gives(offered: tuple[int, ...] | None, named: tuple[int, ...],
                                expected: tuple[int, ...] | None) -> None:
    profile = host()._replace(sve_lengths=offered)
    assert profile.guest_sve_lengths(named) == expected
    state = GuestState.booted_on(profile, ALL, sve_named=frozenset(named))
    assert state.sve_lengths == expected
    assert GuestState.booted_on(profile, ALL - {"sve"}).sve_lengths is None


def test_the_record_carries_the_lengths() -> None:
    state = GuestState.booted_on(host()._replace(sve_lengths=(128, 256)), ALL)
    record = GuestRecord(state, Origin("booted", "h", "7.2", "2026-12-05T00:00:00Z"))
    element = record_element(record)
    assert parse_record(element).state.sve_lengths == (128, 256)
    sve = element.find("{https://psci-hook.org/xmlns/record/1}sve")
    for bad in ("", "100", "256 128", "128 128", "4096", "x", "0", "0 128", "-128 128"):
        sve.set("lengths", bad)
        with pytest.raises(RecordError, match="sve lengths"):
            parse_record(element)
    element.remove(sve)  # a record written before lengths were recorded
    assert parse_record(element).state.sve_lengths is None


@pytest.mark.parametrize(("tail", "complaint"), [
    ("x", "are not numbers"),
    ("128", "are not ascending multiples of 128 up to 2048"),
])
def test_a_bad_length_list_is_quoted_by_its_first_40_characters(tail: str, complaint: str
                                                                ) -> None:
    element = record_element(GuestRecord(
        GuestState.booted_on(host()._replace(sve_lengths=(128, 256)), ALL),
        Origin("booted", "h", "7.2", "2026-12-05T00:00:00Z")))
    sve = element.find("{https://psci-hook.org/xmlns/record/1}sve")
    sve.set("lengths", f"128 256 384 512 640 768 896 1024 1152 1280 {tail}")
    with pytest.raises(RecordError) as caught:
        parse_record(element)
    assert str(caught.value) == (
        f"sve lengths '128 256 384 512 640 768 896 1024 1152 12' {complaint}")


@pytest.mark.parametrize(("source", "destination", "named", "codes"), [
    ((128, 256, 512), (128, 256), (), ["SVE_LENGTH_LOST"]),  # the guest's 512 vanishes
    ((128, 256), (128, 256, 512), (), []),  # more lengths: the guest keeps its own
    ((128, 256), (128, 256), (), []),
    ((128, 256), (128, 256, 512), (256,), []),  # named: the destination gives the same
    ((128, 384), (128, 256, 512), (384,), ["FEATURE_MISSING"]),  # QEMU refuses to start
    ((128, 256, 384), (128, 256, 512), (), ["SVE_LENGTH_LOST"]),  # 384 has no match there
])
def test_implicit_and_named_lengths_at_the_destination(
        source: tuple[int, ...], destination: tuple[int, ...], named: tuple[int, ...],
        codes: list[str]) -> None:
    guest = GuestState.booted_on(host()._replace(sve_lengths=source), ALL)
    dest = host()._replace(sve_lengths=destination)
    decision = decide(guest, dest, vcpu=RequestedVcpu(ALL, sve_lengths=frozenset(named)))
    assert [c for c in decision.codes if c in ("SVE_LENGTH_LOST", "FEATURE_MISSING")] == codes
    assert decision.vetoed is bool(codes)
    assert decision.guest_after.sve_lengths == dest.guest_sve_lengths(named)
    if codes == ["SVE_LENGTH_LOST"]:
        (lost,) = [f for f in decision.findings if f.code == "SVE_LENGTH_LOST"]
        gone = sorted(set(source) - set(destination))
        assert lost.message.endswith(f"so {', '.join(map(str, gone))} would vanish under the "
                                     "running guest.")


@pytest.mark.parametrize(("destination", "given", "gone"), [
    ((128, 256), "128, 256", "512"),
    ((), "none", "128, 256, 512"),  # a profile whose KVM offers no length at all
])
def test_lost_lengths_are_named_on_both_sides(destination: tuple[int, ...], given: str,
                                              gone: str) -> None:
    guest = GuestState.booted_on(host()._replace(sve_lengths=(128, 256, 512)), ALL)
    decision = decide(guest, host()._replace(sve_lengths=destination), vcpu=RequestedVcpu(ALL))
    (lost,) = [f for f in decision.findings if f.code == "SVE_LENGTH_LOST"]
    assert (lost.to_dict()["outcome"], lost.blocking) == ("features", True)
    assert lost.message == (
        "the guest booted with SVE vector lengths 128, 256, 512 bits; this host's QEMU gives "
        f"its vCPU {given} (KVM_REG_ARM64_SVE_VLS, set when the vCPU is created and not "
        f"migrated), so {gone} would vanish under the running guest.")


def test_a_record_without_lengths_is_not_judged_on_them() -> None:
    guest = GuestState.booted_on(host(), ALL)  # the profile has no lengths: none recorded
    assert guest.sve_lengths is None
    dest = host()._replace(sve_lengths=(128,))
    assert "SVE_LENGTH_LOST" not in decide(guest, dest, vcpu=RequestedVcpu(ALL)).codes


def test_the_hook_vetoes_lost_lengths_and_says_what_would_happen(tmp_path: Path) -> None:
    guest = GuestState.booted_on(host()._replace(sve_lengths=(128, 256, 512)), ALL)
    dest = host()._replace(sve_lengths=(128, 256))
    config = write_config(tmp_path / "c.conf", profile_file(tmp_path, dest), None)
    env = Environment.for_test(["hook", "g", "migrate", "begin", "-"],
                               stamped(xml(), guest), {"PSCI_HOOK_CONFIG": str(config)})
    sink = CollectingSink()
    assert hook_main(env, sink) == ExitStatus.VETO
    line = env.stderr.getvalue()  # type: ignore[attr-defined]
    assert "VETO SVE_LENGTH_LOST" in line and "lose SVE vector lengths" in line
    assert vcpu_request(parse_domain(xml())).sve_lengths == frozenset()


def test_profiles_with_32_bit_lists_round_trip() -> None:
    profile = with_aarch32(host())
    assert loads_profile(profile.to_json()).cpreg_lists == profile.cpreg_lists
