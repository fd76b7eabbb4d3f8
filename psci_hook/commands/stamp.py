"""psci-hook stamp: print a domain XML carrying a guest record for a given guest state."""

from __future__ import annotations

import argparse
import socket
import time
from pathlib import Path

from psci_hook.commands._common import InputError, features_arg, guest_from_profile, read_domain
from psci_hook.domainxml import psci_version_override, requested_features
from psci_hook.environment import Environment
from psci_hook.profile import ProfileError, load_profile
from psci_hook.record import GuestRecord, Origin, RecordError, read_record, record_xml
from psci_hook.splice import SpliceError, splice_record
from psci_hook.status import ExitStatus

HELP = ("print DOMAIN-XML with a psci-hook record of the guest state in GUEST-PROFILE "
        "(as if the guest had booted on that host)")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--guest-profile", type=Path, required=True, metavar="FILE",
                        help="the guest's state: the profile of the host it booted on")
    parser.add_argument("--domain-xml", type=Path, required=True, metavar="FILE")
    parser.add_argument("--features", type=features_arg, metavar="SET",
                        help="vCPU features (default: from the domain XML and the profile)")
    parser.add_argument("--host", default=None, help="the origin host's name (default: this "
                        "host's name, or the profile's hostname)")


def run(args: argparse.Namespace, env: Environment) -> ExitStatus:
    try:
        profile = load_profile(args.guest_profile)
        data, domain = read_domain(args.domain_xml)
        features = args.features
        if features is None:
            features = requested_features(domain, profile.default_features())
        state = guest_from_profile(profile, features, str(args.guest_profile),
                                   psci_version_override(domain))
        try:
            old = read_record(domain.root)
        except RecordError:
            old = None  # stamping replaces a broken record
        host = args.host or str(profile.extra.get("hostname") or socket.gethostname())
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(env.clock()))
        record = GuestRecord(state, Origin("stamped", host, profile.kernel_release, now),
                             history=old.history if old else (),
                             override=old.override if old else None)
        output = splice_record(data, lambda indent: record_xml(record, indent)).data
    except (ProfileError, InputError, SpliceError) as exc:
        env.error(str(exc))
        return ExitStatus.BAD_INPUT
    env.stdout.write(output)
    return ExitStatus.OK
