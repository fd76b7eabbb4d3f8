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
import socket
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import structlog

IDENTIFIER = "psci-hook"
JOURNAL_SOCKET = Path("/run/systemd/journal/socket")
SYSLOG_SOCKET = Path("/dev/log")
EVENT = "psci-hook.decision"

# journalctl MESSAGE_ID=<id>: one stable 128-bit id per kind of decision.
MESSAGE_IDS = {
    "allow": "6a0f1b5e3d2c4b7a9e8f0a1b2c3d4e01",
    "veto": "6a0f1b5e3d2c4b7a9e8f0a1b2c3d4e02",
    "warn": "6a0f1b5e3d2c4b7a9e8f0a1b2c3d4e03",  # would have vetoed, policy mode = warn
    "error": "6a0f1b5e3d2c4b7a9e8f0a1b2c3d4e04",
}
# syslog severities: veto and error are warnings/errors an operator should see.
PRIORITIES = {"allow": 6, "warn": 4, "veto": 4, "error": 3}
FACILITY_DAEMON = 3


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

    def emit(self, decision: str, message: str, fields: Mapping[str, str]) -> bool:
        priority = PRIORITIES.get(decision, 6)
        if self.journal is not None and self.journal.exists():
            payload = b"".join(
                [_journal_field("MESSAGE", message),
                 _journal_field("SYSLOG_IDENTIFIER", IDENTIFIER),
                 _journal_field("PRIORITY", str(priority)),
                 _journal_field("MESSAGE_ID", MESSAGE_IDS.get(decision, MESSAGE_IDS["error"]))]
                + [_journal_field(k, v) for k, v in fields.items()])
            if _send(self.journal, payload):
                return True
        if self.syslog is None:
            return False
        line = f"<{FACILITY_DAEMON * 8 + priority}>{IDENTIFIER}: {message}"
        return _send(self.syslog, line.encode("utf-8", "replace"))


class _SinkLogger:
    """A structlog logger whose output is the sink (never stdout, unlike PrintLogger)."""

    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        self.delivered = False

    def msg(self, rendered: str) -> None:
        event = json.loads(rendered)
        fields = {
            "PSCI_DECISION": str(event.get("decision", "")),
            "PSCI_DOMAIN": str(event.get("domain", "")),
            "PSCI_OP": str(event.get("op", "")),
            "PSCI_CODES": " ".join(event.get("codes", [])),
        }
        self.delivered = self.sink.emit(str(event.get("decision", "")), rendered, fields)

    info = warning = error = msg


def emit_decision(sink: Sink, **event: Any) -> bool:
    """Render one decision event with structlog and send it; True if a sink took it."""
    logger = _SinkLogger(sink)
    bound = structlog.wrap_logger(
        logger,
        processors=[structlog.processors.TimeStamper(fmt="iso", utc=True),
                    structlog.processors.JSONRenderer(sort_keys=False)],
        cache_logger_on_first_use=False,
    )
    try:
        bound.info(EVENT, **event)
    except Exception:  # logging must never fail the hook
        return False
    return logger.delivered
