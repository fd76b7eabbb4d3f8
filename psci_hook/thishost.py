"""This host's context: its profile, its identity and the clock, as the hook and the recorder
read them.

The hook and the commands that record guests (``record``, ``watch``) must agree on what "this
host" is, so both take it from here. Nothing here asks libvirt (the daemon waits for the hook):
the host's identity comes from the capabilities `psci-hook refresh` cached, the profile from
the policy's file or the boot-time cache (psci_hook.cache).
"""

from __future__ import annotations

import contextlib
import socket
from pathlib import Path

from lxml import etree

from psci_hook.environment import Environment
from psci_hook.policy import Policy
from psci_hook.profile import HostProfile, load_profile
from psci_hook.record import time_text

MAX_CAPABILITIES = 4 * 1024 * 1024
CAPABILITIES_FILE = "capabilities.xml"  # in the run directory, written by `psci-hook refresh`


def utc_now(env: Environment) -> str:
    """The time for records and history entries (the record's time format)."""
    return time_text(env.clock())


def host_profile(policy: Policy, env: Environment) -> HostProfile:
    """This host's profile: the policy's file, else the boot-time cache (probing if stale);
    with the QEMU version and generation `psci-hook refresh` cached when the profile does not
    state them."""
    if policy.host_profile is not None:
        profile = load_profile(policy.host_profile)
    else:
        from psci_hook.cache import load_host_profile  # imports the KVM probe: only when needed

        profile = load_host_profile(env.run_dir, probe_inline=True)
    if profile.qemu_version is None and profile.qemu_generation is None:
        from psci_hook.profile import read_qemu_version

        version = read_qemu_version(env.run_dir)
        if version is not None:
            profile = profile._replace(qemu_version=version)
    if profile.qemu_generation is None:  # what the QEMU build says beats its version number
        from psci_hook.cache import read_qemu_generation

        generation = read_qemu_generation(env.run_dir)
        if generation is not None:
            profile = profile._replace(qemu_generation=generation)
    return profile


def host_identity(env: Environment, profile: HostProfile) -> dict[str, str]:
    """This host's name, kernel and, from the cached capabilities, uuid and CPU."""
    identity = {"hostname": socket.gethostname(), "kernel": profile.kernel_release}
    with contextlib.suppress(Exception):  # the capabilities cache is optional
        identity.update(capabilities_identity(env.run_dir / CAPABILITIES_FILE))
    return identity


def capabilities_identity(path: Path) -> dict[str, str]:
    """uuid, arch, CPU vendor and model from a capabilities document; {} if unusable."""
    try:
        with path.open("rb") as f:
            data = f.read(MAX_CAPABILITIES + 1)
    except OSError:
        return {}
    if len(data) > MAX_CAPABILITIES or b"<!DOCTYPE" in data or b"<!ENTITY" in data:
        return {}
    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)
    try:
        root = etree.fromstring(data, parser)
    except etree.XMLSyntaxError:
        return {}
    out = {
        "uuid": (root.findtext("host/uuid") or "").strip(),
        "arch": (root.findtext("host/cpu/arch") or "").strip(),
        "cpu_vendor": (root.findtext("host/cpu/vendor") or "").strip(),
        "cpu_model": (root.findtext("host/cpu/model") or "").strip(),
    }
    return {k: v for k, v in out.items() if v}
