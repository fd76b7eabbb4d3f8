"""The arm64 KVM ioctl layer: the one module that talks to /dev/kvm.

Everything psci-hook asks the running kernel goes through here: the host probe, the on-host
conformance check and the hook's rehearsal. Plain Python (fcntl, struct, array), no ctypes, so
it runs on a bare Debian python3-minimal. Sources for every number: the kernel's
include/uapi/linux/kvm.h, arch/arm64/include/uapi/asm/kvm.h and include/uapi/asm-generic/ioctl.h;
the sequence of calls is QEMU's (docs/design.md#probe).

The arm64 ioctls are sent only when ``platform.machine()`` is aarch64: on any other machine
/dev/kvm belongs to another architecture, whose ioctls share these numbers with other meanings.
The system calls are injectable (``Syscalls``) so that the encoding and every error path can be
tested on a machine that is not arm64.
"""

from __future__ import annotations

import array
import contextlib
import errno
import fcntl
import os
import platform
import struct
import sys
from collections.abc import Iterable, Iterator, Mapping
from typing import ClassVar, NamedTuple, Protocol, Union

from psci_hook import registers as regs
from psci_hook.environment import DEV_KVM
from psci_hook.status import ExitStatus

KVM_API_VERSION = 12
AARCH64 = "aarch64"

# ---------------------------------------------------------------------------------------------
# ioctl request encoding (include/uapi/asm-generic/ioctl.h; arm64 and x86 use the generic one)
# ---------------------------------------------------------------------------------------------

_IOC_NRBITS = 8
_IOC_TYPEBITS = 8
_IOC_SIZEBITS = 14
_IOC_NRSHIFT = 0
_IOC_TYPESHIFT = _IOC_NRSHIFT + _IOC_NRBITS
_IOC_SIZESHIFT = _IOC_TYPESHIFT + _IOC_TYPEBITS
_IOC_DIRSHIFT = _IOC_SIZESHIFT + _IOC_SIZEBITS
_IOC_NONE = 0
_IOC_WRITE = 1
_IOC_READ = 2


def _IOC(direction: int, type_: int, nr: int, size: int) -> int:
    if not 0 <= size < 1 << _IOC_SIZEBITS:
        raise ValueError(f"ioctl argument size {size} does not fit in {_IOC_SIZEBITS} bits")
    return (
        (direction << _IOC_DIRSHIFT)
        | (type_ << _IOC_TYPESHIFT)
        | (nr << _IOC_NRSHIFT)
        | (size << _IOC_SIZESHIFT)
    )


def _IO(type_: int, nr: int) -> int:
    return _IOC(_IOC_NONE, type_, nr, 0)


def _IOR(type_: int, nr: int, size: int) -> int:
    return _IOC(_IOC_READ, type_, nr, size)


def _IOW(type_: int, nr: int, size: int) -> int:
    return _IOC(_IOC_WRITE, type_, nr, size)


def _IOWR(type_: int, nr: int, size: int) -> int:
    return _IOC(_IOC_READ | _IOC_WRITE, type_, nr, size)


# ---------------------------------------------------------------------------------------------
# Structures (native byte order: the ioctls are only ever sent on the machine itself)
# ---------------------------------------------------------------------------------------------

# struct kvm_one_reg { __u64 id; __u64 addr; }
KVM_ONE_REG = struct.Struct("=QQ")
# struct kvm_vcpu_init { __u32 target; __u32 features[7]; }
KVM_VCPU_INIT_FEATURE_WORDS = 7
KVM_VCPU_INIT = struct.Struct(f"=I{KVM_VCPU_INIT_FEATURE_WORDS}I")
# struct kvm_reg_list { __u64 n; __u64 reg[]; }
KVM_REG_LIST = struct.Struct("=Q")
KVM_REG_LIST_ENTRY = struct.Struct("=Q")
# struct reg_mask_range { __u64 addr; __u32 range; __u32 reserved[13]; }
REG_MASK_RANGE = struct.Struct("=QI13I")
# KVM_ARM_VCPU_FINALIZE takes a pointer to an int naming the feature to finalise.
FINALIZE_ARG = struct.Struct("=i")

KVMIO = 0xAE
KVM_GET_API_VERSION = _IO(KVMIO, 0x00)
KVM_CREATE_VM = _IO(KVMIO, 0x01)
KVM_CHECK_EXTENSION = _IO(KVMIO, 0x03)
KVM_CREATE_VCPU = _IO(KVMIO, 0x41)
KVM_GET_ONE_REG = _IOW(KVMIO, 0xAB, KVM_ONE_REG.size)
KVM_SET_ONE_REG = _IOW(KVMIO, 0xAC, KVM_ONE_REG.size)
KVM_ARM_VCPU_INIT = _IOW(KVMIO, 0xAE, KVM_VCPU_INIT.size)
KVM_ARM_PREFERRED_TARGET = _IOR(KVMIO, 0xAF, KVM_VCPU_INIT.size)
KVM_GET_REG_LIST = _IOWR(KVMIO, 0xB0, KVM_REG_LIST.size)
KVM_ARM_GET_REG_WRITABLE_MASKS = _IOR(KVMIO, 0xB6, REG_MASK_RANGE.size)
KVM_ARM_VCPU_FINALIZE = _IOW(KVMIO, 0xC2, FINALIZE_ARG.size)

REQUEST_NAMES: Mapping[int, str] = {
    KVM_GET_API_VERSION: "KVM_GET_API_VERSION",
    KVM_CREATE_VM: "KVM_CREATE_VM",
    KVM_CHECK_EXTENSION: "KVM_CHECK_EXTENSION",
    KVM_CREATE_VCPU: "KVM_CREATE_VCPU",
    KVM_GET_ONE_REG: "KVM_GET_ONE_REG",
    KVM_SET_ONE_REG: "KVM_SET_ONE_REG",
    KVM_ARM_VCPU_INIT: "KVM_ARM_VCPU_INIT",
    KVM_ARM_PREFERRED_TARGET: "KVM_ARM_PREFERRED_TARGET",
    KVM_GET_REG_LIST: "KVM_GET_REG_LIST",
    KVM_ARM_GET_REG_WRITABLE_MASKS: "KVM_ARM_GET_REG_WRITABLE_MASKS",
    KVM_ARM_VCPU_FINALIZE: "KVM_ARM_VCPU_FINALIZE",
}
# The ioctls that exist only with KVM_CAP_ONE_REG: ENOTTY from them means "no register ioctls".
_REG_IOCTLS = frozenset({KVM_GET_ONE_REG, KVM_SET_ONE_REG, KVM_GET_REG_LIST})

# Capabilities (include/uapi/linux/kvm.h)
KVM_CAP_ONE_REG = 70
KVM_CAP_ARM_EL1_32BIT = 93
KVM_CAP_ARM_PSCI_0_2 = 102
KVM_CAP_ARM_PMU_V3 = 126
KVM_CAP_ARM_SVE = 170
KVM_CAP_ARM_PTRAUTH_ADDRESS = 171
KVM_CAP_ARM_PTRAUTH_GENERIC = 172
KVM_CAP_ARM_SUPPORTED_REG_MASK_RANGES = 230

# vCPU feature bits of kvm_vcpu_init.features (arch/arm64/include/uapi/asm/kvm.h)
KVM_ARM_VCPU_POWER_OFF = 0
KVM_ARM_VCPU_EL1_32BIT = 1
KVM_ARM_VCPU_PSCI_0_2 = 2
KVM_ARM_VCPU_PMU_V3 = 3
KVM_ARM_VCPU_SVE = 4
KVM_ARM_VCPU_PTRAUTH_ADDRESS = 5
KVM_ARM_VCPU_PTRAUTH_GENERIC = 6

KVM_ARM_TARGET_NAMES: Mapping[int, str] = {
    0: "AEM_V8", 1: "FOUNDATION_V8", 2: "CORTEX_A57", 3: "XGENE_POTENZA", 4: "CORTEX_A53",
    5: "GENERIC_V8",
}

# The feature ID range of KVM_ARM_GET_REG_WRITABLE_MASKS: op0=3, op1 in {0, 1, 3}, CRn=0,
# CRm 0-7, op2 0-7, one u64 mask per register (arch/arm64/include/uapi/asm/kvm.h, 6.7+).
KVM_ARM_FEATURE_ID_RANGE = 0
KVM_ARM_FEATURE_ID_RANGE_SIZE = 3 * 8 * 8
_FEATURE_ID_OP1 = (0, 1, 3)

# The vCPU features QEMU's -cpu host can enable, by the names the host profile uses; "aarch32"
# is the vCPU of a 32-bit guest (-cpu host,aarch64=off: target/arm/kvm.c kvm_arch_init_vcpu
# sets KVM_ARM_VCPU_EL1_32BIT when the CPU has no ARM_FEATURE_AARCH64).
FEATURE_BITS: Mapping[str, tuple[int, ...]] = {
    "pmu": (KVM_ARM_VCPU_PMU_V3,),
    "pauth": (KVM_ARM_VCPU_PTRAUTH_ADDRESS, KVM_ARM_VCPU_PTRAUTH_GENERIC),
    "sve": (KVM_ARM_VCPU_SVE,),
    "aarch32": (KVM_ARM_VCPU_EL1_32BIT,),
}


def feature_id_range_idx(op0: int, op1: int, crn: int, crm: int, op2: int) -> int:
    """KVM_ARM_FEATURE_ID_RANGE_IDX: a feature ID register's index in the writable-mask array."""
    if op0 != 3 or crn != 0 or op1 not in _FEATURE_ID_OP1 or not 0 <= crm <= 7 or not 0 <= op2 <= 7:
        raise ValueError(f"S{op0}_{op1}_C{crn}_C{crm}_{op2} is not in the feature ID range")
    op1_index = op1 & 3
    op1_index -= op1_index == 3
    return op1_index << 6 | (crm & 7) << 3 | op2


def feature_id_range_reg(index: int) -> int:
    """The sysreg id of entry ``index`` of the writable-mask array (inverse of the above)."""
    if not 0 <= index < KVM_ARM_FEATURE_ID_RANGE_SIZE:
        raise ValueError(f"feature ID range index {index} out of range")
    return regs.sysreg_id(3, _FEATURE_ID_OP1[index >> 6], 0, (index >> 3) & 7, index & 7)


def vcpu_init_features(features: Iterable[str]) -> int:
    """The kvm_vcpu_init feature bitmap QEMU uses: PSCI_0_2 plus the named optional features."""
    bits = 1 << KVM_ARM_VCPU_PSCI_0_2
    for name in features:
        try:
            for bit in FEATURE_BITS[name]:
                bits |= 1 << bit
        except KeyError:
            raise ValueError(
                f"unknown vCPU feature {name!r} (one of {', '.join(FEATURE_BITS)})"
            ) from None
    return bits


def pack_vcpu_init(target: int, feature_bits: int) -> bytes:
    words = [(feature_bits >> (32 * i)) & 0xFFFFFFFF for i in range(KVM_VCPU_INIT_FEATURE_WORDS)]
    return KVM_VCPU_INIT.pack(target, *words)


def unpack_vcpu_init(data: bytes | bytearray) -> tuple[int, int]:
    target, *words = KVM_VCPU_INIT.unpack(bytes(data[: KVM_VCPU_INIT.size]))
    return target, sum(w << (32 * i) for i, w in enumerate(words))


def reg_size(reg_id: int) -> int:
    """KVM_REG_SIZE(id): the value size in bytes encoded in a register id."""
    return 1 << ((reg_id & regs.KVM_REG_SIZE_MASK) >> 52)


def errno_name(code: int) -> str:
    return errno.errorcode.get(code, f"errno {code}")


# ---------------------------------------------------------------------------------------------
# Errors: each maps onto one exit status and carries one line an operator can act on.
# ---------------------------------------------------------------------------------------------


class KvmError(Exception):
    """A KVM failure; ``str()`` is one line, ``status`` the exit status of a command."""

    status: ClassVar[ExitStatus] = ExitStatus.KVM_ERROR

    def __init__(self, message: str, errno_code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.errno = errno_code


class NoKvm(KvmError):
    status = ExitStatus.NO_KVM


class KvmPermission(KvmError):
    status = ExitStatus.KVM_PERMISSION


class NotAarch64(KvmError):
    status = ExitStatus.NOT_AARCH64


class KvmNotInitialised(KvmError):
    status = ExitStatus.KVM_NOT_INITIALISED


class KvmNoRegIoctls(KvmError):
    status = ExitStatus.KVM_NO_REG_IOCTLS


class RegisterError(KvmError):
    """The kernel refused one register access (GET or SET); ``errno`` says why."""

    def __init__(self, message: str, reg_id: int, errno_code: int) -> None:
        super().__init__(message, errno_code)
        self.reg_id = reg_id


# ---------------------------------------------------------------------------------------------
# System calls (injectable)
# ---------------------------------------------------------------------------------------------

IoctlArg = Union[int, bytearray]


class Syscalls(Protocol):
    """What this module needs from the operating system; tests substitute a fake."""

    def machine(self) -> str: ...

    def open(self, path: str) -> int: ...

    def close(self, fd: int) -> None: ...

    def ioctl(self, fd: int, request: int, arg: IoctlArg) -> int:
        """ioctl(2); a bytearray argument is passed by address and updated in place."""
        ...


class RealSyscalls:
    """The real system calls. Refuses every ioctl on a machine that is not aarch64."""

    def machine(self) -> str:
        return platform.machine()

    def open(self, path: str) -> int:
        return os.open(path, os.O_RDWR | os.O_CLOEXEC)

    def close(self, fd: int) -> None:
        os.close(fd)

    def ioctl(self, fd: int, request: int, arg: IoctlArg) -> int:
        machine = self.machine()
        if machine != AARCH64:
            raise NotAarch64(_not_aarch64_message(machine))
        if isinstance(arg, int):
            return fcntl.ioctl(fd, request, arg)
        return int(fcntl.ioctl(fd, request, arg, True))


# What Kvm uses when given no Syscalls; tests of the commands replace it with a fake.
SYSCALLS: Syscalls = RealSyscalls()


def _not_aarch64_message(machine: str) -> str:
    return (
        f"this machine is {machine or 'unknown'}, not aarch64: psci-hook sends arm64 KVM "
        "ioctls only on an arm64 host"
    )


# ---------------------------------------------------------------------------------------------
# /dev/kvm, scratch VMs and vCPUs
# ---------------------------------------------------------------------------------------------


class Capabilities(NamedTuple):
    """The KVM capabilities that decide which vCPU features QEMU can use on this host."""

    psci_0_2: bool
    pmu_v3: bool
    sve: bool
    ptrauth_address: bool
    ptrauth_generic: bool
    reg_mask_ranges: int  # bitmap of KVM_ARM_GET_REG_WRITABLE_MASKS ranges (0: ioctl absent)
    # KVM_CAP_ARM_EL1_32BIT: the CPUs run AArch32 at EL1, so KVM creates 32-bit vCPUs (QEMU's
    # aarch64=off refuses to start without it: target/arm/cpu.c aarch64_cpu_set_aarch64).
    el1_32bit: bool = False

    def supported_features(self) -> frozenset[str]:
        """The optional vCPU features QEMU's -cpu host would enable here (64-bit vCPU)."""
        out = set()
        if self.pmu_v3:
            out.add("pmu")
        if self.ptrauth_address and self.ptrauth_generic:
            out.add("pauth")
        if self.sve:
            out.add("sve")
        return frozenset(out)

    @property
    def writable_masks(self) -> bool:
        return bool(self.reg_mask_ranges >> KVM_ARM_FEATURE_ID_RANGE & 1)

    def to_dict(self) -> dict[str, int | bool]:
        return dict(self._asdict())


class Kvm:
    """An open /dev/kvm. Use as a context manager; scratch VMs are created from it."""

    def __init__(self, syscalls: Syscalls | None = None, path: str = DEV_KVM) -> None:
        self.sys: Syscalls = syscalls if syscalls is not None else SYSCALLS
        self.path = path
        machine = self.sys.machine()
        if machine != AARCH64:
            raise NotAarch64(_not_aarch64_message(machine))
        self.fd = _open_device(self.sys, path)
        try:
            version = self.ioctl(self.fd, KVM_GET_API_VERSION, 0)
            if version != KVM_API_VERSION:
                raise KvmError(
                    f"{path}: KVM API version {version}, expected {KVM_API_VERSION}"
                )
            if not self.check_extension(KVM_CAP_ONE_REG):
                raise KvmNoRegIoctls(
                    f"{path}: the kernel lacks KVM_CAP_ONE_REG (no KVM_GET_ONE_REG / "
                    "KVM_SET_ONE_REG / KVM_GET_REG_LIST)"
                )
        except BaseException:
            self.close()
            raise

    # -- plumbing ------------------------------------------------------------------------------

    def ioctl(self, fd: int, request: int, arg: IoctlArg, what: str = "") -> int:
        """One ioctl; an OSError becomes the matching KvmError."""
        try:
            return self.sys.ioctl(fd, request, arg)
        except OSError as exc:
            raise _ioctl_error(request, exc.errno or 0, what) from None

    def close(self) -> None:
        fd, self.fd = getattr(self, "fd", -1), -1
        self.release(fd)

    def release(self, fd: int) -> None:
        """Close one of this device's descriptors (the device's own, a VM's, a vCPU's), once;
        a descriptor already closed is not an error here."""
        if fd >= 0:
            with contextlib.suppress(OSError):
                self.sys.close(fd)

    def __enter__(self) -> Kvm:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- capabilities --------------------------------------------------------------------------

    def check_extension(self, cap: int) -> int:
        return self.ioctl(self.fd, KVM_CHECK_EXTENSION, cap, f"capability {cap}")

    def capabilities(self) -> Capabilities:
        return Capabilities(
            psci_0_2=bool(self.check_extension(KVM_CAP_ARM_PSCI_0_2)),
            pmu_v3=bool(self.check_extension(KVM_CAP_ARM_PMU_V3)),
            sve=bool(self.check_extension(KVM_CAP_ARM_SVE)),
            ptrauth_address=bool(self.check_extension(KVM_CAP_ARM_PTRAUTH_ADDRESS)),
            ptrauth_generic=bool(self.check_extension(KVM_CAP_ARM_PTRAUTH_GENERIC)),
            reg_mask_ranges=self.check_extension(KVM_CAP_ARM_SUPPORTED_REG_MASK_RANGES),
            el1_32bit=bool(self.check_extension(KVM_CAP_ARM_EL1_32BIT)),
        )

    # -- scratch VMs ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def scratch_vm(self) -> Iterator[ScratchVm]:
        fd = self.ioctl(self.fd, KVM_CREATE_VM, 0)
        vm = ScratchVm(self, fd)
        try:
            yield vm
        finally:
            vm.close()

    @contextlib.contextmanager
    def scratch_vcpu(self, features: Iterable[str] = ()) -> Iterator[ScratchVcpu]:
        """A fresh VM with one vCPU initialised as QEMU does (PSCI_0_2 + ``features``)."""
        with self.scratch_vm() as vm:
            vcpu = vm.create_vcpu(features)
            try:
                yield vcpu
            finally:
                vcpu.close()


class ScratchVm:
    def __init__(self, kvm: Kvm, fd: int) -> None:
        self.kvm = kvm
        self.fd = fd

    def close(self) -> None:
        fd, self.fd = self.fd, -1
        self.kvm.release(fd)

    def preferred_target(self) -> int:
        buf = bytearray(KVM_VCPU_INIT.size)
        self.kvm.ioctl(self.fd, KVM_ARM_PREFERRED_TARGET, buf)
        return unpack_vcpu_init(buf)[0]

    def create_vcpu(self, features: Iterable[str] = (), index: int = 0) -> ScratchVcpu:
        """KVM_CREATE_VCPU, KVM_ARM_PREFERRED_TARGET, KVM_ARM_VCPU_INIT, and for SVE the
        KVM_ARM_VCPU_FINALIZE that QEMU does before it reads the register list."""
        feature_set = frozenset(features)
        bits = vcpu_init_features(feature_set)
        target = self.preferred_target()
        fd = self.kvm.ioctl(self.fd, KVM_CREATE_VCPU, index)
        vcpu = ScratchVcpu(self.kvm, fd, target, feature_set)
        try:
            vcpu.init(bits)
            if "sve" in feature_set:
                arg = bytearray(FINALIZE_ARG.pack(KVM_ARM_VCPU_SVE))
                self.kvm.ioctl(fd, KVM_ARM_VCPU_FINALIZE, arg, "SVE")
        except BaseException:
            vcpu.close()
            raise
        return vcpu

    def writable_masks(self) -> dict[int, int]:
        """KVM_ARM_GET_REG_WRITABLE_MASKS for the feature ID range: sysreg id -> mask."""
        masks = array.array("Q", bytes(8 * KVM_ARM_FEATURE_ID_RANGE_SIZE))
        arg = bytearray(
            REG_MASK_RANGE.pack(masks.buffer_info()[0], KVM_ARM_FEATURE_ID_RANGE, *([0] * 13))
        )
        self.kvm.ioctl(self.fd, KVM_ARM_GET_REG_WRITABLE_MASKS, arg)
        return {feature_id_range_reg(i): m for i, m in enumerate(masks)}


class ScratchVcpu:
    def __init__(self, kvm: Kvm, fd: int, target: int, features: frozenset[str]) -> None:
        self.kvm = kvm
        self.fd = fd
        self.target = target
        self.features = features

    def close(self) -> None:
        fd, self.fd = self.fd, -1
        self.kvm.release(fd)

    def init(self, feature_bits: int) -> None:
        arg = bytearray(pack_vcpu_init(self.target, feature_bits))
        self.kvm.ioctl(self.fd, KVM_ARM_VCPU_INIT, arg)

    def reg_list(self) -> list[int]:
        """KVM_GET_REG_LIST: every register id of this vCPU, in the kernel's order."""
        capacity = 1024
        for _attempt in range(4):
            buf = bytearray(KVM_REG_LIST.pack(capacity) + bytes(8 * capacity))
            try:
                self.kvm.ioctl(self.fd, KVM_GET_REG_LIST, buf)
            except KvmError as exc:
                if exc.errno != errno.E2BIG:
                    raise
                # The kernel wrote the number it needs into n.
                (needed,) = KVM_REG_LIST.unpack_from(buf)
                capacity = needed if needed > capacity else capacity * 4
                continue
            (count,) = KVM_REG_LIST.unpack_from(buf)
            if count > capacity:
                raise KvmError(f"KVM_GET_REG_LIST returned {count} ids for {capacity} slots")
            return list(struct.unpack_from(f"={count}Q", buf, KVM_REG_LIST.size))
        raise KvmError("KVM_GET_REG_LIST: the register list kept growing (E2BIG)")

    def get_one_reg(self, reg_id: int) -> int:
        size = reg_size(reg_id)
        value = array.array("B", bytes(size))
        arg = bytearray(KVM_ONE_REG.pack(reg_id, value.buffer_info()[0]))
        try:
            self.kvm.ioctl(self.fd, KVM_GET_ONE_REG, arg, regs.register_name(reg_id))
        except KvmError as exc:
            raise _as_register_error(exc, reg_id) from None
        return int.from_bytes(value.tobytes(), sys.byteorder)

    def set_one_reg(self, reg_id: int, value: int) -> None:
        size = reg_size(reg_id)
        if not 0 <= value < 1 << (8 * size):
            raise ValueError(f"value 0x{value:x} does not fit in {size} bytes")
        buf = array.array("B", value.to_bytes(size, sys.byteorder))
        arg = bytearray(KVM_ONE_REG.pack(reg_id, buf.buffer_info()[0]))
        try:
            self.kvm.ioctl(self.fd, KVM_SET_ONE_REG, arg, regs.register_name(reg_id))
        except KvmError as exc:
            raise _as_register_error(exc, reg_id) from None

    def try_set_one_reg(self, reg_id: int, value: int) -> int:
        """KVM_SET_ONE_REG; 0 when accepted, else the errno of the refusal."""
        try:
            self.set_one_reg(reg_id, value)
        except RegisterError as exc:
            return exc.errno or errno.EIO
        return 0

    def try_get_one_reg(self, reg_id: int) -> int | None:
        try:
            return self.get_one_reg(reg_id)
        except RegisterError:
            return None


def _open_device(syscalls: Syscalls, path: str) -> int:
    try:
        return syscalls.open(path)
    except FileNotFoundError:
        raise NoKvm(
            f"{path} does not exist: this host has no KVM (kvm not built in or the kernel "
            "was not booted at EL2)",
            errno.ENOENT,
        ) from None
    except PermissionError as exc:
        raise KvmPermission(
            f"{path}: permission denied: run as root or as a member of the group owning it",
            exc.errno,
        ) from None
    except OSError as exc:
        code = exc.errno or 0
        if code in (errno.ENODEV, errno.ENXIO):
            raise NoKvm(f"{path}: no KVM behind the device ({errno_name(code)})", code) from None
        raise KvmError(f"{path}: cannot open: {exc.strerror or errno_name(code)}", code) from None


def _ioctl_error(request: int, code: int, what: str) -> KvmError:
    name = REQUEST_NAMES.get(request, f"ioctl 0x{request:x}")
    subject = f"{name}({what})" if what else name
    if code == errno.ENOEXEC:
        return KvmNotInitialised(
            f"{subject}: ENOEXEC: the kernel refused the call because the vCPU is not "
            "initialised (KVM_ARM_VCPU_INIT must come first)",
            code,
        )
    if code == errno.ENOTTY and request in _REG_IOCTLS:
        return KvmNoRegIoctls(
            f"{subject}: ENOTTY: this kernel has no arm64 register ioctls", code
        )
    return KvmError(f"{subject}: {errno_name(code)} ({os.strerror(code)})", code)


# What a refused register access returns (hypercalls.c, sys_regs.c, guest.c): a value the
# kernel does not accept, a register it does not list, a bitmap change after the VM ran, a
# register that needs a feature or finalisation, a wrong size.
REFUSAL_ERRNOS = frozenset({errno.EINVAL, errno.ENOENT, errno.EBUSY, errno.EPERM, errno.E2BIG})


def _as_register_error(exc: KvmError, reg_id: int) -> KvmError:
    if type(exc) is KvmError and exc.errno in REFUSAL_ERRNOS:
        return RegisterError(exc.message, reg_id, exc.errno or 0)
    return exc


# ---------------------------------------------------------------------------------------------
# The rehearsal: what QEMU's write_list_to_kvmstate will do on this host
# ---------------------------------------------------------------------------------------------


class Refusal(NamedTuple):
    """The first register the destination kernel refused, with both values."""

    reg_id: int
    errno: int
    attempted: int
    destination_value: int | None  # GET on the same vCPU; None when GET fails too

    @property
    def name(self) -> str:
        return regs.register_name(self.reg_id)

    def message(self) -> str:
        own = (
            regs.value_text(self.reg_id, self.destination_value)
            if self.destination_value is not None
            else "unreadable"
        )
        return (
            f"KVM_SET_ONE_REG {self.name} = {regs.value_text(self.reg_id, self.attempted)} "
            f"refused with {errno_name(self.errno)}; this host's own value is {own}"
        )


def rehearse(
    features: Iterable[str],
    values: Mapping[int, int],
    *,
    kvm: Kvm | None = None,
    syscalls: Syscalls | None = None,
    only_listed: bool = False,
) -> Refusal | None:
    """Set every (id, value) on a fresh scratch VM+vCPU with ``features``, in ascending id
    order as QEMU's write_list_to_kvmstate does; the first refusal, or None if all were taken.

    With ``only_listed`` the ids this vCPU does not list are skipped (QEMU never sets those);
    otherwise they are set too and come back as ENOENT refusals.
    """
    refusals = _rehearse(features, values, kvm, syscalls, only_listed, stop_at_first=True)
    return refusals[0] if refusals else None


def rehearse_all(
    features: Iterable[str],
    values: Mapping[int, int],
    *,
    kvm: Kvm | None = None,
    syscalls: Syscalls | None = None,
    only_listed: bool = False,
) -> list[Refusal]:
    """Like rehearse(), but go on after a refusal and return every one (a refused SET stores
    nothing, so the later ones are judged as they would be on their own)."""
    return _rehearse(features, values, kvm, syscalls, only_listed, stop_at_first=False)


def _rehearse(
    features: Iterable[str],
    values: Mapping[int, int],
    kvm: Kvm | None,
    syscalls: Syscalls | None,
    only_listed: bool,
    stop_at_first: bool,
) -> list[Refusal]:
    owned = kvm is None
    handle = Kvm(syscalls) if kvm is None else kvm
    refusals: list[Refusal] = []
    try:
        with handle.scratch_vcpu(features) as vcpu:
            listed = set(vcpu.reg_list()) if only_listed else None
            for reg_id in sorted(values):
                if listed is not None and reg_id not in listed:
                    continue
                value = values[reg_id]
                code = vcpu.try_set_one_reg(reg_id, value)
                if code:
                    refusals.append(Refusal(reg_id, code, value, vcpu.try_get_one_reg(reg_id)))
                    if stop_at_first:
                        break
        return refusals
    finally:
        if owned:
            handle.close()
