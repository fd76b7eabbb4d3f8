"""Host profiles (schema psci-hook.host-profile/v1): read, validated, written.

A host profile says what one arm64 KVM host's kernel lists and returns: the firmware registers
and their values on a fresh vCPU, the migrated register list per vCPU feature set, and
optionally the ID register and cache geometry values. A guest profile uses the same format for
what the source QEMU will send. The format is documented in the README.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, NamedTuple

from psci_hook import registers as regs
from psci_hook.errors import UnreadableFile, read_text_file
from psci_hook.vocab import QemuGeneration

SCHEMA = "psci-hook.host-profile/v1"
FEATURE_ORDER = ("pmu", "pauth", "sve")  # the optional vCPU features, in key order
# The vCPU of a 32-bit guest (KVM_ARM_VCPU_EL1_32BIT, QEMU's -cpu host,aarch64=off): not an
# optional feature QEMU turns on by itself but the vCPU's register width, last in a key.
AARCH32 = "aarch32"
KEY_ORDER = (*FEATURE_ORDER, AARCH32)
NO_FEATURES = "none"
_KNOWN_KEYS = {
    "schema", "kernel_release", "machine", "registers", "cpreg_lists", "id_registers",
    "cache_geometry", "qemu_version", "qemu_generation", "id_registers_features",
    "feature_values", "sve_lengths",
}
_QEMU_VERSION_RE = re.compile(r"\d+\.\d+(\.\d+)?")
# `psci-hook refresh` caches the hypervisor version here, next to the boot-time profile.
QEMU_VERSION_FILE = "qemu-version"
_CACHED_QEMU_VERSION_RE = re.compile(r"\s*(\d+\.\d+(?:\.\d+)?)\s*$")
_KERNEL_VERSION_RE = re.compile(r"(\d+)\.(\d+)")


class ProfileError(ValueError):
    """A profile that cannot be used; the message is one line an operator can act on."""


FeatureSet = frozenset[str]


class IdValues(NamedTuple):
    """The ID register and cache geometry values of one vCPU, by name."""

    id_registers: Mapping[str, int] | None
    cache_geometry: Mapping[str, int] | None


def _apply(values: Mapping[str, int] | None, delta: Mapping[str, int]
           ) -> Mapping[str, int] | None:
    if values is None:
        return None
    return {name: delta.get(name, value) for name, value in values.items()}


def feature_key(features: Iterable[str]) -> str:
    """The cpreg_lists key of a vCPU feature set: "+"-joined in the order pmu, pauth, sve,
    aarch32."""
    chosen = set(features)
    unknown = chosen - set(KEY_ORDER)
    if unknown:
        raise ProfileError(f"unknown vCPU feature(s): {', '.join(sorted(unknown))}")
    return "+".join(f for f in KEY_ORDER if f in chosen) or NO_FEATURES


def parse_feature_key(key: str) -> FeatureSet:
    if key == NO_FEATURES:
        return frozenset()
    parts = key.split("+")
    if feature_key(parts) != key:
        raise ProfileError(
            f"cpreg_lists key {key!r} is not a feature set "
            f"('none' or a '+'-joined subset of {', '.join(KEY_ORDER)} in that order)"
        )
    return frozenset(parts)


# HostProfile.extra when none is given: shared by every such profile, so it is read-only.
_NO_EXTRA: Mapping[str, Any] = MappingProxyType({})


class HostProfile(NamedTuple):
    """What one host's kernel lists and returns (schema psci-hook.host-profile/v1)."""

    kernel_release: str
    machine: str
    # Firmware register id -> value on a fresh PSCI_0_2 vCPU; absent = not listed by the kernel.
    registers: Mapping[int, int]
    # Feature key -> sorted migrated register ids. None: the profile carries no lists.
    cpreg_lists: Mapping[str, tuple[int, ...]] | None = None
    id_registers: Mapping[str, int] | None = None
    cache_geometry: Mapping[str, int] | None = None
    qemu_version: str | None = None
    qemu_generation: str | None = None
    # The vCPU features ``id_registers`` and ``cache_geometry`` were read with (None: not
    # stated; profiles written before it was recorded read them on -cpu host's vCPU).
    id_registers_features: FeatureSet | None = None
    # Feature key -> the ID register and cache geometry values (by name) that differ, on a
    # vCPU with those features, from ``id_registers``/``cache_geometry``; an empty mapping
    # means "probed, nothing differs". None: the profile predates per-feature values.
    feature_values: Mapping[str, Mapping[str, int]] | None = None
    # The SVE vector lengths (bits) KVM offers here; None: not probed (or no SVE).
    sve_lengths: tuple[int, ...] | None = None
    # Keys this reader does not interpret (hostname, boot id, provenance...), kept verbatim.
    extra: Mapping[str, Any] = _NO_EXTRA

    # -- derived facts -------------------------------------------------------------------------

    def kernel_version(self) -> tuple[int, int] | None:
        """(major, minor) from the kernel release, or None if it does not start with one."""
        match = _KERNEL_VERSION_RE.match(self.kernel_release)
        return (int(match.group(1)), int(match.group(2))) if match else None

    def feature_sets(self) -> list[FeatureSet]:
        return [parse_feature_key(k) for k in (self.cpreg_lists or {})]

    def default_features(self) -> FeatureSet:
        """What QEMU's -cpu host enables here: every feature this host supports (64-bit)."""
        sets = [s for s in self.feature_sets() if AARCH32 not in s]
        return max(sets, key=len) if sets else frozenset()

    def runs_aarch32(self) -> bool | None:
        """Whether this host's KVM creates 32-bit vCPUs (QEMU's aarch64=off): True when the
        probe read one, False when it found no KVM_CAP_ARM_EL1_32BIT or KVM refused every
        32-bit vCPU it tried (``aarch32_refusals``), None when the profile predates the
        question."""
        if any(AARCH32 in s for s in self.feature_sets()):
            return True
        kvm = self.extra.get("kvm")
        caps = kvm.get("capabilities") if isinstance(kvm, dict) else None
        if isinstance(caps, dict) and (caps.get("el1_32bit") is False or (
                caps.get("el1_32bit") is True and self.aarch32_refusals())):
            return False
        return None

    def aarch32_refusals(self) -> dict[str, str]:
        """The probe's errors creating 32-bit vCPUs, by feature set."""
        kvm = self.extra.get("kvm")
        errors = kvm.get("feature_errors") if isinstance(kvm, dict) else None
        if not isinstance(errors, dict):
            return {}
        return {str(k): str(v) for k, v in errors.items() if str(k).endswith(AARCH32)}

    def cpreg_list(self, features: FeatureSet) -> tuple[int, ...] | None:
        """The migrated list for ``features``: probed, or derived from the single-feature lists.

        Each vCPU feature adds its own registers to the featureless list (PMU the PMU
        registers, pointer authentication the AP*KEY* registers, SVE ZCR_EL1), independently of
        the others: on every measured kernel the all-features list is exactly the union of the
        single-feature ones (tests/test_profile.py). So a combination the probe did not read,
        such as pmu+pauth for a guest with SVE disabled, is derived by that union (for a 32-bit
        vCPU, from the 32-bit featureless and single-feature lists).
        """
        if self.cpreg_lists is None:
            return None
        found = self.cpreg_lists.get(feature_key(features))
        width = features & {AARCH32}
        base = self.cpreg_lists.get(feature_key(width))
        if found is not None or base is None:
            return found
        parts = [self.cpreg_lists.get(feature_key({f} | width)) for f in features - width]
        if any(part is None for part in parts):
            return None
        union = set(base).union(*parts)  # type: ignore[arg-type]
        return tuple(sorted(union))

    def values_features(self) -> FeatureSet:
        """The vCPU features of ``id_registers`` and ``cache_geometry``."""
        if self.id_registers_features is not None:
            return self.id_registers_features
        return self.default_features()

    def id_values(self, features: FeatureSet) -> IdValues | None:
        """The ID registers and cache geometry a vCPU with ``features`` has on this host, or
        None when the profile cannot tell (no values, or none for these features).

        KVM derives some ID fields from the vCPU's features (arch/arm64/kvm/sys_regs.c:
        PMUVer and PerfMon are zero without a PMU, the SVE field and ID_AA64ZFR0_EL1 without
        SVE, APA/API/GPA/GPI without pointer authentication), so the values depend on the
        feature set. A set the probe read is taken as read; another is derived from the
        single-feature reads, register by register, where at most one of its features
        changes the register (each feature owns its own fields), and is None otherwise.
        """
        if self.id_registers is None and self.cache_geometry is None:
            return None
        if features == self.values_features():
            return IdValues(self.id_registers, self.cache_geometry)
        if self.feature_values is None:
            return None
        delta = self.feature_values.get(feature_key(features))
        if delta is None:
            delta = self._derived_delta(features)
        if delta is None:
            return None
        return IdValues(_apply(self.id_registers, delta), _apply(self.cache_geometry, delta))

    def _derived_delta(self, features: FeatureSet) -> Mapping[str, int] | None:
        assert self.feature_values is not None
        width = features & {AARCH32}
        base = self.feature_values.get(feature_key(width))
        singles = {f: self.feature_values.get(feature_key({f} | width))
                   for f in features - width}
        if base is None or any(v is None for v in singles.values()):
            return None
        none_values = self._full(base)
        single_values = {f: self._full(delta) for f, delta in singles.items() if delta is not None}
        out: dict[str, int] = {}
        for name, value in none_values.items():
            changed = [v[name] for v in single_values.values() if v[name] != value]
            if len(changed) > 1:
                return None  # two features change the same register: not derivable
            out[name] = changed[0] if changed else value
        own = self._full({})
        return {name: value for name, value in out.items() if own.get(name) != value}

    def _full(self, delta: Mapping[str, int]) -> dict[str, int]:
        values = {**(self.id_registers or {}), **(self.cache_geometry or {})}
        values.update(delta)
        return values

    def guest_sve_lengths(self, named: Iterable[int] = ()) -> tuple[int, ...] | None:
        """The SVE vector lengths (bits) a guest's QEMU gives an SVE vCPU here: with no length
        named, every length KVM offers; with lengths named (sveNNN=on), every offered length
        up to the largest named, KVM being unable to hide one below the maximum
        (target/arm/cpu64.c arm_cpu_sve_finalize: "For KVM we have to automatically enable
        all supported uninitialized lengths"). None when the profile does not say."""
        if self.sve_lengths is None:
            return None
        chosen = set(named)
        if not chosen:
            return self.sve_lengths
        return tuple(v for v in self.sve_lengths if v <= max(chosen))

    @property
    def generation(self) -> str:
        """The QEMU generation of this host: stated, else from the version, else legacy."""
        if self.qemu_generation:
            return self.qemu_generation
        if self.qemu_version:
            return qemu_generation_for_version(self.qemu_version)
        return QemuGeneration.LEGACY

    # -- (de)serialisation ---------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "schema": SCHEMA,
            "kernel_release": self.kernel_release,
            "machine": self.machine,
            "registers": {regs.firmware_name(i): v for i, v in sorted(self.registers.items())},
        }
        if self.cpreg_lists is not None:
            out["cpreg_lists"] = {
                k: [regs.format_id(i) for i in ids] for k, ids in self.cpreg_lists.items()
            }
        if self.id_registers is not None:
            out["id_registers"] = dict(self.id_registers)
        if self.cache_geometry is not None:
            out["cache_geometry"] = dict(self.cache_geometry)
        if self.qemu_version is not None:
            out["qemu_version"] = self.qemu_version
        if self.qemu_generation is not None:
            out["qemu_generation"] = self.qemu_generation
        if self.id_registers_features is not None:
            out["id_registers_features"] = feature_key(self.id_registers_features)
        if self.feature_values is not None:
            out["feature_values"] = {k: dict(v) for k, v in self.feature_values.items()}
        if self.sve_lengths is not None:
            out["sve_lengths"] = list(self.sve_lengths)
        out.update(self.extra)
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1) + "\n"

    @classmethod
    def from_dict(cls, data: Any) -> HostProfile:
        return _parse(data)


def qemu_generation_for_version(version: str) -> str:
    """Upstream QEMU gained the cpreg migration tolerances after 11.0 (merged 2026-04-27)."""
    parts = tuple(int(p) for p in version.split(".")[:2])
    return QemuGeneration.TOLERANT if parts >= (11, 1) else QemuGeneration.LEGACY


def load_profile(path: str | Path) -> HostProfile:
    try:
        text = read_text_file(path)
    except UnreadableFile as exc:
        raise ProfileError(str(exc)) from None
    return loads_profile(text, str(path))


def loads_profile(text: str, origin: str = "profile") -> HostProfile:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ProfileError(f"{origin}: malformed JSON: {exc.msg} at line {exc.lineno}") from None
    try:
        return _parse(data)
    except ProfileError as exc:
        raise ProfileError(f"{origin}: {exc}") from None


def _uint(value: Any, what: str, limit: int = regs.U64_MAX) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ProfileError(f"{what} must be a non-negative integer, not {json.dumps(value)}")
    if value < 0 or value > limit:
        raise ProfileError(f"{what} = {value} is out of range 0..{limit:#x}")
    return value


def _mapping(data: Mapping[str, Any], key: str) -> Mapping[str, Any] | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ProfileError(f"'{key}' must be an object")
    return value


def _parse(data: Any) -> HostProfile:
    if not isinstance(data, dict):
        raise ProfileError("a profile must be a JSON object")
    if data.get("schema") != SCHEMA:
        raise ProfileError(f"schema must be {SCHEMA!r}, found {data.get('schema')!r}")
    release = data.get("kernel_release")
    if not isinstance(release, str) or not release:
        raise ProfileError("'kernel_release' must be a non-empty string")
    machine = data.get("machine", "aarch64")
    if not isinstance(machine, str):
        raise ProfileError("'machine' must be a string")

    raw_regs = _mapping(data, "registers")
    if raw_regs is None:
        raise ProfileError("'registers' is required (the firmware registers the kernel lists)")
    fw: dict[int, int] = {}
    for name, value in raw_regs.items():
        try:
            reg_id = regs.firmware_id_from_name(name)
        except ValueError as exc:
            raise ProfileError(f"registers: {exc}") from None
        fw[reg_id] = _uint(value, f"registers.{name}")

    lists: dict[str, tuple[int, ...]] | None = None
    raw_lists = _mapping(data, "cpreg_lists")
    if raw_lists is not None:
        lists = {}
        for key, ids in raw_lists.items():
            parse_feature_key(key)
            lists[key] = _parse_list(key, ids, fw)

    id_regs: dict[str, int] | None = None
    raw_id = _mapping(data, "id_registers")
    if raw_id is not None:
        id_regs = {}
        for name, value in raw_id.items():
            if name not in regs.ID_REGISTER_NAMES:
                raise ProfileError(f"id_registers: unknown ID register {name!r}")
            id_regs[name] = _uint(value, f"id_registers.{name}")

    cache: dict[str, int] | None = None
    raw_cache = _mapping(data, "cache_geometry")
    if raw_cache is not None:
        cache = {}
        for name, value in raw_cache.items():
            try:
                regs.cache_geometry_id(name)
            except ValueError as exc:
                raise ProfileError(f"cache_geometry: {exc}") from None
            cache[name] = _uint(value, f"cache_geometry.{name}")

    qemu_version = data.get("qemu_version")
    if qemu_version is not None and (
        not isinstance(qemu_version, str) or not _QEMU_VERSION_RE.fullmatch(qemu_version)
    ):
        raise ProfileError(f"'qemu_version' must look like '7.2.0', found {qemu_version!r}")
    generation = data.get("qemu_generation")
    if generation is not None and generation not in tuple(QemuGeneration):
        raise ProfileError(f"'qemu_generation' must be legacy or tolerant, found {generation!r}")

    values_features: FeatureSet | None = None
    raw_values_features = data.get("id_registers_features")
    if raw_values_features is not None:
        if not isinstance(raw_values_features, str):
            raise ProfileError("'id_registers_features' must be a feature set like 'pmu+sve'")
        values_features = parse_feature_key(raw_values_features)
    feature_values = _parse_feature_values(data, id_regs, cache)
    sve_lengths = data.get("sve_lengths")
    if sve_lengths is not None:
        if not isinstance(sve_lengths, list) or any(
                isinstance(v, bool) or not isinstance(v, int) or v <= 0 or v % 128
                for v in sve_lengths) or sve_lengths != sorted(set(sve_lengths)):
            raise ProfileError("'sve_lengths' must be ascending multiples of 128 (bits)")
        sve_lengths = tuple(sve_lengths)

    return HostProfile(
        kernel_release=release,
        machine=machine,
        registers=dict(sorted(fw.items())),
        cpreg_lists=lists,
        id_registers=id_regs,
        cache_geometry=cache,
        qemu_version=qemu_version,
        qemu_generation=generation,
        id_registers_features=values_features,
        feature_values=feature_values,
        sve_lengths=sve_lengths,
        extra={k: v for k, v in data.items() if k not in _KNOWN_KEYS},
    )


def _parse_feature_values(data: Mapping[str, Any], id_regs: Mapping[str, int] | None,
                          cache: Mapping[str, int] | None
                          ) -> dict[str, dict[str, int]] | None:
    raw = _mapping(data, "feature_values")
    if raw is None:
        return None
    known = set(id_regs or {}) | set(cache or {})
    out: dict[str, dict[str, int]] = {}
    for key, values in raw.items():
        parse_feature_key(key)
        if not isinstance(values, dict):
            raise ProfileError(f"feature_values.{key} must be an object")
        out[key] = {}
        for name, value in values.items():
            if name not in known:
                raise ProfileError(f"feature_values.{key}: {name!r} is not in 'id_registers' "
                                   "or 'cache_geometry'")
            out[key][name] = _uint(value, f"feature_values.{key}.{name}")
    return out


def _parse_list(key: str, ids: Any, fw: Mapping[int, int]) -> tuple[int, ...]:
    if not isinstance(ids, list):
        raise ProfileError(f"cpreg_lists.{key} must be a list of register ids")
    parsed: list[int] = []
    for i, text in enumerate(ids):
        if not isinstance(text, str):
            raise ProfileError(f"cpreg_lists.{key}[{i}] must be a string like '0x6030...'")
        try:
            reg_id = regs.parse_hex_id(text)
        except ValueError as exc:
            raise ProfileError(f"cpreg_lists.{key}[{i}]: {exc}") from None
        if regs.reg_class(reg_id) in regs.NOT_MIGRATED_CLASSES:
            raise ProfileError(
                f"cpreg_lists.{key}[{i}] = {text} is a core or SVE register, which QEMU "
                "does not migrate"
            )
        if parsed and reg_id <= parsed[-1]:
            raise ProfileError(
                f"cpreg_lists.{key} is not sorted ascending without duplicates at index {i}"
            )
        parsed.append(reg_id)
    listed_fw = {i for i in parsed if regs.is_firmware(i)}
    if listed_fw != set(fw):
        # KVM lists the firmware registers whatever the vCPU features (hypercalls.c).
        raise ProfileError(
            f"cpreg_lists.{key} lists firmware registers "
            f"{sorted(regs.firmware_name(i) for i in listed_fw)} but 'registers' has "
            f"{sorted(regs.firmware_name(i) for i in fw)}"
        )
    return tuple(parsed)


def read_qemu_version(run_dir: Path | None) -> str | None:
    """The QEMU version ``psci-hook refresh`` cached as plain text, if any and well-formed."""
    if run_dir is None:
        return None
    try:
        text = (run_dir / QEMU_VERSION_FILE).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    match = _CACHED_QEMU_VERSION_RE.match(text)
    return match.group(1) if match else None


BUNDLED_DIR = Path(__file__).parent / "data" / "profiles"


def bundled_profiles() -> dict[str, Path]:
    """The profiles shipped in the package, by name (file name without .json), sorted."""
    return {p.stem: p for p in sorted(BUNDLED_DIR.glob("*.json"), key=_profile_sort_key)}


def _profile_sort_key(path: Path) -> tuple[int, tuple[int, ...], str]:
    """Real kernels first in version order, synthetic ones after; then by CPU."""
    kernel, _, cpu = path.stem.partition("__")
    synthetic = kernel.startswith("synthetic-")
    version = tuple(int(p) for p in re.findall(r"\d+", kernel)[:2])
    return (int(synthetic), version, cpu)
