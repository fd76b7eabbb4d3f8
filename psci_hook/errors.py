"""How an exception reads in a one-line message (a veto line, a log field, a command's output)."""

from __future__ import annotations


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
