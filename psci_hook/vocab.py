"""The vocabularies several modules share, and the base of every vocabulary Enum.

A vocabulary is a str-valued Enum whose values are the words the logs, the JSON output and the
record already use: a member equals, hashes, formats and serialises as its value, so naming the
words changes no output.
"""

from __future__ import annotations

import enum


class StrEnum(str, enum.Enum):
    """Python 3.11's enum.StrEnum, for 3.9: ``str()`` and ``format()`` give the value."""

    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)


class HookVerdict(StrEnum):
    """What the hook decided for one migrate/restore (the audit event's ``decision``; the
    record's history keeps the first three)."""

    ALLOW = "allow"
    VETO = "veto"
    WARN = "warn"  # would have vetoed; the policy's mode is warn
    ERROR = "error"  # no decision (bad input, internal error, timeout): on_error decided


class QemuGeneration(StrEnum):
    """Whether the destination QEMU has the cpreg migration tolerance series
    (docs/design.md#qemu-generation)."""

    LEGACY = "legacy"
    TOLERANT = "tolerant"
