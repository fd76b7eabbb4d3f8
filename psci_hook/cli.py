"""The ``psci-hook`` command line: one subcommand per module in ``psci_hook.commands``.

Subcommand modules are imported only when chosen, so ``psci-hook check`` never pays for
libvirt-python and ``psci-hook probe`` never pays for lxml.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Sequence
from typing import Protocol, cast

from psci_hook import __version__
from psci_hook.environment import Environment
from psci_hook.status import ExitStatus


class Command(Protocol):
    HELP: str

    def configure(self, parser: argparse.ArgumentParser) -> None: ...

    def run(self, args: argparse.Namespace, env: Environment) -> ExitStatus: ...


# name -> module under psci_hook.commands
COMMANDS: dict[str, str] = {
    "check": "check",
    "matrix": "matrix",
    "stamp": "stamp",
    "audit": "audit",
    "probe": "probe",
    "conformance": "conformance",
    "refresh": "refresh",
    "record": "record",
    "watch": "watch",
    "install": "install",
    "where": "where",
    "plan": "plan",
    "doctor": "doctor",
    "config": "config",
    "profiles": "profiles",
    "completion": "completion",
}


class _ArgumentParser(argparse.ArgumentParser):
    """argparse that reports usage errors as one line and exit status 2 without exiting."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(message)


class UsageError(Exception):
    pass


def _load(name: str) -> Command:
    return cast(Command, importlib.import_module(f"psci_hook.commands.{COMMANDS[name]}"))


def build_parser(argv: Sequence[str]) -> tuple[argparse.ArgumentParser, Command | None]:
    parser = _ArgumentParser(
        prog="psci-hook",
        description="Pre-flight check of arm64 KVM firmware registers for libvirt migrations.",
    )
    parser.add_argument("--version", action="version", version=f"psci-hook {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    chosen = next((a for a in argv if not a.startswith("-")), None)
    command: Command | None = None
    for name in COMMANDS:
        if name == chosen:
            command = _load(name)
            sub = subparsers.add_parser(name, help=command.HELP, description=command.HELP)
            command.configure(sub)
        elif chosen is None:  # the overview (--help, or no command): every command's summary
            subparsers.add_parser(name, help=_load(name).HELP, add_help=False)
        else:  # another command was chosen: only its module is imported
            subparsers.add_parser(name, add_help=False)
    return parser, command


def _joined(args: list[str], command: Command | None) -> list[str]:
    """``--since -2h`` as ``--since=-2h``: argparse takes a value starting with "-" for an
    option, journalctl's relative times start with one (a command lists such options in
    DASH_VALUE_OPTIONS)."""
    options = getattr(command, "DASH_VALUE_OPTIONS", ())
    joined: list[str] = []
    for arg in args:
        if joined and joined[-1] in options and arg.startswith("-"):
            joined[-1] = f"{joined[-1]}={arg}"
        else:
            joined.append(arg)
    return joined


def main(argv: Sequence[str] | None = None, env: Environment | None = None) -> int:
    env = env or Environment.from_process()
    args_list = list(env.argv[1:] if argv is None else argv)
    chosen = next((a for a in args_list if not a.startswith("-")), None)
    if chosen is not None and chosen not in COMMANDS:
        from psci_hook.policy import did_you_mean

        env.error(f"usage: unknown command {chosen!r}{did_you_mean(chosen, COMMANDS)}; "
                  "`psci-hook --help` lists them")
        return ExitStatus.BAD_INPUT
    try:
        parser, command = build_parser(args_list)
        args = parser.parse_args(_joined(args_list, command))
    except UsageError as exc:
        env.error(f"usage: {exc}")
        return ExitStatus.BAD_INPUT
    if command is None:
        parser.print_help(env.stderr)
        return ExitStatus.BAD_INPUT
    return int(command.run(args, env))
