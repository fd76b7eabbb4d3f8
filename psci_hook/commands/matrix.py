"""psci-hook matrix: which source -> destination host pairs a freshly booted guest survives.

For each source profile, the guest is the one -cpu host gives there (every vCPU feature the
source supports); for each destination, the engine decides. There is no domain XML, so each
destination is judged with the guest's own vCPU (its features, SVE lengths and PSCI 0.1 or
not: engine.decide without ``vcpu``), not with what a domain asks for there (``where``,
``plan``'s guests and ``check --domain-xml`` judge that). Readable as a text or markdown grid
with the reasons below it, or as JSON.
"""

from __future__ import annotations

import argparse
import functools
import html
import json
from pathlib import Path
from typing import Any

from psci_hook.codes import Severity, severity
from psci_hook.engine import Decision, GuestState, decide
from psci_hook.environment import Environment
from psci_hook.fleet import movable_with_psci, profile_identity, remedy_note
from psci_hook.profile import HostProfile, ProfileError, bundled_profiles, load_profile
from psci_hook.report import veto_reason
from psci_hook.status import ExitStatus
from psci_hook.vocab import QemuGeneration

HELP = ("every source x destination pair of host profiles, for a guest freshly booted on the "
        "source (default: the bundled profiles)")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("profiles", nargs="*", type=Path, metavar="PROFILE",
                        help="host profile files (default: the profiles bundled with psci-hook)")
    parser.add_argument("--qemu", choices=tuple(QemuGeneration), default="legacy",
                        help="the destination QEMU generation (default: legacy)")
    parser.add_argument("--format", choices=("text", "markdown", "json", "html"), default="text",
                        help="html: a self-contained page, identical profiles grouped")


Cell = tuple[str, str, Decision]
# (source, destination) -> the kvm-psci-version setting that makes a refused pair work.
Remedies = dict[tuple[str, str], str]


def _cell_mark(decision: Decision, remedy: str | None = None) -> str:
    if decision.vetoed:
        return "Y(psci)" if remedy else "N"
    return "Y*" if any(severity(c) >= Severity.WARNING for c in decision.codes) else "Y"


def _blocking_codes(decision: Decision) -> list[str]:
    return [c for c in decision.codes if severity(c) is Severity.BLOCKING]


def _warning_codes(decision: Decision) -> list[str]:
    return list(dict.fromkeys(c for c in decision.codes
                              if severity(c) is Severity.WARNING))


def _decide_on(profile: HostProfile, generation: str, guest: GuestState) -> Decision:
    return decide(guest, profile, generation)


def compute(profiles: dict[str, HostProfile], generation: str) -> tuple[list[Cell], Remedies]:
    """Every pair's decision, and the refused pairs a guest booted on the source with
    kvm-psci-version set to the destination's highest would pass (fleet.movable_with_psci)."""
    cells = []
    remedies: Remedies = {}
    guests = {name: GuestState.booted_on(p) for name, p in profiles.items()}
    for source in profiles:
        for destination, profile in profiles.items():
            decision = decide(guests[source], profile, generation)
            cells.append((source, destination, decision))
            if decision.vetoed:
                remedy = movable_with_psci(guests[source], decision,
                                           functools.partial(_decide_on, profile, generation))
                if remedy:
                    remedies[(source, destination)] = remedy
    return cells, remedies


def render_json(names: list[str], cells: list[Cell], remedies: Remedies) -> str:
    out: dict[str, Any] = {
        "profiles": names,
        "cells": [{"source": s, "destination": d, "verdict": dec.verdict,
                   "codes": [c for c in dec.codes if severity(c) >= Severity.WARNING],
                   **({"remedy": remedies[(s, d)]} if (s, d) in remedies else {})}
                  for s, d, dec in cells],
    }
    return json.dumps(out, indent=1) + "\n"


def render_grid(names: list[str], cells: list[Cell], remedies: Remedies, generation: str,
                markdown: bool) -> str:
    marks = {(s, d): _cell_mark(dec, remedies.get((s, d))) for s, d, dec in cells}
    lines = [f"Source (rows) -> destination (columns), guest booted on the source with -cpu "
             f"host, destination QEMU {generation}.",
             "Y = allowed, Y* = allowed with warnings, N = vetoed: QEMU or the destination "
             "kernel would fail it (the codes below say how); Y(psci) = vetoed, but allowed "
             "for a guest booted with the kvm-psci-version below (QEMU 11.x on the source).",
             ""]
    if markdown:
        lines.append("| src \\ dst | " + " | ".join(names) + " |")
        lines.append("|---" * (len(names) + 1) + "|")
        for s in names:
            lines.append(f"| {s} | " + " | ".join(marks[(s, d)] for d in names) + " |")
    else:
        # Numbered columns keep the grid narrow; the rows carry the names.
        width = max(len(n) for n in names) + 5
        col = max(len(str(len(names))) + 3, max(map(len, marks.values())) + 1)
        lines.append(" " * width + "".join(str(i).rjust(col) for i in range(1, len(names) + 1)))
        for i, s in enumerate(names, 1):
            lines.append(f"{i:>2} {s}".ljust(width)
                         + "".join(marks[(s, d)].rjust(col) for d in names))
    bullet = "- " if markdown else "  "
    vetoed = [(s, d, dec) for s, d, dec in cells if dec.vetoed]
    if vetoed:
        lines += ["", "Why not (blocking codes):"]
        lines += [f"{bullet}{s} -> {d}: {', '.join(_blocking_codes(dec))}"
                  + remedy_note(remedies.get((s, d)))
                  for s, d, dec in vetoed]
    warned = [(s, d, dec) for s, d, dec in cells if marks[(s, d)] == "Y*"]
    if warned:
        lines += ["", "Why Y* (warning codes; the README's table of finding codes says what "
                  "each means):"]
        lines += [f"{bullet}{s} -> {d}: {', '.join(_warning_codes(dec))}"
                  for s, d, dec in warned]
    one_way = [(s, d) for s, d, dec in cells if not dec.vetoed and dec.one_way]
    if one_way:
        lines += ["", "One-way moves (WORKAROUND levels rise; no way back until a cold boot):"]
        lines += [f"{bullet}{s} -> {d}" for s, d in one_way]
    return "\n".join(lines) + "\n"


def group_identical(profiles: dict[str, HostProfile]) -> list[list[str]]:
    """Profile names grouped by identical content (fleet.profile_identity), in first-seen
    order: a fleet's thousands of hosts run a few dozen distinct profiles."""
    groups: dict[str, list[str]] = {}
    for name, profile in profiles.items():
        groups.setdefault(profile_identity(profile.to_dict()), []).append(name)
    return list(groups.values())


_HTML_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #1b1b1b; background: #fff; }
h1 { font-size: 1.3em; margin: 0 0 .3em; }
p.note { margin: .2em 0 1em; color: #444; }
table.matrix { border-collapse: collapse; }
table.matrix th, table.matrix td { border: 1px solid #999; padding: 3px 6px; text-align: center; }
table.matrix th { background: #eceff1; font-weight: 600; white-space: nowrap; }
table.matrix th.corner { font-weight: normal; font-size: .85em; }
td a { color: inherit; text-decoration: none; display: block; }
td .mark { font-weight: 700; font-size: 1.05em; }
th .codes, td .codes { display: block; font-weight: normal; font-size: .7em; line-height: 1.15; }
.allow { background: #a5d6a7; }
.warn { background: #fff59d; }
.oneway { background: #90caf9; }
.veto { background: #ef9a9a; }
.psci { background: #ffcc80; }
.legend span.swatch { display: inline-block; width: 1.4em; height: 1em; border: 1px solid #777;
  vertical-align: middle; margin: 0 .3em 0 1em; }
ol.reasons li { margin: .3em 0; }
ol.reasons ul { margin: .1em 0; padding-left: 1.2em; font-size: .9em; }
.muted { color: #555; font-size: .85em; }
"""

_KINDS = (
    ("allow", "Y", "allowed, nothing to note"),
    ("warn", "Y*", "allowed with warnings"),
    ("oneway", "Y*", "allowed, one-way: WORKAROUND levels rise, no way back until a cold boot"),
    ("psci", "Y(psci)", "vetoed, but allowed for a guest booted with the kvm-psci-version "
     "named (QEMU 11.x on the source)"),
    ("veto", "N", "vetoed: QEMU or the destination kernel would fail it after copying all "
     "memory"),
)


def _cell_kind(decision: Decision, remedy: str | None = None) -> str:
    if decision.vetoed:
        return "psci" if remedy else "veto"
    if decision.one_way:
        return "oneway"
    return "warn" if _cell_mark(decision) != "Y" else "allow"


def render_html(groups: list[list[str]], profiles: dict[str, HostProfile],
                cells: list[Cell], remedies: Remedies, generation: str) -> str:
    """One page, no scripts and no network resources (its Content-Security-Policy refuses
    them): the grid coloured by verdict, one row and column per group of identical profiles,
    each cell's codes, every reason listed below the grid, and a legend."""
    esc = html.escape
    label = {names[0]: names[0] + (f" (+{len(names) - 1})" if len(names) > 1 else "")
             for names in groups}
    members = {names[0]: ", ".join(names) for names in groups}
    order = [names[0] for names in groups]
    by_pair = {(s, d): dec for s, d, dec in cells}
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
           'style-src \'unsafe-inline\'">',
           "<title>psci-hook migration matrix</title>",
           f"<style>{_HTML_STYLE}</style></head><body>",
           "<h1>psci-hook migration matrix</h1>",
           f'<p class="note">Source (rows) to destination (columns), a guest booted on the '
           f"source with -cpu host, destination QEMU {esc(generation)}. "
           f"{sum(len(g) for g in groups)} profiles, {len(groups)} distinct; identical "
           "profiles share a row and a column.</p>",
           '<p class="legend">' + "".join(
               f'<span class="swatch {kind}"></span>{esc(mark)} {esc(text)}'
               for kind, mark, text in _KINDS) + "</p>",
           '<table class="matrix"><tr><th class="corner">source \\ destination</th>']
    out += [f'<th title="{esc(members[d])}">{esc(label[d])}<span class="codes">'
            f"{esc(profiles[d].kernel_release)}</span></th>" for d in order]
    out.append("</tr>")
    reasons: list[str] = []
    for s in order:
        out.append(f'<tr><th title="{esc(members[s])}">{esc(label[s])}<span class="codes">'
                   f"{esc(profiles[s].kernel_release)}</span></th>")
        for d in order:
            decision = by_pair[(s, d)]
            remedy = remedies.get((s, d))
            kind = _cell_kind(decision, remedy)
            shown = [c for c in decision.codes if severity(c) >= Severity.WARNING]
            codes = (_blocking_codes(decision) if decision.vetoed else shown)
            anchor = f"r{order.index(s)}-{order.index(d)}"
            link = f'<a href="#{anchor}">' if shown else "<a>"
            title = f"{s} -> {d}: {decision.verdict}" + (" (reasons below)" if shown else "")
            out.append(f'<td class="{kind}" title="{esc(title)}">{link}'
                       f'<span class="mark">{esc(_cell_mark(decision, remedy))}</span>'
                       f'<span class="codes">{esc(" ".join(codes))}</span></a></td>')
            if shown:
                items = "".join(f"<li><b>{esc(f.code)}</b> {esc(veto_reason(f))}</li>"
                                for f in decision.findings if f.severity >= Severity.WARNING)
                if remedy:
                    items += f"<li>movable with <b>{esc(remedy)}</b> at the guest's boot</li>"
                reasons.append(f'<li id="{anchor}" class="{kind}-text"><b>{esc(s)} &rarr; '
                               f"{esc(d)}</b>: {esc(decision.verdict)}<ul>{items}</ul></li>")
        out.append("</tr>")
    out.append("</table>")
    grouped = [names for names in groups if len(names) > 1]
    if grouped:
        out.append("<h2>Identical profiles</h2><ul>")
        out += [f"<li>{esc(names[0])}: {esc(', '.join(names))}</li>" for names in grouped]
        out.append("</ul>")
    out.append("<h2>Reasons</h2>")
    out.append(f'<ol class="reasons">{"".join(reasons)}</ol>' if reasons
               else '<p class="muted">Every pair is allowed without warnings.</p>')
    out.append("</body></html>")
    return "\n".join(out) + "\n"


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
    if args.format == "html":
        groups = group_identical(profiles)
        distinct = {names[0]: profiles[names[0]] for names in groups}
        env.write_out(render_html(groups, distinct, *compute(distinct, args.qemu), args.qemu))
        return ExitStatus.OK
    names = list(profiles)
    cells, remedies = compute(profiles, args.qemu)
    if args.format == "json":
        env.write_out(render_json(names, cells, remedies))
    else:
        env.write_out(render_grid(names, cells, remedies, args.qemu, args.format == "markdown"))
    return ExitStatus.OK
