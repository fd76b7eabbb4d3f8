"""The engine against what real QEMU did (docs/design.md#real-migrations), on profiles probed from
same real kernels (tests/data/probed-profiles: ID registers and cache geometry included).

Real QEMU 7.2 (legacy) and 11.1 (tolerant) loaded a `-cpu host` guest saved under one kernel on
every other kernel (`max` CPU). The engine alone must veto every pair real QEMU failed, except
where it says `unverified` about the very register the kernel refused (only the rehearsal on the
destination's own KVM can settle those; tests/nested shows it does), and allow every pair that
loaded.
"""

from __future__ import annotations

import pytest

from psci_hook.engine import Decision, GuestState, RequestedVcpu, decide
from psci_hook.profile import HostProfile, load_profile
from tests.helpers import REPO
from tests.real_qemu import REAL_QEMU_72, REAL_QEMU_111

PROBED = REPO / "tests" / "data" / "probed-profiles"
KERNELS = ("5.10", "6.1", "6.12", "7.2")

LEGACY = REAL_QEMU_72["default"]
TOLERANT = REAL_QEMU_111["default"]


@pytest.fixture(scope="module")
def probed() -> dict[str, HostProfile]:
    return {k: load_profile(PROBED / f"{k}__max.json") for k in KERNELS}


@pytest.mark.parametrize(("generation", "table"), [("legacy", LEGACY), ("tolerant", TOLERANT)])
def test_engine_agrees_with_real_qemu(probed: dict[str, HostProfile], generation: str,
                                      table: dict[tuple[str, str], set[str] | None]) -> None:
    decisions = {pair: decide(GuestState.booted_on(probed[pair[0]]), probed[pair[1]], generation)
                 for pair in table}
    # Exactly one real failure is left to the rehearsal: HCX in ID_AA64MMFR1_EL1 on 6.12.
    assert pairs_left_to_the_rehearsal(table, decisions, generation) == [("6.1", "6.12")]


def pairs_left_to_the_rehearsal(table: dict[tuple[str, str], set[str] | None],
                                decisions: dict[tuple[str, str], Decision],
                                label: str) -> list[tuple[str, str]]:
    """Check each engine decision against real QEMU: a pair that loaded is allowed; one refused
    is vetoed on what QEMU refused (a list check, or registers it refused), or else the engine
    calls the refused registers unverified, and the pair is left to the rehearsal."""
    left = []
    for (source, destination), refused in table.items():
        decision = decisions[source, destination]
        pair = f"{source} -> {destination} ({label})"
        if refused is None:
            assert not decision.vetoed, f"{pair} loaded in real QEMU: {decision.codes}"
            continue
        if decision.vetoed:
            value_refusals = {f.register for f in decision.findings if f.outcome == "rejected"}
            assert refused & {"len", "idx"} or value_refusals <= refused, pair
            continue
        unverified = {f.register for f in decision.findings if f.outcome == "unverified"}
        assert refused <= unverified, f"{pair} failed in real QEMU on {refused}"
        left.append((source, destination))
    return left


def test_probed_profiles_carry_what_the_engine_compares(probed: dict[str, HostProfile]) -> None:
    for kernel, profile in probed.items():
        assert profile.id_registers and profile.cache_geometry, kernel
        assert profile.cpreg_list(frozenset({"pmu", "pauth", "sve"})), kernel


# The same kernels with `-cpu host,pmu=off` on both sides.
PMU_OFF_LEGACY = REAL_QEMU_72["pmu-off"]
PMU_OFF_TOLERANT = REAL_QEMU_111["pmu-off"]


@pytest.mark.parametrize(("generation", "table"), [("legacy", PMU_OFF_LEGACY),
                                                   ("tolerant", PMU_OFF_TOLERANT)])
def test_engine_agrees_with_real_qemu_for_pmu_off_guests(
        probed: dict[str, HostProfile], generation: str,
        table: dict[tuple[str, str], set[str] | None]) -> None:
    """Records of a vCPU without PMU (its own ID values, from the probe's per-feature values)
    against a destination whose QEMU creates the vCPU without PMU too."""
    no_pmu = frozenset({"pauth", "sve"})
    decisions = {}
    for source, destination in table:
        guest = GuestState.booted_on(probed[source], no_pmu)
        assert guest.id_registers is not None, source  # per-feature values in the profile
        decisions[source, destination] = decide(guest, probed[destination], generation,
                                                vcpu=RequestedVcpu(no_pmu))
    assert pairs_left_to_the_rehearsal(table, decisions, f"{generation}, pmu=off") == [
        ("6.1", "6.12")]
