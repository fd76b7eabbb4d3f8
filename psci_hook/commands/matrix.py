"""psci-hook matrix: which source -> destination host pairs a freshly booted guest survives.

For each source profile, the guest is the one -cpu host gives there (every vCPU feature the
source supports); for each destination, the engine decides. Readable as a text or markdown
grid with the reasons below it, or as JSON.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from psci_hook.codes import Severity, severity
from psci_hook.engine import Decision, GuestState, decide
from psci_hook.environment import Environment
from psci_hook.profile import HostProfile, ProfileError, bundled_profiles, load_profile
from psci_hook.status import ExitStatus

HELP = ("every source x destination pair of host profiles, for a guest freshly booted on the "
        "source (default: the bundled profiles)")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("profiles", nargs="*", type=Path, metavar="PROFILE",
                        help="host profile files (default: the profiles bundled with psci-hook)")
    parser.add_argument("--qemu", choices=("legacy", "tolerant"), default="legacy",
                        help="the destination QEMU generation (default: legacy)")
    parser.add_argument("--format", choices=("text", "markdown", "json"), default="text")


def _cell_mark(decision: Decision) -> str:
    if decision.vetoed:
        return "N"
    return "Y*" if any(severity(c) >= Severity.WARNING for c in decision.codes) else "Y"


def _blocking_codes(decision: Decision) -> list[str]:
    return [c for c in decision.codes if severity(c) is Severity.BLOCKING]


def compute(profiles: dict[str, HostProfile], generation: str
            ) -> list[tuple[str, str, Decision]]:
    cells = []
    guests = {name: GuestState.booted_on(p) for name, p in profiles.items()}
    for source in profiles:
        for destination, profile in profiles.items():
            cells.append((source, destination, decide(guests[source], profile, generation)))
    return cells


def render_json(names: list[str], cells: list[tuple[str, str, Decision]]) -> str:
    out: dict[str, Any] = {
        "profiles": names,
        "cells": [{"source": s, "destination": d, "verdict": dec.verdict,
                   "codes": [c for c in dec.codes if severity(c) >= Severity.WARNING]}
                  for s, d, dec in cells],
    }
    return json.dumps(out, indent=1) + "\n"


def render_grid(names: list[str], cells: list[tuple[str, str, Decision]], generation: str,
                markdown: bool) -> str:
    marks = {(s, d): _cell_mark(dec) for s, d, dec in cells}
    lines = [f"Source (rows) -> destination (columns), guest booted on the source with -cpu "
             f"host, destination QEMU {generation}.",
             "Y = allowed, Y* = allowed with warnings, N = vetoed (QEMU or the destination "
             "kernel would fail it after copying all memory).", ""]
    if markdown:
        lines.append("| src \\ dst | " + " | ".join(names) + " |")
        lines.append("|---" * (len(names) + 1) + "|")
        for s in names:
            lines.append(f"| {s} | " + " | ".join(marks[(s, d)] for d in names) + " |")
    else:
        # Numbered columns keep the grid narrow; the rows carry the names.
        width = max(len(n) for n in names) + 5
        col = len(str(len(names))) + 3
        lines.append(" " * width + "".join(str(i).rjust(col) for i in range(1, len(names) + 1)))
        for i, s in enumerate(names, 1):
            lines.append(f"{i:>2} {s}".ljust(width)
                         + "".join(marks[(s, d)].rjust(col) for d in names))
    lines += ["", "Why not (blocking codes):"]
    bullet = "- " if markdown else "  "
    for s, d, dec in cells:
        if dec.vetoed:
            lines.append(f"{bullet}{s} -> {d}: {', '.join(_blocking_codes(dec))}")
    one_way = [(s, d) for s, d, dec in cells if not dec.vetoed and dec.one_way]
    if one_way:
        lines += ["", "One-way moves (WORKAROUND levels rise; no way back until a cold boot):"]
        lines += [f"{bullet}{s} -> {d}" for s, d in one_way]
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace, env: Environment) -> ExitStatus:
    try:
        if args.profiles:
            names = [p.stem for p in args.profiles]
            if len(set(names)) != len(names):
                raise ProfileError("two profiles have the same file name")
            profiles = {p.stem: load_profile(p) for p in args.profiles}
        else:
            profiles = {name: load_profile(path) for name, path in bundled_profiles().items()}
    except ProfileError as exc:
        env.error(str(exc))
        return ExitStatus.BAD_INPUT
    names = list(profiles)
    cells = compute(profiles, args.qemu)
    if args.format == "json":
        env.write_out(render_json(names, cells))
    else:
        env.write_out(render_grid(names, cells, args.qemu, args.format == "markdown"))
    return ExitStatus.OK
