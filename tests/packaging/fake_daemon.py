"""A stand-in for a running libvirt daemon, for the maintainer scripts' reload."""

from __future__ import annotations

import shutil
import signal
import subprocess
from pathlib import Path


class FakeDaemon:
    """A process named virtqemud (a copy of sleep, which SIGHUP terminates): shows whether the
    maintainer scripts asked a running libvirt daemon to reload, without systemd.

    SIGHUP is set back to its default in the child: an ignored signal stays ignored across
    exec, and a test run started under nohup would otherwise give a daemon that never hears
    the reload."""

    def __init__(self, directory: Path) -> None:
        exe = directory / "virtqemud"
        shutil.copy("/bin/sleep", exe)
        self.proc = subprocess.Popen(
            [str(exe), "600"], preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_DFL))

    def got_sighup(self, timeout: float = 10.0) -> bool:
        try:
            return self.proc.wait(timeout=timeout) == -signal.SIGHUP
        except subprocess.TimeoutExpired:
            return False

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
