"""Run inside the nested arm64 guest: the KVM layer's error paths and the rehearsal, for real.

Prints one JSON object {"checks": [{"name", "ok", "detail"}]} and exits 1 if any check failed.
"""

from __future__ import annotations

import errno
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from psci_hook import cache
from psci_hook import kvm as kvm_mod
from psci_hook import registers as regs
from psci_hook.probe import aarch32_feature_sets, migrated_list
from psci_hook.profile import AARCH32

results: list[dict[str, Any]] = []


def check(name: str, ok: bool, detail: str = "") -> None:
    results.append({"name": name, "ok": bool(ok), "detail": detail})


def aarch32_checks(kvm: kvm_mod.Kvm, caps: kvm_mod.Capabilities) -> None:
    """The 32-bit vCPU of -cpu host,aarch64=off (KVM_ARM_VCPU_EL1_32BIT) on this kernel."""
    features = aarch32_feature_sets(caps.supported_features())[-1]
    with kvm.scratch_vcpu(features) as vcpu:
        listed = migrated_list(vcpu.reg_list())
        values = {i: vcpu.get_one_reg(i) for i in listed}
    refusal = kvm_mod.rehearse(features, values, kvm=kvm)
    check(f"32-bit vCPU ({'+'.join(sorted(features))}): rehearse all {len(values)} migrated "
          "registers with own values -> accepted", refusal is None,
          refusal.message() if refusal else "")
    # Mixing widths in one VM is refused (kvm_set_vm_width / vcpu_allowed_register_width).
    with kvm.scratch_vm() as vm:
        first = vm.create_vcpu(features)
        try:
            second = vm.create_vcpu(features - {AARCH32}, index=1)
            second.close()
            check("a 64-bit vCPU beside a 32-bit one -> refused", False, "accepted")
        except kvm_mod.KvmError as exc:
            check("a 64-bit vCPU beside a 32-bit one -> refused", exc.errno == errno.EINVAL,
                  exc.message)
        first.close()
    if not caps.sve:
        return
    # What QEMU does for -cpu host,aarch64=off on an SVE host: EL1_32BIT with SVE, then
    # KVM_REG_ARM64_SVE_VLS with the empty set arm_cpu_finalize_features left (it skips
    # arm_cpu_sve_finalize without AArch64). KVM must refuse one of the two.
    with kvm.scratch_vm() as vm:
        fd = kvm.ioctl(vm.fd, kvm_mod.KVM_CREATE_VCPU, 0)
        raw = kvm_mod.ScratchVcpu(kvm, fd, vm.preferred_target(), frozenset())
        bits = kvm_mod.vcpu_init_features(features | {"sve"})
        try:
            raw.init(bits)
        except kvm_mod.KvmError as exc:
            check("32-bit vCPU with SVE as QEMU makes it -> refused",
                  exc.errno == errno.EINVAL, f"KVM_ARM_VCPU_INIT: {exc.message}")
        else:
            code = raw.try_set_one_reg(regs.SVE_VLS_ID, 0)
            check("32-bit vCPU with SVE as QEMU makes it -> refused", code == errno.EINVAL,
                  f"KVM_SET_ONE_REG(SVE_VLS, empty) -> {errno.errorcode.get(code, code)}")
        raw.close()


def main() -> int:
    with kvm_mod.Kvm() as kvm:
        caps = kvm.capabilities()
        default = caps.supported_features()

        # ENOEXEC: register ioctls on a vCPU that was never initialised.
        with kvm.scratch_vm() as vm:
            fd = kvm.ioctl(vm.fd, kvm_mod.KVM_CREATE_VCPU, 0)
            raw = kvm_mod.ScratchVcpu(kvm, fd, vm.preferred_target(), frozenset())
            for what, call in (("reg_list", raw.reg_list),
                               ("get", lambda: raw.get_one_reg(regs.PSCI_VERSION.reg_id))):
                try:
                    call()
                    check(f"uninitialised vCPU {what} -> ENOEXEC", False, "no error")
                except kvm_mod.KvmNotInitialised as exc:
                    check(f"uninitialised vCPU {what} -> ENOEXEC",
                          exc.status == 13 and exc.errno == errno.ENOEXEC, exc.message)
            raw.close()

        with kvm.scratch_vcpu(()) as vcpu:
            # ENOENT: a firmware register no kernel lists.
            bogus = regs.fw_reg_id(0x7F)
            try:
                vcpu.get_one_reg(bogus)
                check("GET unlisted firmware register -> ENOENT", False, "no error")
            except kvm_mod.RegisterError as exc:
                check("GET unlisted firmware register -> ENOENT", exc.errno == errno.ENOENT,
                      exc.message)
            check("SET unlisted firmware register -> ENOENT",
                  vcpu.try_set_one_reg(bogus, 0) == errno.ENOENT)
            own_psci = vcpu.get_one_reg(regs.PSCI_VERSION.reg_id)
            # A vCPU initialised with PSCI_0_2 refuses PSCI 0.1.
            check("SET PSCI_VERSION 0.1 with PSCI_0_2 -> EINVAL",
                  vcpu.try_set_one_reg(regs.PSCI_VERSION.reg_id, 1) == errno.EINVAL)

        # The rehearsal refuses a PSCI version no kernel implements and names both values.
        refusal = kvm_mod.rehearse(default, {regs.PSCI_VERSION.reg_id: regs.psci_value(2, 0)},
                                   kvm=kvm)
        check("rehearse PSCI 2.0 -> refused",
              refusal is not None and refusal.errno == errno.EINVAL
              and refusal.reg_id == regs.PSCI_VERSION.reg_id
              and refusal.attempted == 0x20000 and refusal.destination_value == own_psci,
              refusal.message() if refusal else "accepted")

        # The rehearsal of a same-host migration: every migrated register with this host's
        # own values, set in QEMU's order on a fresh VM, must all be accepted.
        with kvm.scratch_vcpu(default) as vcpu:
            listed = migrated_list(vcpu.reg_list())
            values = {i: vcpu.get_one_reg(i) for i in listed}
        refusal = kvm_mod.rehearse(default, values, kvm=kvm)
        check(f"rehearse all {len(values)} migrated registers with own values -> accepted",
              refusal is None, refusal.message() if refusal else "")

        # only_listed skips what the destination does not list (QEMU never sets it).
        refusal = kvm_mod.rehearse(default, {regs.fw_reg_id(0x7F): 1}, kvm=kvm,
                                   only_listed=True)
        check("rehearse only_listed skips an unlisted id", refusal is None)
        refusal = kvm_mod.rehearse(default, {regs.fw_reg_id(0x7F): 1}, kvm=kvm)
        check("rehearse of an unlisted id -> ENOENT refusal",
              refusal is not None and refusal.errno == errno.ENOENT
              and refusal.destination_value is None)

        if caps.el1_32bit:
            aarch32_checks(kvm, caps)

        if caps.writable_masks:
            with kvm.scratch_vm() as vm:
                masks = vm.writable_masks()
            check("KVM_ARM_GET_REG_WRITABLE_MASKS returns the feature ID range",
                  len(masks) == kvm_mod.KVM_ARM_FEATURE_ID_RANGE_SIZE)

    # The boot-time cache on a real system: missing -> probed inline and written back; then
    # current (this boot's id and this kernel's release) and read without touching KVM.
    run_dir = Path(tempfile.mkdtemp(prefix="psci-hook-run."))
    profile = cache.load_host_profile(run_dir, probe_inline=True)
    written = run_dir / cache.HOST_PROFILE_NAME
    check("missing cache -> inline probe, written back",
          written.is_file() and profile.kernel_release == os.uname().release
          and oct(written.stat().st_mode & 0o777) == "0o644")
    check("the written cache is current for this boot",
          cache.load_host_profile(run_dir, probe_inline=False) == profile)
    # What `psci-hook probe --write` stored at "boot" (the step before this one).
    boot_cache = Path("/run/psci-hook")
    if (boot_cache / cache.HOST_PROFILE_NAME).is_file():
        stored = cache.load_host_profile(boot_cache, probe_inline=False)
        check("probe --write left a current /run/psci-hook/host.json",
              stored.registers == profile.registers and stored.cpreg_lists == profile.cpreg_lists)
    print(json.dumps({"checks": results}, indent=1))
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
