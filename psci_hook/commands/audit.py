"""psci-hook audit: the hook's decisions read back from the journal or syslog files.

Without files it reads where the hook writes (psci_hook.auditlog, the configuration's [log]):
the journal when its socket exists, else the syslog files, rotated and compressed ones
included; it says where it looked. Times take journalctl's syntax (systemd.time(7)).
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import gzip
import json
import re
import subprocess
from pathlib import Path
from typing import Any

from psci_hook.auditlog import SYSLOG_FILES, events_from_lines, read_file, read_journal, rotations
from psci_hook.environment import Environment
from psci_hook.policy import read_policy
from psci_hook.status import ExitStatus

# `--since -2h`: the value starts with "-" (psci_hook.cli joins them).
DASH_VALUE_OPTIONS = ("--since", "--until")
TIME_FORMS = ("2026-12-05, '2026-12-05 20:00', 2026-12-05T20:00+01:00, '20:00 UTC', -2h, "
              "'2 hours ago', today, yesterday, @1764964800")

HELP = ("summarise psci-hook's decisions from the journal (default) or from syslog files: "
        "counts by verdict and code, the latest vetoes")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="*", type=Path, metavar="FILE",
                        help="syslog files (.gz too) or `journalctl -o json` output (default: "
                        "the journal, else /var/log/syslog or /var/log/messages and their "
                        "rotations)")
    parser.add_argument("--since", metavar="TIME", help="only decisions at or after TIME, in "
                        f"journalctl's syntax: {TIME_FORMS} (local time unless a zone is "
                        "given)")
    parser.add_argument("--until", metavar="TIME", help="only decisions before TIME")
    parser.add_argument("--domain", metavar="NAME", help="only this domain")
    parser.add_argument("--latest", type=int, default=10, metavar="N",
                        help="how many of the latest vetoes to list (default 10)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def default_sources(env: Environment) -> tuple[str, list[Path]]:
    """Where the hook's events went: ("journal", []) or ("syslog", files); ("", []) when
    neither exists."""
    policy = read_policy(env.config_path).policy
    if policy.log_target in ("auto", "journal") and policy.journal_socket.exists():
        return "journal", []
    for base in SYSLOG_FILES:
        files = rotations(base)
        if files:
            return "syslog", files
    return "", []


# ---------------------------------------------------------------------------------------------
# Times, as journalctl reads them (systemd's parse_timestamp, src/basic/time-util.c)
# ---------------------------------------------------------------------------------------------

_UNITS = {
    **dict.fromkeys(("us", "usec", "\u00b5s"), 1e-6), **dict.fromkeys(("ms", "msec"), 1e-3),
    **dict.fromkeys(("s", "sec", "second", "seconds"), 1.0),
    **dict.fromkeys(("m", "min", "minute", "minutes"), 60.0),
    **dict.fromkeys(("h", "hr", "hour", "hours"), 3600.0),
    **dict.fromkeys(("d", "day", "days"), 86400.0),
    **dict.fromkeys(("w", "week", "weeks"), 7 * 86400.0),
    **dict.fromkeys(("M", "month", "months"), 30.44 * 86400),
    **dict.fromkeys(("y", "year", "years"), 365.25 * 86400),
}
_SPAN_PART = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z\u00b5]+)")
_ABSOLUTE = re.compile(
    r"(?:(?:mon|tue|wed|thu|fri|sat|sun)[a-z]*\s+)?"
    r"(?:(\d{4})-(\d{1,2})-(\d{1,2}))?"
    r"(?:(?:^|[ T])(\d{1,2}):(\d{2})(?::(\d{2})(\.\d+)?)?)?"
    r"\s*(Z|UTC|[+-]\d{2}:?\d{2}|\s[A-Za-z_]+/[A-Za-z_/+-]+)?", re.I)


class TimeError(ValueError):
    pass


def _span(text: str) -> float:
    """Seconds in "2h", "1h 30min", "90s"; TimeError if it is not a span."""
    total, position = 0.0, 0
    for match in _SPAN_PART.finditer(text):
        if match.start() != position or match.group(2) not in _UNITS:
            raise TimeError(text)
        total += float(match.group(1)) * _UNITS[match.group(2)]
        position = match.end()
    if position == 0 or text[position:].strip():
        raise TimeError(text)
    return total


def parse_time(text: str, now: dt.datetime) -> dt.datetime:
    """A point in time, from journalctl's syntax; ``now`` is aware (its zone is the local one
    for times without a zone). Raises TimeError."""
    spec = text.strip()
    local = now.tzinfo
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    words = {"now": now, "today": midnight, "yesterday": midnight - dt.timedelta(days=1),
             "tomorrow": midnight + dt.timedelta(days=1)}
    if spec.lower() in words:
        return words[spec.lower()]
    if spec.startswith("@"):
        try:
            return dt.datetime.fromtimestamp(float(spec[1:]), dt.timezone.utc)
        except (ValueError, OverflowError):
            raise TimeError(text) from None
    for sign, body in (("-", spec[1:] if spec.startswith("-") else None),
                       ("+", spec[1:] if spec.startswith("+") else None),
                       ("-", spec[:-4] if spec.endswith(" ago") else None),
                       ("+", spec[:-5] if spec.endswith(" left") else None)):
        if body is not None:
            seconds = _span(body)
            return now + dt.timedelta(seconds=-seconds if sign == "-" else seconds)
    match = _ABSOLUTE.fullmatch(spec)
    if not match or not (match.group(1) or match.group(4)):
        raise TimeError(text)
    year, month, day, hour, minute, second, fraction, zone = match.groups()
    try:
        tz = _zone(zone, local)
        base = now.astimezone(tz)
        value = dt.datetime(
            int(year) if year else base.year, int(month) if month else base.month,
            int(day) if day else base.day, int(hour or 0), int(minute or 0), int(second or 0),
            round(float(fraction or 0) * 1e6), tzinfo=tz)
    except (ValueError, KeyError):
        raise TimeError(text) from None
    return value


def _zone(zone: str | None, local: dt.tzinfo | None) -> dt.tzinfo:
    if not zone:
        return local or dt.timezone.utc
    zone = zone.strip()
    if zone.upper() in ("Z", "UTC"):
        return dt.timezone.utc
    if zone[0] in "+-":
        digits = zone[1:].replace(":", "")
        offset = dt.timedelta(hours=int(digits[:2]), minutes=int(digits[2:]))
        return dt.timezone(-offset if zone[0] == "-" else offset)
    from zoneinfo import ZoneInfo  # an IANA name, e.g. Europe/Berlin

    try:
        return ZoneInfo(zone)
    except Exception:
        raise KeyError(zone) from None


def event_time(event: dict[str, Any]) -> dt.datetime | None:
    """The event's own time (structlog's ISO timestamp, UTC), or None."""
    stamp = event.get("timestamp")
    if not isinstance(stamp, str):
        return None
    try:
        value = dt.datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return None
    return value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)


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
    now = dt.datetime.fromtimestamp(env.clock()).astimezone()
    bounds: list[dt.datetime | None] = []
    for option, text in (("--since", args.since), ("--until", args.until)):
        try:
            bounds.append(parse_time(text, now) if text else None)
        except TimeError:
            return _fail(args, env, f"{option} {text!r}: not a time; journalctl's forms: "
                         f"{TIME_FORMS}")
    since, until = bounds
    lines: list[str] = []
    try:
        if args.files:
            kind, files = "files", list(args.files)
        else:
            kind, files = default_sources(env)
        if kind == "journal":
            lines = read_journal()
        for path in files:
            lines += read_file(path)
    except (OSError, EOFError, gzip.BadGzipFile, subprocess.SubprocessError) as exc:
        where = f"{exc.filename}: " if isinstance(exc, OSError) and exc.filename else ""
        detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        return _fail(args, env, f"cannot read the decisions: {where}{detail}")
    if kind == "journal":
        source = "the journal (journalctl -t psci-hook)"
    elif files:
        source = ", ".join(map(str, files))
    else:
        source = (f"nothing: no journal and no {' or '.join(map(str, SYSLOG_FILES))} on this "
                  "host (name the files the hook's events went to)")
    events = [
        e for e in events_from_lines(lines)
        if (args.domain is None or e.get("domain") == args.domain)
        and _within(event_time(e), since, until)
    ]
    summary = summarise(events, args.latest)
    summary["sources"] = ["journal"] if kind == "journal" else [str(f) for f in files]
    if args.json:
        env.write_out(json.dumps(summary, indent=1) + "\n")
    else:
        env.write_out(f"read {source}\n" + render_text(summary))
    return ExitStatus.OK


def _within(when: dt.datetime | None, since: dt.datetime | None,
            until: dt.datetime | None) -> bool:
    if since is None and until is None:
        return True
    if when is None:  # an event without a readable time cannot be placed in a window
        return False
    return (since is None or when >= since) and (until is None or when < until)


def _fail(args: argparse.Namespace, env: Environment, message: str) -> ExitStatus:
    if args.json:
        env.write_out(json.dumps({"error": message, "exit_status": int(ExitStatus.BAD_INPUT)})
                      + "\n")
    env.error(message)
    return ExitStatus.BAD_INPUT
