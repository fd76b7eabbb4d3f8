"""psci-hook as an operator installs and uses it on the e2e hosts: install, configure, stamp,
read the record back from a live domain XML, audit the host's syslog."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .harness import HarnessError, HostSpec, TwoHosts, guest_xml

REPO = Path(__file__).resolve().parents[2]
# The steering repository's shared/ directory: beside the repo (also in CI), or named by env.
SHARED = Path(os.environ.get("PSCI_HOOK_SHARED_DIR", str(REPO.parent / "shared")))
SHARED_PROFILES = SHARED / "profiles"
BUNDLED_PROFILES = REPO / "psci_hook" / "data" / "profiles"
# Profiles probed with ID registers and cache geometry, including a 7.2 kernel (PSCI 1.3).
PROBED_PROFILES = REPO / "tests" / "data" / "probed-profiles"
HOOK_NAME = "50-psci-hook"
HOOK_PATH = f"/etc/libvirt/hooks/qemu.d/{HOOK_NAME}"
RECORD_NS = "https://psci-hook.org/xmlns/record/1"
Q = "{" + RECORD_NS + "}"


def profile(name: str) -> Path:
    """A host profile by file stem: measured ones from shared/profiles, synthetic ones bundled
    with the package, 7.2 from the repository's probed profiles."""
    directories = (SHARED_PROFILES, BUNDLED_PROFILES, PROBED_PROFILES)
    for directory in directories:
        path = directory / f"{name}.json"
        if path.exists():
            return path
    raise HarnessError(
        f"no host profile {name}.json in {', '.join(map(str, directories))} "
        "(set PSCI_HOOK_SHARED_DIR to the shared/ directory)"
    )


def profile_data(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(profile(name).read_text())
    return data


def psci_hook_command() -> str:
    """The psci-hook script of the Python running the tests (the project's .venv)."""
    beside = Path(sys.executable).parent / "psci-hook"
    if beside.exists():
        return str(beside)
    found = shutil.which("psci-hook")
    if found is None:
        raise HarnessError("no psci-hook command: run scripts/setup (pip install -e . in .venv)")
    return found


def psci_hook(
    *args: str, stdin: str | None = None, timeout: float = 60
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [psci_hook_command(), *args], input=stdin, capture_output=True, text=True, timeout=timeout
    )


def install_hook(hosts: TwoHosts, spec: HostSpec) -> None:
    """`psci-hook install --root <host root>`, as an operator does on a pip-installed host.

    The host's root directory mirrors / for the private mounts (etc/libvirt, etc/psci-hook, ...),
    so the hook lands in the host's /etc/libvirt/hooks/qemu.d/ before its libvirtd starts.
    """
    root = hosts.hostdir(spec)
    res = psci_hook("install", "--root", str(root), "--no-units")
    if res.returncode != 0:
        raise HarnessError(f"psci-hook install --root {root} failed: {res.stderr.strip()}")
    hook = hosts.path(spec, HOOK_PATH)
    if not os.access(hook, os.X_OK):
        raise HarnessError(f"psci-hook install did not put an executable hook at {hook}")
    installed_config[spec.key] = hosts.path(spec, "/etc/psci-hook/psci-hook.conf").read_text()


# The configuration file each host got from `psci-hook install` (restored between tests).
installed_config: dict[str, str] = {}


def config_text(
    mode: str = "enforce",
    unrecorded: str = "allow",
    annotate: bool = True,
    on_error: str = "allow",
    timeout: float = 10,
    domain_types: str = "kvm, qemu",
    qemu_generation: str = "legacy",
) -> str:
    """/etc/psci-hook/psci-hook.conf for an e2e host (TCG guests: domain type qemu)."""
    return f"""\
# psci-hook e2e test host
[hook]
mode = {mode}
unrecorded = {unrecorded}
annotate = {"yes" if annotate else "no"}
on_error = {on_error}
timeout = {timeout:g}
domain_types = {domain_types}

[host]
# This machine cannot run arm64 KVM: the host's profile comes from a file.
profile = /etc/psci-hook/host.json
qemu_generation = {qemu_generation}
"""


def configure(hosts: TwoHosts, host: str, profile_name: str, **policy: Any) -> None:
    hosts.set_profile(host, profile(profile_name))
    hosts.set_config(host, config_text(**policy))


def stamped_xml(hosts: TwoHosts, name: str, guest_profile: str, origin_host: str) -> str:
    """The e2e guest's domain XML with the record of a guest booted on `guest_profile`."""
    plain = hosts.root / f"plain-{name}.xml"
    plain.write_text(guest_xml(name, hosts.kernel))
    res = psci_hook(
        "stamp",
        "--guest-profile",
        str(profile(guest_profile)),
        "--domain-xml",
        str(plain),
        "--host",
        origin_host,
    )
    if res.returncode != 0:
        raise HarnessError(f"psci-hook stamp failed ({res.returncode}): {res.stderr.strip()}")
    return res.stdout


@dataclass
class Record:
    origin: dict[str, str]
    firmware: dict[str, int]
    features: str
    cpreg_count: int | None
    history: list[dict[str, str]] = field(default_factory=list)
    status: str = ""  # "" (live state), persistent-copy, unverified

    def as_copy(self) -> Record:
        """This record as the persistent definition carries it."""
        return dataclasses.replace(self, status="persistent-copy")


def record_of(domain_xml: str) -> Record | None:
    """The psci-hook record in a domain XML, or None."""
    root = ET.fromstring(domain_xml)
    records = root.findall(f"metadata/{Q}record")
    if not records:
        return None
    if len(records) > 1:
        raise AssertionError(f"{len(records)} psci-hook records in one domain XML")
    rec = records[0]
    origin = rec.find(f"{Q}origin")
    vcpu = rec.find(f"{Q}vcpu")
    cpreg = rec.find(f"{Q}cpreg-list")
    return Record(
        origin=dict(origin.attrib) if origin is not None else {},
        firmware={
            r.attrib["name"]: int(r.attrib["value"], 0) for r in rec.findall(f"{Q}firmware/{Q}reg")
        },
        features=vcpu.attrib.get("features", "") if vcpu is not None else "",
        cpreg_count=int(cpreg.attrib["count"]) if cpreg is not None else None,
        history=[dict(c.attrib) for c in rec.findall(f"{Q}history/{Q}check")],
        status=rec.attrib.get("status", ""),
    )


def audit(
    hosts: TwoHosts,
    host: str,
    domain: str,
    expect_total: int,
    timeout: float = 5.0,
) -> dict[str, Any]:
    """`psci-hook audit <host's syslog> --domain D --json`, once `expect_total` events are in."""
    path = hosts.syslog_paths[hosts.spec(host).name]
    deadline = time.monotonic() + timeout
    while True:
        res = psci_hook("audit", str(path), "--domain", domain, "--json")
        if res.returncode != 0:
            raise AssertionError(f"psci-hook audit failed ({res.returncode}): {res.stderr}")
        summary: dict[str, Any] = json.loads(res.stdout)
        if summary["total"] >= expect_total or time.monotonic() > deadline:
            return summary
        time.sleep(0.1)


def veto_line(code: str, domain: str) -> str:
    """The start of the hook's one stderr line for a veto."""
    return f"psci-hook: VETO {code} domain {domain}: "


def hook_failure_prefix(domain: str, op: str) -> str:
    """The part of libvirt's error that names our hook (after the daemon's PATH)."""
    return f"HOME=/root {HOOK_PATH} {domain} {op} begin -) unexpected exit status 1: "
