"""psci-hook completion: shell completion (bash, zsh), and the words it completes with.

The scripts the packages install (packaging/completion) ask the command itself for the words,
`psci-hook completion words [COMMAND]`, so that they never fall behind the command's version.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from psci_hook.environment import Environment
from psci_hook.status import ExitStatus

HELP = "print the bash or zsh completion script, or the words it completes with"
SCRIPTS = {"bash": "psci-hook.bash", "zsh": "_psci-hook"}
# An installed package: the scripts live in the source tree's packaging/completion, and the
# distribution packages install them where the shells look.
SOURCE_DIR = Path(__file__).resolve().parents[2] / "packaging" / "completion"
INSTALLED = {"bash": (Path("/usr/share/bash-completion/completions/psci-hook"),),
             "zsh": (Path("/usr/share/zsh/vendor-completions/_psci-hook"),  # Debian
                     Path("/usr/share/zsh/site-functions/_psci-hook"))}  # Fedora


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("what", choices=("bash", "zsh", "words"),
                        help="a shell's completion script, or the words to complete")
    parser.add_argument("command", nargs="?", metavar="COMMAND",
                        help="with words: the options of this command (default: the commands)")


def words(command: str | None) -> list[str]:
    """The commands, or one command's options."""
    from psci_hook.cli import COMMANDS, build_parser

    if command is None:
        return list(COMMANDS)
    if command not in COMMANDS:
        return []
    parser, _ = build_parser([command])
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    chosen = sub.choices[command]
    return sorted(o for a in chosen._actions for o in a.option_strings if o.startswith("--"))


def run(args: argparse.Namespace, env: Environment) -> ExitStatus:
    if args.what == "words":
        env.write_out("".join(f"{w}\n" for w in words(args.command)))
        return ExitStatus.OK
    for path in (*INSTALLED[args.what], SOURCE_DIR / SCRIPTS[args.what]):
        if path.is_file():
            env.write_out(path.read_text())
            return ExitStatus.OK
    env.error(f"no {args.what} completion script installed ({INSTALLED[args.what][0]})")
    return ExitStatus.BAD_INPUT
