"""Run inside the nested arm64 guest: the REAL hook on this kernel's real KVM, as libvirt runs it.

The hook (/etc/libvirt/hooks/qemu.d/50-psci-hook, #! naming the image's python3.11 with -I, so it
imports psci_hook, lxml and structlog from the interpreter's own paths) is run with argv
``<domain> migrate begin -``, an environment of LC_ALL=C, PATH and HOME only, and the domain XML
on stdin. The configuration (/etc/psci-hook/psci-hook.conf, the hook's default location) has no
[host] profile, so the hook uses the boot-time cache /run/psci-hook/host.json. Its audit events go
to a syslog socket this script binds, so each run's whole event (every finding, the rehearsal's
outcome, the decision's own duration_ms) is reported too.

The domain XML is a <domain type='kvm'> aarch64 -cpu host-passthrough guest stamped with the
state of a guest booted on each kernel's probed profile for this emulated CPU
(tests/data/probed-profiles; this kernel's own is the control). For each source the hook runs
twice: with the cache removed (it must probe inline and write the cache back), then warm.

Then, warm, the guests whose vCPU features differ from -cpu host's, each recorded as `record`
would on this host (its own profile, the one the hook cached) and checked here: "own" maps a
variant (default, pmu-off, and where this host has them sve-off, pauth-off, SVE lengths, and
32-bit guests with and without PMU) to its run. "pmu_off" maps every source profile to the run
of a `<pmu state='off'/>` guest stamped from it (the pmu=off table of real QEMU); "psci_1_1"
maps each source profile with PSCI 1.3 (7.x) to the run of a guest started there with
`kvm-psci-version=1.1` in the domain's <qemu:commandline>; "cross_cpu" maps the other emulated
CPU's profile on this same kernel to the run of its -cpu host guest here.

Prints {"destination": label, "release": ..., "runs": {source label: {"cold": run, "warm": run}},
"own": {variant: run}, "pmu_off": {source label: run}, "psci_1_1": {source label: run},
"cross_cpu": {source label: run}} where a
run is {"rc", "stdout", "stderr", "seconds", "cache": {...}, "event": {...} or None}.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from psci_hook import kvm as kvm_mod
from psci_hook import registers as regs
from psci_hook.domainxml import parse_domain, requested_vcpu
from psci_hook.engine import GuestState
from psci_hook.profile import HostProfile, load_profile
from psci_hook.record import GuestRecord, Origin, record_xml
from psci_hook.splice import splice_record

PROFILES = Path(__file__).resolve().parent / "probed-profiles"
HOOK = "/etc/libvirt/hooks/qemu.d/50-psci-hook"
CONFIG = Path("/etc/psci-hook/psci-hook.conf")
CACHE = Path("/run/psci-hook/host.json")
SYSLOG = Path("/tmp/psci-hook-syslog.sock")
# No [host] section: the boot-time cache, probed inline when missing. on_error = veto so that an
# error (PROFILE_UNAVAILABLE, a crash) shows as a non-zero exit rather than an unchecked allow.
# The timeout is raised because every instruction here is emulated (TCG): the hook's time bound
# is not what this test is about.
POLICY = f"""[hook]
domain_types = kvm
on_error = veto
timeout = 60

[log]
target = syslog
syslog_socket = {SYSLOG}
"""
# What libvirt passes to a hook: LC_ALL=C, PATH and HOME, nothing else.
HOOK_ENV = {"LC_ALL": "C", "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": "/root"}
DOMAIN = """<domain type='kvm'>
  <name>{name}</name>
  <uuid>6f1c7e2a-1b8e-4c47-9d7e-{index:012x}</uuid>
  <memory unit='KiB'>65536</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='aarch64' machine='virt'>hvm</type>
  </os>
  <cpu mode='host-passthrough'/>{extra}
  <devices>
    <emulator>/usr/bin/qemu-system-aarch64</emulator>
  </devices>
</domain>
"""


# Guests whose vCPU is not -cpu host's default: the XML libvirt gets for each (substituted for
# the plain <cpu mode='host-passthrough'/>), and the feature the host must have for it.
VARIANTS = {
    "default": ("<cpu mode='host-passthrough'/>", None),
    "pmu-off": ("<features><pmu state='off'/></features>\n  <cpu mode='host-passthrough'/>",
                "pmu"),
    "sve-off": ("<cpu mode='host-passthrough'><feature policy='disable' name='sve'/></cpu>",
                "sve"),
    "pauth-off": ("<cpu mode='host-passthrough'><feature policy='disable' name='pauth'/></cpu>",
                  "pauth"),
    "sve-lengths": ("<cpu mode='host-passthrough'><feature policy='require' name='sve128'/>"
                    "<feature policy='disable' name='sve256'/></cpu>", "sve"),
    # 32-bit guests (arch='armv7l': -cpu host,aarch64=off), where this host's KVM creates
    # 32-bit vCPUs; SVE off, without which QEMU cannot start one (see domainxml).
    "aarch32": ("<cpu mode='host-passthrough'><feature policy='disable' name='sve'/></cpu>",
                "aarch32"),
    "aarch32-pmu-off": ("<features><pmu state='off'/></features>\n  <cpu mode='host-passthrough'>"
                        "<feature policy='disable' name='sve'/></cpu>", "aarch32"),
}
PSCI_VERSION = regs.PSCI_VERSION.reg_id
PSCI_1_1 = ("\n  <qemu:commandline xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>"
            "<qemu:arg value='-global'/><qemu:arg value='host-arm-cpu.kvm-psci-version=1.1'/>"
            "</qemu:commandline>")


def stamped(label: str, index: int, profile: HostProfile | None = None, cpu: str = "",
            extra: str = "", name: str = "") -> bytes:
    """A domain XML with the record of a guest cold-booted on profile ``label`` (what
    ``psci-hook stamp --guest-profile`` prints, and ``record`` writes on that host): the vCPU
    features and PSCI version its domain XML gives it there."""
    profile = profile or load_profile(PROFILES / f"{label}.json")
    name = name or f"from-{label.replace('__', '-')}"
    data = DOMAIN.format(name=name, index=index, extra=extra).encode()
    if cpu:
        data = data.replace(b"<cpu mode='host-passthrough'/>", cpu.encode())
    if name.startswith("own-aarch32"):
        data = data.replace(b"arch='aarch64'", b"arch='armv7l'")
    domain = parse_domain(data)
    vcpu = requested_vcpu(domain, profile.default_features())
    state = GuestState.booted_on(profile, vcpu.features, vcpu.psci_version, vcpu.sve_lengths)
    record = GuestRecord(state, Origin("stamped", f"host-{label}", profile.kernel_release,
                                       "2026-01-01T00:00:00Z"))
    return splice_record(data, lambda indent: record_xml(record, indent)).data


def cache_state() -> dict[str, Any]:
    if not CACHE.is_file():
        return {"exists": False}
    data = json.loads(CACHE.read_text(encoding="utf-8"))
    boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    return {"exists": True, "mtime_ns": CACHE.stat().st_mtime_ns,
            "mode": oct(CACHE.stat().st_mode & 0o777),
            "kernel_release": data.get("kernel_release"),
            "this_boot": data.get("boot_id") == boot_id}


def read_event(log: socket.socket) -> dict[str, Any] | None:
    """The decision event the run sent ("<PRI>psci-hook: {json}"), if any."""
    try:
        datagram = log.recv(1 << 20).decode("utf-8", "replace")
    except BlockingIOError:
        return None
    event: dict[str, Any] = json.loads(datagram.split(": ", 1)[1])
    return event


def run_hook(domain: str, xml: bytes, log: socket.socket) -> dict[str, Any]:
    start = time.monotonic()
    proc = subprocess.run([HOOK, domain, "migrate", "begin", "-"], input=xml,
                          capture_output=True, env=HOOK_ENV, cwd="/", timeout=300)
    seconds = time.monotonic() - start
    return {"rc": proc.returncode, "stdout": proc.stdout.decode("utf-8", "replace"),
            "stderr": proc.stderr.decode("utf-8", "replace"), "seconds": round(seconds, 3),
            "cache": cache_state(), "event": read_event(log)}


def main() -> int:
    CONFIG.parent.mkdir(parents=True, exist_ok=True)
    CONFIG.write_text(POLICY, encoding="utf-8")
    profiles = {p.stem: load_profile(p) for p in sorted(PROFILES.glob("*.json"))}
    with kvm_mod.Kvm() as kvm, kvm.scratch_vcpu(()) as vcpu:
        midr = vcpu.get_one_reg(regs.SYSREG_BY_NAME["MIDR_EL1"])
    release = os.uname().release
    same_cpu = sorted(label for label, p in profiles.items()
                      if (p.id_registers or {}).get("MIDR_EL1") == midr)
    destination = next((label for label in same_cpu
                        if profiles[label].kernel_release == release), "?")
    runs: dict[str, dict[str, Any]] = {}
    log = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    log.bind(str(SYSLOG))
    log.setblocking(False)
    for index, label in enumerate(same_cpu):
        xml = stamped(label, index)
        name = f"from-{label.replace('__', '-')}"
        CACHE.unlink(missing_ok=True)  # `probe --write` (an earlier step) stored it at "boot"
        cold = run_hook(name, xml, log)
        warm = run_hook(name, xml, log)
        runs[label] = {"cold": cold, "warm": warm}
    own = load_profile(CACHE)  # this host's profile, as the hook probed and cached it
    offered = own.default_features()
    own_runs = {}
    for index, (variant, (cpu, needs)) in enumerate(VARIANTS.items()):
        if needs is not None and needs not in offered and not (
                needs == "aarch32" and own.runs_aarch32()):
            continue
        name = f"own-{variant}"
        own_runs[variant] = run_hook(name, stamped("own", 100 + index, own, cpu, name=name), log)
    pmu_off, psci = {}, {}
    for index, label in enumerate(same_cpu):
        name = f"pmu-off-from-{label.replace('__', '-')}"
        pmu_off[label] = run_hook(name, stamped(label, 200 + index, cpu=VARIANTS["pmu-off"][0],
                                                name=name), log)
        if profiles[label].registers.get(PSCI_VERSION) == 0x10003:  # PSCI 1.3 hosts (7.x)
            name = f"psci-1-1-from-{label.replace('__', '-')}"
            psci[label] = run_hook(name, stamped(label, 300 + index, extra=PSCI_1_1, name=name),
                                   log)
    # The other emulated CPU on this same kernel (cortex-a57 <-> max): the vCPU the guest had
    # there differs in MIDR, ID registers and features from the one QEMU creates here.
    cross_cpu = {}
    for index, (label, profile) in enumerate(sorted(profiles.items())):
        if profile.kernel_release == release and label not in same_cpu:
            name = f"cpu-from-{label.replace('__', '-')}"
            cross_cpu[label] = run_hook(name, stamped(label, 400 + index, name=name), log)
    print(json.dumps({"destination": destination, "release": release, "runs": runs,
                      "own": own_runs, "pmu_off": pmu_off, "psci_1_1": psci,
                      "cross_cpu": cross_cpu}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
