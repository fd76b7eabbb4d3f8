"""How decisions read: the text of `check`, the one-line veto reason, and summaries for logs."""

from __future__ import annotations

from psci_hook import registers as regs
from psci_hook.codes import Severity
from psci_hook.engine import Decision, Finding, GuestState

_MARK = {Severity.BLOCKING: "VETO", Severity.WARNING: "warn", Severity.INFO: "info"}


def finding_line(finding: Finding) -> str:
    where = f" {finding.register}" if finding.register else ""
    inferred = " [inferred from the kernel release]" if finding.inferred else ""
    return f"{_MARK[finding.severity]:4} {finding.code}{where}: {finding.message}{inferred}"


def decision_text(decision: Decision, verbose: bool = False) -> str:
    """The human report of `psci-hook check`: verdict, then findings, most severe first."""
    lines = [f"verdict: {decision.verdict.upper()} (destination QEMU: {decision.generation})"]
    shown = [f for f in decision.findings
             if verbose or (f.severity > Severity.INFO and f.code != "REG_DEST_DEFAULT")]
    hidden = len(decision.findings) - len(shown)
    for finding in sorted(shown, key=lambda f: -f.severity):
        lines.append("  " + finding_line(finding))
    if hidden:
        lines.append(f"  ({hidden} informational findings not shown; --verbose shows them)")
    lines.append("guest after migration: " + guest_summary(decision.guest_after))
    return "\n".join(lines) + "\n"


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
