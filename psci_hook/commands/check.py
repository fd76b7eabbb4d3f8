"""psci-hook check: the hook's decision, offline, from files."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from psci_hook.commands._common import InputError, features_arg, guest_from_profile, read_domain
from psci_hook.domainxml import requested_features
from psci_hook.engine import decide
from psci_hook.environment import Environment
from psci_hook.profile import ProfileError, load_profile, qemu_generation_for_version
from psci_hook.record import RecordError, read_record
from psci_hook.report import decision_text
from psci_hook.status import ExitStatus

HELP = ("decide offline whether a guest can migrate to a host "
        "(exit 0 allow, 1 veto, 2 bad input)")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host-profile", type=Path, required=True, metavar="FILE",
                        help="the destination's host profile (JSON)")
    guest = parser.add_mutually_exclusive_group(required=True)
    guest.add_argument("--guest-profile", type=Path, metavar="FILE",
                       help="the guest's state in the profile format")
    guest.add_argument("--domain-xml", type=Path, metavar="FILE",
                       help="a domain XML whose <metadata> carries a psci-hook record")
    parser.add_argument("--features", type=features_arg, metavar="SET",
                        help="vCPU features for --guest-profile: none or e.g. pmu+pauth+sve "
                        "(default: the profile's only or fullest list)")
    gen = parser.add_mutually_exclusive_group()
    gen.add_argument("--qemu-version", metavar="X.Y",
                     help="the destination QEMU's version, when the profile does not say")
    gen.add_argument("--qemu", choices=("legacy", "tolerant"),
                     help="the destination QEMU's generation, overriding the profile")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--verbose", action="store_true", help="show informational findings")


def run(args: argparse.Namespace, env: Environment) -> ExitStatus:
    destination_features = None
    try:
        destination = load_profile(args.host_profile)
        if args.guest_profile is not None:
            guest = guest_from_profile(load_profile(args.guest_profile), args.features,
                                       str(args.guest_profile))
        else:
            _, domain = read_domain(args.domain_xml)
            try:
                record = read_record(domain.root)
            except RecordError as exc:
                raise InputError(f"{args.domain_xml}: invalid psci-hook record: {exc}") from None
            if record is None:
                raise InputError(f"{args.domain_xml}: the domain carries no psci-hook record")
            guest = record.state
            # The vCPU the destination's QEMU creates for this domain (as the hook decides).
            destination_features = requested_features(domain, destination.default_features())
        generation = args.qemu
        if generation is None and args.qemu_version and destination.qemu_version is None \
                and destination.qemu_generation is None:
            try:
                generation = qemu_generation_for_version(args.qemu_version)
            except ValueError:
                raise InputError(f"--qemu-version {args.qemu_version!r} is not X.Y") from None
    except (ProfileError, InputError) as exc:
        env.error(str(exc))
        return ExitStatus.BAD_INPUT
    decision = decide(guest, destination, generation, destination_features=destination_features)
    if args.json:
        env.write_out(json.dumps(decision.to_dict(), indent=1) + "\n")
    else:
        env.write_out(decision_text(decision, verbose=args.verbose))
    return ExitStatus.VETO if decision.vetoed else ExitStatus.OK
