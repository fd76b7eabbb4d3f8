"""psci-hook check: what the hook would decide, offline, on a host, with the same exit status.

The decision is the hook's own (psci_hook.hook.decide_hook), under the hook's configuration
(the same file, $PSCI_HOOK_CONFIG, or --config/--no-config): the domain type, the architecture,
the override and the policy count as they do for the hook. The destination is this host (its
boot-time cache, or the configuration's [host] profile, as the hook finds it) unless
--host-profile names another one, a file or a bundled profile.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from psci_hook.commands._common import (
    InputError,
    features_arg,
    guest_from_profile,
    read_domain,
    resolve_profile,
)
from psci_hook.domainxml import MAX_DOMAIN_XML, DomainXMLError, parse_domain
from psci_hook.engine import GuestState
from psci_hook.environment import Environment
from psci_hook.hook import Outcome, decide_hook
from psci_hook.policy import Policy, PolicyReading, read_policy
from psci_hook.profile import ProfileError, load_profile, qemu_generation_for_version
from psci_hook.record import GuestRecord, Origin, OriginEvent, RecordError, read_record, record_xml
from psci_hook.report import decision_text
from psci_hook.splice import splice_record
from psci_hook.status import ExitStatus
from psci_hook.vocab import HookVerdict, QemuGeneration

HELP = ("what the hook would decide for a guest on a host, with the hook's exit status "
        "(0 allow, 1 veto; 2 bad input)")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host-profile", metavar="FILE|NAME",
                        help="the destination: a host profile file or a bundled profile name "
                        "(`psci-hook profiles`); default: this host, as the hook finds it")
    guest = parser.add_mutually_exclusive_group(required=True)
    guest.add_argument("--domain-xml", metavar="FILE",
                       help="a domain XML whose <metadata> carries a psci-hook record; "
                       "- reads it from stdin (virsh dumpxml vm | psci-hook check ...)")
    guest.add_argument("--domain", metavar="NAME",
                       help="a domain of the libvirt daemon at --uri (needs python3-libvirt)")
    guest.add_argument("--guest-profile", metavar="FILE|NAME",
                       help="the guest's state in the profile format: a guest booted there")
    parser.add_argument("--uri", default=None,
                        help="libvirt connection URI for --domain (default: libvirt's default)")
    parser.add_argument("--op", choices=("migrate", "restore"), default="migrate",
                        help="the operation the hook is asked about (default: migrate)")
    parser.add_argument("--features", type=features_arg, metavar="SET",
                        help="vCPU features for --guest-profile: none or e.g. pmu+pauth+sve "
                        "(default: the profile's only or fullest list)")
    config = parser.add_mutually_exclusive_group()
    config.add_argument("--config", type=Path, metavar="FILE",
                        help="the hook's configuration (default: $PSCI_HOOK_CONFIG, else "
                        "/etc/psci-hook/psci-hook.conf)")
    config.add_argument("--no-config", action="store_true",
                        help="every setting at its default")
    gen = parser.add_mutually_exclusive_group()
    gen.add_argument("--qemu-version", metavar="X.Y",
                     help="the destination QEMU's version, when the profile does not say")
    gen.add_argument("--qemu", choices=tuple(QemuGeneration),
                     help="the destination QEMU's generation, overriding the profile")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--verbose", action="store_true",
                        help="every finding, ungrouped, informational ones too")
    parser.add_argument("--quiet", action="store_true",
                        help="print nothing; the exit status says it")


def run(args: argparse.Namespace, env: Environment) -> ExitStatus:
    try:
        reading = _configuration(args, env)
        policy = _policy_for(args, reading.policy)
        name, data = _guest_xml(args, env, policy)
    except (ProfileError, InputError) as exc:
        _fail(args, env, str(exc))
        return ExitStatus.BAD_INPUT
    for problem in reading.messages:  # what the hook would log at every run
        env.error(f"configuration: {problem}")
    try:
        outcome = decide_hook(args.op, data, policy, env)
    except Exception as exc:  # the hook turns this into INTERNAL_ERROR; say what it was
        _fail(args, env, f"the decision failed: {type(exc).__name__}: {exc}")
        return ExitStatus.INTERNAL_ERROR
    if args.json:
        env.write_out(json.dumps(_json(outcome, reading, name), indent=1) + "\n")
    elif not args.quiet:
        env.write_out(_text(outcome, policy, name, args.verbose))
    return outcome.status


def _fail(args: argparse.Namespace, env: Environment, message: str) -> None:
    if args.json:
        env.write_out(json.dumps({"error": message, "exit_status": int(ExitStatus.BAD_INPUT)})
                      + "\n")
    env.error(message)


def _configuration(args: argparse.Namespace, env: Environment) -> PolicyReading:
    if args.no_config:
        return PolicyReading(Policy(), "(no configuration)")
    path = args.config or env.config_path
    if args.config is not None and not path.exists():
        raise InputError(f"{path}: no such configuration file")
    return read_policy(path)


def _policy_for(args: argparse.Namespace, policy: Policy) -> Policy:
    """The hook's policy, pointed at the destination the command was given."""
    if args.host_profile is not None:
        path = resolve_profile(args.host_profile)
        profile = load_profile(path)  # a bad file is bad input here, not the hook's error
        # The rehearsal runs on this host's KVM: it says nothing about another host.
        policy = policy._replace(host_profile=path, rehearse=False)
        if args.qemu_version and profile.qemu_version is None \
                and profile.qemu_generation is None:
            try:
                policy = policy._replace(
                    qemu_generation=qemu_generation_for_version(args.qemu_version))
            except ValueError:
                raise InputError(f"--qemu-version {args.qemu_version!r} is not X.Y") from None
    elif args.qemu_version:
        raise InputError("--qemu-version needs --host-profile (this host's QEMU version is "
                         "cached by `psci-hook refresh`)")
    if args.qemu:
        policy = policy._replace(qemu_generation=args.qemu)
    return policy


def _guest_xml(args: argparse.Namespace, env: Environment, policy: Policy
               ) -> tuple[str, bytes]:
    """The domain XML the hook would be given, and a name for it."""
    if args.guest_profile is not None:
        path = resolve_profile(args.guest_profile)
        guest = guest_from_profile(load_profile(path), args.features, str(path))
        return path.stem, _domain_for(guest, path.stem, policy)
    if args.features is not None:
        raise InputError("--features applies to --guest-profile only (a domain's record "
                         "names its features)")
    if args.domain is not None:
        data = _libvirt_xml(args.domain, args.uri)
        origin = f"domain {args.domain}"
    elif args.domain_xml == "-":
        data = env.stdin.read(MAX_DOMAIN_XML + 1)
        origin = "stdin"
    else:
        data, _ = read_domain(Path(args.domain_xml))
        origin = args.domain_xml
    try:
        domain = parse_domain(data)
        read_record(domain.root)
    except DomainXMLError as exc:
        raise InputError(f"{origin}: {exc}") from None
    except RecordError:
        pass  # an invalid record is the hook's RECORD_INVALID veto, shown as such
    return domain.name, data


def _libvirt_xml(name: str, uri: str | None) -> bytes:
    from psci_hook.libvirt_client import Client, LibvirtCallFailed, LibvirtUnavailable

    try:
        client = Client.open(uri)
    except LibvirtUnavailable as exc:
        raise InputError(str(exc)) from None
    try:
        return client.live_xml(client.lookup(name))
    except (LibvirtUnavailable, LibvirtCallFailed) as exc:
        raise InputError(str(exc)) from None
    finally:
        client.close()


_GUEST_DOMAIN = ("<domain type='{type}'>\n  <name>{name}</name>\n  <os>\n"
                 "    <type arch='aarch64' machine='virt'>hvm</type>\n  </os>\n</domain>\n")


def _domain_for(guest: GuestState, name: str, policy: Policy) -> bytes:
    """A minimal domain of a type the policy acts on, carrying the guest's record."""
    kind = "kvm" if "kvm" in policy.domain_types else sorted(policy.domain_types)[0]
    record = GuestRecord(guest, Origin(OriginEvent.STAMPED, name, "unknown",
                                       "1970-01-01T00:00:00Z"))
    plain = _GUEST_DOMAIN.format(type=kind, name=name).encode()
    return splice_record(plain, lambda indent: record_xml(record, indent)).data


_VERDICTS = {HookVerdict.ALLOW: "ALLOW", HookVerdict.VETO: "VETO",
             HookVerdict.WARN: "WOULD VETO (mode = warn: allowed)", HookVerdict.ERROR: "ERROR"}


def _text(outcome: Outcome, policy: Policy, name: str, verbose: bool) -> str:
    head = f"verdict: {_VERDICTS[outcome.decision]} (the hook exits {int(outcome.status)}"
    if outcome.engine is not None:
        head += f"; destination QEMU: {outcome.engine.generation}"
    lines = [head + ")"]
    if outcome.message:
        lines.append(outcome.message)
    if outcome.engine is not None:
        body = decision_text(outcome.engine, verbose=verbose,
                             after=outcome.decision == HookVerdict.ALLOW)
        lines.append(body.rstrip("\n"))
    elif "NOT_APPLICABLE" in outcome.codes:
        lines.append(f"NOT_APPLICABLE: {name} is {outcome.event.get('reason')}; the hook acts on "
                     f"aarch64 domains of type {', '.join(sorted(policy.domain_types))} "
                     f"(domain_types)")
    elif "PROFILE_UNAVAILABLE" in outcome.codes:
        lines.append("(no usable profile of this host: name the destination with "
                     "--host-profile FILE or a bundled name; `psci-hook profiles` lists them)")
    elif "NO_RECORD" in outcome.codes and outcome.decision == HookVerdict.ALLOW:
        lines.append("NO_RECORD: the domain carries no psci-hook record; allowed "
                     "(unrecorded = allow)")
    return "\n".join(lines) + "\n"


def _json(outcome: Outcome, reading: PolicyReading, name: str) -> dict[str, Any]:
    data: dict[str, Any] = outcome.engine.to_dict() if outcome.engine is not None else {}
    data["hook"] = {"decision": outcome.decision, "exit_status": int(outcome.status),
                    "codes": outcome.codes, "message": outcome.message, "domain": name}
    data["config"] = {"file": reading.origin, "problems": reading.messages}
    return data
