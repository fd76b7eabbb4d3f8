"""How decisions read: the text of `check`, the one-line veto reason, and summaries for logs."""

from __future__ import annotations

from collections.abc import Iterable

from psci_hook import registers as regs
from psci_hook.codes import Severity
from psci_hook.domainxml import PSCI_PROPERTY
from psci_hook.engine import Decision, Finding, GuestState

_MARK = {Severity.BLOCKING: "VETO", Severity.WARNING: "warn", Severity.INFO: "info"}


def finding_line(finding: Finding) -> str:
    where = f" {finding.register}" if finding.register else ""
    inferred = " [inferred from the kernel release]" if finding.inferred else ""
    return f"{_MARK[finding.severity]:4} {finding.code}{where}: {finding.message}{inferred}"


def decision_text(decision: Decision, verbose: bool = False, after: bool = True) -> str:
    """The findings of a decision, most severe first; several findings of one code are one line
    (``verbose``: every finding, informational ones too). ``after``: the guest's registers after
    the move (only true of a move that happens)."""
    shown = [f for f in decision.findings
             if verbose or (f.severity > Severity.INFO and f.code != "REG_DEST_DEFAULT")]
    hidden = len(decision.findings) - len(shown)
    ordered = sorted(shown, key=lambda f: -f.severity)
    lines = [f"findings (destination QEMU: {decision.generation}):"] if ordered else []
    if verbose:
        lines += ["  " + finding_line(f) for f in ordered]
    else:
        lines += ["  " + line for line in _grouped_lines(ordered)]
    if hidden:
        lines.append(f"  ({hidden} informational findings not shown; --verbose shows them)")
    remedy = psci_remedy(decision.findings)
    if remedy:
        lines.append(f"remedy: {remedy}")
    if after:
        lines.append("guest after migration: " + guest_summary(decision.guest_after))
    return "\n".join(lines) + "\n"


# QEMU's vCPU property (target/arm/kvm.c, QEMU 11.x) and the -global spelling for -cpu host.
PSCI_GLOBAL = f"host-arm-cpu.{PSCI_PROPERTY}"


def psci_remedy_version(findings: Iterable[Finding]) -> int | None:
    """The PSCI version (this host's highest) a cold boot with QEMU's kvm-psci-version would
    give the guest, when its PSCI version is all that blocks it; None otherwise (another
    blocker, which the property cannot change, remains)."""
    blocking = [f for f in findings if f.blocking]
    psci = regs.PSCI_VERSION.reg_id
    if not blocking or any(f.reg_id != psci or f.code not in _PSCI_CODES for f in blocking):
        return None
    return next((f.destination_value for f in blocking if f.destination_value is not None),
                None)


def psci_setting(version: int) -> str:
    """The property setting for ``version``, as `where`, `plan` and `matrix` show it."""
    return f"{PSCI_PROPERTY}={regs.psci_version_text(version)}"


def psci_remedy(findings: Iterable[Finding]) -> str | None:
    """How to make the guest movable here when its PSCI version is all that blocks it: a cold
    boot with QEMU's kvm-psci-version set to this host's highest version."""
    highest = psci_remedy_version(findings)
    if highest is None:
        return None
    version = regs.psci_version_text(highest)
    return (f"cold-boot the guest with {psci_setting(highest)} (QEMU 11.x on the source; in "
            f"the domain XML <qemu:commandline><qemu:arg value='-global'/><qemu:arg "
            f"value='{PSCI_GLOBAL}={version}'/></qemu:commandline>), then it can move here")


_PSCI_CODES = frozenset({"PSCI_UNSUPPORTED", "REHEARSAL_REFUSED", "MODEL_DEFECT"})



def _grouped_lines(findings: list[Finding]) -> list[str]:
    """One line per code: the first finding in full, the other registers named after it."""
    by_code: dict[str, list[Finding]] = {}
    for finding in findings:
        by_code.setdefault(finding.code, []).append(finding)
    lines = []
    for group in by_code.values():
        first, rest = group[0], group[1:]
        line = finding_line(first)
        if rest:
            named = [f.register for f in rest if f.register]
            others = f" (and {len(rest)} more: {', '.join(named)})" if named else \
                f" (and {len(rest)} more)"
            head, sep, tail = line.partition(": ")
            line = f"{head}{others}{sep}{tail}"
        lines.append(line)
    return lines


def guest_summary(guest: GuestState) -> str:
    parts = [f"{regs.firmware_name(i)}={regs.value_text(i, v)}"
             for i, v in sorted(guest.registers.items())]
    return ", ".join(parts) if parts else "(no firmware registers)"


def veto_reason(finding: Finding) -> str:
    """The reason of one blocking finding, with both values where they exist."""
    values = []
    if finding.guest_value is not None:
        values.append(f"guest={finding.value_text(finding.guest_value)}")
    if finding.destination_value is not None:
        values.append(f"destination={finding.value_text(finding.destination_value)}")
    head = finding.register or ""
    if values:
        head += (" " if head else "") + " ".join(values)
    return f"{head}: {finding.message}" if head else finding.message
