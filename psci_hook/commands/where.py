"""psci-hook where: every host of a fleet a guest can move to now, and why not the others.

The guest is its record (from a domain XML file, stdin, or libvirt); each host's verdict is
what ``psci-hook check --host-profile HOST.json --domain-xml`` says, decided once per distinct
profile of the fleet.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from psci_hook.commands._common import InputError
from psci_hook.commands._fleet import (
    GuestSkipped,
    domain_from_libvirt,
    guest_from_xml,
    load_fleet,
    read_xml_file,
)
from psci_hook.environment import Environment
from psci_hook.fleet import Decider, HostVerdict, Verdict, remedy_note, where
from psci_hook.status import ExitStatus
from psci_hook.vocab import QemuGeneration

HELP = ("every host of a fleet directory a guest can migrate to now, the blocking codes for "
        "the others (exit 0 some host can take it, 1 none, 2 bad input)")


def configure(parser: argparse.ArgumentParser) -> None:
    guest = parser.add_mutually_exclusive_group(required=True)
    guest.add_argument("--domain-xml", type=Path, metavar="FILE",
                       help="a domain XML carrying a psci-hook record ('-': standard input)")
    guest.add_argument("--domain", metavar="NAME",
                       help="a libvirt domain (its live XML if it runs, else its definition)")
    parser.add_argument("--uri", metavar="URI", help="the libvirt URI for --domain")
    parser.add_argument("--fleet", type=Path, required=True, metavar="DIR",
                        help="the fleet directory: one HOST.json profile per host")
    parser.add_argument("--qemu", choices=tuple(QemuGeneration),
                        help="every destination QEMU's generation, overriding the profiles")
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def run(args: argparse.Namespace, env: Environment) -> ExitStatus:
    if args.uri is not None and args.domain is None:
        env.error("usage: --uri goes with --domain")
        return ExitStatus.BAD_INPUT
    try:
        if args.domain is not None:
            from psci_hook.libvirt_client import LibvirtUnavailable

            try:
                data = domain_from_libvirt(args.domain, args.uri)
            except LibvirtUnavailable as exc:
                env.error(str(exc))
                return ExitStatus.LIBVIRT_UNAVAILABLE
            origin = args.domain
        else:
            data = read_xml_file(args.domain_xml, env.stdin)
            origin = "standard input" if str(args.domain_xml) == "-" else str(args.domain_xml)
        try:
            guest = guest_from_xml(data, origin)
        except GuestSkipped as exc:
            raise InputError(str(exc)) from None
        fleet = load_fleet(args.fleet)
    except InputError as exc:
        env.error(str(exc))
        return ExitStatus.BAD_INPUT
    verdicts = where(guest.state, fleet, Decider(args.qemu), guest.vcpu)
    if args.json:
        env.write_out(render_json(guest.name, verdicts))
    else:
        env.write_out(render_text(guest.name, verdicts))
    return ExitStatus.OK if any(hv.verdict.allowed for hv in verdicts) else ExitStatus.VETO


def render_json(name: str, verdicts: list[HostVerdict]) -> str:
    """One host per line: readable, and fast for 10,000 hosts (json's indent= takes the
    pure-Python encoder, a second for them; each distinct verdict is encoded once)."""
    encoded: dict[Verdict, str] = {}
    for hv in verdicts:
        if hv.verdict not in encoded:
            encoded[hv.verdict] = json.dumps(hv.verdict.to_dict())[1:]
    hosts = ",\n  ".join(f'{{"host": {json.dumps(hv.host)}, {encoded[hv.verdict]}'
                          for hv in verdicts)
    return f'{{"domain": {json.dumps(name)},\n "hosts": [\n  {hosts}\n ]}}\n'


def render_text(name: str, verdicts: list[HostVerdict]) -> str:
    allowed = [hv for hv in verdicts if hv.verdict.allowed]
    lines = [f"{name}: {len(allowed)} of {len(verdicts)} hosts can take it now."]
    width = max(len(hv.host) for hv in verdicts)
    for hv in verdicts:
        verdict = hv.verdict
        if verdict.allowed:
            note = "  one-way: WORKAROUND levels rise (WA_RATCHET), no way back until a " \
                   "cold boot" if verdict.one_way else ""
            lines.append(f"  allow  {hv.host.ljust(width)}{note}".rstrip())
        else:
            lines.append(f"  veto   {hv.host.ljust(width)}  "
                         f"{', '.join(verdict.blocking_codes)}{remedy_note(verdict.remedy)}")
    return "\n".join(lines) + "\n"
