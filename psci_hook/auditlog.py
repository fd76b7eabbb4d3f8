"""The audit trail: one structured event per decision, to the journal or to syslog, never stdout.

structlog renders the event as JSON; a sink sends it as one datagram:
- to journald's native socket, with SYSLOG_IDENTIFIER=psci-hook, a MESSAGE_ID per decision kind
  and PSCI_* fields that `journalctl PSCI_DOMAIN=vm42` can filter on;
- else to syslog's /dev/log as "<PRI>psci-hook: {json}";
- else nowhere.
Logging must never fail or hang the hook: sockets are non-blocking and every error is swallowed
(the event is then returned to the caller, who may still report it on stderr).
"""

from __future__ import annotations

import json
import re
import socket
import struct
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import structlog

from psci_hook.environment import JOURNAL_SOCKET, SYSLOG_SOCKET

IDENTIFIER = "psci-hook"
EVENT = "psci-hook.decision"

# `psci-hook record` and `watch`: one event per action (psci_hook.recorder.RecordAction) and
# the watcher's service events (connected, disconnected, stopped ...).
RECORD_EVENT = "psci-hook.record"
FACILITY_DAEMON = 3
INFO = 6  # the syslog priority of a kind the table does not name


class EventKind(NamedTuple):
    message_id: str  # journalctl MESSAGE_ID=<id>: stable, one 128-bit id per kind
    priority: int  # syslog severity: what an operator should see is a warning or an error


_SERVICE = "6a0f1b5e3d2c4b7a9e8f0a1b2c3d4e18"
# Every kind of event, by (event, kind): a decision's HookVerdict or a record event's action.
EVENT_KINDS: dict[tuple[str, str], EventKind] = {
    (EVENT, "allow"): EventKind("6a0f1b5e3d2c4b7a9e8f0a1b2c3d4e01", 6),
    (EVENT, "veto"): EventKind("6a0f1b5e3d2c4b7a9e8f0a1b2c3d4e02", 4),
    (EVENT, "warn"): EventKind("6a0f1b5e3d2c4b7a9e8f0a1b2c3d4e03", 4),  # policy mode = warn
    (EVENT, "error"): EventKind("6a0f1b5e3d2c4b7a9e8f0a1b2c3d4e04", 3),
    (RECORD_EVENT, "recorded"): EventKind("6a0f1b5e3d2c4b7a9e8f0a1b2c3d4e11", 6),
    (RECORD_EVENT, "replaced"): EventKind("6a0f1b5e3d2c4b7a9e8f0a1b2c3d4e12", 6),
    (RECORD_EVENT, "updated"): EventKind("6a0f1b5e3d2c4b7a9e8f0a1b2c3d4e13", 6),
    (RECORD_EVENT, "synced"): EventKind("6a0f1b5e3d2c4b7a9e8f0a1b2c3d4e14", 6),
    (RECORD_EVENT, "unchanged"): EventKind("6a0f1b5e3d2c4b7a9e8f0a1b2c3d4e15", 7),
    (RECORD_EVENT, "skipped"): EventKind("6a0f1b5e3d2c4b7a9e8f0a1b2c3d4e16", 5),
    (RECORD_EVENT, "failed"): EventKind("6a0f1b5e3d2c4b7a9e8f0a1b2c3d4e17", 3),
    (RECORD_EVENT, "service"): EventKind(_SERVICE, INFO),
    (RECORD_EVENT, "disconnected"): EventKind(_SERVICE, 4),
    (RECORD_EVENT, "connect-failed"): EventKind(_SERVICE, 4),
    (RECORD_EVENT, "refresh-failed"): EventKind(_SERVICE, 4),
}


def event_kind(event: str, kind: str) -> EventKind:
    """The table's entry; a kind it does not name is informational, with the id of a decision
    error or of a service event."""
    known = EVENT_KINDS.get((event, kind))
    if known is not None:
        return known
    fallback = EVENT_KINDS[(EVENT, "error")] if event == EVENT else \
        EVENT_KINDS[(RECORD_EVENT, "service")]
    return EventKind(fallback.message_id, INFO)


def _journal_field(key: str, value: str) -> bytes:
    data = value.encode("utf-8", "replace")
    if b"\n" in data:  # the binary-safe form of the native protocol
        return key.encode() + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"
    return key.encode() + b"=" + data + b"\n"


def _send(path: Path, payload: bytes) -> bool:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.setblocking(False)
            sock.sendto(payload, str(path))
        return True
    except OSError:
        return False


class Sink:
    """Where rendered events go; tests substitute a list-collecting one."""

    def __init__(self, journal: Path | None = JOURNAL_SOCKET,
                 syslog: Path | None = SYSLOG_SOCKET) -> None:
        self.journal, self.syslog = journal, syslog

    @classmethod
    def for_target(cls, target: str, journal: Path, syslog: Path) -> Sink:
        return cls(journal if target in ("auto", "journal") else None,
                   syslog if target in ("auto", "syslog") else None)

    def emit(self, decision: str, message: str, fields: Mapping[str, str],
             priority: int | None = None, message_id: str | None = None) -> bool:
        """Send one rendered event; ``priority`` and ``message_id`` default to the decision's."""
        if priority is None:
            priority = event_kind(EVENT, decision).priority
        if message_id is None:
            message_id = event_kind(EVENT, decision).message_id
        if self.journal is not None and self.journal.exists():
            payload = b"".join(
                [_journal_field("MESSAGE", message),
                 _journal_field("SYSLOG_IDENTIFIER", IDENTIFIER),
                 _journal_field("PRIORITY", str(priority)),
                 _journal_field("MESSAGE_ID", message_id)]
                + [_journal_field(k, v) for k, v in fields.items()])
            if _send(self.journal, payload):
                return True
        if self.syslog is None:
            return False
        line = f"<{FACILITY_DAEMON * 8 + priority}>{IDENTIFIER}: {message}"
        return _send(self.syslog, line.encode("utf-8", "replace"))


class _SinkLogger:
    """A structlog logger whose output is the sink (never stdout, unlike PrintLogger)."""

    def __init__(self, sink: Sink, kind: str, fields: Mapping[str, str], priority: int | None,
                 message_id: str | None) -> None:
        self.sink, self.kind, self.fields = sink, kind, fields
        self.priority, self.message_id = priority, message_id
        self.delivered = False

    def msg(self, rendered: str) -> None:
        self.delivered = self.sink.emit(self.kind, rendered, self.fields,
                                        priority=self.priority, message_id=self.message_id)

    info = warning = error = msg


def _emit(sink: Sink, name: str, event: Mapping[str, Any], kind: str,
          fields: Mapping[str, str], priority: int | None = None,
          message_id: str | None = None) -> bool:
    logger = _SinkLogger(sink, kind, fields, priority, message_id)
    bound = structlog.wrap_logger(
        logger,
        processors=[structlog.processors.TimeStamper(fmt="iso", utc=True),
                    structlog.processors.JSONRenderer(sort_keys=False)],
        cache_logger_on_first_use=False,
    )
    try:
        bound.info(name, **event)
    except Exception:  # logging must never fail the hook
        return False
    return logger.delivered


def emit_decision(sink: Sink, **event: Any) -> bool:
    """Render one decision event with structlog and send it; True if a sink took it."""
    decision = str(event.get("decision", ""))
    fields = {
        "PSCI_DECISION": decision,
        "PSCI_DOMAIN": str(event.get("domain", "")),
        "PSCI_OP": str(event.get("op", "")),
        "PSCI_CODES": " ".join(event.get("codes", [])),
    }
    # An allow decided on a configuration with mistakes is a warning: someone should fix it.
    priority = event_kind(EVENT, "warn").priority \
        if event.get("config_problems") and decision == "allow" else None
    return _emit(sink, EVENT, event, decision, fields, priority=priority)


def emit_record(sink: Sink, **event: Any) -> bool:
    """One event of `psci-hook record` / `watch` (a record written or skipped, a connection
    made or lost), rendered like a decision; True if a sink took it."""
    action = str(event.get("action", ""))
    fields = {
        "PSCI_ACTION": action,
        "PSCI_DOMAIN": str(event.get("domain", "")),
        "PSCI_TRIGGER": str(event.get("trigger", "")),
        "PSCI_CODES": " ".join(event.get("codes", [])),
    }
    kind = event_kind(RECORD_EVENT, action)
    return _emit(sink, RECORD_EVENT, event, action, fields, priority=kind.priority,
                 message_id=kind.message_id)


# ---------------------------------------------------------------------------------------------
# Reading the events back (`psci-hook audit`, `psci-hook doctor`)
# ---------------------------------------------------------------------------------------------

# Where rsyslog (Debian: /var/log/syslog) or other syslog daemons (/var/log/messages) put
# daemon-facility messages, and logrotate's names for the older ones (.1, .2.gz, ...).
SYSLOG_FILES = (Path("/var/log/syslog"), Path("/var/log/messages"))


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
    import subprocess  # here: the hook only writes events

    result = subprocess.run(
        ["journalctl", "-t", IDENTIFIER, "-o", "json", "--no-pager"],
        capture_output=True, text=True, timeout=60, check=False)
    if result.returncode != 0:
        raise OSError(result.stderr.strip().splitlines()[0] if result.stderr.strip()
                      else f"journalctl exited {result.returncode}")
    return result.stdout.splitlines()


def read_file(path: Path) -> list[str]:
    """A log file's lines; gzip-compressed ones (logrotate's .gz) decompressed."""
    import gzip  # here: the hook only writes events

    with path.open("rb") as handle:
        compressed = handle.read(2) == b"\x1f\x8b"
    if compressed:
        with gzip.open(path, "rb") as handle:
            data = handle.read()
    else:
        data = path.read_bytes()
    return data.decode("utf-8", "replace").splitlines()


def rotations(path: Path) -> list[Path]:
    """``path`` and its rotated copies (path.1, path.2.gz, ...), oldest first."""
    def age(candidate: Path) -> int:
        match = re.fullmatch(re.escape(path.name) + r"\.(\d+)(\.gz)?", candidate.name)
        return int(match.group(1)) if match else -1

    older = [p for p in path.parent.glob(path.name + ".*") if age(p) >= 0]
    found = sorted(older, key=age, reverse=True)
    return [*found, path] if path.exists() else found
