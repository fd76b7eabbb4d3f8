"""psci_hook.probe and ``psci-hook probe``, through the fake KVM of tests/kvmfake.py.

Faking the kernel is acceptable here only because this x86_64 machine cannot run arm64 ioctls;
the probe is checked against real Debian kernels' KVM in tests/nested/test_nested_probe.py.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from psci_hook import cli, kvm
from psci_hook import probe as probe_mod
from psci_hook import registers as regs
from psci_hook.environment import Environment
from psci_hook.profile import HostProfile
from psci_hook.status import ExitStatus
from tests import kvmfake

BOOT_ID = "0b3ad1f3-9e69-4f3c-8a0e-3b0f1c2d4e5f"
NOW = 1_780_000_000.0  # 2026-05-28T20:26:40Z


def fake_uname() -> os.uname_result:
    return os.uname_result(("Linux", "arm-host-1", "6.12.0-test-arm64", "#1 SMP", "aarch64"))


@pytest.fixture
def boot_id(tmp_path: Path) -> Path:
    path = tmp_path / "boot_id"
    path.write_text(BOOT_ID + "\n")
    return path


def probe(fake: kvmfake.FakeKvm, boot_id: Path, run_dir: Path | None = None) -> dict[str, Any]:
    with kvm.Kvm(fake) as handle:
        return probe_mod.probe_host(handle, clock=lambda: NOW, run_dir=run_dir,
                                    boot_id_path=boot_id, uname=fake_uname)


def test_profile_contents(boot_id: Path) -> None:
    fake = kvmfake.FakeKvm()
    data = probe(fake, boot_id)
    assert data["schema"] == "psci-hook.host-profile/v1"
    assert data["kernel_release"] == "6.12.0-test-arm64" and data["machine"] == "aarch64"
    # Every firmware register listed, known or not, with GET's value, in id order.
    assert data["registers"] == {
        "PSCI_VERSION": 0x10001, "SMCCC_ARCH_WORKAROUND_1": 2, "SMCCC_ARCH_WORKAROUND_2": 0,
        "SMCCC_ARCH_WORKAROUND_3": 0, "0x6030000000140004": 7, "STD_BMAP": 1,
        "STD_HYP_BMAP": 1, "VENDOR_HYP_BMAP": 3,
    }
    lists = data["cpreg_lists"]
    assert list(lists) == ["none", "pmu", "pauth", "sve", "pmu+pauth+sve"]
    base = sorted(i for i in kvmfake.DEFAULT_VALUES if i != kvmfake.CORE_X0)
    assert lists["none"] == [regs.format_id(i) for i in base]
    assert lists["pmu"] == [regs.format_id(i) for i in sorted([*base, kvmfake.PMCR])]
    # SVE: ZCR_EL1 is migrated, the SVE class (Z regs, VLS) is not.
    assert lists["sve"] == [regs.format_id(i) for i in sorted([*base, kvmfake.ZCR])]
    assert len(lists["pmu+pauth+sve"]) == len(base) + 3
    # ID registers: named ones in the ID space only; cache geometry: CLIDR and CCSIDR demux.
    assert data["id_registers"] == {"MIDR_EL1": 0x411FD070,
                                    "ID_AA64PFR0_EL1": 0x1100000011111112}
    assert data["cache_geometry"] == {"CLIDR_EL1": 0x0A200023, "CCSIDR_0": 0x701FE00A,
                                      "CCSIDR_1": 0x201FE012}
    assert data["id_registers_features"] == "pmu+pauth+sve"
    masks = data["id_writable_masks"]
    assert masks["ID_AA64PFR0_EL1"] == 0xF0 and masks["MIDR_EL1"] == 0
    assert data["boot_id"] == BOOT_ID
    assert data["probed_at"] == "2026-05-28T20:26:40Z"
    assert data["hostname"] == "arm-host-1"
    assert data["kvm"]["preferred_target"] == "GENERIC_V8"
    assert "qemu_version" not in data
    # The reader accepts it, and keeps the extra keys.
    profile = HostProfile.from_dict(json.loads(json.dumps(data)))
    assert profile.registers[regs.fw_reg_id(4)] == 7
    assert profile.extra["boot_id"] == BOOT_ID
    assert fake.open_fds == set()  # every VM, vCPU and /dev/kvm itself closed


def test_a_fresh_vm_per_feature_set(boot_id: Path) -> None:
    fake = kvmfake.FakeKvm()
    probe(fake, boot_id)
    inits = [fake.features_of(v) for v in fake.vcpus.values()]
    assert inits == [set(), {"pmu"}, {"pauth"}, {"sve"}, {"pmu", "pauth", "sve"}]
    assert len(fake.vms) == 5 and fake.open_fds == set()


def test_feature_sets_follow_the_capabilities(boot_id: Path) -> None:
    caps = {kvm.KVM_CAP_ONE_REG: 1, kvm.KVM_CAP_ARM_PSCI_0_2: 1, kvm.KVM_CAP_ARM_PMU_V3: 1,
            kvm.KVM_CAP_ARM_PTRAUTH_ADDRESS: 1}  # one pointer-auth cap is not enough
    data = probe(kvmfake.FakeKvm(caps=caps), boot_id)
    assert list(data["cpreg_lists"]) == ["none", "pmu"]
    assert data["id_registers_features"] == "pmu"
    assert "id_writable_masks" not in data  # no KVM_ARM_GET_REG_WRITABLE_MASKS
    caps = {kvm.KVM_CAP_ONE_REG: 1, kvm.KVM_CAP_ARM_PSCI_0_2: 1}
    data = probe(kvmfake.FakeKvm(caps=caps), boot_id)
    assert list(data["cpreg_lists"]) == ["none"]


def test_a_feature_the_kernel_will_not_initialise_is_left_out(boot_id: Path) -> None:
    fake = kvmfake.FakeKvm()
    init = fake._kvm_arm_vcpu_init

    def refuse_pauth(fd: int, arg: bytearray) -> int:
        _, bits = kvm.unpack_vcpu_init(arg)
        if bits >> kvm.KVM_ARM_VCPU_PTRAUTH_ADDRESS & 1:
            raise OSError(22, "Invalid argument")
        return init(fd, arg)

    fake._kvm_arm_vcpu_init = refuse_pauth  # type: ignore[method-assign]
    data = probe(fake, boot_id)
    assert list(data["cpreg_lists"]) == ["none", "pmu", "sve", "pmu+sve"]
    assert data["id_registers_features"] == "pmu+sve"
    assert data["kvm"]["feature_errors"] == {
        "pauth": "KVM_ARM_VCPU_INIT: EINVAL (Invalid argument)"}
    assert fake.open_fds == set()


def test_one_usable_feature_is_the_default(boot_id: Path) -> None:
    caps = {kvm.KVM_CAP_ONE_REG: 1, kvm.KVM_CAP_ARM_PSCI_0_2: 1, kvm.KVM_CAP_ARM_SVE: 1}
    fake = kvmfake.FakeKvm(caps=caps)
    data = probe(fake, boot_id)
    assert list(data["cpreg_lists"]) == ["none", "sve"] and len(fake.vms) == 2
    assert data["id_registers_features"] == "sve"


def test_writable_masks_failure_is_not_fatal(boot_id: Path) -> None:
    data = probe(kvmfake.FakeKvm(fail={kvm.KVM_ARM_GET_REG_WRITABLE_MASKS: 22}), boot_id)
    assert "id_writable_masks" not in data
    assert data["id_writable_masks_error"].startswith("KVM_ARM_GET_REG_WRITABLE_MASKS: EINVAL")
    HostProfile.from_dict(data)


def test_no_psci_0_2(boot_id: Path) -> None:
    caps = {kvm.KVM_CAP_ONE_REG: 1}
    with pytest.raises(kvm.KvmError, match="KVM_CAP_ARM_PSCI_0_2"):
        probe(kvmfake.FakeKvm(caps=caps), boot_id)


@pytest.mark.parametrize(("text", "expected"), [
    ("7.2.0\n", "7.2.0"), ("10.0", "10.0"), ("  11.1.3 ", "11.1.3"),
    ("QEMU emulator version 7.2.22", None), ("", None),
])
def test_qemu_version_from_refresh(boot_id: Path, tmp_path: Path, text: str,
                                   expected: str | None) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "qemu-version").write_text(text)
    data = probe(kvmfake.FakeKvm(), boot_id, run_dir)
    assert data.get("qemu_version") == expected
    HostProfile.from_dict(data)


def test_migrated_list() -> None:
    ids = [kvmfake.CORE_X0, kvmfake.SVE_Z0, kvmfake.PSCI, kvmfake.MIDR, kvmfake.MIDR]
    assert probe_mod.migrated_list(ids) == [kvmfake.MIDR, kvmfake.PSCI]


# ---------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def fake_host(monkeypatch: pytest.MonkeyPatch, boot_id: Path) -> Iterator[kvmfake.FakeKvm]:
    fake = kvmfake.FakeKvm()
    monkeypatch.setattr(kvm, "SYSCALLS", fake)
    monkeypatch.setattr(probe_mod, "BOOT_ID_PATH", boot_id)
    monkeypatch.setattr(probe_mod, "UNAME", fake_uname)
    yield fake


def run_cli(argv: list[str], run_dir: Path) -> tuple[int, str, str]:
    env = Environment.for_test(["psci-hook", *argv], run_dir=run_dir, clock=lambda: NOW)
    status = cli.main(env=env)
    assert isinstance(env.stdout, io.BytesIO) and isinstance(env.stderr, io.StringIO)
    return status, env.stdout.getvalue().decode(), env.stderr.getvalue()


def test_probe_json(fake_host: kvmfake.FakeKvm, tmp_path: Path) -> None:
    status, out, err = run_cli(["probe", "--json"], tmp_path / "run")
    assert status == ExitStatus.OK and err == ""
    data = json.loads(out)
    assert data["registers"]["PSCI_VERSION"] == 0x10001
    assert not (tmp_path / "run").exists()  # nothing written without --write


def test_probe_write_and_output(fake_host: kvmfake.FakeKvm, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    output = tmp_path / "out" / "host-copy.json"
    status, out, err = run_cli(["probe", "--write", "--output", str(output)], run_dir)
    assert status == ExitStatus.OK and err == ""
    written = run_dir / "host.json"
    assert json.loads(written.read_text()) == json.loads(output.read_text())
    assert oct(written.stat().st_mode & 0o777) == "0o644"
    assert f"wrote {written}" in out and f"wrote {output}" in out
    assert "PSCI_VERSION             1.1 (0x10001)" in out
    assert "migrated list pmu+pauth+sve: 18 registers" in out
    assert "writable ID registers: ID_AA64PFR0_EL1" in out


@pytest.mark.parametrize(
    ("fake", "status", "text"),
    [
        (kvmfake.FakeKvm(machine="x86_64"), ExitStatus.NOT_AARCH64, "not aarch64"),
        (kvmfake.FakeKvm(open_error=FileNotFoundError(2, "x")), ExitStatus.NO_KVM,
         "/dev/kvm does not exist"),
        (kvmfake.FakeKvm(open_error=PermissionError(13, "x")), ExitStatus.KVM_PERMISSION,
         "permission denied"),
        (kvmfake.FakeKvm(fail={kvm.KVM_GET_REG_LIST: 8}), ExitStatus.KVM_NOT_INITIALISED,
         "ENOEXEC"),
        (kvmfake.FakeKvm(fail={kvm.KVM_GET_REG_LIST: 25}), ExitStatus.KVM_NO_REG_IOCTLS,
         "ENOTTY"),
        (kvmfake.FakeKvm(fail={kvm.KVM_CREATE_VM: 12}), ExitStatus.KVM_ERROR, "ENOMEM"),
    ],
)
def test_probe_errors(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, fake: kvmfake.FakeKvm,
                      status: ExitStatus, text: str) -> None:
    monkeypatch.setattr(kvm, "SYSCALLS", fake)
    code, out, err = run_cli(["probe", "--json"], tmp_path)
    assert code == status and out == ""
    assert err.startswith("psci-hook: probe: ") and text in err and err.count("\n") == 1


def test_probe_unwritable_run_dir(fake_host: kvmfake.FakeKvm, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, _, err = run_cli(["probe", "--write"], blocker / "run")
    assert code == ExitStatus.INTERNAL_ERROR and "cannot write" in err and err.count("\n") == 1
