"""Guests with the vCPU features they really have (issue: PMU, SVE or pointer auth turned off).

KVM derives ID register fields from a vCPU's features (arch/arm64/kvm/sys_regs.c): without a PMU,
PMUVer (ID_AA64DFR0_EL1) and PerfMon (ID_DFR0_EL1) are 0; without SVE, the SVE field of
ID_AA64PFR0_EL1 and all of ID_AA64ZFR0_EL1; without pointer authentication, APA/API/GPA/GPI of
ID_AA64ISAR1_EL1. The values below are those fields on Debian 7.2's KVM on QEMU's `max` CPU
(tests/data/probed-profiles/7.2__max.json and the issue's measured refusal); the decisions are
checked against the real kernels in tests/nested.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from psci_hook import cli, kvm, rehearsal
from psci_hook import probe as probe_mod
from psci_hook import registers as regs
from psci_hook.domainxml import (
    parse_domain,
    qemu_cpu_from_argv,
    requested_vcpu,
    vcpu_request,
)
from psci_hook.engine import GuestState, RequestedVcpu, decide
from psci_hook.environment import Environment
from psci_hook.profile import HostProfile, ProfileError, loads_profile
from psci_hook.qemuproc import running_qemu_argv
from psci_hook.recorder import Observed, ThisHost, plan_boot
from psci_hook.report import decision_text, psci_remedy
from psci_hook.status import ExitStatus
from tests import kvmfake
from tests.helpers import fw
from tests.hooktools import (
    DOMAIN,
    install_hook,
    profile_file,
    run_hook,
    run_hook_on,
    stamped,
    write_config,
)

ALL = frozenset({"pmu", "pauth", "sve"})
NO_PMU = frozenset({"pauth", "sve"})
NO_SVE = frozenset({"pmu", "pauth"})
NO_PAUTH = frozenset({"pmu", "sve"})
DFR0, AA64DFR0 = "ID_DFR0_EL1", "ID_AA64DFR0_EL1"
PFR0, ZFR0, ISAR1 = "ID_AA64PFR0_EL1", "ID_AA64ZFR0_EL1", "ID_AA64ISAR1_EL1"
# -cpu host's vCPU (all features) and the single-feature reads, as the probe stores them.
ID_ALL = {DFR0: 0x6010009, AA64DFR0: 0x1010305409, PFR0: 0x1100000111111112,
          ZFR0: 0x110110100110021, ISAR1: 0x12101021211111, "MIDR_EL1": 0xF0510}
CACHE = {"CLIDR_EL1": 0x2000023, "CCSIDR_0": 0x2}
FEATURE_VALUES = {
    "none": {DFR0: 0x10009, AA64DFR0: 0x10305009, PFR0: 0x1100000011111112, ZFR0: 0,
             ISAR1: 0x12001021001111},
    "pmu": {PFR0: 0x1100000011111112, ZFR0: 0, ISAR1: 0x12001021001111},
    "pauth": {DFR0: 0x10009, AA64DFR0: 0x10305009, PFR0: 0x1100000011111112, ZFR0: 0},
    "sve": {DFR0: 0x10009, AA64DFR0: 0x10305009, ISAR1: 0x12001021001111},
}
PSCI = regs.PSCI_VERSION.reg_id


def host(release: str = "7.2.13+deb14-arm64", *, per_set: bool = True, psci: int = 0x10003,
         features: frozenset[str] = ALL, **extra: Any) -> HostProfile:
    listed = tuple(sorted([PSCI, *(regs.SYSREG_BY_NAME[n] for n in ID_ALL),
                           *(regs.cache_geometry_id(n) for n in CACHE)]))
    lists = {"none": listed}
    for f in sorted(features):
        lists[f] = listed
    if len(features) > 1:
        lists["+".join(f for f in ("pmu", "pauth", "sve") if f in features)] = listed
    values = {k: v for k, v in FEATURE_VALUES.items()
              if k == "none" or k in features} if per_set else None
    return HostProfile(kernel_release=release, machine="aarch64", registers=fw(PSCI_VERSION=psci),
                       cpreg_lists=lists, id_registers=dict(ID_ALL), cache_geometry=dict(CACHE),
                       id_registers_features=features, feature_values=values, **extra)


def xml(cpu: str = "<cpu mode='host-passthrough'/>", features: str = "", extra: str = "") -> bytes:
    return (f"<domain type='kvm' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>"
            f"<name>g</name><os><type arch='aarch64'>hvm</type></os>{features}{cpu}{extra}"
            "</domain>").encode()


PMU_OFF = xml(features="<features><pmu state='off'/></features>")
SVE_OFF = xml("<cpu mode='host-passthrough'><feature policy='disable' name='sve'/></cpu>")
PAUTH_OFF = xml("<cpu mode='host-passthrough'><feature policy='disable' name='pauth'/></cpu>")
SVE_LENGTHS = xml("<cpu mode='host-passthrough'><feature policy='require' name='sve256'/>"
                  "<feature policy='disable' name='sve512'/></cpu>")


# ---------------------------------------------------------------------------------------------
# What libvirt and QEMU make of the domain XML
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("data", "expected"), [
    (xml(), ALL), (xml(cpu=""), ALL), (PMU_OFF, NO_PMU), (SVE_OFF, NO_SVE),
    (PAUTH_OFF, NO_PAUTH), (SVE_LENGTHS, ALL),
    (xml("<cpu mode='host-passthrough'><feature policy='forbid' name='sve'/></cpu>",
         "<features><pmu state='off'/></features>"), frozenset({"pauth"})),
    # Named models under KVM: a PMU only (target/arm/cpu64.c).
    (xml("<cpu mode='custom'><model>cortex-a57</model></cpu>"), frozenset({"pmu"})),
    (xml("<cpu mode='custom'><model>max</model></cpu>"), ALL),
])
def test_destination_features_from_the_domain_xml(data: bytes, expected: frozenset[str]) -> None:
    assert requested_vcpu(parse_domain(data), ALL).features == expected


def test_a_feature_the_xml_asks_for_is_kept_where_the_host_lacks_it() -> None:
    """QEMU refuses to start then (sve=on without KVM SVE); the engine finds no list for it."""
    sve_host = frozenset({"pmu"})
    assert requested_vcpu(parse_domain(SVE_LENGTHS), sve_host).features == {"pmu", "sve"}
    assert requested_vcpu(parse_domain(xml()), sve_host).features == {"pmu"}
    on = xml(features="<features><pmu state='on'/></features>")
    assert requested_vcpu(parse_domain(on), frozenset()).features == {"pmu"}


def test_a_cpu_override_in_qemu_commandline_replaces_libvirts() -> None:
    data = xml(extra="<qemu:commandline><qemu:arg value='-cpu'/>"
                     "<qemu:arg value='host,pmu=off,kvm-psci-version=1.1'/></qemu:commandline>")
    domain = parse_domain(data)
    assert requested_vcpu(domain, ALL).features == NO_PMU
    assert vcpu_request(domain).psci_version == 0x10001


@pytest.mark.parametrize(("args", "expected"), [
    (["-global", "host-arm-cpu.kvm-psci-version=1.1"], 0x10001),
    (["-global", "driver=host-arm-cpu,property=kvm-psci-version,value=1.0"], 0x10000),
    (["-global", "arm-cpu.kvm-psci-version=1.2"], 0x10002),
    (["-global", "max-arm-cpu.kvm-psci-version=1.1"], None),  # another CPU type than -cpu host
    (["-global", "host-arm-cpu.kvm-psci-version=2.0"], None),  # QEMU refuses to start
    (["-global", "host-arm-cpu.kvm-psci-version=1.1", "-cpu", "host,kvm-psci-version=1.0"],
     0x10000),  # -cpu properties become globals after -global ones: they win
    ([], None),
])
def test_kvm_psci_version_spellings(args: list[str], expected: int | None) -> None:
    extra = "<qemu:commandline>" + "".join(
        f"<qemu:arg value='{a}'/>" for a in args) + "</qemu:commandline>"
    assert vcpu_request(parse_domain(xml(extra=extra))).psci_version == expected


def test_the_running_qemus_command_line_wins_over_the_xml(tmp_path: Path) -> None:
    """The XML says 1.1 (edited after the start); the process was started with 1.0."""
    domain = parse_domain(xml(extra="<qemu:commandline><qemu:arg value='-global'/><qemu:arg "
                                    "value='host-arm-cpu.kvm-psci-version=1.1'/>"
                                    "</qemu:commandline>"))
    argv = ["/usr/bin/qemu-system-aarch64", "-name", "guest=g,debug-threads=on",
            "-cpu", "host,pmu=off", "-global", "host-arm-cpu.kvm-psci-version=1.0"]
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "g.pid").write_text("4242")
    (tmp_path / "proc" / "4242").mkdir(parents=True)
    (tmp_path / "proc" / "4242" / "cmdline").write_bytes(
        b"\0".join(a.encode() for a in argv) + b"\0")
    read = running_qemu_argv("g", tmp_path / "run", tmp_path / "proc")
    assert read == tuple(argv)
    assert vcpu_request(domain, read).psci_version == 0x10000
    assert requested_vcpu(domain, ALL, read).features == NO_PMU
    assert running_qemu_argv("other", tmp_path / "run", tmp_path / "proc") is None
    (tmp_path / "run" / "other.pid").write_text("4242")  # a stale pid file: another domain's
    assert running_qemu_argv("other", tmp_path / "run", tmp_path / "proc") is None
    assert qemu_cpu_from_argv(argv).model == "host"


# ---------------------------------------------------------------------------------------------
# The profile: per-feature values, compatibly
# ---------------------------------------------------------------------------------------------


def test_per_feature_values_round_trip_and_old_profiles_still_load() -> None:
    profile = host()
    again = loads_profile(profile.to_json())
    assert again == profile
    old = profile.to_dict()
    del old["feature_values"], old["id_registers_features"]
    legacy = loads_profile(json.dumps(old))
    assert legacy.feature_values is None and legacy.id_values(ALL) is not None
    assert legacy.id_values(NO_PMU) is None  # it cannot tell: no guessing


def test_values_of_a_feature_set_probed_derived_or_unknown() -> None:
    profile = host()
    none = profile.id_values(frozenset())
    assert none is not None and none.id_registers is not None
    assert none.id_registers[DFR0] == 0x10009 and none.id_registers["MIDR_EL1"] == 0xF0510
    assert none.cache_geometry == profile.cache_geometry is not None  # no feature changes it
    # pauth+sve was not probed: derived, each register from the one feature that changes it.
    derived = profile.id_values(NO_PMU)
    assert derived is not None and derived.id_registers is not None
    assert derived.id_registers[DFR0] == 0x10009 and derived.id_registers[AA64DFR0] == 0x10305009
    assert derived.id_registers[PFR0] == ID_ALL[PFR0]
    assert derived.id_registers[ISAR1] == ID_ALL[ISAR1]
    assert derived.cache_geometry == profile.cache_geometry
    # Two features changing one register: not derivable.
    clash = profile._replace(feature_values={
        **FEATURE_VALUES, "pauth": {**FEATURE_VALUES["pauth"], ISAR1: 1},
        "sve": {**FEATURE_VALUES["sve"], ISAR1: 2}})
    assert clash.id_values(NO_PMU) is None
    # A single-feature read missing, or the featureless one: not derivable either.
    for missing in ("sve", "none"):
        partial = profile._replace(feature_values={
            k: v for k, v in FEATURE_VALUES.items() if k != missing})
        assert partial.id_values(NO_PMU) is None, missing


def test_a_profile_without_cache_geometry_derives_the_id_values_all_the_same() -> None:
    """The cache geometry is optional (only schema, kernel_release and registers are not)."""
    no_cache = loads_profile(json.dumps({
        k: v for k, v in host().to_dict().items() if k != "cache_geometry"}))
    assert no_cache.cache_geometry is None
    derived = no_cache.id_values(NO_PMU)  # pauth+sve: not probed, derived
    assert derived is not None and derived.cache_geometry is None
    assert derived.id_registers == {**ID_ALL, DFR0: 0x10009, AA64DFR0: 0x10305009}


@pytest.mark.parametrize("bad", [
    {"feature_values": {"pmu": {"NOT_A_REG": 1}}},
    {"feature_values": {"sve+pmu": {}}},
    {"feature_values": {"pmu": {DFR0: -1}}},
    {"feature_values": []},
    {"id_registers_features": 3},
])
def test_invalid_per_feature_values_are_refused(bad: dict[str, Any]) -> None:
    data = {**host().to_dict(), **bad}
    with pytest.raises(ProfileError):
        loads_profile(json.dumps(data))


def test_the_probe_stores_what_each_feature_set_changes(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The fake kernel derives the SVE field of ID_AA64PFR0_EL1 from the SVE feature."""
    pfr0 = kvmfake.PFR0
    with_sve = kvmfake.DEFAULT_VALUES[pfr0] | 1 << 32
    monkeypatch.setitem(kvmfake.FEATURE_REGS, "sve", {**kvmfake.FEATURE_REGS["sve"],
                                                      pfr0: with_sve})
    boot_id = tmp_path / "boot_id"
    boot_id.write_text("b\n")
    with kvm.Kvm(kvmfake.FakeKvm()) as handle:
        data = probe_mod.probe_host(handle, clock=lambda: 0.0, boot_id_path=boot_id)
    assert data["id_registers"][PFR0] == with_sve
    assert data["feature_values"] == {"none": {PFR0: kvmfake.DEFAULT_VALUES[pfr0]},
                                      "pmu": {PFR0: kvmfake.DEFAULT_VALUES[pfr0]},
                                      "pauth": {PFR0: kvmfake.DEFAULT_VALUES[pfr0]},
                                      "sve": {}}
    profile = HostProfile.from_dict(data)
    values = profile.id_values(NO_SVE)
    assert values is not None and values.id_registers == {
        **data["id_registers"], PFR0: kvmfake.DEFAULT_VALUES[pfr0]}


# ---------------------------------------------------------------------------------------------
# Records of the guest's real features, decided on its own host and elsewhere
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("data", [xml(), PMU_OFF, SVE_OFF, PAUTH_OFF, SVE_LENGTHS])
@pytest.mark.parametrize("release", ["6.1.0-26-arm64", "7.2.13+deb14-arm64"])
def test_a_guest_checked_on_its_own_host_is_allowed(data: bytes, release: str) -> None:
    profile = host(release)
    domain = parse_domain(data)
    features = requested_vcpu(domain, profile.default_features()).features
    guest = GuestState.booted_on(profile, features)
    decision = decide(guest, profile, vcpu=RequestedVcpu(features))
    assert not decision.vetoed, decision.codes
    assert not [f for f in decision.findings if f.code.startswith(("ID_", "FEATURE_"))
                and f.code != "ID_REGS_NOT_COMPARED"]
    assert decision.guest_after.id_registers == guest.id_registers


def test_the_old_record_of_all_features_is_what_was_refused() -> None:
    """Before: the record copied -cpu host's values for a pmu=off guest; 6.1 refuses them."""
    profile = host("6.1.0-26-arm64")
    wrong = GuestState.booted_on(profile, NO_PMU)._replace(id_registers=ID_ALL)
    decision = decide(wrong, profile, vcpu=RequestedVcpu(NO_PMU))
    assert {f.register for f in decision.blocking} == {DFR0, AA64DFR0}


def test_without_per_feature_values_nothing_is_guessed() -> None:
    profile = host(per_set=False)
    guest = GuestState.booted_on(profile, NO_PMU)
    assert guest.id_registers is None and guest.cache_geometry is None
    decision = decide(guest, profile, vcpu=RequestedVcpu(NO_PMU))
    assert not decision.vetoed
    # A record that has values, against a destination profile that cannot tell its own.
    with_values = GuestState.booted_on(host(), NO_PMU)
    decision = decide(with_values, profile, vcpu=RequestedVcpu(NO_PMU))
    note = next(f for f in decision.findings if f.code == "ID_REGS_NOT_COMPARED")
    assert "no ID register values for a vCPU with features pauth+sve" in note.message
    assert not decision.vetoed


def test_a_feature_gained_at_the_destination() -> None:
    """A guest booted without SVE (sve=off was removed, or its host had none) arrives where
    -cpu host turns SVE on: the ID fields differ; 6.1 accepts only its own, 7.2 may (the
    rehearsal on the real kernel decides, and on real 7.2 refuses: tests/nested)."""
    guest = GuestState.booted_on(host(), NO_SVE)
    old = decide(guest, host("6.1.0-26-arm64"), vcpu=RequestedVcpu(ALL))
    assert "FEATURE_GAINED" in old.codes and old.vetoed
    assert {f.register for f in old.blocking} == {PFR0, ZFR0}
    new = decide(guest, host(), vcpu=RequestedVcpu(ALL))
    assert {f.register for f in new.findings if f.outcome == "unverified"} >= {PFR0, ZFR0}
    assert new.guest_after.features == ALL


def test_a_feature_lost_at_the_destination() -> None:
    guest = GuestState.booted_on(host(), ALL)
    decision = decide(guest, host(features=NO_SVE), vcpu=RequestedVcpu(NO_SVE))
    missing = next(f for f in decision.findings if f.code == "FEATURE_MISSING")
    assert "sve" in missing.message and decision.vetoed


def test_the_hook_allows_each_guest_on_its_own_host(tmp_path: Path) -> None:
    """The real hook file: a record written for each guest's features on this host."""
    profile = host("6.1.0-26-arm64")
    config = write_config(tmp_path / "c.conf", profile_file(tmp_path, profile), None)
    hook = install_hook(tmp_path)
    for name, features in (("pmu-off", NO_PMU), ("sve-off", NO_SVE), ("pauth-off", NO_PAUTH)):
        base = DOMAIN.replace(b"<cpu mode='host-passthrough' check='none'/>", {
            "pmu-off": b"<features><pmu state='off'/></features><cpu mode='host-passthrough'/>",
            "sve-off": SVE_OFF[SVE_OFF.index(b"<cpu"):SVE_OFF.index(b"</domain>")],
            "pauth-off": PAUTH_OFF[PAUTH_OFF.index(b"<cpu"):PAUTH_OFF.index(b"</domain>")],
        }[name])
        assert requested_vcpu(parse_domain(base), ALL).features == features, name
        result = run_hook(hook, ["vm1", "migrate", "begin", "-"],
                          stamped(base, GuestState.booted_on(profile, features)), config)
        assert result.returncode == 0, (name, result.stderr)
        assert b'features="' + "+".join(
            f for f in ("pmu", "pauth", "sve") if f in features).encode() + b'"' in result.stdout
        # The same guest recorded the old way (-cpu host's ID values) is refused.
        wrong = GuestState.booted_on(profile, features)._replace(
                                    id_registers=ID_ALL)
        result = run_hook(hook, ["vm1", "migrate", "begin", "-"], stamped(base, wrong), config)
        assert result.returncode == 1 and "ID_REG_MISMATCH" in result.stderr, name


def test_the_record_written_at_boot_has_the_guests_features_and_psci(tmp_path: Path) -> None:
    data = xml(features="<features><pmu state='off'/></features>",
               extra="<qemu:commandline><qemu:arg value='-global'/><qemu:arg "
                     "value='host-arm-cpu.kvm-psci-version=1.1'/></qemu:commandline>")
    this = ThisHost(host(), "host-a")
    plan = plan_boot(Observed(data), this, "2026-12-05T20:00:00Z")
    assert plan.live is not None
    state = plan.live.state
    assert state.features == NO_PMU and state.registers[PSCI] == 0x10001
    assert state.id_registers is not None and state.id_registers[DFR0] == 0x10009
    # The process started without the property (the XML was edited since): the host default.
    argv = ("qemu-system-aarch64", "-name", "guest=g", "-cpu", "host,pmu=off")
    plan = plan_boot(Observed(data, qemu_argv=argv), this, "2026-12-05T20:00:00Z")
    assert plan.live is not None and plan.live.state.registers[PSCI] == 0x10003


# ---------------------------------------------------------------------------------------------
# kvm-psci-version: the record honours it, and a PSCI-only veto says how to fix it
# ---------------------------------------------------------------------------------------------


def test_a_psci_only_veto_names_the_remedy(tmp_path: Path) -> None:
    source, destination = host(), host("6.12.118+deb13-arm64", psci=0x10001)
    plain = GuestState.booted_on(source, ALL)
    decision = decide(plain, destination, vcpu=RequestedVcpu(ALL))
    remedy = psci_remedy(decision.findings)
    assert remedy is not None and "kvm-psci-version=1.1" in remedy
    assert "remedy: cold-boot" in decision_text(decision)
    assert "host-arm-cpu.kvm-psci-version=1.1" in remedy
    # With the property at boot, the same guest is allowed.
    capped = GuestState.booted_on(source, ALL, psci_version=0x10001)
    assert capped.registers[PSCI] == 0x10001
    assert not decide(capped, destination, vcpu=RequestedVcpu(ALL)).vetoed
    # Another blocker the property cannot change: no remedy.
    a57 = host("6.1.0-26-arm64", psci=0x10001)._replace(
        id_registers={**ID_ALL, "MIDR_EL1": 0x411FD070})
    other = decide(plain, a57, vcpu=RequestedVcpu(ALL))
    assert other.vetoed and psci_remedy(other.findings) is None
    # The real hook says it in its one line.
    config = write_config(tmp_path / "c.conf", profile_file(tmp_path, destination), None)
    result = run_hook(install_hook(tmp_path), ["vm1", "migrate", "begin", "-"],
                      stamped(DOMAIN, plain), config)
    assert result.returncode == 1
    assert result.stderr.startswith("psci-hook: VETO PSCI_UNSUPPORTED")
    assert "; remedy: cold-boot the guest with kvm-psci-version=1.1" in result.stderr
    assert result.stderr.count("\n") == 1


def test_a_psci_version_the_host_cannot_give_is_not_recorded() -> None:
    """QEMU stops at start on it (kvm_arch_init_vcpu), so no guest runs with it."""
    state = GuestState.booted_on(host("6.12.118+deb13-arm64", psci=0x10001), ALL,
                                 psci_version=0x10003)
    assert state.registers[PSCI] == 0x10001


PSCI_0_1_GLOBAL = ("<qemu:commandline><qemu:arg value='-global'/><qemu:arg "
                   "value='host-arm-cpu.kvm-psci-version=0.1'/></qemu:commandline>")


def test_a_psci_0_1_guest_moves_where_the_domain_keeps_its_0_1_vcpu(tmp_path: Path) -> None:
    """kvm-psci-version=0.1 makes QEMU create the vCPU without KVM_ARM_VCPU_PSCI_0_2
    (target/arm/kvm.c kvm_arch_init_vcpu); for such a vCPU kvm_arm_set_fw_reg
    (arch/arm64/kvm/hypercalls.c) takes PSCI 0.1 and nothing else, on every kernel, and a vCPU
    with the feature takes everything but 0.1. The destination's QEMU runs the same domain
    XML, so the guest lands in a 0.1 vCPU exactly when that XML keeps the property."""
    source, destination = host(), host("6.12.118+deb13-arm64", psci=0x10001)
    guest = GuestState.booted_on(source, ALL, psci_version=0x1)
    assert guest.registers[PSCI] == 0x1  # recorded as 0.1, not the host's 1.3
    kept_vcpu = requested_vcpu(parse_domain(xml(extra=PSCI_0_1_GLOBAL)), ALL)
    assert kept_vcpu == RequestedVcpu(ALL, psci_version=0x1) and kept_vcpu.psci_0_1
    # Same XML on both sides: accepted on an older kernel too; so without a domain XML (the
    # engine's default: the guest's own vCPU).
    assert not decide(guest, destination, vcpu=kept_vcpu).vetoed
    assert not decide(guest, destination).vetoed
    # A destination XML without the property: a 0.2+ vCPU, which refuses 0.1.
    refused = decide(guest, destination, vcpu=requested_vcpu(parse_domain(xml()), ALL))
    [finding] = refused.blocking
    assert finding.code == "PSCI_UNSUPPORTED" and "kvm-psci-version=0.1" in finding.message
    # ... and a 0.1 vCPU refuses a 1.x guest.
    plain = GuestState.booted_on(source, ALL)
    assert decide(plain, source, vcpu=kept_vcpu).blocking[0].code == "PSCI_UNSUPPORTED"
    # The scratch vCPU of the rehearsal is a 0.2+ one: PSCI_VERSION is the model's there.
    assert PSCI not in rehearsal.values_to_rehearse(guest)
    assert PSCI not in rehearsal.values_to_rehearse(plain, psci_0_1_vcpu=True)
    assert PSCI in rehearsal.values_to_rehearse(plain)
    # The real hook file, on the destination, with the domain XML it is given.
    config = write_config(tmp_path / "c.conf", profile_file(tmp_path, destination), None)
    hook = install_hook(tmp_path)
    kept = run_hook(hook, ["g", "migrate", "begin", "-"],
                    stamped(xml(extra=PSCI_0_1_GLOBAL), guest), config)
    assert kept.returncode == 0, kept.stderr
    dropped = run_hook(hook, ["g", "migrate", "begin", "-"], stamped(xml(), guest), config)
    assert dropped.returncode == 1
    assert dropped.stderr.startswith("psci-hook: VETO PSCI_UNSUPPORTED")
    assert "guest=0.1 destination=1.1" in dropped.stderr


def test_a_32_bit_guest_is_not_applicable_and_says_why(tmp_path: Path) -> None:
    """libvirt runs arch='armv7l' KVM guests as -cpu host,aarch64=off (KVM_ARM_VCPU_EL1_32BIT);
    a host profile without 32-bit vCPUs (an older probe) cannot check one: allowed untouched,
    with the reason in the event (tests/test_guest_population.py: the hosts that can)."""
    event = run_hook_on(tmp_path, host(), xml().replace(b"arch='aarch64'", b"arch='armv7l'"))
    assert event["codes"] == ["NOT_APPLICABLE"] and "32-bit guest" in event["reason"]


def test_check_says_the_remedy_and_the_destinations_qemu_does_not_matter(tmp_path: Path
                                                                          ) -> None:
    """`check --domain-xml`: a 7.2 guest vetoed on 6.12 for PSCI 1.3 only, with the remedy; the
    same guest started with kvm-psci-version=1.1 is allowed, whether the destination's QEMU is
    legacy (7.2, which has no such property) or tolerant: the value travels in the list."""
    source, destination = host(), host("6.12.118+deb13-arm64", psci=0x10001)
    dest_file = profile_file(tmp_path, destination, "dest.json")
    plain = tmp_path / "plain.xml"
    plain.write_bytes(stamped(DOMAIN, GuestState.booted_on(source, ALL)))
    env = Environment.for_test(["psci-hook", "check", "--host-profile", str(dest_file),
                                "--domain-xml", str(plain)], b"")
    assert cli.main(env.argv[1:], env) == ExitStatus.VETO
    out = env.stdout.getvalue().decode()  # type: ignore[attr-defined]
    assert "PSCI_UNSUPPORTED" in out and "remedy: cold-boot the guest with kvm-psci-version=1.1" \
        in out
    capped = tmp_path / "capped.xml"
    capped.write_bytes(stamped(DOMAIN, GuestState.booted_on(source, ALL, psci_version=0x10001)))
    for generation in ("legacy", "tolerant"):
        env = Environment.for_test(["psci-hook", "check", "--host-profile", str(dest_file),
                                    "--domain-xml", str(capped), "--qemu", generation], b"")
        assert cli.main(env.argv[1:], env) == ExitStatus.OK, generation


def test_sve_lengths_probed_and_the_lengths_a_domain_names(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The probe reads KVM_REG_ARM64_SVE_VLS (bit vq-1: vq * 128 bits); a domain naming a length
    the destination does not offer cannot start there (QEMU: "cannot enable sve512")."""
    monkeypatch.setitem(kvmfake.FEATURE_REGS, "sve", {**kvmfake.FEATURE_REGS["sve"],
                                                      kvmfake.SVE_VLS: 0b11})
    boot_id = tmp_path / "boot_id"
    boot_id.write_text("b\n")
    with kvm.Kvm(kvmfake.FakeKvm()) as handle:
        data = probe_mod.probe_host(handle, clock=lambda: 0.0, boot_id_path=boot_id)
    assert data["sve_lengths"] == [128, 256]
    destination = HostProfile.from_dict(data)
    assert loads_profile(destination.to_json()).sve_lengths == (128, 256)
    domain = parse_domain(SVE_LENGTHS)  # sve256 required, sve512 disabled
    assert vcpu_request(domain).sve_lengths == {256}
    big = parse_domain(SVE_LENGTHS.replace(b"sve256", b"sve1024"))
    assert vcpu_request(big).sve_lengths == {1024}
    guest = GuestState.booted_on(host(), ALL)
    assert not any(f.code == "FEATURE_MISSING" for f in decide(
        guest, host()._replace(sve_lengths=(128, 256)),
        vcpu=requested_vcpu(domain, ALL)).findings)
    refused = decide(guest, host()._replace(sve_lengths=(128, 256)),
                     vcpu=requested_vcpu(big, ALL))
    missing = next(f for f in refused.findings if f.code == "FEATURE_MISSING")
    assert "1024" in missing.message and refused.vetoed
    with pytest.raises(ProfileError):
        loads_profile(json.dumps({**data, "sve_lengths": [256, 128]}))


def test_a_global_names_the_cpu_type_libvirt_gives() -> None:
    """-global host-arm-cpu.* reaches -cpu host only; a named model is cortex-a57-arm-cpu."""
    extra = ("<qemu:commandline><qemu:arg value='-global'/><qemu:arg value='{}'/>"
             "</qemu:commandline>")
    a57 = "<cpu mode='custom'><model>cortex-a57</model></cpu>"
    assert vcpu_request(parse_domain(xml(a57, extra=extra.format(
        "host-arm-cpu.kvm-psci-version=1.1")))).psci_version is None
    assert vcpu_request(parse_domain(xml(a57, extra=extra.format(
        "cortex-a57-arm-cpu.kvm-psci-version=1.1")))).psci_version == 0x10001
    assert vcpu_request(parse_domain(xml(a57, extra=extra.format(
        "aarch64-cpu.kvm-psci-version=1.0")))).psci_version == 0x10000


LISTS_NONE_PMU = {k: v for k, v in (host().cpreg_lists or {}).items() if k in ("none", "pmu")}


@pytest.mark.parametrize(("guest", "destination", "vcpu", "code", "message"), [
    (ALL, host(), RequestedVcpu(NO_PMU), "FEATURE_MISSING", "the guest's vCPU has pmu, which "
     "the destination's QEMU will not give it (this host offers pmu+pauth+sve); its registers "
     "and ID fields would vanish under the running guest."),
    (NO_PMU, host(), RequestedVcpu(ALL), "FEATURE_GAINED", "the destination's QEMU enables pmu, "
     "which the guest's vCPU did not have (-cpu host takes every feature this host offers "
     "unless the domain XML turns it off): its registers start at this host's reset values, "
     "and the ID fields KVM derives from it differ from the guest's."),
    (ALL, host()._replace(cpreg_lists=LISTS_NONE_PMU), RequestedVcpu(ALL), "FEATURE_MISSING",
     "the guest's vCPU features (pmu+pauth+sve) are not available on the destination (it "
     "offers: none, pmu); QEMU cannot create the vCPU."),
    (ALL, host()._replace(sve_lengths=(128, 256, 512)),
     RequestedVcpu(ALL, sve_lengths=frozenset({384, 640})), "FEATURE_MISSING", "the domain asks "
     "for SVE vector length(s) 384, 640 bits, which this host's KVM does not offer (128, 256, "
     "512): its QEMU refuses to start (\"cannot enable sve...\")."),
    (ALL, host()._replace(sve_lengths=()), RequestedVcpu(ALL, sve_lengths=frozenset({384})),
     "FEATURE_MISSING", "the domain asks for SVE vector length(s) 384 bits, which this host's "
     "KVM does not offer (none): its QEMU refuses to start (\"cannot enable sve...\")."),
])
def test_each_vcpu_feature_finding_says_what_happens(
        guest: frozenset[str], destination: HostProfile, vcpu: RequestedVcpu, code: str,
        message: str) -> None:
    decision = decide(GuestState.booted_on(host(), guest), destination, vcpu=vcpu)
    assert [(f.code, f.to_dict()["outcome"], f.message) for f in decision.findings
            if f.code.startswith("FEATURE_")] == [(code, "features", message)]


MMFR1 = "ID_AA64MMFR1_EL1"  # not among this host's values


def test_the_state_after_takes_the_guests_values_where_this_host_has_the_register() -> None:
    """The record written after the migration: for each ID register and cache geometry value
    this host has, the guest's where it has one (QEMU sends it), else this host's; a side
    without values takes the other's whole."""
    guest = GuestState.booted_on(host(), ALL)._replace(
        id_registers={DFR0: 0x10009, MMFR1: 7}, cache_geometry=None)
    after = decide(guest, host()._replace(sve_lengths=(128, 256)),
                   vcpu=RequestedVcpu(ALL)).guest_after
    assert after.cpreg_list == host().cpreg_list(ALL)  # this host's QEMU's list from now on
    assert after.sve_lengths == (128, 256)
    assert after.id_registers == {**ID_ALL, DFR0: 0x10009}
    assert after.cache_geometry == CACHE
    guest = guest._replace(cache_geometry={"CLIDR_EL1": 4})
    after = decide(guest, host()._replace(cache_geometry=None),
                   vcpu=RequestedVcpu(ALL)).guest_after
    assert after.cache_geometry == {"CLIDR_EL1": 4}


def test_the_state_after_of_a_vcpu_without_sve_carries_no_sve_lengths() -> None:
    """SVE lengths belong to an SVE vCPU: a guest whose domain turns SVE off records none,
    even on a host that offers some (else a later move would be judged on lengths it never
    had)."""
    guest = GuestState.booted_on(host(), NO_SVE)
    after = decide(guest, host()._replace(sve_lengths=(128, 256)),
                   vcpu=RequestedVcpu(NO_SVE)).guest_after
    assert after.features == NO_SVE
    assert after.sve_lengths is None


def test_a_destination_profile_without_lists_is_judged_with_the_guests_own_features() -> None:
    """A profile without migrated lists says nothing of the vCPU features its host offers:
    the guest's own are assumed, whatever the domain asks for, and what the lists cannot show
    is LISTS_NOT_COMPARED, not a feature gained or lost."""
    guest = GuestState.booted_on(host(), NO_PMU)
    decision = decide(guest, host()._replace(cpreg_lists=None), vcpu=RequestedVcpu(ALL))
    assert [f.code for f in decision.findings if f.code.startswith(("FEATURE_", "LISTS_"))] == [
        "LISTS_NOT_COMPARED"]
    assert decision.guest_after.features == NO_PMU


@pytest.mark.parametrize("vcpu", [ALL, NO_PMU])
def test_the_state_after_on_a_host_without_values_keeps_the_guests_only_with_its_features(
        vcpu: frozenset[str]) -> None:
    """This host cannot tell its values: the guest's hold while the vCPU keeps its features,
    and nothing is known once they change."""
    guest = GuestState.booted_on(host()._replace(sve_lengths=(128, 256, 512)), ALL)
    destination = host()._replace(id_registers=None, cache_geometry=None,
                                  sve_lengths=(128, 256))
    after = decide(guest, destination, vcpu=RequestedVcpu(vcpu)).guest_after
    assert after.features == vcpu
    assert after.sve_lengths == (128, 256)
    kept = vcpu == ALL
    assert after.id_registers == (ID_ALL if kept else None)
    assert after.cache_geometry == (CACHE if kept else None)


def test_a_list_missing_for_the_features_the_domain_gets_says_whose_they_are() -> None:
    """The domain's vCPU is not the guest's (pmu turned off on the way): the features named
    are the domain's."""
    decision = decide(GuestState.booted_on(host(), ALL), host()._replace(
        cpreg_lists=LISTS_NONE_PMU), vcpu=RequestedVcpu(NO_PMU))
    assert [f.message for f in decision.findings if f.code == "FEATURE_MISSING"][-1] == (
        "the vCPU features the domain gets (pauth+sve) are not available on the destination "
        "(it offers: none, pmu); QEMU cannot create the vCPU.")


@pytest.mark.parametrize(("guest", "destination", "why"), [
    (GuestState.booted_on(host(), NO_PMU), host()._replace(feature_values=None),
     "the destination's profile has no ID register values for a vCPU with features pauth+sve "
     "(it was probed before psci-hook read them per feature set)"),
    (GuestState.booted_on(host(), NO_PMU)._replace(id_registers=None), host(),
     "ID register and cache geometry values are not in both profiles"),
])
def test_id_values_not_compared_say_why(guest: GuestState, destination: HostProfile,
                                        why: str) -> None:
    decision = decide(guest, destination, vcpu=RequestedVcpu(NO_PMU))
    assert [(f.to_dict()["outcome"], f.message) for f in decision.findings
            if f.code == "ID_REGS_NOT_COMPARED"] == [
        ("not-compared", f"{why}: not compared; a rehearsal on the destination settles them.")]
