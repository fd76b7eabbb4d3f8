"""psci-hook audit: the hook's decisions read back from the journal or a syslog file."""

from __future__ import annotations

import argparse
import collections
import json
import subprocess
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from psci_hook.auditlog import EVENT, IDENTIFIER
from psci_hook.environment import Environment
from psci_hook.status import ExitStatus

HELP = ("summarise psci-hook's decisions from the journal (default) or from syslog files: "
        "counts by verdict and code, the latest vetoes")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="*", type=Path, metavar="FILE",
                        help="syslog files or `journalctl -o json` output (default: ask "
                        "journalctl -t psci-hook -o json)")
    parser.add_argument("--since", metavar="TIME", help="only decisions at or after this "
                        "ISO time (e.g. 2026-11-30 or 2026-11-30T10:00:00Z)")
    parser.add_argument("--until", metavar="TIME", help="only decisions before this ISO time")
    parser.add_argument("--domain", metavar="NAME", help="only this domain")
    parser.add_argument("--latest", type=int, default=10, metavar="N",
                        help="how many of the latest vetoes to list (default 10)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def _event_from_text(text: str, name: str = EVENT) -> dict[str, Any] | None:
    """An event called ``name`` (default: a decision) in a syslog line ("... psci-hook: {json}")
    or a journal MESSAGE."""
    start = text.find("{")
    if start < 0:
        return None
    try:
        event = json.loads(text[start:])
    except ValueError:
        return None
    return event if isinstance(event, dict) and event.get("event") == name else None


def events_from_lines(lines: Iterable[str], name: str = EVENT) -> Iterator[dict[str, Any]]:
    for line in lines:
        line = line.strip()
        if not line:
            continue
        if line.startswith("{"):  # journalctl -o json: one entry per line
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            message = entry.get("MESSAGE") if isinstance(entry, dict) else None
            if isinstance(message, list):  # journald's form for non-UTF-8 messages
                message = bytes(message).decode("utf-8", "replace")
            if isinstance(message, str) and entry.get("SYSLOG_IDENTIFIER") == IDENTIFIER:
                event = _event_from_text(message, name)
                if event is not None:
                    yield event
            continue
        if f"{IDENTIFIER}:" in line or f"{IDENTIFIER}[" in line:
            event = _event_from_text(line[line.find(IDENTIFIER):], name)
            if event is not None:
                yield event


def read_journal() -> list[str]:
    result = subprocess.run(
        ["journalctl", "-t", IDENTIFIER, "-o", "json", "--no-pager"],
        capture_output=True, text=True, timeout=60, check=False)
    if result.returncode != 0:
        raise OSError(result.stderr.strip().splitlines()[0] if result.stderr.strip()
                      else f"journalctl exited {result.returncode}")
    return result.stdout.splitlines()


def _normalise_time(text: str) -> str:
    return text.replace(" ", "T")


def summarise(events: list[dict[str, Any]], latest: int) -> dict[str, Any]:
    by_decision = collections.Counter(str(e.get("decision")) for e in events)
    by_code = collections.Counter(c for e in events for c in e.get("codes", []))
    vetoes = [e for e in events if e.get("decision") in ("veto", "warn")]
    vetoes.sort(key=lambda e: str(e.get("timestamp", "")))
    return {
        "total": len(events),
        "first": min((str(e.get("timestamp", "")) for e in events), default=None),
        "last": max((str(e.get("timestamp", "")) for e in events), default=None),
        "by_decision": dict(by_decision.most_common()),
        "by_code": dict(by_code.most_common()),
        "latest_vetoes": [
            {"time": e.get("timestamp"), "domain": e.get("domain"), "op": e.get("op"),
             "decision": e.get("decision"), "codes": e.get("codes", []),
             "reason": e.get("reason", e.get("message", ""))}
            for e in vetoes[-latest:][::-1]] if latest > 0 else [],
    }


def render_text(summary: dict[str, Any]) -> str:
    decisions = ", ".join(f"{k} {v}" for k, v in summary["by_decision"].items()) or "none"
    lines = [f"psci-hook decisions: {summary['total']} ({decisions})"]
    if summary["total"]:
        lines.append(f"from {summary['first']} to {summary['last']}")
    if summary["by_code"]:
        lines.append("by code:")
        width = max(len(c) for c in summary["by_code"])
        lines += [f"  {code.ljust(width)}  {n}" for code, n in summary["by_code"].items()]
    if summary["latest_vetoes"]:
        lines.append("latest vetoes (newest first):")
        for v in summary["latest_vetoes"]:
            mark = "" if v["decision"] == "veto" else " (warn only)"
            lines.append(f"  {v['time']}  {v['domain']}  {v['op']}  "
                         f"{' '.join(v['codes'][:3])}{mark}: {v['reason']}")
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace, env: Environment) -> ExitStatus:
    try:
        if args.files:
            lines: list[str] = []
            for path in args.files:
                lines += path.read_text(encoding="utf-8", errors="replace").splitlines()
        else:
            lines = read_journal()
    except (OSError, subprocess.SubprocessError) as exc:
        env.error(f"cannot read the decisions: {exc}")
        return ExitStatus.BAD_INPUT
    since = _normalise_time(args.since) if args.since else None
    until = _normalise_time(args.until) if args.until else None
    events = [
        e for e in events_from_lines(lines)
        if (args.domain is None or e.get("domain") == args.domain)
        and (since is None or str(e.get("timestamp", "")) >= since)
        and (until is None or str(e.get("timestamp", "")) < until)
    ]
    summary = summarise(events, args.latest)
    if args.json:
        env.write_out(json.dumps(summary, indent=1) + "\n")
    else:
        env.write_out(render_text(summary))
    return ExitStatus.OK
