"""What real QEMU did (docs/design.md#real-migrations): a `-cpu host` guest on QEMU's `max` CPU,
saved under one Debian kernel and loaded under another, measured with plain QEMU (-incoming) on
the same kernel images, independently of libvirt. One table for the engine's offline test
(tests/test_real_migrations.py) and the whole stack's (tests/nested/test_arm64_stack.py).

None = loaded; else what the destination refused: "len"/"idx" are QEMU's cpreg list checks,
before any value is written; other names are the registers KVM_SET_ONE_REG refused.
"""

from __future__ import annotations

Refusals = dict[tuple[str, str], "set[str] | None"]

# QEMU 7.2.22 (bookworm): the legacy generation.
REAL_QEMU_72: dict[str, Refusals] = {
    "default": {
        ("5.10", "6.1"): {"SMCCC_ARCH_WORKAROUND_3", "ID_DFR0_EL1", "ID_AA64DFR0_EL1"},
        ("5.10", "6.12"): {"SMCCC_ARCH_WORKAROUND_3", "ID_AA64MMFR1_EL1"},
        ("5.10", "7.2"): {"SMCCC_ARCH_WORKAROUND_3"},
        ("6.1", "5.10"): {"len"}, ("6.1", "6.12"): {"ID_AA64MMFR1_EL1"}, ("6.1", "7.2"): None,
        ("6.12", "5.10"): {"len"}, ("6.12", "6.1"): {"len"}, ("6.12", "7.2"): {"len"},
        ("7.2", "5.10"): {"len"}, ("7.2", "6.1"): {"len"}, ("7.2", "6.12"): {"PSCI_VERSION"},
    },
    # `-cpu host,pmu=off` on both sides.
    "pmu-off": {
        ("5.10", "6.1"): {"len"}, ("5.10", "6.12"): {"len"}, ("5.10", "7.2"): {"len"},
        ("6.1", "5.10"): {"idx"}, ("6.1", "6.12"): {"ID_AA64MMFR1_EL1"}, ("6.1", "7.2"): None,
        ("6.12", "5.10"): {"idx"}, ("6.12", "6.1"): {"len"}, ("6.12", "7.2"): {"len"},
        ("7.2", "5.10"): {"idx"}, ("7.2", "6.1"): {"len"}, ("7.2", "6.12"): {"PSCI_VERSION"},
    },
}

# QEMU 11.1.3 (sid), the tolerant generation, also loads what 6.12 lists and 7.2 does not
# (TCR2_EL1, PIRE0_EL1, PIR_EL1).
REAL_QEMU_111: dict[str, Refusals] = {
    guest: {**pairs, ("6.12", "7.2"): None} for guest, pairs in REAL_QEMU_72.items()
}
