"""The edges of a psci-hook process, injectable for tests (in the spirit of httpie's Environment).

Everything a command reads from or writes to the outside world goes through one ``Environment``:
argv, the standard streams, the process environment, the clock and the file locations. Tests build
one with in-memory streams; the real entry points build it from ``sys``.
"""

from __future__ import annotations

import io
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO, Callable, TextIO

DEFAULT_CONFIG_PATH = Path("/etc/psci-hook/psci-hook.conf")
DEFAULT_RUN_DIR = Path("/run/psci-hook")
CONFIG_ENV_VAR = "PSCI_HOOK_CONFIG"
# The KVM device (psci_hook.kvm opens it; the rehearsal and doctor look for it).
DEV_KVM = "/dev/kvm"
# Where the audit events go by default (psci_hook.auditlog; the policy's [log] may move them).
JOURNAL_SOCKET = Path("/run/systemd/journal/socket")
SYSLOG_SOCKET = Path("/dev/log")
# Where libvirt runs the hook from (`psci-hook install` writes it, `doctor` checks it).
HOOK = PurePosixPath("/etc/libvirt/hooks/qemu.d/50-psci-hook")


class Environment:
    """argv, the standard streams, the environment, the clock and the file locations of one run.

    A plain class, not a dataclass (docs/architecture.md#the-hook-path); tests change one edge
    by assigning its attribute.
    """

    def __init__(
        self,
        argv: Sequence[str],
        stdin: BinaryIO,
        stdout: BinaryIO,
        stderr: TextIO,
        environ: Mapping[str, str],
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        run_dir: Path = DEFAULT_RUN_DIR,
        rehearser: Any = None,
    ) -> None:
        self.argv = argv
        self.stdin = stdin
        self.stdout = stdout
        self.stderr = stderr
        self.environ = environ
        self.clock = clock
        self.monotonic = monotonic
        self.run_dir = run_dir
        # The rehearsal on this host's KVM (psci_hook.rehearsal); None: the real one where
        # /dev/kvm is an arm64 KVM, else none. Tests on x86 inject one here.
        self.rehearser = rehearser

    def __repr__(self) -> str:
        return f"Environment(argv={self.argv!r}, run_dir={self.run_dir!r})"

    @classmethod
    def from_process(cls) -> Environment:
        return cls(
            argv=list(sys.argv),
            stdin=sys.stdin.buffer,
            stdout=sys.stdout.buffer,
            stderr=sys.stderr,
            environ=dict(os.environ),
        )

    @classmethod
    def for_test(
        cls,
        argv: Sequence[str],
        stdin: bytes = b"",
        environ: Mapping[str, str] | None = None,
        run_dir: Path | None = None,
        clock: Callable[[], float] | None = None,
    ) -> Environment:
        return cls(
            argv=list(argv),
            stdin=io.BytesIO(stdin),
            stdout=io.BytesIO(),
            stderr=io.StringIO(),
            environ=dict(environ or {}),
            run_dir=run_dir or DEFAULT_RUN_DIR,
            clock=clock or time.time,
        )

    @property
    def config_path(self) -> Path:
        return Path(self.environ.get(CONFIG_ENV_VAR) or DEFAULT_CONFIG_PATH)

    def write_out(self, text: str) -> None:
        """Write text to stdout (CLI commands only: the hook writes its XML once, as bytes)."""
        self.stdout.write(text.encode("utf-8"))

    def error(self, message: str) -> None:
        """One line on stderr, prefixed with the program name."""
        self.stderr.write(f"psci-hook: {message}\n")
