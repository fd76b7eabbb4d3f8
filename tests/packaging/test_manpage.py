"""psci-hook(8) agrees with the code: every exit status and every command is documented."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from psci_hook.cli import COMMANDS
from psci_hook.status import ExitStatus

MANPAGE = Path(__file__).resolve().parents[2] / "packaging" / "man" / "psci-hook.8"


def test_exit_status_table_matches_status_py() -> None:
    text = MANPAGE.read_text()
    table = text[text.index(".SH EXIT STATUS"):text.index(".TE")]
    rows = re.findall(r"^(\d+)\t([A-Z_0-9]+)\t", table, flags=re.MULTILINE)
    assert [(int(n), name) for n, name in rows] == [
        (int(s), name) for name, s in ExitStatus.__members__.items()]  # aliases too


def test_every_command_is_described() -> None:
    text = MANPAGE.read_text()
    section = text[text.index(".SH COMMANDS"):text.index(".SH EXIT STATUS")]
    described = re.findall(r"^\.TP\n\.BI? \"?(\w+)", section, flags=re.MULTILINE)
    assert described == list(COMMANDS)


def test_renders_without_warnings() -> None:
    environ = {"MANWIDTH": "80", "LC_ALL": "C.UTF-8", "PATH": "/usr/bin:/bin"}
    done = subprocess.run(["man", "--warnings", "-l", str(MANPAGE)], capture_output=True,
                          text=True, env=environ, check=False)
    assert (done.returncode, done.stderr) == (0, "")
    plain = re.sub(".\b", "", done.stdout)  # overstrike bold and underline
    assert "EXIT STATUS" in plain
    assert "20   LIBVIRT_UNAVAILABLE" in plain
