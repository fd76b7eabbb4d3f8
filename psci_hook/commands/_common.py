"""Small helpers shared by the subcommands: reading inputs with one-line errors."""

from __future__ import annotations

import argparse
from pathlib import Path

from psci_hook.domainxml import MAX_DOMAIN_XML, Domain, DomainXMLError, parse_domain
from psci_hook.engine import GuestState
from psci_hook.profile import (
    FeatureSet,
    HostProfile,
    ProfileError,
    bundled_profiles,
    parse_feature_key,
)


class InputError(Exception):
    """Bad input for a command: one line, exit status 2."""


def read_domain(path: Path) -> tuple[bytes, Domain]:
    try:
        with path.open("rb") as f:
            data = f.read(MAX_DOMAIN_XML + 1)
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        return data, parse_domain(data)
    except DomainXMLError as exc:
        raise InputError(f"{path}: {exc}") from None


def features_arg(text: str) -> FeatureSet:
    try:
        return parse_feature_key(text)
    except ProfileError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def guest_from_profile(profile: HostProfile, features: FeatureSet | None, origin: str,
                       psci_version: int | None = None,
                       sve_named: frozenset[int] = frozenset()) -> GuestState:
    """The state a guest profile describes, for ``features`` (default: its only or its
    fullest list, what -cpu host enables) and a kvm-psci-version the guest's QEMU sets."""
    if features is not None and profile.cpreg_lists is not None \
            and profile.cpreg_list(features) is None:
        offered = ", ".join(sorted(profile.cpreg_lists))
        raise InputError(f"{origin}: no migrated list for vCPU features "
                         f"{'+'.join(sorted(features)) or 'none'} (it has: {offered})")
    return GuestState.booted_on(profile, features, psci_version, sve_named)


def resolve_profile(text: str) -> Path:
    """A profile named on the command line: a file, else a bundled profile's name (as
    `psci-hook matrix` and `psci-hook profiles` print them, e.g. 6.1__a57)."""
    path = Path(text)
    if path.exists() or "/" in text or text.endswith(".json"):
        return path
    bundled = bundled_profiles()
    if text in bundled:
        return bundled[text]
    from psci_hook.policy import did_you_mean

    raise ProfileError(f"{text}: no such file, nor a bundled profile"
                       f"{did_you_mean(text, bundled)}; `psci-hook profiles` lists them")
