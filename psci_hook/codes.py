"""Finding codes: short, upper-case, stable across releases (operators grep and filter on them).

Each code has a severity and a one-line meaning; the README's table of codes is checked
against this one by the tests.
"""

from __future__ import annotations

import enum
from typing import NamedTuple


class Severity(enum.IntEnum):
    INFO = 0
    WARNING = 1
    BLOCKING = 2  # QEMU or the destination kernel would fail the migration


class Code(NamedTuple):
    """A finding code: its stable name, how severe it is, and what it means."""

    name: str
    severity: Severity
    meaning: str


_CODES = (
    # Decided by the engine (psci_hook.engine), from the guest record and the host profile.
    Code("ACCEPTED", Severity.INFO,
         "The destination kernel accepts the guest's value of this firmware register."),
    Code("WA_RATCHET", Severity.WARNING,
         "Accepted, but the guest now takes the destination's higher WORKAROUND level: it "
         "cannot return to hosts with its old level until it cold-boots (one-way move)."),
    Code("PSCI_UNSUPPORTED", Severity.BLOCKING,
         "The destination kernel does not implement the guest's PSCI version, or the "
         "destination's vCPU and the guest differ in PSCI 0.1 (a vCPU QEMU creates for "
         "`kvm-psci-version=0.1` takes 0.1 only; every other vCPU refuses 0.1)."),
    Code("WA_LEVEL_TOO_HIGH", Severity.BLOCKING,
         "The guest relies on a better WORKAROUND level than the destination host offers."),
    Code("WA_INVALID_VALUE", Severity.BLOCKING,
         "The WORKAROUND value is not one any kernel accepts (bits outside the level, or "
         "ENABLED without AVAIL)."),
    Code("BITMAP_UNSUPPORTED", Severity.BLOCKING,
         "The guest's hypercall bitmap has a service bit the destination kernel does not "
         "implement."),
    Code("CPREG_COUNT", Severity.BLOCKING,
         "The source sends more registers than the destination QEMU accepts "
         "(cpreg_vmstate_array_len)."),
    Code("REG_MISSING", Severity.BLOCKING,
         "The source sends a register the destination kernel does not list, and QEMU fails "
         "the load on it."),
    Code("FEATURE_MISSING", Severity.BLOCKING,
         "The guest uses a vCPU feature (PMU, pointer authentication, SVE) that the "
         "destination host does not offer."),
    Code("SVE_LENGTH_LOST", Severity.BLOCKING,
         "The destination's QEMU gives the guest's SVE vCPU fewer vector lengths than it booted "
         "with (they are set when the vCPU is created, not migrated): the guest would lose "
         "lengths it uses."),
    Code("FEATURE_GAINED", Severity.WARNING,
         "The destination's QEMU enables a vCPU feature the guest's vCPU did not have (-cpu "
         "host takes every feature the host offers unless the domain XML turns it off); the "
         "ID fields derived from it differ, which the destination kernel may refuse."),
    Code("WA_DROPPED", Severity.BLOCKING,
         "Legacy QEMU would silently drop a WORKAROUND register above NOT_AVAIL: the guest "
         "would keep relying on a mitigation nobody provides (vetoed by default)."),
    Code("REG_DROPPED", Severity.WARNING,
         "Legacy QEMU silently drops this register: it sorts above the destination's last "
         "register; its value is neither checked nor applied."),
    Code("REG_TOLERATED", Severity.WARNING,
         "The destination QEMU's migration tolerances skip this register."),
    Code("DEST_DEFAULT", Severity.WARNING,
         "The source does not send this firmware register; the destination's default applies "
         "(for example a newer PSCI version or hypercall services the guest never saw)."),
    Code("REG_DEST_DEFAULT", Severity.INFO,
         "The source does not send this (non-firmware) register; the destination's reset value "
         "applies."),
    Code("ID_REG_MISMATCH", Severity.BLOCKING,
         "An ID register differs and the destination kernel (before 6.7) accepts only its own "
         "value."),
    Code("ID_REG_UNVERIFIED", Severity.WARNING,
         "An ID register differs; the destination kernel (6.7+) may accept it if the fields "
         "are writable: only the rehearsal can tell."),
    Code("CACHE_MISMATCH", Severity.BLOCKING,
         "The cache geometry differs and the destination kernel refuses it: before 6.3 it "
         "accepts only its own, from 6.3 no cache line size below its own."),
    Code("CACHE_UNVERIFIED", Severity.WARNING,
         "The cache geometry differs; the destination kernel may accept it: only the "
         "rehearsal can tell."),
    Code("FW_UNVERIFIED", Severity.WARNING,
         "A firmware register this version of psci-hook does not know: its value cannot be "
         "judged offline."),
    Code("LISTS_NOT_COMPARED", Severity.INFO,
         "A migrated register list is missing on one side: only the firmware registers were "
         "compared, not the count check or the other registers."),
    Code("ID_REGS_NOT_COMPARED", Severity.INFO,
         "ID register or cache geometry values are missing on one side: they were not "
         "compared."),
    # Decided by the hook (psci_hook.hook) around the engine.
    Code("NO_RECORD", Severity.WARNING,
         "The domain carries no psci-hook record, so the source's register values are "
         "unknown; the policy's 'unrecorded' setting decides."),
    Code("RECORD_INVALID", Severity.BLOCKING,
         "The domain's psci-hook record is malformed or has impossible values."),
    Code("OVERRIDE", Severity.WARNING,
         "The domain's record carries an operator override that allows this migration."),
    Code("REHEARSAL_REFUSED", Severity.BLOCKING,
         "The destination kernel refused a value in a rehearsal on a scratch VM."),
    Code("MODEL_DEFECT", Severity.WARNING,
         "The rehearsal and the offline model disagree; the rehearsal wins (please report)."),
    Code("NOT_APPLICABLE", Severity.INFO,
         "Not an arm64 KVM domain of a type the policy acts on, or a 32-bit guest this host "
         "cannot check (no 32-bit EL1, or a profile without 32-bit vCPUs): allowed untouched."),
    Code("PROFILE_UNAVAILABLE", Severity.BLOCKING,
         "The destination host's profile is missing, stale or unreadable and cannot be probed; "
         "the policy's 'on_error' setting decides."),
    Code("XML_INVALID", Severity.BLOCKING,
         "The domain XML given to the hook is empty, malformed, oversized or has a DTD; the "
         "policy's 'on_error' setting decides."),
    Code("INTERNAL_ERROR", Severity.BLOCKING,
         "psci-hook failed internally; the policy's 'on_error' setting decides."),
    Code("TIMEOUT", Severity.BLOCKING,
         "psci-hook exceeded its time bound; the policy's 'on_error' setting decides."),
)

CODES: dict[str, Code] = {c.name: c for c in _CODES}


def severity(code: str) -> Severity:
    return CODES[code].severity
