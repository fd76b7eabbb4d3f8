"""``psci-hook conformance``: its plumbing and reporting, against the fake KVM of kvmfake.py.

Faking is acceptable here only because this x86_64 machine cannot run arm64 ioctls: whether the
engine's rules hold for real kernels is what tests/nested/ checks, on Debian's arm64 kernels.
Here the fake kernel either answers the way the engine predicts (no disagreement) or differs in
known places (each must be reported).
"""

from __future__ import annotations

import errno
import io
import json
import os
from pathlib import Path

import pytest

from psci_hook import cli, engine, kvm
from psci_hook import probe as probe_mod
from psci_hook import registers as regs
from psci_hook.commands import conformance
from psci_hook.environment import Environment
from psci_hook.profile import HostProfile
from psci_hook.status import ExitStatus
from tests import kvmfake

VALUES = {i: v for i, v in kvmfake.DEFAULT_VALUES.items() if i != kvmfake.UNKNOWN_FW}


def uname() -> os.uname_result:
    return os.uname_result(("Linux", "h", "6.12.0-test-arm64", "#1", "aarch64"))


def engine_kernel(profile: HostProfile) -> kvmfake.SetRule:
    """A fake kernel whose SET answers what the engine predicts for ``profile``."""
    def rule(reg_id: int, value: int, vcpu: kvmfake.Vcpu) -> int:
        if not regs.is_firmware(reg_id):
            return kvmfake.same_value_only(reg_id, value, vcpu)
        return 0 if engine.predict_value(reg_id, value, profile) else errno.EINVAL
    return rule


@pytest.fixture
def host(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> kvmfake.FakeKvm:
    boot_id = tmp_path / "boot_id"
    boot_id.write_text("11111111-2222-3333-4444-555555555555\n")
    monkeypatch.setattr(probe_mod, "BOOT_ID_PATH", boot_id)
    monkeypatch.setattr(probe_mod, "UNAME", uname)
    fake = kvmfake.FakeKvm(values=VALUES)
    monkeypatch.setattr(kvm, "SYSCALLS", fake)
    return fake


def probed_profile(fake: kvmfake.FakeKvm) -> HostProfile:
    with kvm.Kvm(fake) as handle:
        return HostProfile.from_dict(probe_mod.probe_host(handle, clock=lambda: 0.0))


def run_cli(argv: list[str], tmp_path: Path) -> tuple[int, str, str]:
    env = Environment.for_test(["psci-hook", *argv], run_dir=tmp_path / "run")
    status = cli.main(env=env)
    assert isinstance(env.stdout, io.BytesIO) and isinstance(env.stderr, io.StringIO)
    return status, env.stdout.getvalue().decode(), env.stderr.getvalue()


def test_agreement(host: kvmfake.FakeKvm, tmp_path: Path) -> None:
    host.set_rule = engine_kernel(probed_profile(kvmfake.FakeKvm(values=VALUES)))
    status, out, err = run_cli(["conformance"], tmp_path)
    assert (status, err) == (ExitStatus.OK, "")
    total = sum(len(engine.candidate_values(r.reg_id)) for r in regs.FIRMWARE_REGISTERS)
    assert out == (
        f"conformance: kernel 6.12.0-test-arm64: {total} values on 8 firmware registers, "
        "0 disagreement(s), 0 the engine cannot predict\n"
    )
    # One fresh VM per value, each closed again.
    assert len(host.vms) == total + 5 and host.open_fds == set()


def test_disagreements_are_reported_and_fail(host: kvmfake.FakeKvm, tmp_path: Path) -> None:
    # A kernel that also takes PSCI 1.3 and any WORKAROUND_1 level: the engine says it refuses.
    profile = probed_profile(kvmfake.FakeKvm(values=VALUES))
    rule = engine_kernel(profile)

    def lenient(reg_id: int, value: int, vcpu: kvmfake.Vcpu) -> int:
        if (reg_id, value) == (kvmfake.PSCI, 0x10003) or (reg_id == kvmfake.WA1 and value < 4):
            return 0
        return rule(reg_id, value, vcpu)

    host.set_rule = lenient
    status, out, err = run_cli(["conformance"], tmp_path)
    assert status == ExitStatus.DISAGREEMENT and err == ""
    lines = out.splitlines()
    assert "DISAGREE: PSCI_VERSION = 0x10003 (1.3): engine predicts refused, kernel accepted; " \
           "this host's value 1.1" in lines
    assert any(line.startswith("DISAGREE: SMCCC_ARCH_WORKAROUND_1 = 0x3") for line in lines)
    assert lines[-1].endswith("2 disagreement(s), 0 the engine cannot predict")


def test_json_and_unlisted_registers(host: kvmfake.FakeKvm, tmp_path: Path) -> None:
    host.set_rule = engine_kernel(probed_profile(kvmfake.FakeKvm(values=VALUES)))
    status, out, _ = run_cli(["conformance", "--json"], tmp_path)
    assert status == ExitStatus.OK
    report = json.loads(out)
    bmap2 = [c for c in report["checks"] if c["register"] == "VENDOR_HYP_BMAP_2"]
    assert bmap2 and all(c["kernel"] == "ENOENT" and c["host_value"] is None
                         and c["predicted"] is False for c in bmap2)
    assert report["disagreements"] == 0


def test_given_profile_and_unknown_register(host: kvmfake.FakeKvm, tmp_path: Path) -> None:
    host.values = dict(kvmfake.DEFAULT_VALUES)  # lists the unknown FW_REG(4) too
    profile = probed_profile(kvmfake.FakeKvm())
    path = tmp_path / "host.json"
    path.write_text(profile.to_json())
    host.set_rule = engine_kernel(profile)
    status, out, _ = run_cli(["conformance", "--profile", str(path)], tmp_path)
    assert status == ExitStatus.OK
    assert regs.fw_reg_id(4) in conformance.firmware_ids(profile)
    assert "9 firmware registers" not in out  # the engine names no values for unknown ones


def test_errors(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(kvm, "SYSCALLS", kvmfake.FakeKvm(machine="x86_64"))
    status, out, err = run_cli(["conformance"], tmp_path)
    assert status == ExitStatus.NOT_AARCH64 and out == ""
    assert err.startswith("psci-hook: conformance: this machine is x86_64")
    monkeypatch.setattr(kvm, "SYSCALLS", kvmfake.FakeKvm())
    status, _, err = run_cli(["conformance", "--profile", str(tmp_path / "none.json")],
                             tmp_path)
    assert status == ExitStatus.BAD_INPUT and "cannot read" in err


def test_check_lines() -> None:
    check = conformance.Check(kvmfake.WA2, 0x12, True, errno.EINVAL, 0)
    assert check.verdict == conformance.Agreement.DISAGREE
    assert check.line() == (
        "DISAGREE: SMCCC_ARCH_WORKAROUND_2 = 0x12 (AVAIL|ENABLED): engine predicts accepted, "
        "kernel refused (EINVAL); this host's value NOT_AVAIL"
    )
    check = conformance.Check(kvmfake.WA2, 0, None, 0, None)
    assert check.verdict == conformance.Agreement.UNPREDICTED
