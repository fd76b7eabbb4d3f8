"""psci-hook as an operator installs and uses it on the e2e hosts: install, configure, stamp,
read the record back from a live domain XML, audit the host's syslog."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.e2e.harness import HarnessError, HostSpec, TwoHosts, guest_xml
from tests.helpers import REPO, SHARED

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
        "(set PSCI_HOOK_SHARED to the shared/ directory)"
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


# What the hook's veto line adds for vetoes that QEMU or KVM would otherwise make late.
REFUSE_LATE = "the destination would refuse this only after copying all guest memory"


def start_stamped(hosts: TwoHosts, host: str, name: str, guest_profile: str) -> int:
    """Define and start a guest whose record says it booted on a `guest_profile` host."""
    hosts.define(host, stamped_xml(hosts, name, guest_profile, hosts.spec(host).name))
    hosts.start(host, name)
    pid = hosts.qemu_pid(host, name)
    assert pid, f"{name} has no QEMU process on {host}"
    return pid


def assert_migration_vetoed(
    hosts: TwoHosts,
    res,
    src: str,
    dst: str,
    name: str,
    code: str,
    qemu_pid: int,
    dst_domains: list[str] | None = None,
) -> str:  # type: ignore[no-untyped-def]
    """The veto as the user and libvirt show it; returns our reason text."""
    assert res.rc == 1, f"migration was not refused: rc={res.rc} stderr={res.stderr!r}"
    assert res.stderr.startswith(
        "error: Hook script execution failed: internal error: Child process (LC_ALL=C PATH="
    ), res.stderr
    prefix = hook_failure_prefix(name, "migrate") + veto_line(code, name)
    assert prefix in res.stderr, res.stderr
    reason = res.stderr.split(prefix, 1)[1]
    assert reason.endswith("\n\n") and "\n" not in reason[:-2], "not one line: " + repr(reason)
    # libvirt leaves the guest alone: same QEMU process on the source, nothing on the destination.
    assert hosts.is_running(src, name)
    assert hosts.qemu_pid(src, name) == qemu_pid
    assert hosts.domains(dst) == (dst_domains or [])
    assert not hosts.is_running(dst, name)
    return reason.strip()


def decisions(hosts: TwoHosts, host: str, domain: str) -> list[dict[str, Any]]:
    """The hook's decision events for ``domain`` in a host's syslog."""
    out = []
    for line in hosts.read_log(host).splitlines():
        if '"psci-hook.decision"' in line:
            event = json.loads(line[line.index("{"):])
            if event.get("domain") == domain:
                out.append(event)
    return out


def record_all(hosts: TwoHosts, host: str) -> dict[str, str]:
    """`psci-hook record --all` inside a host: each domain's result line, by name."""
    res = hosts.run_in(host, psci_hook_command(), "record", "--all")
    assert res.rc == 0, res.stderr
    return dict(line.split(": ", 1) for line in res.stdout.splitlines()[:-1])


def firmware(profile_name: str) -> dict[str, int]:
    """A host profile's firmware registers, by name."""
    return {k: int(v) for k, v in profile_data(profile_name)["registers"].items()}


def booted_here(record: Record | None, host: str, profile_name: str) -> bool:
    """The record says the guest cold-booted on `host`, a `profile_name` host."""
    return (
        record is not None
        and record.origin.get("event") == "booted"
        and record.origin.get("host") == host
        and record.firmware == firmware(profile_name)
    )


class Watch:
    """`psci-hook watch` running inside one host, its stderr in a file beside the host: as its
    unit runs it (systemd sets INVOCATION_ID for every unit, systemd.exec(5)), or by hand."""

    def __init__(self, hosts: TwoHosts, host: str, by_hand: bool = False) -> None:
        self.hosts, self.host = hosts, host
        self.err_path = hosts.hostdir(host) / "watch.err"
        self.log_start = hosts.log_mark(host)
        unit = () if by_hand else ("env", f"INVOCATION_ID={uuid.uuid4().hex}")
        argv = hosts._ns(host, *unit, psci_hook_command(), "watch")  # clean env, host's mounts
        with self.err_path.open("wb") as err:
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err
            )
        # Connected, and its first reconcile over (what it reports to systemd as ready): done, or
        # failed as a whole (no usable host profile); a watcher left running would record the
        # guests of every later test, so it is stopped when it never gets there.
        try:
            self.wait_event(lambda e: e["action"] == "reconciled" or (
                e["action"] == "failed" and e["trigger"] == "reconcile" and not e["domain"]),
                30, "the watcher's first pass")
        except AssertionError:
            self.stop()
            raise

    def events(self) -> list[dict[str, Any]]:
        out = []
        for line in self.hosts.read_log(self.host, self.log_start).splitlines():
            if '"psci-hook.record"' in line:
                out.append(json.loads(line[line.index("{") :]))
        return out

    def wait_event(self, match: Any, timeout: float, what: str) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            found = [e for e in self.events() if match(e)]
            if found:
                return found[-1]
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"the watcher exited ({self.proc.returncode}): {self.err_path.read_text()}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; events: {self.events()}")
            time.sleep(0.05)

    def stop(self) -> int:
        """SIGTERM, as systemd stops it; its exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return int(self.proc.returncode)


def boot_watched(hosts: TwoHosts, watch: Any, live: Any, host: str, guest_name: str,
                 profile_name: str, domain_xml: str | None = None) -> tuple[Any, Any, Record]:
    """Configure `host` with `profile_name`, start its watcher, define and start the guest (the
    harness's default XML unless `domain_xml`) and wait for the watcher's record of the boot.
    Returns the watcher, the live connection and that record."""
    configure(hosts, host, profile_name)
    w = watch(host)
    hosts.define(host, domain_xml or guest_xml(guest_name, hosts.kernel))
    hosts.start(host, guest_name)
    conn = live(host)
    booted, _ = conn.wait_record(guest_name, lambda r: True, 5)
    return w, conn, booted
