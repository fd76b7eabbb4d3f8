"""The rehearsal (docs/design.md#rehearsal): the destination's own KVM judges the guest's values.

On an aarch64 host with /dev/kvm, before anything moves, a scratch VM and vCPU with the guest's
features get KVM_SET_ONE_REG for every firmware, ID register and cache geometry value the record
says the source will send, for the registers this host lists, in QEMU's order. A refusal is
exactly the refusal QEMU would meet after copying all guest memory. The rehearsal settles what
the offline model leaves unverified; where the two disagree, the rehearsal wins and the
disagreement is reported as MODEL_DEFECT.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Mapping
from typing import Callable, NamedTuple

from psci_hook import registers as regs
from psci_hook.engine import (
    PSCI_0_1,
    Finding,
    FindingOutcome,
    GuestState,
)
from psci_hook.environment import DEV_KVM


class Result(NamedTuple):
    """What the kernel said: the first refusal (id, value, own value, errno name) or none."""

    rehearsed: frozenset[int]
    refused_id: int | None = None
    attempted: int | None = None
    destination_value: int | None = None
    error: str = ""  # the refusal's errno name


Rehearser = Callable[[frozenset[str], Mapping[int, int]], Result]


def values_to_rehearse(guest: GuestState, psci_0_1_vcpu: bool = False) -> dict[int, int]:
    """Every value the source QEMU sends that the kernel judges (docs/design.md#rehearsal), by
    register id.

    The scratch vCPU has KVM_ARM_VCPU_PSCI_0_2, as QEMU gives every vCPU but a PSCI 0.1 one
    (kvm-psci-version=0.1). Where either side is PSCI 0.1 (``psci_0_1_vcpu``: the
    destination's), PSCI_VERSION is left to the model, which applies the kernel's whole rule
    for it (engine.judge_firmware_value); the scratch vCPU would answer for another vCPU.
    """
    values = dict(guest.registers)
    psci = regs.PSCI_VERSION.reg_id
    if psci_0_1_vcpu or values.get(psci) == PSCI_0_1:
        values.pop(psci, None)
    for name, value in (guest.id_registers or {}).items():
        values[regs.SYSREG_BY_NAME[name]] = value
    for name, value in (guest.cache_geometry or {}).items():
        values[regs.cache_geometry_id(name)] = value
    if guest.cpreg_list is not None:  # QEMU only writes what the stream carries
        values = {k: v for k, v in values.items() if k in set(guest.cpreg_list)}
    return values


def available() -> bool:
    return platform.machine() == "aarch64" and os.path.exists(DEV_KVM)


def kvm_rehearser(features: frozenset[str], values: Mapping[int, int]) -> Result:
    """The real rehearsal on this host's KVM (only call where available() is true)."""
    from psci_hook import kvm

    refusal = kvm.rehearse(features, values, only_listed=True)
    if refusal is None:
        return Result(frozenset(values))
    return Result(frozenset(values), refusal.reg_id, refusal.attempted,
                  refusal.destination_value, kvm.errno_name(refusal.errno))


# Findings about the list (QEMU's checks before any register is set) come first in a decision;
# the rehearsal's refusal goes after them, as QEMU would meet it after them.
_LIST_OUTCOMES = frozenset({FindingOutcome.FEATURES, FindingOutcome.NOT_COMPARED,
                            FindingOutcome.COUNT_CHECK, FindingOutcome.MISSING,
                            FindingOutcome.DROPPED, FindingOutcome.TOLERATED})


def reconcile(findings: list[Finding], result: Result) -> list[Finding]:
    """The findings once the kernel has spoken (registers are set in ascending order, so those
    after the first refusal were not tried and keep the model's word):

    - a value the model rejected and the kernel refused: both findings stay (confirmed);
    - a value the model rejected and the kernel accepted: MODEL_DEFECT instead;
    - a value the model left unverified: settled (gone if accepted, the refusal if refused);
    - a value the model accepted (or did not judge) and the kernel refused: the refusal and a
      MODEL_DEFECT.
    """
    refused = result.refused_id
    out: list[Finding] = []
    placed = False
    for finding in findings:
        reg_id = finding.reg_id
        if reg_id is None or reg_id not in result.rehearsed or \
                finding.outcome not in (FindingOutcome.REJECTED, FindingOutcome.UNVERIFIED,
                                        FindingOutcome.ACCEPTED):
            out.append(finding)
        elif reg_id == refused:
            if finding.outcome == FindingOutcome.REJECTED:
                out += [finding, _refusal(result)]
            else:
                out.append(_refusal(result))
                if finding.outcome == FindingOutcome.ACCEPTED:
                    out.append(_unpredicted(result))
            placed = True
        elif refused is not None and reg_id > refused:
            out.append(finding)  # not tried
        elif finding.outcome == FindingOutcome.REJECTED:
            out.append(Finding(
                "MODEL_DEFECT", FindingOutcome.ACCEPTED,
                f"the model predicted {finding.code} for {finding.register}, but this host's "
                "KVM accepted the value in the rehearsal (the rehearsal wins)",
                finding.register, finding.reg_id, finding.guest_value,
                finding.destination_value))
        elif finding.outcome == FindingOutcome.ACCEPTED:
            out.append(finding)  # confirmed
        # FindingOutcome.UNVERIFIED and accepted by the kernel: settled, nothing to report.
    if refused is not None and not placed:  # the model had no finding for this register
        at = next((i for i, f in enumerate(out) if f.outcome not in _LIST_OUTCOMES), len(out))
        out[at:at] = [_refusal(result), _unpredicted(result)]
    return out


def _refusal(result: Result) -> Finding:
    reg_id = result.refused_id
    assert reg_id is not None
    name = regs.register_name(reg_id)
    guest = regs.value_text(reg_id, result.attempted or 0)
    own = ("unreadable" if result.destination_value is None
           else regs.value_text(reg_id, result.destination_value))
    return Finding("REHEARSAL_REFUSED", FindingOutcome.REJECTED,
                   f"this host's KVM refused {name} = {guest} ({result.error}) in a rehearsal "
                   f"on a scratch VM; its own value is {own}",
                   name, reg_id, result.attempted, result.destination_value)


def _unpredicted(result: Result) -> Finding:
    reg_id = result.refused_id
    assert reg_id is not None
    name = regs.register_name(reg_id)
    return Finding("MODEL_DEFECT", FindingOutcome.REJECTED,
                   f"the model did not predict the refusal of {name}",
                   name, reg_id, result.attempted, result.destination_value)
