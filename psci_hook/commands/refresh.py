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
import json
import urllib.parse
from pathlib import Path

from psci_hook import cache, libvirt_cache
from psci_hook.environment import DEFAULT_RUN_DIR, Environment
from psci_hook.libvirt_client import Client, LibvirtCallFailed, LibvirtUnavailable
from psci_hook.status import ExitStatus

HELP = ("cache libvirt's host capabilities and the QEMU version in the run directory "
        "(/run/psci-hook), for the hook")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--uri", default=None,
                        help="libvirt connection URI (default: libvirt's default, "
                        "qemu:///system for root)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--quiet", action="store_true", help="print nothing on success")


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
        caps_path, version_path, version = libvirt_cache.refresh(client, env.run_dir)
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
