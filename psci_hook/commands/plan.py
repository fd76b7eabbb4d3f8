"""psci-hook plan: what giving some hosts of a fleet a new profile (a kernel, QEMU or firmware
upgrade) does to migrations.

Hosts are grouped into classes: the same profile before and the same after the change. For
every pair of classes where one side changes, the verdict for a guest freshly booted on the
source (as ``matrix`` does: its own vCPU, no domain XML) before and after; and for each guest
given, the hosts it can go to before and after, with the vCPU its domain XML asks for on each
(as ``where`` and ``check --domain-xml`` do). Every verdict is ``check``'s, once per distinct
(guest state, vCPU request, profile).
"""

from __future__ import annotations

import argparse
import fnmatch
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from psci_hook.commands._common import InputError
from psci_hook.commands._fleet import (
    guests_from_directory,
    guests_from_libvirt,
    load_change_profile,
    load_fleet,
)
from psci_hook.environment import Environment
from psci_hook.fleet import (
    Decider,
    Fleet,
    Guest,
    Plan,
    Verdict,
    first_hosts,
    plan,
    profile_label,
    remedy_note,
)
from psci_hook.profile import HostProfile
from psci_hook.status import ExitStatus
from psci_hook.vocab import QemuGeneration

HELP = ("what changing some hosts' profiles (an upgrade) does: host pairs whose verdict "
        "changes, guests that lose destinations or are left with none, new one-way moves")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--fleet", type=Path, required=True, metavar="DIR",
                        help="the fleet directory: one HOST.json profile per host")
    parser.add_argument("--change", nargs="+", action="extend", required=True,
                        metavar="HOST=PROFILE",
                        help="host HOST gets the profile in file PROFILE; HOST may be a "
                        "shell-style pattern ('host-0*')")
    guests = parser.add_mutually_exclusive_group()
    guests.add_argument("--guests", type=Path, metavar="DIR",
                        help="a directory of domain XML files (*.xml) with psci-hook records")
    guests.add_argument("--uri", nargs="+", action="extend", metavar="URI",
                        help="the running guests of these libvirt URIs")
    parser.add_argument("--qemu", choices=tuple(QemuGeneration),
                        help="every destination QEMU's generation, overriding the profiles")
    parser.add_argument("--format", choices=("text", "markdown", "json"), default="text")


def parse_changes(specs: Sequence[str], fleet: Fleet) -> dict[str, tuple[str, HostProfile]]:
    """``HOST=PROFILE`` arguments as host -> (identity, profile); every pattern must match."""
    changes: dict[str, tuple[str, HostProfile]] = {}
    loaded: dict[str, tuple[str, HostProfile]] = {}
    for spec in specs:
        pattern, sep, path = spec.partition("=")
        if not sep or not pattern or not path:
            raise InputError(f"--change {spec!r}: expected HOST=PROFILE")
        hosts = fnmatch.filter(fleet.hosts, pattern)
        if not hosts:
            raise InputError(f"--change {spec!r}: no host of the fleet matches {pattern!r}")
        if path not in loaded:
            loaded[path] = load_change_profile(Path(path))
        for host in hosts:
            if host in changes and changes[host][0] != loaded[path][0]:
                raise InputError(f"--change: host {host} is given two different profiles")
            changes[host] = loaded[path]
    return changes


def run(args: argparse.Namespace, env: Environment) -> ExitStatus:
    guests: list[Guest] = []
    skipped: list[str] = []
    try:
        before = load_fleet(args.fleet)
        after = before.changed(parse_changes(args.change, before))
        if args.guests is not None:
            guests, skipped = guests_from_directory(args.guests, env.stdin)
        elif args.uri:
            from psci_hook.libvirt_client import LibvirtUnavailable

            try:
                guests, skipped = guests_from_libvirt(args.uri)
            except LibvirtUnavailable as exc:
                env.error(str(exc))
                return ExitStatus.LIBVIRT_UNAVAILABLE
    except InputError as exc:
        env.error(str(exc))
        return ExitStatus.BAD_INPUT
    result = plan(before, after, guests, Decider(args.qemu))
    given = args.guests is not None or bool(args.uri)
    if args.format == "json":
        env.write_out(json.dumps(to_json(result, skipped), indent=1) + "\n")
    else:
        env.write_out(render(result, skipped, given, markdown=args.format == "markdown"))
    return ExitStatus.OK


def _class_id(index: int) -> str:
    return f"C{index + 1}"


def verdict_text(verdict: Verdict) -> str:
    if verdict.allowed:
        return "allow, one-way" if verdict.one_way else "allow"
    return f"veto {' '.join(verdict.blocking_codes)}{remedy_note(verdict.remedy)}"


def _count(n: int, what: str) -> str:
    return f"{n} {what}" + ("" if n == 1 else "s")


def _hosts_text(result: Plan, index: int) -> str:
    return f"{_class_id(index)} ({_count(len(result.classes[index].hosts), 'host')})"


def render(result: Plan, skipped: list[str], guests_given: bool, markdown: bool) -> str:
    changed = [c for c in result.classes if c.changed]
    moved = sum(len(c.hosts) for c in changed)
    bullet = "- " if markdown else "  "
    head = "## " if markdown else ""
    lines = [f"{head}Plan: {moved} of {len(result.before.hosts)} hosts change profile", ""]
    lines.append(f"{head}Host classes (the same profile before and after)" if markdown
                 else "Host classes (the same profile before and after):")
    if markdown:
        lines += ["", "| class | profile | hosts |", "|---|---|---|"]
    for index, cls in enumerate(result.classes):
        label = result.class_label(index)
        hosts = f"{len(cls.hosts)}: {first_hosts(cls.hosts)}"
        lines.append(f"| {_class_id(index)} | {label} | {hosts} |" if markdown
                     else f"  {_class_id(index):4} {label}  [{hosts}]")

    lines += ["", f"{head}Host pairs whose verdict changes "
              "(a guest freshly booted on the source, -cpu host)" + ("" if markdown else ":")]
    if markdown:
        lines.append("")
    if not result.pairs:
        lines.append(f"{bullet}none")
    elif markdown:
        lines += ["| source | destination | host pairs | before | after |", "|---|---|---|---|---|"]
    for pair in result.pairs:
        src, dst = _class_id(pair.source), _class_id(pair.destination)
        was, now = verdict_text(pair.before), verdict_text(pair.after)
        lines.append(f"| {src} | {dst} | {pair.pairs} | {was} | {now} |" if markdown
                     else f"  {src} -> {dst}  ({_count(pair.pairs, 'host pair')}): {was}  =>  "
                          f"{now}")

    if guests_given:
        lines += _guest_lines(result, skipped, bullet, head, markdown)
    return "\n".join(lines) + "\n"


def _guest_lines(result: Plan, skipped: list[str], bullet: str, head: str, markdown: bool
                 ) -> list[str]:
    lines = ["", f"{head}Guests: {len(result.guests)} judged, {len(skipped)} not"
             + ("" if markdown else ":")]
    losing = [g for g in result.guests if g.lost]
    stranded = [g for g in result.guests if g.stranded]
    one_way = [g for g in result.guests if g.new_one_way]
    sections: list[tuple[str, list[str]]] = [
        ("lose destinations", [
            f"{g.name}: {g.destinations_before} -> {g.destinations_after} hosts; loses "
            + "; ".join(f"{_hosts_text(result, i)}: {' '.join(v.blocking_codes)}"
                        + remedy_note(v.remedy)
                        for i, v in g.lost)
            for g in losing]),
        ("left with no destination", [
            f"{g.name}" + (" (had none before either)" if g.destinations_before == 0 else "")
            for g in stranded]),
        ("new one-way moves", [
            f"{g.name}: to " + ", ".join(_hosts_text(result, i) for i in g.new_one_way)
            for g in one_way]),
        ("not judged", skipped),
    ]
    for title, items in sections:
        lines.append(f"{bullet}{title}: {len(items) if items else 'none'}")
        lines += [("  - " if markdown else "      ") + item for item in items]
    return lines


def to_json(result: Plan, skipped: list[str]) -> dict[str, Any]:
    profiles: dict[str, Any] = {}
    for fleet in (result.before, result.after):
        for identity, profile in fleet.profiles.items():
            profiles[identity] = {"label": profile_label(profile, identity),
                                  "kernel_release": profile.kernel_release}
    return {
        "profiles": profiles,
        "classes": [{"class": _class_id(i), "before": c.before, "after": c.after,
                     "changed": c.changed, "hosts": list(c.hosts)}
                    for i, c in enumerate(result.classes)],
        "pairs": [{"source": _class_id(p.source), "destination": _class_id(p.destination),
                   "host_pairs": p.pairs, "before": p.before.to_dict(),
                   "after": p.after.to_dict()} for p in result.pairs],
        "guests": [{"domain": g.name, "destinations_before": g.destinations_before,
                    "destinations_after": g.destinations_after, "stranded": g.stranded,
                    "lost": [{"class": _class_id(i), "hosts": len(result.classes[i].hosts),
                              "after": v.to_dict()} for i, v in g.lost],
                    "new_one_way": [_class_id(i) for i in g.new_one_way]}
                   for g in result.guests],
        "skipped": skipped,
    }
