"""psci_hook.kvm: ioctl request numbers, structure packing, and every error path.

The request numbers and layouts are checked against values computed independently of the
module: the numbers as strace and QEMU print them, and (where a C compiler is available) the
kernel's own _IOW/_IOR/_IOWR macros and sizeof of the uapi structures. The error paths use a fake
system-call layer (tests/kvmfake.py) injected into kvm.py: faking is acceptable here only
because this x86_64 machine cannot run arm64 ioctls, and must never send them to its own
/dev/kvm. The real kernels' answers are tested in tests/nested/ on real arm64 KVM.
"""

from __future__ import annotations

import errno
import platform
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from psci_hook import kvm
from psci_hook import registers as regs
from psci_hook.status import ExitStatus
from tests import kvmfake

# The request numbers as they appear in strace output and QEMU traces (arm64 and x86 share
# asm-generic/ioctl.h: dir<<30 | size<<16 | 'type'<<8 | nr).
KNOWN_REQUESTS = {
    "KVM_GET_API_VERSION": 0xAE00,
    "KVM_CREATE_VM": 0xAE01,
    "KVM_CHECK_EXTENSION": 0xAE03,
    "KVM_CREATE_VCPU": 0xAE41,
    "KVM_GET_ONE_REG": 0x4010AEAB,
    "KVM_SET_ONE_REG": 0x4010AEAC,
    "KVM_ARM_VCPU_INIT": 0x4020AEAE,
    "KVM_ARM_PREFERRED_TARGET": 0x8020AEAF,
    "KVM_GET_REG_LIST": 0xC008AEB0,
    "KVM_ARM_GET_REG_WRITABLE_MASKS": 0x8040AEB6,
    "KVM_ARM_VCPU_FINALIZE": 0x4004AEC2,
}


@pytest.mark.parametrize(("name", "number"), sorted(KNOWN_REQUESTS.items()))
def test_request_numbers(name: str, number: int) -> None:
    assert getattr(kvm, name) == number
    assert kvm.REQUEST_NAMES[number] == name


C_PROGRAM = r"""
#include <stdio.h>
#include <linux/kvm.h>
/* arm64-only uapi structures (arch/arm64/include/uapi/asm/kvm.h), absent from x86 headers */
struct arm64_kvm_vcpu_init { __u32 target; __u32 features[7]; };
struct arm64_reg_mask_range { __u64 addr; __u32 range; __u32 reserved[13]; };
int main(void) {
    printf("KVM_GET_API_VERSION %lu\n", (unsigned long)KVM_GET_API_VERSION);
    printf("KVM_CREATE_VM %lu\n", (unsigned long)KVM_CREATE_VM);
    printf("KVM_CHECK_EXTENSION %lu\n", (unsigned long)KVM_CHECK_EXTENSION);
    printf("KVM_CREATE_VCPU %lu\n", (unsigned long)KVM_CREATE_VCPU);
    printf("KVM_GET_ONE_REG %lu\n", (unsigned long)KVM_GET_ONE_REG);
    printf("KVM_SET_ONE_REG %lu\n", (unsigned long)KVM_SET_ONE_REG);
    printf("KVM_GET_REG_LIST %lu\n", (unsigned long)KVM_GET_REG_LIST);
    printf("KVM_ARM_VCPU_INIT %lu\n",
           (unsigned long)_IOW(KVMIO, 0xae, struct arm64_kvm_vcpu_init));
    printf("KVM_ARM_PREFERRED_TARGET %lu\n",
           (unsigned long)_IOR(KVMIO, 0xaf, struct arm64_kvm_vcpu_init));
    printf("KVM_ARM_GET_REG_WRITABLE_MASKS %lu\n",
           (unsigned long)_IOR(KVMIO, 0xb6, struct arm64_reg_mask_range));
    printf("KVM_ARM_VCPU_FINALIZE %lu\n", (unsigned long)KVM_ARM_VCPU_FINALIZE);
    printf("sizeof_kvm_one_reg %lu\n", (unsigned long)sizeof(struct kvm_one_reg));
    printf("sizeof_kvm_reg_list %lu\n", (unsigned long)sizeof(struct kvm_reg_list));
    printf("sizeof_kvm_vcpu_init %lu\n", (unsigned long)sizeof(struct arm64_kvm_vcpu_init));
    printf("sizeof_reg_mask_range %lu\n", (unsigned long)sizeof(struct arm64_reg_mask_range));
    printf("KVM_CAP_ONE_REG %d\n", KVM_CAP_ONE_REG);
    printf("KVM_CAP_ARM_PSCI_0_2 %d\n", KVM_CAP_ARM_PSCI_0_2);
    printf("KVM_CAP_ARM_PMU_V3 %d\n", KVM_CAP_ARM_PMU_V3);
    printf("KVM_CAP_ARM_SVE %d\n", KVM_CAP_ARM_SVE);
    printf("KVM_CAP_ARM_PTRAUTH_ADDRESS %d\n", KVM_CAP_ARM_PTRAUTH_ADDRESS);
    printf("KVM_CAP_ARM_PTRAUTH_GENERIC %d\n", KVM_CAP_ARM_PTRAUTH_GENERIC);
#ifdef KVM_CAP_ARM_SUPPORTED_REG_MASK_RANGES
    printf("KVM_CAP_ARM_SUPPORTED_REG_MASK_RANGES %d\n", KVM_CAP_ARM_SUPPORTED_REG_MASK_RANGES);
#endif
    return 0;
}
"""


def test_numbers_and_sizes_match_the_kernel_headers(tmp_path: Path) -> None:
    """The host's own <linux/kvm.h> and its _IOW/_IOR macros, compiled (x86 and arm64 share
    the generic ioctl encoding and the generic KVM numbers)."""
    cc = shutil.which("cc") or shutil.which("gcc")
    # gcc, libc6-dev and linux-libc-dev come from scripts/deps/test.apt.
    assert cc is not None, "no C compiler: run scripts/setup"
    assert Path("/usr/include/linux/kvm.h").exists(), "no kernel headers: run scripts/setup"
    source = tmp_path / "numbers.c"
    source.write_text(C_PROGRAM)
    binary = tmp_path / "numbers"
    subprocess.run([cc, "-o", str(binary), str(source)], check=True, capture_output=True)
    output = subprocess.run([str(binary)], check=True, capture_output=True, text=True).stdout
    facts = {name: int(value) for name, value in (line.split() for line in output.splitlines())}
    sizes = {
        "sizeof_kvm_one_reg": kvm.KVM_ONE_REG.size,
        "sizeof_kvm_reg_list": kvm.KVM_REG_LIST.size,
        "sizeof_kvm_vcpu_init": kvm.KVM_VCPU_INIT.size,
        "sizeof_reg_mask_range": kvm.REG_MASK_RANGE.size,
    }
    for name, value in facts.items():
        expected = sizes[name] if name in sizes else getattr(kvm, name)
        assert value == expected, name


def test_capability_and_feature_numbers() -> None:
    # include/uapi/linux/kvm.h and arch/arm64/include/uapi/asm/kvm.h
    assert (kvm.KVM_CAP_ONE_REG, kvm.KVM_CAP_ARM_PSCI_0_2, kvm.KVM_CAP_ARM_PMU_V3) == (70, 102, 126)
    assert (kvm.KVM_CAP_ARM_SVE, kvm.KVM_CAP_ARM_PTRAUTH_ADDRESS,
            kvm.KVM_CAP_ARM_PTRAUTH_GENERIC) == (170, 171, 172)
    assert kvm.KVM_CAP_ARM_SUPPORTED_REG_MASK_RANGES == 230
    assert (kvm.KVM_ARM_VCPU_PSCI_0_2, kvm.KVM_ARM_VCPU_PMU_V3, kvm.KVM_ARM_VCPU_SVE,
            kvm.KVM_ARM_VCPU_PTRAUTH_ADDRESS, kvm.KVM_ARM_VCPU_PTRAUTH_GENERIC) == (2, 3, 4, 5, 6)


def test_struct_layouts() -> None:
    # struct kvm_one_reg: the id, then the address of the value, in the machine's byte order.
    packed = kvm.KVM_ONE_REG.pack(0x6030000000140000, 0x1122334455667788)
    assert packed == (0x6030000000140000).to_bytes(8, sys.byteorder) + (
        0x1122334455667788).to_bytes(8, sys.byteorder)
    assert kvm.KVM_VCPU_INIT.size == 32 and kvm.KVM_ONE_REG.size == 16
    assert kvm.KVM_REG_LIST.size == 8 and kvm.REG_MASK_RANGE.size == 64
    packed = kvm.pack_vcpu_init(5, kvm.vcpu_init_features(["pmu", "pauth", "sve"]))
    assert struct.unpack("=8I", packed) == (5, 0x7C, 0, 0, 0, 0, 0, 0)
    assert kvm.unpack_vcpu_init(packed) == (5, 0x7C)


@pytest.mark.parametrize(
    ("features", "bits"),
    [((), 0x04), (("pmu",), 0x0C), (("pauth",), 0x64), (("sve",), 0x14),
     (("pmu", "pauth", "sve"), 0x7C)],
)
def test_vcpu_init_features(features: tuple[str, ...], bits: int) -> None:
    assert kvm.vcpu_init_features(features) == bits


def test_unknown_feature_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown vCPU feature 'mte'"):
        kvm.vcpu_init_features(["mte"])


@pytest.mark.parametrize(
    ("encoding", "index"),
    # KVM_ARM_FEATURE_ID_RANGE_IDX: op1 0, 1, 3 -> 0, 1, 2; index = op1' << 6 | crm << 3 | op2
    [((3, 0, 0, 0, 0), 0), ((3, 0, 0, 4, 0), 32), ((3, 0, 0, 7, 4), 60),
     ((3, 1, 0, 0, 1), 65), ((3, 3, 0, 0, 1), 129), ((3, 3, 0, 7, 7), 191)],
)
def test_feature_id_range_index(encoding: tuple[int, int, int, int, int], index: int) -> None:
    assert kvm.feature_id_range_idx(*encoding) == index
    assert kvm.feature_id_range_reg(index) == regs.sysreg_id(*encoding)


def test_feature_id_range_round_trip_and_bounds() -> None:
    for index in range(kvm.KVM_ARM_FEATURE_ID_RANGE_SIZE):
        enc = regs.sysreg_encoding(kvm.feature_id_range_reg(index))
        assert kvm.feature_id_range_idx(*enc) == index
    for bad in [(3, 2, 0, 0, 0), (3, 0, 1, 0, 0), (2, 0, 0, 0, 0)]:
        with pytest.raises(ValueError):
            kvm.feature_id_range_idx(*bad)
    with pytest.raises(ValueError):
        kvm.feature_id_range_reg(192)


def test_reg_size() -> None:
    assert kvm.reg_size(regs.PSCI_VERSION.reg_id) == 8
    assert kvm.reg_size(regs.ccsidr_id(0)) == 4
    assert kvm.reg_size(kvmfake.SVE_Z0) == 256


# ---------------------------------------------------------------------------------------------
# The aarch64 guard
# ---------------------------------------------------------------------------------------------


def test_not_aarch64_refuses_before_touching_dev_kvm() -> None:
    fake = kvmfake.FakeKvm(machine="x86_64")
    with pytest.raises(kvm.NotAarch64) as caught:
        kvm.Kvm(fake)
    assert caught.value.status == ExitStatus.NOT_AARCH64 == 12
    assert "x86_64, not aarch64" in caught.value.message
    assert fake.calls == []  # not even opened


def test_real_syscalls_never_send_an_ioctl_off_aarch64(monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[int] = []
    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(kvm.fcntl, "ioctl", lambda *a: sent.append(a[1]) or 0)
    with pytest.raises(kvm.NotAarch64):
        kvm.RealSyscalls().ioctl(-1, kvm.KVM_GET_REG_LIST, bytearray(8))
    with pytest.raises(kvm.NotAarch64):
        kvm.Kvm()  # the default system calls, on this machine
    assert sent == []


@pytest.mark.skipif(platform.machine() == "aarch64", reason="checks the guard on non-arm64")
def test_this_machine_is_refused_for_real() -> None:
    with pytest.raises(kvm.NotAarch64):
        kvm.Kvm(kvm.RealSyscalls())


# ---------------------------------------------------------------------------------------------
# Opening /dev/kvm
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "exc_type", "status", "text"),
    [
        (FileNotFoundError(errno.ENOENT, "No such file"), kvm.NoKvm, 10, "does not exist"),
        (PermissionError(errno.EACCES, "Permission denied"), kvm.KvmPermission, 11,
         "permission denied"),
        (OSError(errno.ENXIO, "No such device or address"), kvm.NoKvm, 10, "ENXIO"),
        (OSError(errno.ENODEV, "No such device"), kvm.NoKvm, 10, "ENODEV"),
        (OSError(errno.EIO, "Input/output error"), kvm.KvmError, 15, "cannot open"),
    ],
)
def test_open_errors(error: OSError, exc_type: type[kvm.KvmError], status: int,
                     text: str) -> None:
    fake = kvmfake.FakeKvm(open_error=error)
    with pytest.raises(exc_type) as caught:
        kvm.Kvm(fake)
    assert type(caught.value) is exc_type
    assert caught.value.status == status
    assert text in caught.value.message and "\n" not in caught.value.message


def test_wrong_api_version_closes_the_device() -> None:
    fake = kvmfake.FakeKvm(api_version=11)
    with pytest.raises(kvm.KvmError, match="API version 11, expected 12"):
        kvm.Kvm(fake)
    assert fake.open_fds == set()


def test_no_one_reg_capability() -> None:
    caps = dict(kvmfake.DEFAULT_CAPS)
    del caps[kvm.KVM_CAP_ONE_REG]
    fake = kvmfake.FakeKvm(caps=caps)
    with pytest.raises(kvm.KvmNoRegIoctls) as caught:
        kvm.Kvm(fake)
    assert caught.value.status == ExitStatus.KVM_NO_REG_IOCTLS == 14
    assert fake.open_fds == set()


def test_capabilities() -> None:
    with kvm.Kvm(kvmfake.FakeKvm()) as handle:
        caps = handle.capabilities()
    assert caps.supported_features() == {"pmu", "pauth", "sve"}
    assert caps.writable_masks
    caps_one_pauth = dict(kvmfake.DEFAULT_CAPS)
    del caps_one_pauth[kvm.KVM_CAP_ARM_PTRAUTH_GENERIC]
    del caps_one_pauth[kvm.KVM_CAP_ARM_SVE]
    with kvm.Kvm(kvmfake.FakeKvm(caps=caps_one_pauth)) as handle:
        assert handle.capabilities().supported_features() == {"pmu"}


# ---------------------------------------------------------------------------------------------
# Scratch VMs and vCPUs
# ---------------------------------------------------------------------------------------------


def test_scratch_vcpu_sequence_and_cleanup() -> None:
    fake = kvmfake.FakeKvm()
    with kvm.Kvm(fake) as handle, handle.scratch_vcpu(["sve", "pmu"]) as vcpu:
        assert vcpu.target == 5
        assert vcpu.get_one_reg(kvmfake.PSCI) == 0x10001
    names = [c[0] for c in fake.calls if c[0] not in ("close", "open")]
    assert names == [
        "KVM_GET_API_VERSION", "KVM_CHECK_EXTENSION", "KVM_CREATE_VM",
        "KVM_ARM_PREFERRED_TARGET", "KVM_CREATE_VCPU", "KVM_ARM_VCPU_INIT",
        "KVM_ARM_VCPU_FINALIZE", "KVM_GET_ONE_REG",
    ]
    vcpu_state = next(iter(fake.vcpus.values()))
    assert vcpu_state.features == 0x1C and vcpu_state.finalized
    assert fake.open_fds == set()


def test_reg_list_and_values() -> None:
    with kvm.Kvm(kvmfake.FakeKvm()) as handle, handle.scratch_vcpu() as vcpu:
        listed = vcpu.reg_list()
        assert listed == list(kvmfake.DEFAULT_VALUES)
        assert vcpu.get_one_reg(regs.ccsidr_id(1)) == 0x201FE012  # a 32-bit register
        assert vcpu.get_one_reg(kvmfake.PFR0) == 0x1100000011111112
        vcpu.set_one_reg(kvmfake.PSCI, 0x10001)
        assert vcpu.try_set_one_reg(kvmfake.PSCI, 0x10003) == errno.EINVAL
        assert vcpu.try_get_one_reg(regs.fw_bmap_reg_id(3)) is None


def test_reg_list_grows_on_e2big() -> None:
    values = {regs.sysreg_id(3, 0, 15, i // 8 % 16, i % 8) + (i // 128 << 11): i
              for i in range(1500)}
    fake = kvmfake.FakeKvm(values=values)
    with kvm.Kvm(fake) as handle, handle.scratch_vcpu() as vcpu:
        assert sorted(vcpu.reg_list()) == sorted(values)
    assert [c[0] for c in fake.calls].count("KVM_GET_REG_LIST") == 2


def test_value_too_wide_for_the_register() -> None:
    with kvm.Kvm(kvmfake.FakeKvm()) as handle, handle.scratch_vcpu() as vcpu, \
            pytest.raises(ValueError, match="does not fit in 4 bytes"):
        vcpu.set_one_reg(regs.ccsidr_id(0), 1 << 32)


def test_writable_masks() -> None:
    with kvm.Kvm(kvmfake.FakeKvm()) as handle, handle.scratch_vm() as vm:
        masks = vm.writable_masks()
    assert len(masks) == 192
    assert masks[kvmfake.PFR0] == 0xF0
    assert masks[regs.SYSREG_BY_NAME["CLIDR_EL1"]] == 0


# ---------------------------------------------------------------------------------------------
# ioctl failures: each maps onto its own exception and exit status, with one line
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_number", "code", "exc_type", "status"),
    [
        (kvm.KVM_GET_REG_LIST, errno.ENOEXEC, kvm.KvmNotInitialised, 13),
        (kvm.KVM_GET_ONE_REG, errno.ENOEXEC, kvm.KvmNotInitialised, 13),
        (kvm.KVM_GET_REG_LIST, errno.ENOTTY, kvm.KvmNoRegIoctls, 14),
        (kvm.KVM_GET_ONE_REG, errno.ENOTTY, kvm.KvmNoRegIoctls, 14),
        (kvm.KVM_CREATE_VM, errno.ENOMEM, kvm.KvmError, 15),
        (kvm.KVM_CREATE_VCPU, errno.EINVAL, kvm.KvmError, 15),
        (kvm.KVM_ARM_VCPU_INIT, errno.EINVAL, kvm.KvmError, 15),
        (kvm.KVM_ARM_PREFERRED_TARGET, errno.ENODEV, kvm.KvmError, 15),
        (kvm.KVM_ARM_VCPU_FINALIZE, errno.EPERM, kvm.KvmError, 15),
        (kvm.KVM_GET_REG_LIST, errno.EFAULT, kvm.KvmError, 15),
        (kvm.KVM_GET_ONE_REG, errno.EFAULT, kvm.KvmError, 15),
    ],
)
def test_ioctl_errors(request_number: int, code: int, exc_type: type[kvm.KvmError],
                      status: int) -> None:
    fake = kvmfake.FakeKvm(fail={request_number: code})
    with pytest.raises(exc_type) as caught, kvm.Kvm(fake) as handle, \
            handle.scratch_vcpu(["sve"]) as vcpu:
        vcpu.reg_list()
        vcpu.get_one_reg(kvmfake.PSCI)
    assert type(caught.value) is exc_type
    assert caught.value.status == status and caught.value.errno == code
    message = caught.value.message
    assert kvm.REQUEST_NAMES[request_number] in message and "\n" not in message
    assert fake.open_fds == set()  # everything closed on the way out


def test_register_refusals_are_register_errors() -> None:
    fake = kvmfake.FakeKvm()
    with kvm.Kvm(fake) as handle, handle.scratch_vcpu() as vcpu:
        with pytest.raises(kvm.RegisterError) as caught:
            vcpu.get_one_reg(regs.fw_bmap_reg_id(3))
        assert caught.value.errno == errno.ENOENT
        assert caught.value.reg_id == regs.fw_bmap_reg_id(3)
        assert "KVM_GET_ONE_REG(VENDOR_HYP_BMAP_2): ENOENT" in caught.value.message
        with pytest.raises(kvm.RegisterError) as caught:
            vcpu.set_one_reg(kvmfake.WA1, 1)
        assert caught.value.errno == errno.EINVAL


def test_uninitialised_vcpu_really_reaches_enoexec() -> None:
    """Without KVM_ARM_VCPU_INIT the register ioctls fail with ENOEXEC (fake kernel rule)."""
    fake = kvmfake.FakeKvm()
    with kvm.Kvm(fake) as handle, handle.scratch_vm() as vm:
        fd = handle.ioctl(vm.fd, kvm.KVM_CREATE_VCPU, 0)
        raw = kvm.ScratchVcpu(handle, fd, 5, frozenset())
        with pytest.raises(kvm.KvmNotInitialised, match="not initialised"):
            raw.reg_list()
        raw.close()


# ---------------------------------------------------------------------------------------------
# The rehearsal
# ---------------------------------------------------------------------------------------------


def test_rehearse_sets_in_ascending_order_and_accepts() -> None:
    fake = kvmfake.FakeKvm()
    values = {kvmfake.VENDOR: 3, kvmfake.PSCI: 0x10001, kvmfake.MIDR: 0x411FD070,
              regs.ccsidr_id(0): 0x701FE00A}
    assert kvm.rehearse(["pmu"], values, syscalls=fake) is None
    assert [i for i, _ in fake.sets] == sorted(values)
    assert fake.open_fds == set()


def test_rehearse_returns_the_first_refusal_with_both_values() -> None:
    fake = kvmfake.FakeKvm()
    values = {kvmfake.PSCI: 0x10003, kvmfake.WA1: 2, kvmfake.MIDR: 0x411FD071,
              kvmfake.STD: 1}
    refusal = kvm.rehearse([], values, syscalls=fake)
    assert refusal == kvm.Refusal(kvmfake.MIDR, errno.EINVAL, 0x411FD071, 0x411FD070)
    assert [i for i, _ in fake.sets] == [kvmfake.MIDR]  # stops at the first refusal
    assert refusal.message() == (
        "KVM_SET_ONE_REG MIDR_EL1 = 0x411fd071 refused with EINVAL; this host's own value "
        "is 0x411fd070"
    )


def test_rehearse_all_goes_on_after_a_refusal() -> None:
    fake = kvmfake.FakeKvm()
    values = {kvmfake.PSCI: 0x10003, kvmfake.WA1: 2, kvmfake.MIDR: 0x411FD071,
              kvmfake.STD: 3, regs.fw_bmap_reg_id(3): 0}
    refusals = kvm.rehearse_all([], values, syscalls=fake, only_listed=True)
    assert [(r.reg_id, r.attempted, r.destination_value) for r in refusals] == [
        (kvmfake.MIDR, 0x411FD071, 0x411FD070), (kvmfake.PSCI, 0x10003, 0x10001),
        (kvmfake.STD, 3, 1)]
    assert [i for i, _ in fake.sets] == sorted(set(values) - {regs.fw_bmap_reg_id(3)})
    assert kvm.rehearse_all([], {kvmfake.WA1: 2}, syscalls=kvmfake.FakeKvm()) == []


def test_rehearse_unlisted_register() -> None:
    bmap2 = regs.fw_bmap_reg_id(3)
    refusal = kvm.rehearse([], {bmap2: 0}, syscalls=kvmfake.FakeKvm())
    assert refusal is not None and refusal.errno == errno.ENOENT
    assert refusal.destination_value is None
    assert "VENDOR_HYP_BMAP_2" in refusal.message() and "unreadable" in refusal.message()
    fake = kvmfake.FakeKvm()
    assert kvm.rehearse([], {bmap2: 0, kvmfake.PSCI: 0x10001}, syscalls=fake,
                        only_listed=True) is None
    assert fake.sets == [(kvmfake.PSCI, 0x10001)]


def test_rehearse_with_an_open_handle_and_features() -> None:
    fake = kvmfake.FakeKvm()
    with kvm.Kvm(fake) as handle:
        assert kvm.rehearse(["pauth", "sve"], {kvmfake.APIA: 0, kvmfake.ZCR: 0},
                            kvm=handle) is None
        assert handle.fd in fake.open_fds  # the caller's handle stays open
    vcpu_state = next(iter(fake.vcpus.values()))
    assert fake.features_of(vcpu_state) == {"pauth", "sve"}


def test_rehearse_propagates_fatal_errors() -> None:
    fake = kvmfake.FakeKvm(fail={kvm.KVM_SET_ONE_REG: errno.ENOEXEC})
    with pytest.raises(kvm.KvmNotInitialised):
        kvm.rehearse([], {kvmfake.PSCI: 0x10001}, syscalls=fake)
    with pytest.raises(kvm.NotAarch64):
        kvm.rehearse([], {}, syscalls=kvmfake.FakeKvm(machine="riscv64"))
