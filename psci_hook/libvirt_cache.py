"""What `psci-hook refresh` (and `watch`, at each connection) caches from libvirt for the hook.

The hook never asks libvirt (the daemon is waiting for it), so what it needs from libvirt is
cached beforehand in the run directory (/run/psci-hook): ``capabilities.xml`` (the host's
identity: UUID, CPU vendor and model), ``qemu-version`` (X.Y.Z) and, where the aarch64
emulator's build says it, ``qemu-generation`` (whether it has the cpreg migration tolerance
series, which distributions backport under older version numbers: the version alone would
call those legacy). Each file is written atomically. The readers are psci_hook.thishost,
psci_hook.profile (read_qemu_version) and psci_hook.cache (read_qemu_generation).
"""

from __future__ import annotations

import contextlib
import re
import subprocess
from pathlib import Path

from lxml import etree

from psci_hook.cache import QEMU_GENERATION_FILE, write_atomic
from psci_hook.libvirt_client import Client, LibvirtCallFailed
from psci_hook.profile import QEMU_VERSION_FILE
from psci_hook.thishost import CAPABILITIES_FILE
from psci_hook.vocab import QemuGeneration

_EMULATOR_VERSION_RE = re.compile(r"QEMU emulator version (\d+\.\d+\.\d+)")


def refresh(client: Client, run_dir: Path) -> tuple[Path, Path, str]:
    """Write the files from an open connection; returns the capabilities and version paths and
    the QEMU version. Raises the client's errors, and OSError when a file cannot be written."""
    capabilities = client.capabilities()
    caps_path = run_dir / CAPABILITIES_FILE
    write_atomic(caps_path, capabilities if capabilities.endswith("\n")
                       else capabilities + "\n")
    version = qemu_version(client, capabilities)
    version_path = run_dir / QEMU_VERSION_FILE
    write_atomic(version_path, version + "\n")
    generation_path = run_dir / QEMU_GENERATION_FILE
    emulator = aarch64_emulator(capabilities)
    detected = build_generation(emulator) if emulator else None
    if detected is None:  # the version number decides (HostProfile.generation)
        with contextlib.suppress(FileNotFoundError):
            generation_path.unlink()
    else:
        write_atomic(generation_path, f"{detected[0]} {detected[1]}\n")
    return caps_path, version_path, version


# Trace events only QEMU's cpreg migration tolerance series defines (target/arm/trace-events,
# used by target/arm/machine.c when a tolerated register is skipped); upstream since 11.1 and
# in distribution backports under older version numbers (RHEL-174858).
TOLERANCE_TRACE_EVENTS = ("tolerate_cpreg_only_in_incoming_stream",
                          "tolerate_cpreg_missing_in_incoming_stream")


def build_generation(emulator: str) -> tuple[str, str] | None:
    """The QEMU generation from the build itself: ``<emulator> -trace help`` lists every trace
    event it was built with. (generation, how), or None if the emulator cannot say."""
    try:
        done = subprocess.run([emulator, "-trace", "help"], capture_output=True, text=True,
                              timeout=10, check=False, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError):
        return None
    events = set(done.stdout.split())
    if done.returncode != 0 or len(events) < 10:  # not a trace-capable QEMU: nothing known
        return None
    found = [e for e in TOLERANCE_TRACE_EVENTS if e in events]
    if found:
        return (QemuGeneration.TOLERANT,
                f"{emulator} has the trace event {found[0]} (cpreg tolerance series)")
    return QemuGeneration.LEGACY, f"{emulator} has none of the cpreg tolerance series' trace events"


def qemu_version(client: Client, capabilities: str) -> str:
    """The hypervisor version libvirt reports. libvirt asks the emulator of the host's own
    architecture; where there is none (an x86 machine running aarch64 guests under TCG), the
    aarch64 emulator named in the capabilities is asked for its version instead."""
    try:
        return client.hypervisor_version()
    except LibvirtCallFailed as exc:
        emulator = aarch64_emulator(capabilities)
        version = emulator_version(emulator) if emulator else None
        if version is None:
            raise exc from None
        return version


def aarch64_emulator(capabilities: str) -> str | None:
    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)
    try:
        root = etree.fromstring(capabilities.encode(), parser)
    except etree.XMLSyntaxError:
        return None
    for arch in root.iterfind("guest/arch"):
        if arch.get("name") == "aarch64" and arch.findtext("emulator"):
            return str(arch.findtext("emulator")).strip()
    return None


def emulator_version(emulator: str) -> str | None:
    """X.Y.Z from ``<emulator> --version`` ("QEMU emulator version 7.2.19 (Debian ...)")."""
    try:
        done = subprocess.run([emulator, "--version"], capture_output=True, text=True,
                              timeout=10, check=False, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError):
        return None
    match = _EMULATOR_VERSION_RE.search(done.stdout)
    return match.group(1) if done.returncode == 0 and match else None
