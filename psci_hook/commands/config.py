"""psci-hook config: the hook's configuration as the hook reads it, and its mistakes.

``psci-hook config --check [FILE]`` validates a file before it is used (as ``sshd -t`` or
``visudo -c`` do): every mistake on stderr, one line each, and exit 1; exit 0 when there is
none. Without --check it prints every setting with its value and where the value comes from.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from psci_hook.environment import Environment
from psci_hook.policy import SETTINGS, Policy, PolicyReading, read_policy
from psci_hook.profile import ProfileError, load_profile
from psci_hook.status import ExitStatus

HELP = ("show the hook's configuration, or --check a file before it is used "
        "(exit 0 valid, 1 mistakes)")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", nargs="?", type=Path, metavar="FILE",
                        help="the file (default: $PSCI_HOOK_CONFIG, else "
                        "/etc/psci-hook/psci-hook.conf)")
    parser.add_argument("--check", action="store_true",
                        help="only validate: the mistakes on stderr, exit 1 if any")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--quiet", action="store_true",
                        help="nothing on stdout; mistakes still go to stderr")


def setting_text(value: Any) -> str:
    """A setting's value as the file writes it."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, frozenset):
        return ", ".join(sorted(value))
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def validate(path: Path, explicit: bool) -> tuple[PolicyReading, list[str], bool]:
    """The file as the hook reads it; every mistake, one line each (the file's own, then what
    the hook will find when it uses it); whether the file exists."""
    exists = path.exists() or path.is_symlink()
    reading = read_policy(path)
    problems = reading.messages
    if not exists and explicit:
        problems.append(f"{path}: no such file")
    profile = reading.policy.host_profile
    if profile is not None:
        try:
            load_profile(profile)
        except ProfileError as exc:
            line = reading.lines.get("host_profile", 0)
            where = f"{path}:{line}" if line else str(path)
            problems.append(f"{where}: [host] profile is unusable, every decision would be "
                            f"PROFILE_UNAVAILABLE: {exc}")
    return reading, problems, exists


def run(args: argparse.Namespace, env: Environment) -> ExitStatus:
    path = args.file or env.config_path
    reading, problems, exists = validate(path, explicit=args.file is not None)
    status = ExitStatus.PROBLEMS_FOUND if problems else ExitStatus.OK
    if args.json:
        env.write_out(json.dumps(_json(reading, problems, exists), indent=1) + "\n")
        return status
    for problem in problems:
        env.error(problem)
    if args.quiet:
        return status
    if args.check:
        if not exists and not problems:
            env.write_out(f"{path}: no such file; every setting takes its default\n")
        elif not problems:
            env.write_out(f"{path}: OK\n")
        else:
            env.write_out(f"{path}: {len(problems)} mistake{'s' if len(problems) > 1 else ''}; "
                          "the hook uses the settings it can read and the defaults for the "
                          "rest\n")
        return status
    env.write_out(_table(reading, path, exists))
    return status


def _table(reading: PolicyReading, path: Path, exists: bool) -> str:
    lines = [f"# {path}" + ("" if exists else " (no such file: every setting is the default)")]
    section = ""
    default = Policy()
    for setting in SETTINGS:
        if setting.section != section:
            section = setting.section
            lines.append(f"[{section}]")
        value = getattr(reading.policy, setting.field)
        line = reading.lines.get(setting.field)
        source = f"line {line}" if line else "default"
        if line and value == getattr(default, setting.field):
            source += ", the default"
        lines.append(f"{setting.key + ' = ' + setting_text(value):<43} # {source}")
    return "\n".join(lines) + "\n"


def _json(reading: PolicyReading, problems: list[str], exists: bool) -> dict[str, Any]:
    settings: dict[str, dict[str, Any]] = {}
    for setting in SETTINGS:
        value = getattr(reading.policy, setting.field)
        settings.setdefault(setting.section, {})[setting.key] = {
            "value": setting_text(value), "line": reading.lines.get(setting.field)}
    return {"file": reading.origin, "exists": exists, "valid": not problems,
            "problems": problems, "settings": settings}
