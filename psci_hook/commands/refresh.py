"""``psci-hook refresh``: cache libvirt's host capabilities and the QEMU version for the hook.

The hook never asks libvirt (the daemon is waiting for it), so what it needs from libvirt is
cached beforehand in the run directory (/run/psci-hook): ``capabilities.xml`` (the host's
identity: UUID, CPU vendor and model), ``qemu-version`` (X.Y.Z) and, where the aarch64
emulator's build says it, ``qemu-generation`` (whether it has the cpreg migration tolerance
series, which distributions backport under older version numbers: the version alone would
call those legacy). Both are written atomically. psci-hook-refresh.service runs this
whenever the libvirt daemon starts; ``watch`` does the same each time it connects.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import subprocess
import urllib.parse
from pathlib import Path

from lxml import etree

from psci_hook import cache
from psci_hook.environment import DEFAULT_RUN_DIR, Environment
from psci_hook.libvirt_client import Client, LibvirtCallFailed, LibvirtUnavailable
from psci_hook.profile import QEMU_VERSION_FILE
from psci_hook.status import ExitStatus

HELP = ("cache libvirt's host capabilities and the QEMU version in the run directory "
        "(/run/psci-hook), for the hook")
CAPABILITIES_FILE = "capabilities.xml"
_EMULATOR_VERSION_RE = re.compile(r"QEMU emulator version (\d+\.\d+\.\d+)")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--uri", default=None,
                        help="libvirt connection URI (default: libvirt's default, "
                        "qemu:///system for root)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--quiet", action="store_true", help="print nothing on success")


def refresh_cache(client: Client, run_dir: Path) -> tuple[Path, Path, str]:
    """Write the files from an open connection; returns the capabilities and version paths and
    the QEMU version. Raises the client's errors, and OSError when a file cannot be written."""
    capabilities = client.capabilities()
    caps_path = run_dir / CAPABILITIES_FILE
    cache.write_atomic(caps_path, capabilities if capabilities.endswith("\n")
                       else capabilities + "\n")
    version = qemu_version(client, capabilities)
    version_path = run_dir / QEMU_VERSION_FILE
    cache.write_atomic(version_path, version + "\n")
    generation_path = run_dir / cache.QEMU_GENERATION_FILE
    emulator = aarch64_emulator(capabilities)
    detected = build_generation(emulator) if emulator else None
    if detected is None:  # the version number decides (HostProfile.generation)
        with contextlib.suppress(FileNotFoundError):
            generation_path.unlink()
    else:
        cache.write_atomic(generation_path, f"{detected[0]} {detected[1]}\n")
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
        return "tolerant", f"{emulator} has the trace event {found[0]} (cpreg tolerance series)"
    return "legacy", f"{emulator} has none of the cpreg tolerance series' trace events"


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


def not_this_hosts_qemu(client: Client, uri: str | None, run_dir: Path) -> str:
    """Why the connection must not fill the hook's cache of this host, or "": the hook takes
    the QEMU generation and the host's identity from it, so only this host's QEMU driver may
    write /run/psci-hook (another run directory, as tests use, takes anything)."""
    if run_dir != DEFAULT_RUN_DIR:
        return ""
    driver = client.driver()
    where = uri or "libvirt's default URI"
    if driver != "QEMU":
        return (f"{where} is libvirt's {driver} driver, not this host's QEMU: {run_dir} was "
                "left as it was")
    host = urllib.parse.urlsplit(uri or "").hostname
    if host not in (None, "", "localhost", "127.0.0.1", "::1"):
        return f"{where} is another host's libvirt: {run_dir} (this host's) was left as it was"
    return ""


def run(args: argparse.Namespace, env: Environment) -> ExitStatus:
    def fail(message: str, status: ExitStatus) -> ExitStatus:
        if args.json:
            env.write_out(json.dumps({"error": message, "exit_status": int(status)}) + "\n")
        env.error(f"refresh: {message}")
        return status

    try:
        client = Client.open(args.uri)
    except LibvirtUnavailable as exc:
        return fail(str(exc), ExitStatus.LIBVIRT_UNAVAILABLE)
    try:
        refusal = not_this_hosts_qemu(client, args.uri, env.run_dir)
        if refusal:
            return fail(refusal, ExitStatus.BAD_INPUT)
        caps_path, version_path, version = refresh_cache(client, env.run_dir)
    except (LibvirtUnavailable, LibvirtCallFailed) as exc:
        return fail(str(exc), ExitStatus.LIBVIRT_UNAVAILABLE)
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        return fail(f"cannot write the cache: {where}{exc.strerror or exc}",
                    ExitStatus.INTERNAL_ERROR)
    finally:
        client.close()
    generation_path = env.run_dir / cache.QEMU_GENERATION_FILE
    generation = generation_path.read_text().strip() if generation_path.exists() else None
    if args.json:
        env.write_out(json.dumps({"capabilities": str(caps_path), "qemu_version_file":
                                  str(version_path), "qemu_version": version,
                                  "qemu_generation": generation}) + "\n")
    elif not args.quiet:
        env.write_out(f"wrote {caps_path}\nwrote {version_path} (QEMU {version})\n")
        if generation is not None:
            env.write_out(f"wrote {generation_path} ({generation})\n")
        else:
            env.write_out("QEMU generation: from the version number (the build does not say)\n")
    return ExitStatus.OK
