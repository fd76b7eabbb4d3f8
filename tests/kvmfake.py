"""An in-memory arm64 KVM behind psci_hook.kvm's Syscalls interface, for unit tests only.

Faking is acceptable here for one reason: this test machine is x86_64, and the arm64 ioctls must
never be sent to its /dev/kvm. The fake decodes the same bytes a kernel would (struct kvm_one_reg,
kvm_vcpu_init, kvm_reg_list, reg_mask_range, reading and writing the user memory the structures
point at), so the encoding is exercised; what the real kernels answer is tested for real in
tests/nested/, where Debian's arm64 kernels run their own KVM under qemu-system-aarch64.
"""

from __future__ import annotations

import ctypes
import dataclasses
import errno
import os
import struct
from collections.abc import Callable, Mapping
from typing import Any

from psci_hook import kvm
from psci_hook import registers as regs

CORE_X0 = 0x6030000000100000
SVE_Z0 = 0x6080000000150000
SVE_VLS = 0x606000000015FFFF
PSCI = regs.PSCI_VERSION.reg_id
WA1 = regs.SMCCC_ARCH_WORKAROUND_1.reg_id
WA2 = regs.SMCCC_ARCH_WORKAROUND_2.reg_id
WA3 = regs.SMCCC_ARCH_WORKAROUND_3.reg_id
STD = regs.STD_BMAP.reg_id
STD_HYP = regs.STD_HYP_BMAP.reg_id
VENDOR = regs.VENDOR_HYP_BMAP.reg_id
UNKNOWN_FW = regs.fw_reg_id(4)
MIDR = regs.SYSREG_BY_NAME["MIDR_EL1"]
PFR0 = regs.SYSREG_BY_NAME["ID_AA64PFR0_EL1"]
UNNAMED_ID = regs.sysreg_id(3, 0, 0, 3, 7)  # in the ID space, no name in the catalogue
CLIDR = regs.SYSREG_BY_NAME["CLIDR_EL1"]
SCTLR = regs.SYSREG_BY_NAME["SCTLR_EL1"]
PMCR = regs.SYSREG_BY_NAME["PMCR_EL0"]
APIA = regs.SYSREG_BY_NAME["APIAKEYLO_EL1"]
ZCR = regs.SYSREG_BY_NAME["ZCR_EL1"]

DEFAULT_VALUES: dict[int, int] = {
    CORE_X0: 0,
    regs.ccsidr_id(0): 0x701FE00A,
    regs.ccsidr_id(1): 0x201FE012,
    MIDR: 0x411FD070,
    PFR0: 0x1100000011111112,
    UNNAMED_ID: 0,
    CLIDR: 0x0A200023,
    SCTLR: 0xC50838,
    PSCI: 0x10001,
    WA1: 2,
    WA2: 0,
    WA3: 0,
    UNKNOWN_FW: 7,
    STD: 1,
    STD_HYP: 1,
    VENDOR: 3,
}
FEATURE_REGS: dict[str, dict[int, int]] = {
    "pmu": {PMCR: 0x41002000},
    "pauth": {APIA: 0},
    "sve": {ZCR: 0, SVE_Z0: 0, SVE_VLS: 0},
    "aarch32": {},
}
DEFAULT_CAPS: dict[int, int] = {
    kvm.KVM_CAP_ONE_REG: 1,
    kvm.KVM_CAP_ARM_PSCI_0_2: 1,
    kvm.KVM_CAP_ARM_PMU_V3: 1,
    kvm.KVM_CAP_ARM_SVE: 1,
    kvm.KVM_CAP_ARM_PTRAUTH_ADDRESS: 1,
    kvm.KVM_CAP_ARM_PTRAUTH_GENERIC: 1,
    kvm.KVM_CAP_ARM_SUPPORTED_REG_MASK_RANGES: 1,
}


def _oserror(code: int) -> OSError:
    return OSError(code, os.strerror(code))


@dataclasses.dataclass
class Vcpu:
    vm: int
    initialised: bool = False
    features: int = 0
    finalized: bool = False
    values: dict[int, int] = dataclasses.field(default_factory=dict)


# A SET rule: (reg_id, value, vcpu) -> 0 or an errno. The default accepts what GET returns.
SetRule = Callable[[int, int, Vcpu], int]


def same_value_only(reg_id: int, value: int, vcpu: Vcpu) -> int:
    return 0 if vcpu.values.get(reg_id) == value else errno.EINVAL


class FakeKvm:
    """The Syscalls of a machine with an arm64 KVM; every call is recorded in ``calls``."""

    def __init__(
        self,
        machine: str = "aarch64",
        caps: Mapping[int, int] | None = None,
        values: Mapping[int, int] | None = None,
        set_rule: SetRule = same_value_only,
        fail: Mapping[int, int] | None = None,  # request -> errno it fails with
        open_error: OSError | None = None,
        api_version: int = kvm.KVM_API_VERSION,
        target: int = 5,
        masks: Mapping[int, int] | None = None,
    ) -> None:
        self._machine = machine
        self.caps = dict(DEFAULT_CAPS if caps is None else caps)
        self.values = dict(DEFAULT_VALUES if values is None else values)
        self.set_rule = set_rule
        self.fail = dict(fail or {})
        self.open_error = open_error
        self.api_version = api_version
        self.target = target
        self.masks = dict(masks or {kvm.feature_id_range_idx(3, 0, 0, 4, 0): 0xF0})
        self.calls: list[tuple[str, Any]] = []
        self.sets: list[tuple[int, int]] = []
        self.inits: list[tuple[int, int]] = []  # (target, feature bits) of every KVM_ARM_VCPU_INIT
        # A kernel rule refusing some feature combinations at KVM_ARM_VCPU_INIT (EINVAL).
        self.refuse_init: Callable[[int], bool] | None = None
        self.open_fds: set[int] = set()
        self.vms: set[int] = set()
        self.vcpus: dict[int, Vcpu] = {}
        self._next_fd = 3

    # -- Syscalls ------------------------------------------------------------------------------

    def machine(self) -> str:
        return self._machine

    def open(self, path: str) -> int:
        self.calls.append(("open", path))
        if self.open_error is not None:
            raise self.open_error
        return self._new_fd()

    def close(self, fd: int) -> None:
        self.calls.append(("close", fd))
        self.open_fds.discard(fd)

    def ioctl(self, fd: int, request: int, arg: kvm.IoctlArg) -> int:
        name = kvm.REQUEST_NAMES.get(request, hex(request))
        self.calls.append((name, fd))
        if fd not in self.open_fds:
            raise _oserror(errno.EBADF)
        if request in self.fail:
            raise _oserror(self.fail[request])
        handler = getattr(self, "_" + name.lower(), None)
        if handler is None:
            raise _oserror(errno.ENOTTY)
        result: int = handler(fd, arg)
        return result

    # -- helpers -------------------------------------------------------------------------------

    def _new_fd(self) -> int:
        fd = self._next_fd
        self._next_fd += 1
        self.open_fds.add(fd)
        return fd

    def _vcpu(self, fd: int) -> Vcpu:
        if fd not in self.vcpus:
            raise _oserror(errno.ENOTTY)
        vcpu = self.vcpus[fd]
        if not vcpu.initialised:
            raise _oserror(errno.ENOEXEC)
        if vcpu.features >> kvm.KVM_ARM_VCPU_SVE & 1 and not vcpu.finalized:
            raise _oserror(errno.EPERM)
        return vcpu

    def features_of(self, vcpu: Vcpu) -> set[str]:
        return {name for name, bits in kvm.FEATURE_BITS.items()
                if all(vcpu.features >> b & 1 for b in bits)}

    # -- ioctl handlers ------------------------------------------------------------------------

    def _kvm_get_api_version(self, fd: int, arg: Any) -> int:
        return self.api_version

    def _kvm_check_extension(self, fd: int, arg: Any) -> int:
        assert isinstance(arg, int)
        return self.caps.get(arg, 0)

    def _kvm_create_vm(self, fd: int, arg: Any) -> int:
        assert arg == 0
        vm = self._new_fd()
        self.vms.add(vm)
        return vm

    def _kvm_arm_preferred_target(self, fd: int, arg: Any) -> int:
        assert fd in self.vms and isinstance(arg, bytearray) and len(arg) == 32
        arg[:] = kvm.pack_vcpu_init(self.target, 0)
        return 0

    def _kvm_create_vcpu(self, fd: int, arg: Any) -> int:
        assert fd in self.vms
        vcpu = self._new_fd()
        self.vcpus[vcpu] = Vcpu(vm=fd)
        return vcpu

    def _kvm_arm_vcpu_init(self, fd: int, arg: Any) -> int:
        assert isinstance(arg, bytearray) and len(arg) == 32
        target, features = kvm.unpack_vcpu_init(arg)
        self.inits.append((target, features))
        if target != self.target or fd not in self.vcpus:
            raise _oserror(errno.EINVAL)
        if self.refuse_init is not None and self.refuse_init(features):
            raise _oserror(errno.EINVAL)
        if features >> kvm.KVM_ARM_VCPU_EL1_32BIT & 1 and \
                not self.caps.get(kvm.KVM_CAP_ARM_EL1_32BIT):
            raise _oserror(errno.EINVAL)  # kvm_vcpu_init_check_features: no 32-bit EL1
        vcpu = self.vcpus[fd]
        vcpu.initialised, vcpu.features = True, features
        vcpu.values = dict(self.values)
        for name in self.features_of(vcpu):
            vcpu.values.update(FEATURE_REGS[name])
        return 0

    def _kvm_arm_vcpu_finalize(self, fd: int, arg: Any) -> int:
        assert isinstance(arg, bytearray)
        (what,) = struct.unpack("=i", arg)
        vcpu = self.vcpus[fd]
        if what != kvm.KVM_ARM_VCPU_SVE or not vcpu.features >> kvm.KVM_ARM_VCPU_SVE & 1:
            raise _oserror(errno.EINVAL)
        vcpu.finalized = True
        return 0

    def _kvm_get_reg_list(self, fd: int, arg: Any) -> int:
        vcpu = self._vcpu(fd)
        assert isinstance(arg, bytearray)
        (n,) = struct.unpack_from("=Q", arg)
        ids = list(vcpu.values)
        struct.pack_into("=Q", arg, 0, len(ids))
        if n < len(ids):
            raise _oserror(errno.E2BIG)
        struct.pack_into(f"={len(ids)}Q", arg, 8, *ids)
        return 0

    def _one_reg(self, arg: Any) -> tuple[int, int, int]:
        assert isinstance(arg, bytearray) and len(arg) == 16
        reg_id, addr = struct.unpack("=QQ", arg)
        return reg_id, addr, kvm.reg_size(reg_id)

    def _kvm_get_one_reg(self, fd: int, arg: Any) -> int:
        vcpu = self._vcpu(fd)
        reg_id, addr, size = self._one_reg(arg)
        if reg_id not in vcpu.values:
            raise _oserror(errno.ENOENT)
        ctypes.memmove(addr, vcpu.values[reg_id].to_bytes(size, "little"), size)
        return 0

    def _kvm_set_one_reg(self, fd: int, arg: Any) -> int:
        vcpu = self._vcpu(fd)
        reg_id, addr, size = self._one_reg(arg)
        value = int.from_bytes(ctypes.string_at(addr, size), "little")
        self.sets.append((reg_id, value))
        if reg_id not in vcpu.values:
            raise _oserror(errno.ENOENT)
        code = self.set_rule(reg_id, value, vcpu)
        if code:
            raise _oserror(code)
        if regs.reg_class(reg_id) != regs.RegClass.FW or reg_id == PSCI:
            vcpu.values[reg_id] = value
        return 0

    def _kvm_arm_get_reg_writable_masks(self, fd: int, arg: Any) -> int:
        assert fd in self.vms and isinstance(arg, bytearray) and len(arg) == 64
        addr, rng, *reserved = struct.unpack("=QI13I", arg)
        if rng != 0 or any(reserved):
            raise _oserror(errno.EINVAL)
        data = [self.masks.get(i, 0) for i in range(kvm.KVM_ARM_FEATURE_ID_RANGE_SIZE)]
        raw = struct.pack(f"={len(data)}Q", *data)
        ctypes.memmove(addr, raw, len(raw))
        return 0
