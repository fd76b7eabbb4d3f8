"""Shell completion: the bash script (packaging/completion) completes commands and options with
the words the installed command gives (`psci-hook completion words`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from psci_hook.cli import COMMANDS
from tests.helpers import REPO

BASH = REPO / "packaging" / "completion" / "psci-hook.bash"
ZSH = REPO / "packaging" / "completion" / "_psci-hook"


def complete(*words: str) -> list[str]:
    """COMPREPLY for the command line ``psci-hook WORDS...`` (the last word being typed)."""
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "LC_ALL": "C"}
    line = " ".join(["psci-hook", *words])
    script = (f"source {BASH}; COMP_WORDS=({line}); COMP_CWORD={len(words)}; _psci_hook; "
              'printf "%s\\n" "${COMPREPLY[@]}"')
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=env,
                          timeout=60, check=True)
    return [w for w in done.stdout.splitlines() if w]


def test_bash_completes_every_command() -> None:
    assert complete("") == list(COMMANDS)
    assert complete("ch") == ["check"]
    assert complete("co") == ["conformance", "config", "completion"]


def test_bash_completes_a_commands_options() -> None:
    assert complete("check", "--host") == ["--host-profile"]
    assert complete("audit", "--s") == ["--since"]
    assert "--check" in complete("config", "--")


def test_the_command_prints_the_scripts() -> None:
    script = Path(sys.executable).parent / "psci-hook"
    for shell, path in (("bash", BASH), ("zsh", ZSH)):
        done = subprocess.run([str(script), "completion", shell], capture_output=True,
                              text=True, timeout=60, check=True)
        assert done.stdout == path.read_text()
