"""The rehearsal's effect on a decision (psci_hook.rehearsal.reconcile) and its use by the hook.

The kernel's answer is injected here: this machine's /dev/kvm is x86 and must never receive
arm64 ioctls. The real rehearsal on arm64 KVM runs in tests/nested (Debian kernels under QEMU).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from psci_hook import registers as regs
from psci_hook.engine import GuestState, decide
from psci_hook.environment import Environment
from psci_hook.hook import main
from psci_hook.profile import HostProfile
from psci_hook.rehearsal import Result, reconcile, values_to_rehearse
from psci_hook.status import ExitStatus
from tests.hooktools import DOMAIN, CollectingSink, profile_file, stamped, write_config

MMFR1 = regs.SYSREG_BY_NAME["ID_AA64MMFR1_EL1"]
PSCI = regs.PSCI_VERSION.reg_id


def with_id(profile: HostProfile, value: int) -> HostProfile:
    lists = {k: tuple(sorted(set(v) | {MMFR1})) for k, v in (profile.cpreg_lists or {}).items()}
    return profile._replace(id_registers={"ID_AA64MMFR1_EL1": value},
                               cpreg_lists=lists)


def test_values_to_rehearse_are_the_judged_ones_the_stream_carries(
        bundled: dict[str, HostProfile]) -> None:
    guest = GuestState.booted_on(with_id(bundled["6.1__a57"], 5))
    values = values_to_rehearse(guest)
    assert values[MMFR1] == 5 and values[PSCI] == 0x10001
    assert set(values) == set(guest.registers) | {MMFR1}


def test_an_accepted_rehearsal_settles_unverified_and_contradicts_rejected(
        bundled: dict[str, HostProfile]) -> None:
    guest = GuestState.booted_on(with_id(bundled["6.1__a57"], 0x1010211122))
    for dest_name, before in (("6.12__a57", "ID_REG_UNVERIFIED"),
                              ("6.1__a76", "ID_REG_MISMATCH")):
        destination = with_id(bundled[dest_name], 0x11010211122)
        findings = list(decide(guest, destination, "legacy").findings)
        assert before in [f.code for f in findings]
        after = reconcile(findings, Result(frozenset(values_to_rehearse(guest))))
        codes = [f.code for f in after]
        assert before not in codes
        assert ("MODEL_DEFECT" in codes) is (before == "ID_REG_MISMATCH")


def test_a_refusal_the_model_missed_vetoes_and_names_both_values(
        bundled: dict[str, HostProfile]) -> None:
    guest = GuestState.booted_on(bundled["6.1__a57"])
    findings = list(decide(guest, bundled["6.12__a57"], "legacy").findings)
    after = reconcile(findings, Result(frozenset(values_to_rehearse(guest)), PSCI, 0x10001,
                                       0x10000, "EINVAL"))
    first = next(f for f in after if f.blocking)
    assert (first.code, first.register, first.guest_value, first.destination_value) == (
        "REHEARSAL_REFUSED", "PSCI_VERSION", 0x10001, 0x10000)
    assert "MODEL_DEFECT" in [f.code for f in after]  # the model had accepted it
    assert not any(f.code == "ACCEPTED" and f.reg_id == PSCI for f in after)


def test_a_refusal_the_model_predicted_keeps_the_models_code_first(
        bundled: dict[str, HostProfile]) -> None:
    k72 = bundled["6.12__a57"]._replace(registers={
        **bundled["6.12__a57"].registers, PSCI: 0x10003})
    guest = GuestState.booted_on(k72)
    findings = list(decide(guest, bundled["6.12__a57"], "legacy").findings)
    after = reconcile(findings, Result(frozenset(values_to_rehearse(guest)), PSCI, 0x10003,
                                       0x10001, "EINVAL"))
    assert [f.code for f in after if f.blocking] == ["PSCI_UNSUPPORTED", "REHEARSAL_REFUSED"]
    assert "MODEL_DEFECT" not in [f.code for f in after]


def test_an_unverified_value_the_kernel_refused_is_no_model_defect(
        bundled: dict[str, HostProfile]) -> None:
    guest = GuestState.booted_on(with_id(bundled["6.1__a57"], 0x1010211122))
    destination = with_id(bundled["6.12__a57"], 0x11010211122)
    findings = list(decide(guest, destination, "legacy").findings)
    after = reconcile(findings, Result(frozenset(values_to_rehearse(guest)), MMFR1,
                                       0x1010211122, 0x11010211122, "EINVAL"))
    codes = [f.code for f in after]
    assert "REHEARSAL_REFUSED" in codes
    assert "ID_REG_UNVERIFIED" not in codes and "MODEL_DEFECT" not in codes


def test_the_refusal_comes_after_the_list_checks_qemu_fails_first(
        bundled: dict[str, HostProfile]) -> None:
    guest = GuestState.booted_on(bundled["6.12__a57"])
    findings = list(decide(guest, bundled["6.1__a57"], "legacy").findings)
    ccsidr0 = regs.ccsidr_id(0)
    after = reconcile(findings, Result(frozenset(values_to_rehearse(guest)), ccsidr0, 2,
                                       0x701FE00A, "EINVAL"))
    blocking = [f.code for f in after if f.blocking]
    assert blocking[0] == "CPREG_COUNT" and "REHEARSAL_REFUSED" in blocking


def _run(tmp_path: Path, domain: bytes, destination: HostProfile, rehearser: object
         ) -> tuple[ExitStatus, Environment, dict[str, object]]:
    config = write_config(tmp_path / "c.conf", profile_file(tmp_path, destination), None)
    env = Environment.for_test(["hook", "vm1", "migrate", "begin", "-"], domain,
                               {"PSCI_HOOK_CONFIG": str(config)})
    env.rehearser = rehearser
    sink = CollectingSink()
    status = main(env, sink)
    return status, env, sink.events[0]


def test_the_hook_vetoes_on_a_refusal_the_model_missed(
        tmp_path: Path, bundled: dict[str, HostProfile]) -> None:
    seen: list[Mapping[int, int]] = []

    def refuse_psci(features: frozenset[str], values: Mapping[int, int]) -> Result:
        seen.append(values)
        return Result(frozenset(values), PSCI, values[PSCI], 0x10000, "EINVAL")

    domain = stamped(DOMAIN, GuestState.booted_on(bundled["6.1__a57"]))
    status, env, event = _run(tmp_path, domain, bundled["6.12__a57"], refuse_psci)
    assert status == ExitStatus.VETO and seen and seen[0][PSCI] == 0x10001
    err = env.stderr.getvalue()  # type: ignore[attr-defined]
    assert err.startswith("psci-hook: VETO REHEARSAL_REFUSED domain vm1: PSCI_VERSION "
                          "guest=1.1 destination=1.0")
    assert event["rehearsal"] == "refused" and "MODEL_DEFECT" in event["codes"]  # type: ignore[operator]


def test_the_hook_keeps_the_models_verdict_when_the_rehearsal_cannot_run(
        tmp_path: Path, bundled: dict[str, HostProfile]) -> None:
    def broken(features: frozenset[str], values: Mapping[int, int]) -> Result:
        raise PermissionError("/dev/kvm: Permission denied")

    domain = stamped(DOMAIN, GuestState.booted_on(bundled["6.1__a57"]))
    status, env, event = _run(tmp_path, domain, bundled["6.12__a57"], broken)
    assert status == ExitStatus.OK
    assert env.stdout.getvalue().startswith(b"<domain")  # type: ignore[attr-defined]
    assert str(event["rehearsal"]).startswith("not run: /dev/kvm: Permission denied")
