"""psci-hook profiles: which host profiles exist and where: this host's, and the bundled ones.

The names are what `check --host-profile/--guest-profile` and `matrix` accept and print.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from psci_hook import cache
from psci_hook.environment import Environment
from psci_hook.policy import read_policy
from psci_hook.profile import HostProfile, ProfileError, bundled_profiles, load_profile
from psci_hook.status import ExitStatus

HELP = "list the host profiles: this host's (as the hook finds it) and the bundled ones"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def _describe(profile: HostProfile) -> dict[str, Any]:
    return {"kernel": profile.kernel_release,
            "features": sorted(profile.cpreg_lists) if profile.cpreg_lists else [],
            "synthetic": bool(profile.extra.get("synthetic")),
            "qemu": profile.qemu_version or profile.qemu_generation or "",
            "provenance": str(profile.extra.get("provenance", ""))}


def this_host(env: Environment) -> dict[str, Any]:
    """Where the hook takes this host's profile from, and whether it is usable now (read
    only: no probe, nothing written)."""
    policy = read_policy(env.config_path).policy
    if policy.host_profile is not None:
        path, source = policy.host_profile, f"[host] profile in {env.config_path}"
        try:
            profile = load_profile(path)
        except ProfileError as exc:
            return {"path": str(path), "source": source, "usable": False, "problem": str(exc)}
    else:
        path, source = cache.profile_path(env.run_dir), "the boot-time cache (psci-hook probe)"
        try:
            boot_id, release = cache.current_identity()
            profile = cache.read_cached(env.run_dir, boot_id, release)
        except (cache.CacheProblem, OSError) as exc:
            message = getattr(exc, "message", None) or str(exc)
            return {"path": str(path), "source": source, "usable": False,
                    "problem": f"{message}; the hook probes inline where it can"}
    return {"path": str(path), "source": source, "usable": True, **_describe(profile)}


def run(args: argparse.Namespace, env: Environment) -> ExitStatus:
    bundled: dict[str, dict[str, Any]] = {}
    for name, path in bundled_profiles().items():
        try:
            bundled[name] = {"path": str(path), **_describe(load_profile(path))}
        except ProfileError as exc:  # a broken installation: say which file
            env.error(str(exc))
            return ExitStatus.INTERNAL_ERROR
    host = this_host(env)
    if args.json:
        env.write_out(json.dumps({"this_host": host, "bundled": bundled}, indent=1) + "\n")
        return ExitStatus.OK
    state = "" if host["usable"] else f" -- not usable now: {host['problem']}"
    lines = [f"this host: {host['path']} ({host['source']}){state}"]
    if host["usable"]:
        lines.append(f"  kernel {host['kernel']}, vCPU feature sets: "
                     f"{', '.join(host['features']) or 'no lists'}")
    directory = Path(next(iter(bundled.values()))["path"]).parent if bundled else None
    lines += ["", f"bundled ({directory}); name them in check --host-profile / "
                  "--guest-profile:"]
    width = max((len(n) for n in bundled), default=0)
    for name, info in bundled.items():
        mark = "  SYNTHETIC" if info["synthetic"] else ""
        lines.append(f"  {name.ljust(width)}  {info['kernel']:<24} "
                     f"{', '.join(info['features']) or 'firmware registers only'}{mark}")
    return _print_lines(env, lines)


def _print_lines(env: Environment, lines: list[str]) -> ExitStatus:
    env.write_out("\n".join(lines) + "\n")
    return ExitStatus.OK
