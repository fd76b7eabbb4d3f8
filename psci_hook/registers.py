"""The register catalogue: arm64 KVM register ids, the eight firmware pseudo-registers, and names.

The model: docs/design.md#firmware-registers (ids, encodings, kernel versions), from the kernel's
arch/arm64/include/uapi/asm/kvm.h. Everything here is data and pure functions.
"""

from __future__ import annotations

import enum
import re
import types
from collections.abc import Mapping
from typing import NamedTuple

# ---------------------------------------------------------------------------------------------
# Register id layout (uapi/asm/kvm.h)
# ---------------------------------------------------------------------------------------------

KVM_REG_ARM64 = 0x6000000000000000
KVM_REG_SIZE_MASK = 0x00F0000000000000
KVM_REG_SIZE_U32 = 0x0020000000000000
KVM_REG_SIZE_U64 = 0x0030000000000000
U64_MAX = (1 << 64) - 1  # a 64-bit register's largest value
COPROC_SHIFT = 16
COPROC_MASK = 0x0FFF0000


class RegClass(enum.IntEnum):
    """The coprocessor class of a register id (bits 16-27)."""

    CORE = 0x0010
    DEMUX = 0x0011  # CCSIDR cache geometry, one entry per CSSELR value
    SYSREG = 0x0013
    FW = 0x0014  # firmware pseudo-registers: PSCI and the SMCCC workarounds
    SVE = 0x0015
    FW_FEAT_BMAP = 0x0016  # hypercall-service bitmaps


FIRMWARE_CLASSES = frozenset({RegClass.FW, RegClass.FW_FEAT_BMAP})
# QEMU migrates every listed register except these classes (target/arm/kvm.c).
NOT_MIGRATED_CLASSES = frozenset({RegClass.CORE, RegClass.SVE})
# KVM_REG_ARM64_SVE_VLS (arch/arm64/include/uapi/asm/kvm.h): 512 bits, bit vq-1 set when the
# vector length vq * 128 bits is offered; in the SVE class, so QEMU never migrates it.
SVE_VLS_ID = 0x606000000015FFFF
SVE_LENGTHS = tuple(128 * vq for vq in range(1, 17))  # 128 ... 2048 bits, QEMU's sveNNN


def sve_lengths_from_vls(vls: int) -> list[int]:
    """The vector lengths (in bits) a KVM_REG_ARM64_SVE_VLS value offers."""
    return [128 * (bit + 1) for bit in range(512) if vls >> bit & 1]


def reg_class(reg_id: int) -> int:
    return (reg_id & COPROC_MASK) >> COPROC_SHIFT


def is_firmware(reg_id: int) -> bool:
    return reg_class(reg_id) in FIRMWARE_CLASSES


def fw_reg_id(index: int) -> int:
    return KVM_REG_ARM64 | KVM_REG_SIZE_U64 | (RegClass.FW << COPROC_SHIFT) | index


def fw_bmap_reg_id(index: int) -> int:
    return KVM_REG_ARM64 | KVM_REG_SIZE_U64 | (RegClass.FW_FEAT_BMAP << COPROC_SHIFT) | index


def sysreg_id(op0: int, op1: int, crn: int, crm: int, op2: int) -> int:
    return (
        KVM_REG_ARM64
        | KVM_REG_SIZE_U64
        | (RegClass.SYSREG << COPROC_SHIFT)
        | (op0 << 14)
        | (op1 << 11)
        | (crn << 7)
        | (crm << 3)
        | op2
    )


def sysreg_encoding(reg_id: int) -> tuple[int, int, int, int, int]:
    return (
        (reg_id >> 14) & 0x3,
        (reg_id >> 11) & 0x7,
        (reg_id >> 7) & 0xF,
        (reg_id >> 3) & 0xF,
        reg_id & 0x7,
    )


def ccsidr_id(csselr: int) -> int:
    """The demux id of CCSIDR for one CSSELR value (KVM_REG_ARM_DEMUX_ID_CCSIDR)."""
    return KVM_REG_ARM64 | KVM_REG_SIZE_U32 | (RegClass.DEMUX << COPROC_SHIFT) | csselr


def format_id(reg_id: int) -> str:
    return f"0x{reg_id:016x}"


HEX_ID_RE = re.compile(r"0x[0-9a-fA-F]{16}")


def parse_hex_id(text: str) -> int:
    """Parse the profile spelling of a register id ("0x" and 16 hex digits)."""
    if not HEX_ID_RE.fullmatch(text):
        raise ValueError(f"not a register id (0x and 16 hex digits): {text!r}")
    value = int(text, 16)
    if value & 0xFF00000000000000 != KVM_REG_ARM64:
        raise ValueError(f"not an arm64 KVM register id: {text}")
    return value


# ---------------------------------------------------------------------------------------------
# The eight firmware pseudo-registers (docs/design.md#register-ids)
# ---------------------------------------------------------------------------------------------


class FwKind(enum.Enum):
    PSCI = "psci"
    WORKAROUND = "workaround"
    BITMAP = "bitmap"


_NO_NAMES: Mapping[int, str] = types.MappingProxyType({})


class FirmwareRegister(NamedTuple):
    """One of the eight firmware pseudo-registers: id, encoding and meaning."""

    name: str
    reg_id: int
    kind: FwKind
    introduced: str  # mainline kernel version that introduced it
    meaning: str
    # PSCI and the bitmaps are stored per VM and travel with the guest for life; the
    # WORKAROUNDs are a check against the current host's level and are never stored.
    kept: bool
    value_names: Mapping[int, str] = _NO_NAMES
    bit_names: Mapping[int, str] = _NO_NAMES


WA_NOT_AVAIL = 0
WA2_ENABLED = 0x10
WA_LEVEL_MASK = 0xF

_WA13_NAMES = {0: "NOT_AVAIL", 1: "AVAIL", 2: "NOT_REQUIRED"}
_WA2_NAMES = {0: "NOT_AVAIL", 1: "UNKNOWN", 2: "AVAIL", 3: "NOT_REQUIRED"}

PSCI_VERSION = FirmwareRegister(
    "PSCI_VERSION", fw_reg_id(0), FwKind.PSCI, "4.17",
    "PSCI version the guest sees ((major << 16) | minor)", kept=True,
)
SMCCC_ARCH_WORKAROUND_1 = FirmwareRegister(
    "SMCCC_ARCH_WORKAROUND_1", fw_reg_id(1), FwKind.WORKAROUND, "5.3",
    "Spectre-v2 (CVE-2017-5715) firmware mitigation level", kept=False, value_names=_WA13_NAMES,
)
SMCCC_ARCH_WORKAROUND_2 = FirmwareRegister(
    "SMCCC_ARCH_WORKAROUND_2", fw_reg_id(2), FwKind.WORKAROUND, "5.3",
    "Spectre-v4 / SSB (CVE-2018-3639) firmware mitigation level", kept=False,
    value_names=_WA2_NAMES,
)
SMCCC_ARCH_WORKAROUND_3 = FirmwareRegister(
    "SMCCC_ARCH_WORKAROUND_3", fw_reg_id(3), FwKind.WORKAROUND, "5.17",
    "Spectre-BHB firmware mitigation level", kept=False, value_names=_WA13_NAMES,
)
STD_BMAP = FirmwareRegister(
    "STD_BMAP", fw_bmap_reg_id(0), FwKind.BITMAP, "5.19",
    "standard hypervisor services offered to the guest", kept=True, bit_names={0: "TRNG_V1_0"},
)
STD_HYP_BMAP = FirmwareRegister(
    "STD_HYP_BMAP", fw_bmap_reg_id(1), FwKind.BITMAP, "5.19",
    "standard hypervisor-specific services", kept=True, bit_names={0: "PV_TIME"},
)
VENDOR_HYP_BMAP = FirmwareRegister(
    "VENDOR_HYP_BMAP", fw_bmap_reg_id(2), FwKind.BITMAP, "5.19",
    "KVM vendor hypercalls 0-63", kept=True, bit_names={0: "FUNC_FEAT", 1: "PTP"},
)
VENDOR_HYP_BMAP_2 = FirmwareRegister(
    "VENDOR_HYP_BMAP_2", fw_bmap_reg_id(3), FwKind.BITMAP, "6.15",
    "KVM vendor hypercalls 64-127 (errata-management discovery)", kept=True,
    bit_names={0: "DISCOVER_IMPL_VER", 1: "DISCOVER_IMPL_CPUS"},
)

FIRMWARE_REGISTERS: tuple[FirmwareRegister, ...] = (
    PSCI_VERSION,
    SMCCC_ARCH_WORKAROUND_1,
    SMCCC_ARCH_WORKAROUND_2,
    SMCCC_ARCH_WORKAROUND_3,
    STD_BMAP,
    STD_HYP_BMAP,
    VENDOR_HYP_BMAP,
    VENDOR_HYP_BMAP_2,
)
FW_BY_NAME: Mapping[str, FirmwareRegister] = {r.name: r for r in FIRMWARE_REGISTERS}
FW_BY_ID: Mapping[int, FirmwareRegister] = {r.reg_id: r for r in FIRMWARE_REGISTERS}

# VENDOR_HYP_BMAP_2 resets to 0 but the kernel accepts bits 0-1 (fw-pseudo-registers.rst);
# the other bitmaps reset to all the bits the kernel supports.
BMAP2_SUPPORTED_BITS = 0x3


def psci_version_text(value: int) -> str:
    return f"{value >> 16}.{value & 0xFFFF}"


def psci_value(major: int, minor: int) -> int:
    return (major << 16) | minor


def value_text(reg_id: int, value: int) -> str:
    """A register value as an operator reads it: PSCI "1.1", WA "NOT_REQUIRED", bits by name."""
    reg = FW_BY_ID.get(reg_id)
    if reg is None:
        return f"0x{value:x}"
    if reg.kind is FwKind.PSCI:
        return psci_version_text(value)
    if reg.kind is FwKind.WORKAROUND:
        level = value & WA_LEVEL_MASK
        extra = value & ~WA_LEVEL_MASK
        name = reg.value_names.get(level, f"level {level}")
        if reg is SMCCC_ARCH_WORKAROUND_2 and extra == WA2_ENABLED:
            return f"{name}|ENABLED"
        if extra:
            return f"{name} with invalid bits 0x{extra:x}"
        return name
    names = [reg.bit_names.get(bit, f"bit{bit}") for bit in range(64) if value >> bit & 1]
    return f"0x{value:x} ({'|'.join(names) if names else 'none'})"


# ---------------------------------------------------------------------------------------------
# Names for the other registers an operator meets in findings
# ---------------------------------------------------------------------------------------------

_SYSREG_NAMES: dict[tuple[int, int, int, int, int], str] = {
    # ID register space (op0=3 op1=0 CRn=0): the values that travel per VM
    # (docs/design.md#id-registers).
    (3, 0, 0, 0, 0): "MIDR_EL1",
    (3, 0, 0, 0, 5): "MPIDR_EL1",
    (3, 0, 0, 0, 6): "REVIDR_EL1",
    (3, 0, 0, 1, 0): "ID_PFR0_EL1",
    (3, 0, 0, 1, 1): "ID_PFR1_EL1",
    (3, 0, 0, 1, 2): "ID_DFR0_EL1",
    (3, 0, 0, 1, 3): "ID_AFR0_EL1",
    (3, 0, 0, 1, 4): "ID_MMFR0_EL1",
    (3, 0, 0, 1, 5): "ID_MMFR1_EL1",
    (3, 0, 0, 1, 6): "ID_MMFR2_EL1",
    (3, 0, 0, 1, 7): "ID_MMFR3_EL1",
    (3, 0, 0, 2, 0): "ID_ISAR0_EL1",
    (3, 0, 0, 2, 1): "ID_ISAR1_EL1",
    (3, 0, 0, 2, 2): "ID_ISAR2_EL1",
    (3, 0, 0, 2, 3): "ID_ISAR3_EL1",
    (3, 0, 0, 2, 4): "ID_ISAR4_EL1",
    (3, 0, 0, 2, 5): "ID_ISAR5_EL1",
    (3, 0, 0, 2, 6): "ID_MMFR4_EL1",
    (3, 0, 0, 2, 7): "ID_ISAR6_EL1",
    (3, 0, 0, 3, 0): "MVFR0_EL1",
    (3, 0, 0, 3, 1): "MVFR1_EL1",
    (3, 0, 0, 3, 2): "MVFR2_EL1",
    (3, 0, 0, 3, 4): "ID_PFR2_EL1",
    (3, 0, 0, 3, 5): "ID_DFR1_EL1",
    (3, 0, 0, 3, 6): "ID_MMFR5_EL1",
    (3, 0, 0, 4, 0): "ID_AA64PFR0_EL1",
    (3, 0, 0, 4, 1): "ID_AA64PFR1_EL1",
    (3, 0, 0, 4, 2): "ID_AA64PFR2_EL1",
    (3, 0, 0, 4, 4): "ID_AA64ZFR0_EL1",
    (3, 0, 0, 4, 5): "ID_AA64SMFR0_EL1",
    (3, 0, 0, 4, 7): "ID_AA64FPFR0_EL1",
    (3, 0, 0, 5, 0): "ID_AA64DFR0_EL1",
    (3, 0, 0, 5, 1): "ID_AA64DFR1_EL1",
    (3, 0, 0, 5, 4): "ID_AA64AFR0_EL1",
    (3, 0, 0, 5, 5): "ID_AA64AFR1_EL1",
    (3, 0, 0, 6, 0): "ID_AA64ISAR0_EL1",
    (3, 0, 0, 6, 1): "ID_AA64ISAR1_EL1",
    (3, 0, 0, 6, 2): "ID_AA64ISAR2_EL1",
    (3, 0, 0, 6, 3): "ID_AA64ISAR3_EL1",
    (3, 0, 0, 7, 0): "ID_AA64MMFR0_EL1",
    (3, 0, 0, 7, 1): "ID_AA64MMFR1_EL1",
    (3, 0, 0, 7, 2): "ID_AA64MMFR2_EL1",
    (3, 0, 0, 7, 3): "ID_AA64MMFR3_EL1",
    (3, 0, 0, 7, 4): "ID_AA64MMFR4_EL1",
    # Cache geometry and friends.
    (3, 1, 0, 0, 1): "CLIDR_EL1",
    (3, 1, 0, 0, 7): "AIDR_EL1",
    (3, 2, 0, 0, 0): "CSSELR_EL1",
    (3, 3, 0, 0, 1): "CTR_EL0",
    # Registers that appear and disappear between kernels (docs/design.md#list-sizes).
    (2, 0, 1, 1, 4): "OSLSR_EL1",
    (2, 0, 0, 2, 0): "MDCCINT_EL1",
    (2, 0, 0, 2, 2): "MDSCR_EL1",
    (3, 0, 2, 0, 3): "TCR2_EL1",
    (3, 0, 10, 2, 2): "PIRE0_EL1",
    (3, 0, 10, 2, 3): "PIR_EL1",
    (3, 0, 9, 14, 6): "PMMIR_EL1",
    (3, 0, 9, 14, 1): "PMINTENSET_EL1",
    (3, 0, 9, 14, 2): "PMINTENCLR_EL1",
    (3, 3, 9, 12, 0): "PMCR_EL0",
    (3, 3, 9, 12, 1): "PMCNTENSET_EL0",
    (3, 3, 9, 12, 2): "PMCNTENCLR_EL0",
    (3, 3, 9, 12, 3): "PMOVSCLR_EL0",
    (3, 3, 9, 12, 4): "PMSWINC_EL0",
    (3, 3, 9, 12, 5): "PMSELR_EL0",
    (3, 3, 9, 13, 0): "PMCCNTR_EL0",
    (3, 3, 9, 14, 0): "PMUSERENR_EL0",
    (3, 3, 9, 14, 3): "PMOVSSET_EL0",
    (3, 3, 14, 15, 7): "PMCCFILTR_EL0",
    # Timers. KVM's ids for the virtual timer's CVAL and CNT are swapped relative to the
    # architecture (KVM_REG_ARM_TIMER_CVAL is (3,3,14,0,2)), a uapi quirk kept for ABI.
    (3, 3, 14, 3, 1): "CNTV_CTL_EL0",
    (3, 3, 14, 0, 2): "CNTV_CVAL_EL0",
    (3, 3, 14, 3, 2): "CNTVCT_EL0",
    (3, 3, 14, 2, 1): "CNTP_CTL_EL0",
    (3, 3, 14, 2, 2): "CNTP_CVAL_EL0",
    (3, 3, 14, 0, 1): "CNTPCT_EL0",
    (3, 0, 14, 1, 0): "CNTKCTL_EL1",
    # Common EL1 state.
    (3, 0, 1, 0, 0): "SCTLR_EL1",
    (3, 0, 1, 0, 1): "ACTLR_EL1",
    (3, 0, 1, 0, 2): "CPACR_EL1",
    (3, 0, 1, 2, 0): "ZCR_EL1",
    (3, 0, 2, 0, 0): "TTBR0_EL1",
    (3, 0, 2, 0, 1): "TTBR1_EL1",
    (3, 0, 2, 0, 2): "TCR_EL1",
    (3, 0, 2, 1, 0): "APIAKEYLO_EL1",
    (3, 0, 2, 1, 1): "APIAKEYHI_EL1",
    (3, 0, 2, 1, 2): "APIBKEYLO_EL1",
    (3, 0, 2, 1, 3): "APIBKEYHI_EL1",
    (3, 0, 2, 2, 0): "APDAKEYLO_EL1",
    (3, 0, 2, 2, 1): "APDAKEYHI_EL1",
    (3, 0, 2, 2, 2): "APDBKEYLO_EL1",
    (3, 0, 2, 2, 3): "APDBKEYHI_EL1",
    (3, 0, 2, 3, 0): "APGAKEYLO_EL1",
    (3, 0, 2, 3, 1): "APGAKEYHI_EL1",
    (3, 0, 5, 1, 0): "AFSR0_EL1",
    (3, 0, 5, 1, 1): "AFSR1_EL1",
    (3, 0, 5, 2, 0): "ESR_EL1",
    (3, 0, 6, 0, 0): "FAR_EL1",
    (3, 0, 7, 4, 0): "PAR_EL1",
    (3, 0, 10, 2, 0): "MAIR_EL1",
    (3, 0, 10, 3, 0): "AMAIR_EL1",
    (3, 0, 12, 0, 0): "VBAR_EL1",
    (3, 0, 12, 1, 1): "DISR_EL1",
    (3, 0, 13, 0, 1): "CONTEXTIDR_EL1",
    (3, 0, 13, 0, 4): "TPIDR_EL1",
    (3, 3, 13, 0, 2): "TPIDR_EL0",
    (3, 3, 13, 0, 3): "TPIDRRO_EL0",
    (3, 4, 3, 0, 0): "DACR32_EL2",
    (3, 4, 5, 0, 1): "IFSR32_EL2",
    (3, 4, 5, 3, 0): "FPEXC32_EL2",
}
for _n in range(16):
    _SYSREG_NAMES[(2, 0, 0, _n, 4)] = f"DBGBVR{_n}_EL1"
    _SYSREG_NAMES[(2, 0, 0, _n, 5)] = f"DBGBCR{_n}_EL1"
    _SYSREG_NAMES[(2, 0, 0, _n, 6)] = f"DBGWVR{_n}_EL1"
    _SYSREG_NAMES[(2, 0, 0, _n, 7)] = f"DBGWCR{_n}_EL1"
for _n in range(31):
    _SYSREG_NAMES[(3, 3, 14, 8 + _n // 8, _n % 8)] = f"PMEVCNTR{_n}_EL0"
    _SYSREG_NAMES[(3, 3, 14, 12 + _n // 8, _n % 8)] = f"PMEVTYPER{_n}_EL0"

SYSREG_BY_NAME: Mapping[str, int] = {
    name: sysreg_id(*enc) for enc, name in _SYSREG_NAMES.items()
}
# The registers of the ID space (docs/design.md#id-registers): per VM, kept, compared value by
# value.
ID_REGISTER_NAMES = frozenset(
    name for enc, name in _SYSREG_NAMES.items() if enc[0] == 3 and enc[1] == 0 and enc[2] == 0
)


def is_id_register(reg_id: int) -> bool:
    if reg_class(reg_id) != RegClass.SYSREG:
        return False
    op0, op1, crn, _crm, _op2 = sysreg_encoding(reg_id)
    return (op0, op1, crn) == (3, 0, 0)


CCSIDR_PREFIX = "CCSIDR_"
CLIDR_EL1 = "CLIDR_EL1"


def ccsidr_name(csselr: int) -> str:
    return f"{CCSIDR_PREFIX}{csselr}"


def cache_geometry_id(name: str) -> int:
    """CLIDR_EL1 or CCSIDR_<csselr> to its register id."""
    if name == CLIDR_EL1:
        return SYSREG_BY_NAME[CLIDR_EL1]
    if name.startswith(CCSIDR_PREFIX) and name[len(CCSIDR_PREFIX):].isdigit():
        csselr = int(name[len(CCSIDR_PREFIX):])
        if csselr <= 0xFF:
            return ccsidr_id(csselr)
    raise ValueError(f"not a cache geometry register: {name!r} (CLIDR_EL1 or CCSIDR_<n>)")


def register_name(reg_id: int) -> str:
    """The name an operator knows a register by; its hex id when it has no name here."""
    fw = FW_BY_ID.get(reg_id)
    if fw is not None:
        return fw.name
    cls = reg_class(reg_id)
    if cls == RegClass.SYSREG:
        enc = sysreg_encoding(reg_id)
        return _SYSREG_NAMES.get(enc, "S{}_{}_C{}_C{}_{}".format(*enc))
    if cls == RegClass.DEMUX and reg_id & 0xFF00 == 0:
        return ccsidr_name(reg_id & 0xFF)
    return format_id(reg_id)


def firmware_id_from_name(name: str) -> int:
    """A firmware register's id from its catalogue name or its hex id (firmware classes only)."""
    fw = FW_BY_NAME.get(name)
    if fw is not None:
        return fw.reg_id
    try:
        reg_id = parse_hex_id(name)
    except ValueError:
        raise ValueError(f"unknown firmware register {name!r}") from None
    if not is_firmware(reg_id):
        raise ValueError(f"{name} is not a firmware register (class 0x0014 or 0x0016)")
    return reg_id


def firmware_name(reg_id: int) -> str:
    """The profile key of a firmware register: its name, or its hex id if unknown."""
    fw = FW_BY_ID.get(reg_id)
    return fw.name if fw is not None else format_id(reg_id)


# ID register fields worth naming in findings (the ones real migrations tripped on,
# docs/design.md#real-migrations).
ID_REGISTER_FIELDS: Mapping[str, Mapping[int, str]] = {
    "ID_AA64MMFR1_EL1": {0: "HAFDBS", 4: "VMIDBits", 8: "VH", 12: "HPDS", 16: "LO",
                         20: "PAN", 24: "SpecSEI", 28: "XNX", 32: "TWED", 36: "ETS",
                         40: "HCX", 44: "AFP", 48: "nTLBPA", 52: "TIDCP1", 56: "CMOW",
                         60: "ECBHB"},
    "ID_AA64DFR0_EL1": {0: "DebugVer", 4: "TraceVer", 8: "PMUVer", 12: "BRPs",
                        16: "PMSS", 20: "WRPs", 24: "SEBEP", 28: "CTX_CMPs",
                        32: "PMSVer", 36: "DoubleLock", 40: "TraceFilt",
                        44: "TraceBuffer", 48: "MTPMU", 52: "BRBE", 56: "ExtTrcBuff",
                        60: "HPMN0"},
    "ID_DFR0_EL1": {0: "CopDbg", 4: "CopSDbg", 8: "MMapDbg", 12: "CopTrc", 16: "MMapTrc",
                    20: "MProfDbg", 24: "PerfMon", 28: "TraceFilt"},
    "ID_AA64PFR0_EL1": {0: "EL0", 4: "EL1", 8: "EL2", 12: "EL3", 16: "FP", 20: "AdvSIMD",
                        24: "GIC", 28: "RAS", 32: "SVE", 36: "SEL2", 40: "MPAM",
                        44: "AMU", 48: "DIT", 52: "RME", 56: "CSV2", 60: "CSV3"},
    "ID_AA64PFR1_EL1": {0: "BT", 4: "SSBS", 8: "MTE", 12: "RAS_frac", 16: "MPAM_frac",
                        24: "SME", 28: "RNDR_trap", 32: "CSV2_frac", 36: "NMI"},
}


def differing_fields(name: str, a: int, b: int) -> list[str]:
    """The 4-bit ID register fields in which two values differ, by name where known."""
    names = ID_REGISTER_FIELDS.get(name, {})
    out = []
    for shift in range(0, 64, 4):
        if (a >> shift) & 0xF != (b >> shift) & 0xF:
            out.append(names.get(shift, f"[{shift + 3}:{shift}]"))
    return out
