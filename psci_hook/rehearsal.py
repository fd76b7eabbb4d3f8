"""The rehearsal (reference §10): the destination's own KVM judges the guest's values.

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
from psci_hook.engine import REJECTED, UNVERIFIED, Finding, GuestState

KVM_DEVICE = "/dev/kvm"


class Result(NamedTuple):
    """What the kernel said: the first refusal (id, value, own value, errno name) or none."""

    rehearsed: frozenset[int]
    refused_id: int | None = None
    attempted: int | None = None
    destination_value: int | None = None
    error: str = ""  # the refusal's errno name


Rehearser = Callable[[frozenset[str], Mapping[int, int]], Result]


def values_to_rehearse(guest: GuestState) -> dict[int, int]:
    """Every value the source QEMU sends that the kernel judges (§10), by register id."""
    values = dict(guest.registers)
    for name, value in (guest.id_registers or {}).items():
        values[regs.SYSREG_BY_NAME[name]] = value
    for name, value in (guest.cache_geometry or {}).items():
        values[regs.cache_geometry_id(name)] = value
    if guest.cpreg_list is not None:  # QEMU only writes what the stream carries
        values = {k: v for k, v in values.items() if k in set(guest.cpreg_list)}
    return values


def available() -> bool:
    return platform.machine() == "aarch64" and os.path.exists(KVM_DEVICE)


def kvm_rehearser(features: frozenset[str], values: Mapping[int, int]) -> Result:
    """The real rehearsal on this host's KVM (only call where available() is true)."""
    from psci_hook import kvm

    refusal = kvm.rehearse(features, values, only_listed=True)
    if refusal is None:
        return Result(frozenset(values))
    return Result(frozenset(values), refusal.reg_id, refusal.attempted,
                  refusal.destination_value, kvm.errno_name(refusal.errno))


def reconcile(findings: list[Finding], result: Result) -> list[Finding]:
    """The findings once the kernel has spoken: a refusal vetoes; value findings the kernel
    contradicts become MODEL_DEFECT; unverified values it accepted are settled."""
    out: list[Finding] = []
    for finding in findings:
        reg_id = finding.reg_id
        if reg_id is None or reg_id not in result.rehearsed or \
                finding.outcome not in (REJECTED, UNVERIFIED):
            out.append(finding)
            continue
        if reg_id == result.refused_id:
            continue  # replaced by the REHEARSAL_REFUSED finding below
        # Registers are set in ascending order: those after the first refusal were not tried.
        tried = result.refused_id is None or reg_id < result.refused_id
        if finding.outcome == REJECTED and tried:
            out.append(Finding(
                "MODEL_DEFECT", "accepted",
                f"the model predicted {finding.code} for {finding.register}, but this host's "
                "KVM accepted the value in the rehearsal (the rehearsal wins)",
                finding.register, finding.reg_id, finding.guest_value,
                finding.destination_value))
        elif not tried:
            out.append(finding)  # not rehearsed: the model's word stands
        # UNVERIFIED and accepted by the kernel: settled, nothing to report.
    if result.refused_id is not None:
        name = regs.register_name(result.refused_id)
        guest = regs.value_text(result.refused_id, result.attempted or 0)
        own = ("unreadable" if result.destination_value is None
               else regs.value_text(result.refused_id, result.destination_value))
        predicted = [f for f in findings if f.reg_id == result.refused_id and
                     f.outcome in (REJECTED, UNVERIFIED)]
        out.insert(0, Finding(
            "REHEARSAL_REFUSED", REJECTED,
            f"this host's KVM refused {name} = {guest} ({result.error}) in a rehearsal on a "
            f"scratch VM; its own value is {own}",
            name, result.refused_id, result.attempted, result.destination_value))
        if not predicted or predicted[0].outcome != REJECTED:
            out.append(Finding(
                "MODEL_DEFECT", "rejected",
                f"the model did not predict the refusal of {name}", name, result.refused_id,
                result.attempted, result.destination_value))
    return out
