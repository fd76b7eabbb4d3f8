"""How an exception reads in a one-line message (a veto line, a log field, a command's output)."""

from __future__ import annotations

from pathlib import Path


def first_line(exc: BaseException) -> str:
    """The first non-blank line of ``str(exc)``, or the exception's type name when it says nothing.

    An exception's text may be empty (``OSError()``, ``ValueError("")``), start with a line break
    or span several lines (lxml, libvirt); callers need one line, never an IndexError.
    """
    for line in str(exc).splitlines():
        if line.strip():
            return line.strip()
    return type(exc).__name__


def with_type(exc: BaseException) -> str:
    """``Type: first line`` for an unexpected exception (a bug report needs the type too)."""
    name = type(exc).__name__
    text = first_line(exc)
    return name if text == name else f"{name}: {text}"


class UnreadableFile(Exception):
    """A file that cannot be read as UTF-8 text. ``str()`` is one line that names the file;
    ``reason`` is ``missing``, ``unreadable`` or ``not-text``."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


def read_text_file(path: Path | str) -> str:
    """The whole file as UTF-8 text, or UnreadableFile with a one-line message."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        reason = "missing" if isinstance(exc, FileNotFoundError) else "unreadable"
        raise UnreadableFile(f"{path}: cannot read: {exc.strerror or exc}", reason) from None
    except UnicodeDecodeError:
        raise UnreadableFile(f"{path}: not UTF-8 text", "not-text") from None
