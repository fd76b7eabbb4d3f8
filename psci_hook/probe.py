"""The host probe: this host's profile (psci-hook.host-profile/v1) read from its running kernel.

What a profile says must come from the kernel, never from its version number: distribution
kernels carry backports, and the WORKAROUND levels depend on the CPU and the firmware. So the
probe asks KVM, on scratch VMs that never run (docs/design.md#probe):

* ``registers``: every register of the firmware classes (0x0014, 0x0016) that a fresh vCPU
  initialised with PSCI_0_2 lists, known or not, with the value KVM_GET_ONE_REG returns;
* ``cpreg_lists``: the list QEMU migrates (KVM_GET_REG_LIST minus the core and SVE classes,
  sorted) for each vCPU feature set QEMU can use here: none, each optional feature whose
  capability is present, and all of them together (what -cpu host enables);
* ``id_registers`` and ``cache_geometry``: the values of the named ID registers, CLIDR_EL1 and
  the CCSIDR entries, read on a vCPU with all the supported features (the -cpu host default,
  named in ``id_registers_features``);
* ``feature_values``: for every other feature set read, the values of those registers that
  differ there (KVM derives ID fields from the vCPU's features: a guest without a PMU, SVE or
  pointer authentication has other ID register values), so that a guest's record and the
  destination's vCPU get the values of their real features;
* where KVM has 32-bit EL1 (KVM_CAP_ARM_EL1_32BIT), the same lists and values for the 32-bit
  vCPUs ``-cpu host,aarch64=off`` can create (keys ending in ``aarch32``:
  KVM_ARM_VCPU_EL1_32BIT, see aarch32_feature_sets);
* ``sve_lengths``: the SVE vector lengths (bits) KVM offers (KVM_REG_ARM64_SVE_VLS), where
  it has SVE: QEMU's -cpu host gives a guest all of them up to its maximum;
* ``id_writable_masks`` where the kernel has KVM_ARM_GET_REG_WRITABLE_MASKS (6.7+);
* and the identity of the running system: kernel release, boot id, probe time, host name, and
  the QEMU version when ``psci-hook refresh`` has cached it.

Pure standard library: it runs in a minimal initramfs as well as in the hook.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Callable

from psci_hook import kvm as kvm_mod
from psci_hook import registers as regs
from psci_hook.profile import AARCH32, FEATURE_ORDER, SCHEMA, feature_key, read_qemu_version

BOOT_ID_PATH = Path("/proc/sys/kernel/random/boot_id")
# Where the running system's identity comes from; module attributes so tests can replace them.
UNAME: Callable[[], os.uname_result] = os.uname


def migrated_list(reg_ids: Iterable[int]) -> list[int]:
    """What QEMU migrates of a KVM_GET_REG_LIST: all but the core and SVE classes, sorted."""
    return sorted(i for i in set(reg_ids) if regs.reg_class(i) not in regs.NOT_MIGRATED_CLASSES)


def read_boot_id(path: Path | None = None) -> str:
    return (path or BOOT_ID_PATH).read_text(encoding="ascii").strip()


def _firmware_values(vcpu: kvm_mod.ScratchVcpu, listed: Sequence[int]) -> dict[str, int]:
    return {
        regs.firmware_name(reg_id): vcpu.get_one_reg(reg_id)
        for reg_id in sorted(listed)
        if regs.is_firmware(reg_id)
    }


def _id_registers(vcpu: kvm_mod.ScratchVcpu, listed: Sequence[int]) -> dict[str, int]:
    out: dict[str, int] = {}
    for reg_id in sorted(listed):
        if not regs.is_id_register(reg_id):
            continue
        name = regs.register_name(reg_id)
        if name in regs.ID_REGISTER_NAMES:
            out[name] = vcpu.get_one_reg(reg_id)
    return out


def _cache_geometry(vcpu: kvm_mod.ScratchVcpu, listed: Sequence[int]) -> dict[str, int]:
    out: dict[str, int] = {}
    clidr = regs.SYSREG_BY_NAME[regs.CLIDR_EL1]
    if clidr in listed:
        out[regs.CLIDR_EL1] = vcpu.get_one_reg(clidr)
    for reg_id in sorted(listed):
        # CCSIDR demux entries: KVM_REG_ARM_DEMUX_ID_CCSIDR (bits 8-15 = 0), CSSELR in bits 0-7.
        if regs.reg_class(reg_id) == regs.RegClass.DEMUX and reg_id & 0xFF00 == 0:
            out[regs.ccsidr_name(reg_id & 0xFF)] = vcpu.get_one_reg(reg_id)
    return out


def _writable_masks(vm: kvm_mod.ScratchVm, listed: Sequence[int]) -> dict[str, int]:
    listed_set = set(listed)
    return {
        regs.register_name(reg_id): mask
        for reg_id, mask in sorted(vm.writable_masks().items())
        if reg_id in listed_set or mask
    }


def _default_values(vm: kvm_mod.ScratchVm, vcpu: kvm_mod.ScratchVcpu, listed: Sequence[int],
                    caps: kvm_mod.Capabilities) -> dict[str, Any]:
    """ID registers, cache geometry and writable masks, from the -cpu host vCPU."""
    masks: dict[str, Any] = {}
    if caps.writable_masks:
        try:
            masks["id_writable_masks"] = _writable_masks(vm, listed)
        except kvm_mod.KvmError as exc:  # informative only: never worth failing the probe
            if type(exc) is not kvm_mod.KvmError:
                raise
            masks["id_writable_masks_error"] = exc.message
    return {
        "id_registers": _id_registers(vcpu, listed),
        "cache_geometry": _cache_geometry(vcpu, listed),
        "masks": masks,
    }


def _differing(values: dict[str, Any], defaults: dict[str, Any]) -> dict[str, int]:
    """The ID register and cache geometry values of one feature set that differ from the
    default set's (ID registers are listed whatever the features)."""
    out: dict[str, int] = {}
    for group in ("id_registers", "cache_geometry"):
        own = defaults[group]
        out.update({name: value for name, value in values[group].items()
                    if own.get(name) != value and name in own})
    return out


def aarch32_feature_sets(usable: Iterable[str]) -> list[frozenset[str]]:
    """The 32-bit vCPUs QEMU's -cpu host,aarch64=off can create here: EL1_32BIT, with pointer
    authentication wherever the host has it, with and without PMU. QEMU's kvm_arch_init_vcpu
    (target/arm/kvm.c) takes PMU, SVE and pointer authentication from the CPU as for a 64-bit
    vCPU, but arm_cpu_finalize_features (target/arm/cpu.c) runs no SVE or pointer
    authentication finaliser for a CPU without AArch64: pauth=off does not act, and an SVE
    vCPU gets an empty KVM_REG_ARM64_SVE_VLS, which KVM refuses (arch/arm64/kvm/guest.c
    set_sve_vls), so such a guest never starts and is not read."""
    chosen = set(usable)
    base = frozenset({AARCH32} | ({"pauth"} & chosen))
    return [base, base | {"pmu"}] if "pmu" in chosen else [base]


def probe_host(
    kvm: kvm_mod.Kvm,
    *,
    clock: Callable[[], float],
    run_dir: Path | None = None,
    boot_id_path: Path | None = None,
    uname: Callable[[], os.uname_result] | None = None,
) -> dict[str, Any]:
    """Probe this host through ``kvm`` and return its profile as a JSON-ready dict."""
    caps = kvm.capabilities()
    if not caps.psci_0_2:
        raise kvm_mod.KvmError(
            "the kernel lacks KVM_CAP_ARM_PSCI_0_2, which QEMU needs for every vCPU"
        )
    lists: dict[str, list[int]] = {}
    base: dict[str, Any] = {}
    per_set: dict[str, dict[str, Any]] = {}
    feature_errors: dict[str, str] = {}

    def read(features: frozenset[str]) -> None:
        with kvm.scratch_vm() as vm:
            vcpu = vm.create_vcpu(features)
            try:
                listed = vcpu.reg_list()
                key = feature_key(features)
                lists[key] = migrated_list(listed)
                if not features:
                    base["target"] = vcpu.target
                    base["firmware"] = _firmware_values(vcpu, listed)
                per_set[key] = _default_values(vm, vcpu, listed, caps)
                if "sve" in features and regs.SVE_VLS_ID in listed:
                    base["sve_lengths"] = regs.sve_lengths_from_vls(
                        vcpu.get_one_reg(regs.SVE_VLS_ID))
            finally:
                vcpu.close()

    read(frozenset())
    # A feature whose capability is present but whose vCPU the kernel will not create (QEMU
    # could not start such a guest here either) is left out and named in kvm.feature_errors.
    usable = []
    for feature in (f for f in FEATURE_ORDER if f in caps.supported_features()):
        try:
            read(frozenset([feature]))
        except kvm_mod.KvmError as exc:
            if type(exc) is not kvm_mod.KvmError:
                raise
            feature_errors[feature] = exc.message
            continue
        usable.append(feature)
    default = frozenset(usable)
    if len(usable) > 1:
        read(default)  # what -cpu host enables: everything this host supports
    defaults = per_set[feature_key(default)]
    if caps.el1_32bit:
        for features in aarch32_feature_sets(usable):
            try:
                read(features)
            except kvm_mod.KvmError as exc:
                if type(exc) is not kvm_mod.KvmError:
                    raise
                feature_errors[feature_key(features)] = exc.message

    info = (uname or UNAME)()
    profile: dict[str, Any] = {
        "schema": SCHEMA,
        "kernel_release": info.release,
        "machine": info.machine,
        "registers": base["firmware"],
        "cpreg_lists": {key: [regs.format_id(i) for i in ids] for key, ids in lists.items()},
        "id_registers": defaults["id_registers"],
        "cache_geometry": defaults["cache_geometry"],
    }
    qemu_version = read_qemu_version(run_dir)
    if qemu_version is not None:
        profile["qemu_version"] = qemu_version
    if "sve_lengths" in base:
        profile["sve_lengths"] = base["sve_lengths"]
    profile.update(defaults["masks"])
    profile["id_registers_features"] = feature_key(default)
    profile["feature_values"] = {
        key: _differing(values, defaults) for key, values in per_set.items()
        if key != feature_key(default)
    }
    profile["boot_id"] = read_boot_id(boot_id_path)
    profile["probed_at"] = (
        datetime.datetime.fromtimestamp(clock(), tz=datetime.timezone.utc)
        .isoformat(timespec="seconds")
        .replace("+00:00", "Z")
    )
    profile["hostname"] = info.nodename
    target = base["target"]
    profile["kvm"] = {
        "preferred_target": kvm_mod.KVM_ARM_TARGET_NAMES.get(target, str(target)),
        "capabilities": caps.to_dict(),
    }
    if feature_errors:
        profile["kvm"]["feature_errors"] = feature_errors
    return profile
