"""psci-hook stamp: print a domain XML carrying a guest record for a given guest state."""

from __future__ import annotations

import argparse
import socket
from pathlib import Path

from psci_hook.cache import write_atomic
from psci_hook.commands._common import (
    InputError,
    features_arg,
    guest_from_profile,
    read_domain,
    resolve_profile,
)
from psci_hook.domainxml import Domain, requested_vcpu
from psci_hook.environment import Environment
from psci_hook.profile import FEATURE_ORDER, FeatureSet, ProfileError, load_profile
from psci_hook.record import GuestRecord, Origin, OriginEvent, RecordError, read_record, record_xml
from psci_hook.splice import SpliceError, splice_record
from psci_hook.status import ExitStatus
from psci_hook.thishost import utc_now

HELP = ("print DOMAIN-XML with a psci-hook record of the guest state in GUEST-PROFILE "
        "(as if the guest had booted on that host)")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--guest-profile", required=True, metavar="FILE|NAME",
                        help="the guest's state: the profile of the host it booted on (a file "
                        "or a bundled profile name, `psci-hook profiles`)")
    parser.add_argument("--domain-xml", type=Path, required=True, metavar="FILE")
    parser.add_argument("--features", type=features_arg, metavar="SET",
                        help="vCPU features (default: from the domain XML and the profile)")
    parser.add_argument("--host", default=None, help="the origin host's name (default: this "
                        "host's name, or the profile's hostname)")
    parser.add_argument("--in-place", action="store_true",
                        help="rewrite DOMAIN-XML (atomically) instead of printing the result")


def run(args: argparse.Namespace, env: Environment) -> ExitStatus:
    try:
        profile = load_profile(resolve_profile(args.guest_profile))
        data, domain = read_domain(args.domain_xml)
        if not (domain.is_aarch64 or domain.is_aarch32):
            raise InputError(f"{args.domain_xml}: the domain's architecture is "
                             f"{domain.arch or 'not given'}, not aarch64 or armv7l: psci-hook "
                             "records arm64 KVM guests only")
        if domain.is_aarch32 and not profile.runs_aarch32():
            raise InputError(f"{args.domain_xml}: a 32-bit guest (armv7l: -cpu host,aarch64=off),"
                             f" and {args.guest_profile} has no 32-bit vCPU (its host has no "
                             "32-bit EL1, or an older psci-hook probed it)")
        vcpu = requested_vcpu(domain, profile.default_features())
        features = args.features
        if features is None:
            required = required_features(domain)
            missing = required - profile.default_features()
            if missing:
                raise InputError(
                    f"{args.domain_xml}: the domain requires vCPU feature(s) "
                    f"{', '.join(sorted(missing))}, which {args.guest_profile} does not offer "
                    f"(it has: {', '.join(sorted(profile.cpreg_lists or {})) or 'no lists'}): "
                    "QEMU would not start it there; name them with --features to stamp anyway")
            features = vcpu.features
        state = guest_from_profile(profile, features, str(args.guest_profile),
                                   vcpu.psci_version, vcpu.sve_lengths)
        try:
            old = read_record(domain.root)
        except RecordError:
            old = None  # stamping replaces a broken record
        host = args.host or str(profile.extra.get("hostname") or socket.gethostname())
        now = utc_now(env)
        record = GuestRecord(state, Origin(OriginEvent.STAMPED, host, profile.kernel_release, now),
                             history=old.history if old else (),
                             override=old.override if old else None)
        output = splice_record(data, lambda indent: record_xml(record, indent)).data
    except (ProfileError, InputError, SpliceError) as exc:
        env.error(str(exc))
        return ExitStatus.BAD_INPUT
    if args.in_place:
        try:
            write_atomic(args.domain_xml, output, args.domain_xml.stat().st_mode & 0o7777)
        except OSError as exc:
            env.error(f"{args.domain_xml}: cannot write: {exc.strerror or exc}")
            return ExitStatus.BAD_INPUT
        return ExitStatus.OK
    env.stdout.write(output)
    return ExitStatus.OK


def required_features(domain: Domain) -> FeatureSet:
    """The vCPU features the domain XML requires by name (<cpu><feature policy='require'
    name='sve'/>, or 'force'); QEMU refuses to start the guest on a host without them."""
    return frozenset(
        f.get("name", "") for f in domain.root.findall("cpu/feature")
        if f.get("name") in FEATURE_ORDER and f.get("policy", "require") in ("require", "force"))
