"""Host profiles: the v1 format read, validated with one-line errors, and written back."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from psci_hook import registers as regs
from psci_hook.profile import (
    FEATURE_ORDER as FEATURES,
)
from psci_hook.profile import (
    HostProfile,
    ProfileError,
    bundled_profiles,
    feature_key,
    load_profile,
    loads_profile,
    qemu_generation_for_version,
)
from tests.helpers import SHARED

GOOD: dict[str, Any] = {
    "schema": "psci-hook.host-profile/v1",
    "kernel_release": "6.1.0-26-arm64",
    "machine": "aarch64",
    "registers": {"PSCI_VERSION": 65537, "SMCCC_ARCH_WORKAROUND_1": 2},
    "cpreg_lists": {"pmu": ["0x603000000013c000", "0x6030000000140000",
                            "0x6030000000140001"]},
    "id_registers": {"ID_AA64MMFR1_EL1": 1172529619234},
    "cache_geometry": {"CLIDR_EL1": 33554465, "CCSIDR_0": 2},
    "qemu_version": "7.2.0",
    "hostname": "host-a",
}


def test_round_trip_keeps_every_key() -> None:
    profile = loads_profile(json.dumps(GOOD))
    assert profile.registers[regs.PSCI_VERSION.reg_id] == 65537
    assert profile.extra == {"hostname": "host-a"}
    assert json.loads(profile.to_json()) == GOOD
    assert HostProfile.from_dict(profile.to_dict()) == profile


def test_the_shared_profiles_are_the_bundled_ones() -> None:
    bundled = bundled_profiles()
    real = sorted(SHARED.glob("profiles/*.json"))
    assert real, f"no profiles under {SHARED}"
    for path in real:
        assert bundled[path.stem].read_bytes() == path.read_bytes()
        load_profile(path)


def test_bundled_profiles_load_and_synthetic_ones_say_so() -> None:
    for name, path in bundled_profiles().items():
        profile = load_profile(path)
        assert (profile.extra.get("synthetic") is True) is name.startswith("synthetic-")
        if name.startswith("synthetic-"):
            assert "SYNTHETIC" in str(profile.extra["provenance"])


def _bad(**changes: Any) -> str:
    data = json.loads(json.dumps(GOOD))
    for key, value in changes.items():
        if value is None:
            data.pop(key)
        else:
            data[key] = value
    return json.dumps(data)


@pytest.mark.parametrize(("text", "message"), [
    ("{", "malformed JSON"),
    ("[]", "must be a JSON object"),
    (_bad(schema="psci-hook.host-profile/v2"), "schema must be"),
    (_bad(kernel_release=""), "kernel_release"),
    (_bad(registers=None), "'registers' is required"),
    (_bad(registers={"PSCI_VERSION": -1}), "out of range"),
    (_bad(registers={"PSCI_VERSION": 1.5}), "non-negative integer"),
    (_bad(registers={"PSCI_VERSION": "65537"}), "non-negative integer"),
    (_bad(registers={"PSCI_VERSION": True}), "non-negative integer"),
    (_bad(registers={"PSCI_VERSION": 1 << 64}), "out of range"),
    (_bad(registers={"PSCI_VERSIONS": 1}), "unknown firmware register"),
    (_bad(registers={"0x6030000000130000": 1}), "not a firmware register"),
    (_bad(cpreg_lists={"pmu": ["0x6030000000140001", "0x6030000000140000"]}), "not sorted"),
    (_bad(cpreg_lists={"pmu": ["0x6030000000140000", "0x6030000000140000"]}), "not sorted"),
    (_bad(cpreg_lists={"pmu": ["6030000000140000"]}), "not a register id"),
    (_bad(cpreg_lists={"pmu": [1]}), "must be a string"),
    (_bad(cpreg_lists={"sve+pmu": []}), "not a feature set"),
    (_bad(cpreg_lists={"pmu": ["0x6030000000100000", "0x6030000000140000",
                               "0x6030000000140001"]}), "core or SVE"),
    (_bad(cpreg_lists={"pmu": ["0x6030000000140000"]}), "lists firmware registers"),
    (_bad(id_registers={"ID_NOPE_EL1": 1}), "unknown ID register"),
    (_bad(cache_geometry={"CCSIDR_X": 1}), "not a cache geometry register"),
    (_bad(qemu_version="seven"), "qemu_version"),
    (_bad(qemu_generation="newest"), "qemu_generation"),
    (_bad(id_registers_features=["pmu"]),
     "f.json: 'id_registers_features' must be a feature set like 'pmu+sve'"),
    (_bad(id_registers={"ID_AA64DFR0_EL1": 1}, feature_values={"pmu": 5}),
     "f.json: feature_values.pmu must be an object"),
    (_bad(id_registers={"ID_AA64DFR0_EL1": 1}, feature_values={"pmu": {"ID_AA64MMFR1_EL1": 1}}),
     "f.json: feature_values.pmu: 'ID_AA64MMFR1_EL1' is not in 'id_registers' or "
     "'cache_geometry'"),
    (_bad(id_registers={"ID_AA64DFR0_EL1": 1}, feature_values={"pmu": {"ID_AA64DFR0_EL1": -1}}),
     "f.json: feature_values.pmu.ID_AA64DFR0_EL1 = -1 is out of range"),
    *[(_bad(sve_lengths=lengths),
       "f.json: 'sve_lengths' must be ascending multiples of 128 (bits)")
      for lengths in ({}, "128", [100], ["128"], [128.0], [0], [True], [256, 128], [128, 128])],
])
def test_bad_profiles_are_refused_with_one_line(text: str, message: str) -> None:
    with pytest.raises(ProfileError) as info:
        loads_profile(text, "f.json")
    assert message in str(info.value) and "\n" not in str(info.value)
    assert str(info.value).startswith("f.json: ")


def test_feature_values_may_name_cache_geometry_registers() -> None:
    profile = loads_profile(_bad(cache_geometry={"CCSIDR_0": 2},
                                 feature_values={"pmu": {"CCSIDR_0": 3}}), "f.json")
    assert profile.feature_values == {"pmu": {"CCSIDR_0": 3}}


def test_unreadable_and_non_utf8_files(tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match="cannot read"):
        load_profile(tmp_path / "missing.json")
    binary = tmp_path / "b.json"
    binary.write_bytes(b"\xff\xfe{")
    with pytest.raises(ProfileError, match="not UTF-8"):
        load_profile(binary)


def test_feature_keys_and_generations() -> None:
    assert feature_key(["sve", "pmu"]) == "pmu+sve" and feature_key([]) == "none"
    with pytest.raises(ProfileError):
        feature_key(["mte"])
    assert qemu_generation_for_version("7.2.22") == "legacy"
    assert qemu_generation_for_version("11.0") == "legacy"
    assert qemu_generation_for_version("11.1.3") == "tolerant"
    profile = loads_profile(json.dumps(GOOD))
    assert profile.generation == "legacy" and profile.default_features() == {"pmu"}


def test_feature_lists_are_additive_on_every_measured_kernel(
        bundled: dict[str, HostProfile]) -> None:
    """The ground for deriving lists of feature combinations the probe did not read."""
    checked = 0
    for profile in bundled.values():
        lists = profile.cpreg_lists or {}
        if "pmu+pauth+sve" in lists and "none" in lists:
            union = set(lists["none"]).union(lists["pmu"], lists["pauth"], lists["sve"])
            assert union == set(lists["pmu+pauth+sve"]), profile.kernel_release
            derived = profile._replace(
                cpreg_lists={k: v for k, v in lists.items() if k != "pmu+pauth+sve"})
            assert derived.cpreg_list(frozenset(FEATURES)) == lists["pmu+pauth+sve"]
            checked += 1
    assert checked >= 3
