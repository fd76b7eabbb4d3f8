"""``psci-hook probe``: read this host's profile from its running kernel through /dev/kvm."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from psci_hook import cache
from psci_hook import kvm as kvm_mod
from psci_hook import probe as probe_mod
from psci_hook import registers as regs
from psci_hook.environment import Environment
from psci_hook.profile import HostProfile, ProfileError
from psci_hook.status import ExitStatus

HELP = "probe this host's KVM (firmware registers, migrated lists, ID registers) on scratch VMs"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the whole profile as JSON")
    parser.add_argument(
        "--write",
        action="store_true",
        help="store the profile atomically as <run dir>/host.json (the hook's cache)",
    )
    parser.add_argument("--output", metavar="FILE", help="also write the profile JSON to FILE")


def run(args: argparse.Namespace, env: Environment) -> ExitStatus:
    try:
        with kvm_mod.Kvm() as kvm:
            data = probe_mod.probe_host(kvm, clock=env.clock, run_dir=env.run_dir)
    except kvm_mod.KvmError as exc:
        env.error(f"probe: {exc.message}")
        return exc.status
    except OSError as exc:
        env.error(f"probe: {os_error_text(exc)}")
        return ExitStatus.KVM_ERROR
    try:
        profile = HostProfile.from_dict(data)
    except ProfileError as exc:
        env.error(f"probe: the probed profile does not validate: {exc}")
        return ExitStatus.INTERNAL_ERROR

    written: list[Path] = []
    try:
        if args.write:
            written.append(cache.write_profile(env.run_dir, data))
        if args.output:
            path = Path(args.output)
            cache.write_atomic(path, json.dumps(data, indent=1) + "\n")
            written.append(path)
    except OSError as exc:
        env.error(f"probe: cannot write: {os_error_text(exc)}")
        return ExitStatus.INTERNAL_ERROR

    if args.json:
        env.write_out(json.dumps(data, indent=1) + "\n")
    else:
        env.write_out(summary(profile, data))
        for path in written:
            env.write_out(f"wrote {path}\n")
    return ExitStatus.OK


def os_error_text(exc: OSError) -> str:
    text = exc.strerror or str(exc)
    return f"{exc.filename}: {text}" if exc.filename else text


def summary(profile: HostProfile, data: dict[str, Any]) -> str:
    lines = [
        f"host {data.get('hostname', '?')}: kernel {profile.kernel_release} ({profile.machine}),"
        f" boot {data.get('boot_id', '?')}",
        "firmware registers (fresh vCPU with PSCI_0_2):",
    ]
    for reg_id, value in profile.registers.items():
        lines.append(
            f"  {regs.firmware_name(reg_id):<24} {regs.value_text(reg_id, value)} (0x{value:x})"
        )
    for key, ids in (profile.cpreg_lists or {}).items():
        lines.append(f"migrated list {key}: {len(ids)} registers")
    lines.append(
        f"ID registers: {len(profile.id_registers or {})}"
        f" (vCPU features {data.get('id_registers_features', '?')});"
        f" cache geometry: {len(profile.cache_geometry or {})} entries"
    )
    masks = data.get("id_writable_masks")
    if masks is not None:
        writable = sorted(name for name, mask in masks.items() if mask)
        lines.append(f"writable ID registers: {', '.join(writable) or 'none'}")
    else:
        lines.append("writable ID register masks: not reported by this kernel (before 6.8)")
    if profile.qemu_version:
        lines.append(f"QEMU {profile.qemu_version} ({profile.generation})")
    return "\n".join(lines) + "\n"
