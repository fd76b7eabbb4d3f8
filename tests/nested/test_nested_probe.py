"""The real test of the probe and of the engine's firmware rules: real arm64 kernels, real KVM.

Debian's arm64 kernels from ../shared/kernels boot under qemu-system-aarch64 (TCG,
virtualization=on, so their own KVM works) with an initramfs holding Debian's arm64 python3 and
this package; inside, ``psci-hook probe --json``, ``psci-hook conformance`` and a few checks of
the KVM layer's error paths run against /dev/kvm (see nested_harness.py). Nothing is faked.

The probe must return exactly what ../shared/profiles/ recorded for the same kernel and CPU
(firmware registers, values and every migrated list), and the measured facts of
docs/design.md#measured-facts for the kernel that has no recorded profile (7.2); conformance
must find no disagreement between the engine's predictions and the kernel's KVM_SET_ONE_REG.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from psci_hook import registers as regs
from psci_hook.profile import HostProfile
from tests.nested import nested_harness as harness

pytestmark = pytest.mark.nested

COMBOS = [(kernel, cpu) for kernel in harness.KERNELS for cpu in harness.CPUS]
IDS = [f"{kernel}__{cpu}" for kernel, cpu in COMBOS]

# Facts measured independently of this package (docs/design.md#measured-facts).
# docs/design.md#list-sizes (migrated = without the core and SVE classes):
REFERENCE_LIST_SIZES = {
    "5.10": {"none": 237, "pmu": 237, "pmu+pauth+sve": 248},
    "6.1": {"none": 167, "pmu": 241, "pmu+pauth+sve": 252},
    "6.12": {"none": 184, "pmu": 258, "pmu+pauth+sve": 269},
    "7.2": {"none": 182, "pmu": 256, "pmu+pauth+sve": 267},
}
# Default PSCI and the firmware registers listed (docs/design.md#which-kernels-list-which;
# the Debian 5.10 kernel carries the WORKAROUND_3 backport).
REFERENCE_PSCI = {"5.10": 0x10000, "6.1": 0x10001, "6.12": 0x10001, "7.2": 0x10003}
REFERENCE_FW_COUNT = {"5.10": 4, "6.1": 7, "6.12": 7, "7.2": 8}
# CCSIDR demux entries: 3 on 5.10/6.1 and 14 on 6.12+ (docs/design.md#cache-geometry).
REFERENCE_CCSIDR_COUNT = {"5.10": 3, "6.1": 3, "6.12": 14, "7.2": 14}
# KVM_ARM_GET_REG_WRITABLE_MASKS exists since 6.7 (docs/design.md#id-registers).
HAS_WRITABLE_MASKS = {"5.10": False, "6.1": False, "6.12": True, "7.2": True}
# KVM_CAP_ARM_EL1_32BIT: the emulated CPU runs AArch32 at EL1 (ID_AA64PFR0_EL1.EL1 = 2; the
# Cortex-A57 does in hardware, and QEMU's TCG models keep it).
EL1_32BIT = {"max": True, "a57": True}
# QEMU's MIDR for its models (target/arm): cortex-a57 r1p0, and max.
MIDR = {"a57": 0x411FD070, "max": 0x000F0510}


def _result(results: dict[str, harness.BootResult], kernel: str, cpu: str) -> harness.BootResult:
    result = results[f"{kernel}__{cpu}"]
    assert result.done, (
        f"{result.label}: the guest did not finish; console tail:\n"
        + "\n".join(result.console.splitlines()[-30:])
    )
    return result


@pytest.mark.parametrize(("kernel", "cpu"), COMBOS, ids=IDS)
def test_probe_matches_the_recorded_profile(
    nested_results: dict[str, harness.BootResult], kernel: str, cpu: str
) -> None:
    result = _result(nested_results, kernel, cpu)
    probed = result.probe_profile()
    recorded = harness.shared_profile(kernel, cpu)
    if recorded is not None:
        assert probed["kernel_release"] == recorded["kernel_release"]
        assert probed["registers"] == recorded["registers"]
        # ../shared/profiles predate the 32-bit vCPUs (keys ending in aarch32).
        assert {k: v for k, v in probed["cpreg_lists"].items()
                if not k.endswith("aarch32")} == recorded["cpreg_lists"]
    # The measured facts (docs/design.md#list-sizes), for every kernel (7.2 has no recorded
    # profile).
    assert probed["registers"]["PSCI_VERSION"] == REFERENCE_PSCI[kernel]
    assert len(probed["registers"]) == REFERENCE_FW_COUNT[kernel]
    if kernel == "7.2":
        assert probed["registers"]["VENDOR_HYP_BMAP_2"] == 0  # listed since 6.15, reset to 0
    expected_keys = (
        ["none", "pmu", "pauth", "sve", "pmu+pauth+sve"] if cpu == "max" else ["none", "pmu"]
    )
    # 32-bit vCPUs where KVM has 32-bit EL1: with pointer auth wherever the host has it.
    assert probed["kvm"]["capabilities"]["el1_32bit"] == EL1_32BIT[cpu]
    if EL1_32BIT[cpu]:
        expected_keys += (["pauth+aarch32", "pmu+pauth+aarch32"] if cpu == "max"
                          else ["aarch32", "pmu+aarch32"])
    assert list(probed["cpreg_lists"]) == expected_keys
    for key, size in REFERENCE_LIST_SIZES[kernel].items():
        if key in probed["cpreg_lists"]:
            assert len(probed["cpreg_lists"][key]) == size, key


@pytest.mark.parametrize(("kernel", "cpu"), COMBOS, ids=IDS)
def test_probe_matches_the_committed_probed_profile(
    nested_results: dict[str, harness.BootResult], kernel: str, cpu: str
) -> None:
    """tests/data/probed-profiles/ (which the engine's tests may use) is what the kernels say;
    after a QEMU or kernel change, rerun scripts/regenerate-probed-profiles."""
    path = harness.REPO_ROOT / "tests" / "data" / "probed-profiles" / f"{kernel}__{cpu}.json"
    committed = json.loads(path.read_text())
    probed = _result(nested_results, kernel, cpu).probe_profile()
    for key in ("kernel_release", "registers", "cpreg_lists", "id_registers", "cache_geometry",
                "id_writable_masks", "id_registers_features", "feature_values", "sve_lengths",
                "kvm"):
        assert probed.get(key) == committed.get(key), f"{path.name}: {key} differs"


@pytest.mark.parametrize("kernel", harness.KERNELS)
def test_lists_do_not_depend_on_the_cpu_model(
    nested_results: dict[str, harness.BootResult], kernel: str
) -> None:
    """With the same features, max and cortex-a57 list the same ids (docs/design.md#list-sizes)."""
    lists = {
        cpu: _result(nested_results, kernel, cpu).probe_profile()["cpreg_lists"]
        for cpu in harness.CPUS
    }
    for key in ("none", "pmu"):
        assert lists["max"][key] == lists["a57"][key], key


@pytest.mark.parametrize(("kernel", "cpu"), COMBOS, ids=IDS)
def test_probe_profile_is_complete_and_valid(
    nested_results: dict[str, harness.BootResult], kernel: str, cpu: str
) -> None:
    result = _result(nested_results, kernel, cpu)
    data = result.probe_profile()
    profile = HostProfile.from_dict(data)
    assert profile.kernel_release == result.release
    assert profile.machine == "aarch64"
    assert re.fullmatch(r"[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}", data["boot_id"])
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", data["probed_at"])
    # Observed: before the per-CPU target table went away (6.12 here), KVM_ARM_PREFERRED_TARGET
    # named the Cortex-A57; the reference's "GENERIC_V8 on the emulated CPUs" holds for max.
    old_target = cpu == "a57" and kernel in ("5.10", "6.1")
    assert data["kvm"]["preferred_target"] == ("CORTEX_A57" if old_target else "GENERIC_V8")
    default = "pmu+pauth+sve" if cpu == "max" else "pmu"
    assert data["id_registers_features"] == default

    id_regs = profile.id_registers or {}
    assert id_regs["MIDR_EL1"] == MIDR[cpu]
    # ID registers as the -cpu host vCPU sees them: SVE and pointer auth only on max.
    sve_field = id_regs["ID_AA64PFR0_EL1"] >> 32 & 0xF
    assert (sve_field != 0) == (cpu == "max")
    pmu_ver = id_regs["ID_AA64DFR0_EL1"] >> 8 & 0xF
    assert pmu_ver != 0  # PMU_V3 is in both default feature sets

    cache = profile.cache_geometry or {}
    ccsidr = [name for name in cache if name.startswith(regs.CCSIDR_PREFIX)]
    assert len(ccsidr) == REFERENCE_CCSIDR_COUNT[kernel]
    assert regs.CLIDR_EL1 in cache
    demux = [
        i for i in (profile.cpreg_lists or {})[default]
        if regs.reg_class(i) == regs.RegClass.DEMUX
    ]
    assert sorted(regs.cache_geometry_id(n) for n in ccsidr) == demux

    # The fields KVM derives from the vCPU's features (sys_regs.c), per feature set read: no
    # PMU version without a PMU (from 5.11: Debian's 5.10 shows the host's PMU version to a
    # vCPU without one, as it lists the PMU registers for it), no SVE field or ID_AA64ZFR0_EL1
    # without SVE, no address or generic authentication without pointer auth.
    for key, delta in data["feature_values"].items():
        values = {**id_regs, **delta}
        features = set(key.split("+")) - {"none"}
        pmu_ver = values["ID_AA64DFR0_EL1"] >> 8 & 0xF
        assert (pmu_ver != 0) == ("pmu" in features or kernel == "5.10"), key
        assert (values["ID_AA64PFR0_EL1"] >> 32 & 0xF != 0) == ("sve" in features), key
        if cpu == "max":
            auth = values["ID_AA64ISAR1_EL1"] & 0xFF000FF0  # APA, API, GPA, GPI
            assert (auth != 0) == ("pauth" in features), key
    assert (data.get("sve_lengths") is not None) == (cpu == "max")
    if cpu == "max":
        assert 128 in data["sve_lengths"]

    masks = data.get("id_writable_masks")
    assert (masks is not None) == HAS_WRITABLE_MASKS[kernel]
    if masks is not None:
        assert set(id_regs) <= set(masks)
        assert any(masks.values())  # some ID register fields are writable on 6.8+


@pytest.mark.parametrize(("kernel", "cpu"), COMBOS, ids=IDS)
def test_conformance_finds_no_disagreement(
    nested_results: dict[str, harness.BootResult], kernel: str, cpu: str
) -> None:
    result = _result(nested_results, kernel, cpu)
    step = result.step("conformance")
    disagreements = [line for line in step.stdout.splitlines() if line.startswith("DISAGREE")]
    assert step.rc == 0 and not disagreements, (
        f"{result.label}: conformance exit {step.rc}: engine and kernel disagree:\n"
        + step.stdout + step.stderr
    )
    assert re.search(r"0 disagreement\(s\)", step.stdout)


@pytest.mark.parametrize(("kernel", "cpu"), COMBOS, ids=IDS)
def test_conformance_exercises_acceptance_and_refusal(
    nested_results: dict[str, harness.BootResult], kernel: str, cpu: str
) -> None:
    """The check is not vacuous: real SETs both succeed and fail, on every firmware register
    the kernel lists, and unlisted ones are refused with ENOENT."""
    result = _result(nested_results, kernel, cpu)
    step = result.step("conformance-json")
    assert step.rc == 0, step.stdout + step.stderr
    report: dict[str, Any] = json.loads(step.stdout)
    checks = report["checks"]
    listed = set(result.probe_profile()["registers"])
    assert {c["register"] for c in checks} == {r.name for r in regs.FIRMWARE_REGISTERS}
    for name in listed:
        outcomes = {c["kernel"] == "accepted" for c in checks if c["register"] == name}
        assert outcomes == {True, False}, name
    for check in checks:
        if check["register"] not in listed:
            assert check["kernel"] == "ENOENT" and check["host_value"] is None
    assert report["disagreements"] == 0 and report["unverified"] == 0


@pytest.mark.parametrize(("kernel", "cpu"), COMBOS, ids=IDS)
def test_kvm_layer_error_paths_and_rehearsal_on_real_kvm(
    nested_results: dict[str, harness.BootResult], kernel: str, cpu: str
) -> None:
    result = _result(nested_results, kernel, cpu)
    step = result.step("checks")
    report = json.loads(step.stdout)
    failed = [c for c in report["checks"] if not c["ok"]]
    assert step.rc == 0 and not failed, json.dumps(failed, indent=1) + step.stderr
    assert len(report["checks"]) >= 12
    write = result.step("probe-write")
    assert write.rc == 0 and "wrote /run/psci-hook/host.json" in write.stdout, write.stderr
    assert f"kernel {result.release} (aarch64)" in write.stdout


# docs/design.md#real-migrations, every value incompatibility: the registers each destination kernel
# refused when real QEMU (7.2.22 and 11.1.3, L2 -cpu host on L1 -cpu max) loaded a state saved
# under another kernel; X -> X loaded. Keys: (source, destination).
_NORMALISED_CACHE = {"CCSIDR_0", "CCSIDR_1", "CCSIDR_2", "CLIDR_EL1"}
_DEBUG_PMU = {"ID_DFR0_EL1", "ID_AA64DFR0_EL1"}
REAL_QEMU_VALUE_REFUSALS = {
    ("5.10", "6.1"): _DEBUG_PMU | {"SMCCC_ARCH_WORKAROUND_3"},
    ("5.10", "6.12"): {"ID_AA64MMFR1_EL1", "SMCCC_ARCH_WORKAROUND_3"},
    ("5.10", "7.2"): {"SMCCC_ARCH_WORKAROUND_3"},
    ("6.1", "5.10"): _DEBUG_PMU | {"PSCI_VERSION"},
    ("6.1", "6.12"): {"ID_AA64MMFR1_EL1"},
    ("6.1", "7.2"): set(),
    ("6.12", "5.10"): _NORMALISED_CACHE | _DEBUG_PMU | {"ID_AA64MMFR1_EL1", "PSCI_VERSION"},
    ("6.12", "6.1"): _NORMALISED_CACHE | _DEBUG_PMU | {"ID_AA64MMFR1_EL1"},
    ("6.12", "7.2"): set(),
    ("7.2", "5.10"): _NORMALISED_CACHE | _DEBUG_PMU | {"ID_AA64MMFR1_EL1", "PSCI_VERSION"},
    ("7.2", "6.1"): _NORMALISED_CACHE | _DEBUG_PMU | {"ID_AA64MMFR1_EL1", "PSCI_VERSION"},
    ("7.2", "6.12"): {"PSCI_VERSION"},
    **{(k, k): set() for k in harness.KERNELS},
}
# The values that table names (incoming, destination's own).
REAL_QEMU_VALUES = {
    ("5.10", "6.1", "SMCCC_ARCH_WORKAROUND_3"): (2, 0),
    ("5.10", "6.1", "ID_DFR0_EL1"): (0x4010009, 0x5010009),
    ("5.10", "6.1", "ID_AA64DFR0_EL1"): (0x10305409, 0x10305506),
    ("5.10", "6.12", "ID_AA64MMFR1_EL1"): (0x1010211122, 0x11010211122),
    ("6.1", "6.12", "ID_AA64MMFR1_EL1"): (0x1010211122, 0x11010211122),
    ("7.2", "6.12", "PSCI_VERSION"): (0x10003, 0x10001),
    ("6.12", "6.1", "CCSIDR_0"): (0x2, 0x701FE00A),
    ("6.12", "6.1", "CLIDR_EL1"): (0x2000021, None),
}


@pytest.mark.parametrize("kernel", harness.KERNELS)
def test_rehearsal_reproduces_real_qemu_value_refusals(
    nested_results: dict[str, harness.BootResult], kernel: str
) -> None:
    """On each kernel's real KVM, the rehearsal of a -cpu host guest from every other kernel
    refuses exactly the registers real QEMU's migrations were refused on (max CPU)."""
    result = _result(nested_results, kernel, "max")
    step = result.step("cross-rehearsal")
    assert step.rc == 0, step.stderr
    report = json.loads(step.stdout)
    assert report["destination"] == f"{kernel}__max"
    for source in harness.KERNELS:
        refusals = report["sources"][f"{source}__max"]
        assert {r["register"] for r in refusals} == REAL_QEMU_VALUE_REFUSALS[(source, kernel)], (
            f"{source} -> {kernel}: {refusals}")
        assert all(r["errno"] == "EINVAL" for r in refusals)
        for r in refusals:
            expected = REAL_QEMU_VALUES.get((source, kernel, r["register"]))
            if expected is not None:
                assert r["attempted"] == expected[0], r
                if expected[1] is not None:
                    assert r["own"] == expected[1], r


def _value_name(reg_id: int) -> str:
    if regs.reg_class(reg_id) == regs.RegClass.DEMUX:
        return regs.ccsidr_name(reg_id & 0xFF)
    return regs.firmware_name(reg_id) if regs.is_firmware(reg_id) else regs.register_name(reg_id)


@pytest.mark.parametrize("kernel", harness.KERNELS)
def test_engine_value_findings_agree_with_the_real_kernel(
    nested_results: dict[str, harness.BootResult], kernel: str
) -> None:
    """The engine's value verdicts (firmware, ID registers, cache geometry) for a -cpu host guest
    from every kernel against this destination, next to what this kernel's KVM really did:
    a value the engine calls rejected was refused, and no refused value is called accepted."""
    from psci_hook.engine import GuestState, decide

    step = _result(nested_results, kernel, "max").step("cross-rehearsal")
    report = json.loads(step.stdout)
    data = harness.REPO_ROOT / "tests" / "data" / "probed-profiles"
    destination = HostProfile.from_dict(json.loads((data / f"{kernel}__max.json").read_text()))
    problems = []
    for source_kernel in harness.KERNELS:
        source = HostProfile.from_dict(
            json.loads((data / f"{source_kernel}__max.json").read_text()))
        refused = {r["register"] for r in report["sources"][f"{source_kernel}__max"]}
        decision = decide(GuestState.booted_on(source), destination, "tolerant")
        outcomes = {_value_name(f.reg_id): f.outcome for f in decision.findings
                    if f.reg_id is not None and f.outcome in ("accepted", "rejected",
                                                              "unverified")}
        for name, outcome in outcomes.items():
            if outcome == "rejected" and name not in refused:
                problems.append(f"{source_kernel} -> {kernel}: engine rejects {name}, "
                                "the kernel accepted it")
        for name in refused:
            if outcomes.get(name, "accepted") == "accepted":
                problems.append(f"{source_kernel} -> {kernel}: the kernel refused {name}, "
                                f"the engine says {outcomes.get(name, 'nothing')}")
    assert not problems, "\n".join(problems)


# ---------------------------------------------------------------------------------------------
# The real hook file (hooks/50-psci-hook) on real arm64 KVM, as libvirt runs it (guest_hook.py):
# no [host] profile, so the boot-time cache; first missing (inline probe), then warm.
# ---------------------------------------------------------------------------------------------

# docs/design.md#real-migrations, QEMU 7.2.22 (the legacy generation, which the hook assumes
# here: the guest has no cached QEMU version), L2 -cpu host: the pairs that loaded. Every other
# pair failed, on its value refusals (REAL_QEMU_VALUE_REFUSALS) or on the list length, "(len)":
REAL_QEMU_LOADED = {("6.1", "7.2"), *((k, k) for k in harness.KERNELS)}
REAL_QEMU_LENGTH_FAILURES = {("6.1", "5.10"), ("6.12", "5.10"), ("6.12", "6.1"), ("6.12", "7.2"),
                             ("7.2", "5.10"), ("7.2", "6.1")}
_VETO_LINE = re.compile(r"psci-hook: VETO (?P<code>[A-Z_0-9]+) domain (?P<domain>\S+): "
                        r"(?P<register>[A-Z][A-Z_0-9]*)?")


def _hook_report(result: harness.BootResult) -> dict[str, Any]:
    step = result.step("hook")
    assert step.rc == 0, step.stderr
    report: dict[str, Any] = json.loads(step.stdout)
    assert report["destination"] == result.label and report["release"] == result.release
    return report


def _blocking_registers(event: dict[str, Any]) -> set[str]:
    from psci_hook.codes import Severity, severity

    return {f["register"] for f in event.get("findings", [])
            if f.get("register") and severity(f["code"]) == Severity.BLOCKING}


@pytest.mark.parametrize(("kernel", "cpu"), COMBOS, ids=IDS)
def test_hook_probes_inline_writes_the_cache_and_decides_the_same_warm(
    nested_results: dict[str, harness.BootResult], kernel: str, cpu: str
) -> None:
    """With /run/psci-hook/host.json missing the real hook probes this kernel's KVM inline and
    writes the cache (this boot's, this kernel's, mode 0644); the next run reads it (the file is
    not rewritten) and decides exactly the same. Every run sends its audit event (structlog)."""
    result = _result(nested_results, kernel, cpu)
    runs = _hook_report(result)["runs"]
    assert f"{kernel}__{cpu}" in runs and len(runs) == len(harness.KERNELS)
    for source, run in runs.items():
        cold, warm = run["cold"], run["warm"]
        assert cold["cache"] == {**cold["cache"], "exists": True, "this_boot": True,
                                 "kernel_release": result.release, "mode": "0o644"}, source
        assert warm["cache"]["mtime_ns"] == cold["cache"]["mtime_ns"], source
        assert cold["event"] is not None and warm["event"] is not None, source
        assert (cold["rc"], cold["stderr"], bool(cold["stdout"])) == \
            (warm["rc"], warm["stderr"], bool(warm["stdout"])), source
        for key in ("decision", "codes", "rehearsal", "findings", "destination"):
            assert cold["event"].get(key) == warm["event"].get(key), (source, key)
        assert cold["event"]["rehearsal"] in ("accepted", "refused"), cold["event"]


@pytest.mark.parametrize(("kernel", "cpu"), COMBOS, ids=IDS)
def test_hook_allows_and_annotates_the_control(
    nested_results: dict[str, harness.BootResult], kernel: str, cpu: str
) -> None:
    """A guest booted on this very kernel and CPU: allowed (exit 0, no stderr), the rehearsal of
    all its values accepted by the real KVM, and the domain XML annotated with the new record."""
    from psci_hook.domainxml import parse_domain
    from psci_hook.record import read_record

    result = _result(nested_results, kernel, cpu)
    for which, run in _hook_report(result)["runs"][f"{kernel}__{cpu}"].items():
        assert (run["rc"], run["stderr"]) == (0, ""), (which, run["stderr"])
        assert run["event"]["decision"] == "allow" and run["event"]["rehearsal"] == "accepted"
        record = read_record(parse_domain(run["stdout"].encode()).root)
        assert record is not None, which
        assert (record.origin.event, record.origin.kernel) == ("migrated", result.release)
        assert [(h.op, h.verdict) for h in record.history] == [("migrate", "allow")]
        probed = result.probe_profile()
        assert {regs.firmware_name(i): v for i, v in record.state.registers.items()} == \
            probed["registers"]


@pytest.mark.parametrize("kernel", harness.KERNELS)
def test_hook_decides_every_source_as_real_qemu_did(
    nested_results: dict[str, harness.BootResult], kernel: str
) -> None:
    """max CPU: the real hook allows exactly the pairs real QEMU loaded; it vetoes the rest, the
    value failures naming in its stderr line a register real QEMU was refused on (found by the
    rehearsal on this kernel's KVM), every register real QEMU was refused on among its blocking
    findings, and the list-length failures with CPREG_COUNT."""
    result = _result(nested_results, kernel, "max")
    problems = []
    for source in harness.KERNELS:
        pair = (source, kernel)
        for which, run in _hook_report(result)["runs"][f"{source}__max"].items():
            what = f"{source} -> {kernel} ({which} cache)"
            event = run["event"]
            if pair in REAL_QEMU_LOADED:
                if (run["rc"], run["stderr"], event["decision"]) != (0, "", "allow") or \
                        not run["stdout"].startswith("<domain type='kvm'>"):
                    problems.append(f"{what}: real QEMU loaded it, the hook said exit "
                                    f"{run['rc']} {run['stderr'].strip()!r}")
                continue
            line = run["stderr"]
            match = _VETO_LINE.match(line)
            if run["rc"] != 1 or run["stdout"] or not match or line.count("\n") != 1:
                problems.append(f"{what}: real QEMU failed, the hook said exit {run['rc']} "
                                f"{line.strip()!r}")
                continue
            refused = REAL_QEMU_VALUE_REFUSALS[pair]
            length_failure = pair in REAL_QEMU_LENGTH_FAILURES
            if length_failure and match["code"] != "CPREG_COUNT":
                # QEMU fails on the list length before it sets any register: so does the line.
                problems.append(f"{what}: real QEMU failed first on the list length, the hook "
                                f"said {line.strip()!r}")
            if refused:
                # The kernel's refusal is in the decision; without a list failure before it,
                # the line names a register real QEMU was refused on (with the model's code
                # when the model predicted it, else REHEARSAL_REFUSED).
                if event["rehearsal"] != "refused" or "REHEARSAL_REFUSED" not in event["codes"]:
                    problems.append(f"{what}: expected a rehearsal refusal, got "
                                    f"{event['rehearsal']} {event['codes']}")
                if not length_failure and match["register"] not in refused:
                    problems.append(f"{what}: expected a veto on one of {sorted(refused)}, "
                                    f"got {line.strip()!r}")
                missing = refused - _blocking_registers(event) - {match["register"]}
                if missing and "more_findings" not in event:
                    problems.append(f"{what}: real QEMU was refused on {sorted(missing)}, "
                                    f"the hook's blocking findings do not name them: "
                                    f"{event['findings']}")
            if pair in REAL_QEMU_LENGTH_FAILURES and "CPREG_COUNT" not in event["codes"]:
                problems.append(f"{what}: real QEMU failed on the list length, the hook's codes "
                                f"are {event['codes']}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(("source", "destination", "register", "offline", "kernel_refusal",
                          "line_code"), [
    # 6.12 exposes FEAT_HCX and refuses HCX=0; its ID registers are writable (6.7+), so the
    # offline engine can only call the value unverified: the rehearsal settles it.
    ("6.1", "6.12", "ID_AA64MMFR1_EL1", "ID_REG_UNVERIFIED", "guest=0x1010211122 "
     "destination=0x11010211122", "REHEARSAL_REFUSED"),
    # 7.x's PSCI 1.3 on 6.12 (1.1): the engine predicts PSCI_UNSUPPORTED, the kernel agrees.
    ("7.2", "6.12", "PSCI_VERSION", "PSCI_UNSUPPORTED", "guest=1.3 destination=1.1",
     "PSCI_UNSUPPORTED"),
    # 5.10's WORKAROUND_3 = NOT_REQUIRED on 6.1 (NOT_AVAIL): QEMU sets ID registers first, so
    # the rehearsal stops at ID_DFR0_EL1; WORKAROUND_3 stays a blocking model finding.
    ("5.10", "6.1", "SMCCC_ARCH_WORKAROUND_3", "WA_LEVEL_TOO_HIGH", "", ""),
])
def test_hook_veto_names_what_real_qemu_was_refused_on(
    nested_results: dict[str, harness.BootResult], source: str, destination: str,
    register: str, offline: str, kernel_refusal: str, line_code: str,
) -> None:
    """The pairs real QEMU failed on values (docs/design.md#real-migrations), one by one: what the
    offline engine
    says (tests/data/probed-profiles, legacy QEMU) and what the real hook said on real KVM."""
    from psci_hook.engine import GuestState, decide

    data = harness.REPO_ROOT / "tests" / "data" / "probed-profiles"
    guest = HostProfile.from_dict(json.loads((data / f"{source}__max.json").read_text()))
    host = HostProfile.from_dict(json.loads((data / f"{destination}__max.json").read_text()))
    decision = decide(GuestState.booted_on(guest), host, "legacy")
    assert offline in {f.code for f in decision.findings if f.register == register}
    runs = _hook_report(_result(nested_results, destination, "max"))["runs"][f"{source}__max"]
    for which, run in runs.items():
        event = run["event"]
        assert run["rc"] == 1, (which, run["stderr"])
        if kernel_refusal:  # the stderr line names this register and both values: the model's
            # code when it predicted the refusal (confirmed by the kernel), else the rehearsal's
            assert run["stderr"].startswith(
                f"psci-hook: VETO {line_code} domain from-{source}-max: "
                f"{register} {kernel_refusal}: "), run["stderr"]
            assert "REHEARSAL_REFUSED" in event["codes"] and "MODEL_DEFECT" not in \
                event["codes"], event["codes"]
        else:
            assert {"code": offline, "register": register} in [
                {k: f.get(k) for k in ("code", "register")} for f in event["findings"]], event


# docs/design.md#real-migrations, with pmu=off (QEMU 7.2.22): among these kernels only 6.1 -> 7.2
# (and each kernel to itself) loads; 5.10 -> any fails on the list length, the downgrades on the
# index or the length, 6.1 -> 6.12 on ID_AA64MMFR1_EL1 (HCX), 7.2 -> 6.12 on PSCI_VERSION 1.3.
REAL_QEMU_PMU_OFF_LOADED = REAL_QEMU_LOADED
REAL_QEMU_PMU_OFF_VALUE_REFUSALS = {("6.1", "6.12"): {"ID_AA64MMFR1_EL1"},
                                    ("7.2", "6.12"): {"PSCI_VERSION"}}


@pytest.mark.parametrize(("kernel", "cpu"), COMBOS, ids=IDS)
def test_hook_allows_every_guest_on_the_host_it_was_recorded_on(
    nested_results: dict[str, harness.BootResult], kernel: str, cpu: str
) -> None:
    """The issue's false vetoes: guests with PMU, SVE or pointer authentication turned off (and
    explicit SVE vector lengths), recorded with their own vCPU's values on this very host, are
    allowed by the real hook, the real KVM accepting every value in the rehearsal; the
    annotation keeps the guest's features."""
    from psci_hook.domainxml import parse_domain
    from psci_hook.record import read_record

    result = _result(nested_results, kernel, cpu)
    own = _hook_report(result)["own"]
    expected = {"default", "pmu-off"} | (
        {"sve-off", "pauth-off", "sve-lengths"} if cpu == "max" else set()) | (
        {"aarch32", "aarch32-pmu-off"} if EL1_32BIT[cpu] else set())
    assert set(own) == expected
    pauth = {"pauth"} if cpu == "max" else set()
    features = {"default": {"pmu", "pauth", "sve"} if cpu == "max" else {"pmu"},
                "pmu-off": {"pauth", "sve"} if cpu == "max" else set(),
                "sve-off": {"pmu", "pauth"}, "pauth-off": {"pmu", "sve"},
                "sve-lengths": {"pmu", "pauth", "sve"},
                "aarch32": {"aarch32", "pmu"} | pauth, "aarch32-pmu-off": {"aarch32"} | pauth}
    for variant, run in own.items():
        assert (run["rc"], run["stderr"]) == (0, ""), (variant, run["stderr"])
        assert run["event"]["rehearsal"] == "accepted", (variant, run["event"])
        record = read_record(parse_domain(run["stdout"].encode()).root)
        assert record is not None and set(record.state.features) == features[variant], variant
        # The SVE vector lengths its QEMU gave it: all 16 TCG offers, or up to the one named.
        lengths = record.state.sve_lengths
        if "sve" not in features[variant]:
            assert lengths is None, variant
        else:
            assert lengths == ((128,) if variant == "sve-lengths"
                               else tuple(range(128, 2049, 128))), variant


@pytest.mark.parametrize("kernel", harness.KERNELS)
def test_hook_decides_pmu_off_guests_as_real_qemu_did(
    nested_results: dict[str, harness.BootResult], kernel: str
) -> None:
    """max CPU, `<pmu state='off'/>` guests stamped from every kernel's probed profile (with the
    values of a vCPU without PMU): the real hook allows exactly the pairs real QEMU 7.2 loaded
    with pmu=off, and vetoes the value failures on a register real QEMU was refused on."""
    result = _result(nested_results, kernel, "max")
    problems = []
    for source in harness.KERNELS:
        run = _hook_report(result)["pmu_off"][f"{source}__max"]
        pair, what = (source, kernel), f"pmu=off {source} -> {kernel}"
        if pair in REAL_QEMU_PMU_OFF_LOADED:
            if (run["rc"], run["stderr"]) != (0, ""):
                problems.append(f"{what}: real QEMU loaded it, the hook said {run['stderr']!r}")
            continue
        if run["rc"] != 1:
            problems.append(f"{what}: real QEMU failed, the hook said exit {run['rc']}")
            continue
        refused = REAL_QEMU_PMU_OFF_VALUE_REFUSALS.get(pair)
        match = _VETO_LINE.match(run["stderr"])
        if refused and (not match or match["register"] not in refused):
            problems.append(f"{what}: expected a veto on {sorted(refused)}, got "
                            f"{run['stderr'].strip()!r}")
    assert not problems, "\n".join(problems)


def test_hook_allows_a_kvm_psci_version_1_1_guest_from_7_2_on_6_12(
    nested_results: dict[str, harness.BootResult]
) -> None:
    """A 7.2 guest started with kvm-psci-version=1.1 (<qemu:commandline> -global) is recorded
    with PSCI 1.1 and allowed on 6.12 (real QEMU 11.1.3 loaded it); without the property the
    veto line says how to make it movable."""
    report = _hook_report(_result(nested_results, "6.12", "max"))
    capped = report["psci_1_1"]["7.2__max"]
    assert (capped["rc"], capped["stderr"]) == (0, ""), capped["stderr"]
    plain = report["runs"]["7.2__max"]["warm"]
    assert plain["rc"] == 1 and plain["stderr"].startswith("psci-hook: VETO PSCI_UNSUPPORTED")
    assert "; remedy: cold-boot the guest with kvm-psci-version=1.1" in plain["stderr"]
    assert plain["event"]["remedy"].startswith("cold-boot the guest with kvm-psci-version=1.1")


@pytest.mark.parametrize("kernel", harness.KERNELS)
def test_hook_decides_cross_cpu_moves_as_the_kernel_does(
    nested_results: dict[str, harness.BootResult], kernel: str
) -> None:
    """One kernel, the other emulated CPU: a cortex-a57 guest arriving where -cpu host is `max`
    gains pointer auth and SVE and brings another MIDR and ID registers: vetoed (the kernel's
    own refusal in the rehearsal from 6.7 on, where the model can only say unverified; like
    real QEMU's Cortex-A76 -> max). A `max` guest arriving on the a57 would lose them:
    FEATURE_MISSING (real QEMU failed max -> a76 on the list length)."""
    to_max = _hook_report(_result(nested_results, kernel, "max"))["cross_cpu"][f"{kernel}__a57"]
    assert to_max["rc"] == 1, to_max["stderr"]
    assert "FEATURE_GAINED" in to_max["event"]["codes"]
    assert to_max["event"]["rehearsal"] == "refused", to_max["event"]
    to_a57 = _hook_report(_result(nested_results, kernel, "a57"))["cross_cpu"][f"{kernel}__max"]
    assert to_a57["rc"] == 1 and "FEATURE_MISSING" in to_a57["event"]["codes"], to_a57
