#!/usr/bin/env python3
"""How ``psci-hook where`` and ``plan`` scale with the size of a fleet. Prints figures; never fails.

    .venv/bin/python benchmarks/bench_fleet.py            # 40, 1,000 and 10,000 hosts
    .venv/bin/python benchmarks/bench_fleet.py --quick    # 40 and 1,000 hosts, one run each (CI)
    .venv/bin/python benchmarks/bench_fleet.py --json     # the figures as JSON

Every fleet is built from the same 30 distinct profiles: the 15 bundled ones, the 8 probed
from Debian kernels (tests/data/probed-profiles), and 7 of those with a QEMU 11.1 (tolerant)
hypervisor. Each host file is what ``probe --json`` prints on that host: the profile with its
own hostname, boot id and probe time, so no two files are byte-identical. Half the hosts are
named host-a-*, half host-b-*; ``plan`` moves every host-a-* host to the probed 7.2 profile.

Measured: the wall time of the whole command as a user runs it (interpreter start included),
median of 3 rounds (every size measured in each round, interleaved), and its ratio to the
same command on 40 hosts:
- ``where --json`` for a guest booted on a 6.1 host, cold (no fleet index: every file read and
  parsed) and warm (the index in the fleet directory is current: one stat per file);
- ``plan --format json`` with 30 guests (one booted on each distinct profile), warm.
The engine calls each command makes are counted in-process: they depend on the distinct
profiles (and guests), not on the hosts.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
BUNDLED = REPO / "psci_hook" / "data" / "profiles"
PROBED = REPO / "tests" / "data" / "probed-profiles"
INDEX_NAME = ".psci-hook-fleet-index"
GUEST_DOMAIN = """<domain type='kvm'>
  <name>{name}</name>
  <memory unit='KiB'>4194304</memory>
  <os><type arch='aarch64' machine='virt-7.2'>hvm</type></os>
  <cpu mode='host-passthrough' check='none'/>
  <devices><emulator>/usr/bin/qemu-system-aarch64</emulator></devices>
</domain>
"""


def distinct_profiles() -> list[tuple[str, dict[str, Any]]]:
    out = [(p.stem, json.loads(p.read_text())) for p in sorted(BUNDLED.glob("*.json"))]
    probed = [(p.stem, json.loads(p.read_text())) for p in sorted(PROBED.glob("*.json"))]
    out += [(f"probed-{n}", d) for n, d in probed]
    out += [(f"probed-{n}-qemu11.1", dict(d, qemu_version="11.1.0")) for n, d in probed[:7]]
    return out


def build_fleet(directory: Path, hosts: int, profiles: list[tuple[str, dict[str, Any]]]
                ) -> None:
    directory.mkdir()
    templates = [json.dumps(dict(data, hostname="@HOST@", boot_id="@BOOT@",
                                 probed_at="2026-12-05T20:00:00Z"), indent=1)
                 for _, data in profiles]
    for i in range(hosts):
        half = "a" if i < hosts // 2 else "b"
        host = f"host-{half}-{i:05d}"
        text = templates[i % len(templates)].replace("@HOST@", host).replace(
            "@BOOT@", f"{i:08x}-0000-4000-8000-000000000000")
        (directory / f"{host}.json").write_text(text)


def build_guests(directory: Path, profiles: list[tuple[str, dict[str, Any]]]) -> Path:
    """One domain XML per distinct profile, stamped by ``psci-hook stamp`` as a guest booted
    there."""
    directory.mkdir()
    plain = directory / "plain.xml.in"
    for name, data in profiles:
        profile = directory / f"{name}.json.in"
        profile.write_text(json.dumps(data))
        plain.write_text(GUEST_DOMAIN.format(name=f"vm-{name}"))
        proc = subprocess.run(
            [sys.executable, "-I", "-m", "psci_hook", "stamp", "--guest-profile", str(profile),
             "--domain-xml", str(plain), "--host", "bench"],
            capture_output=True, check=False)
        if proc.returncode != 0:
            raise SystemExit(f"stamp {name}: {proc.stderr.decode()}")
        (directory / f"vm-{name}.xml").write_bytes(proc.stdout)
    return directory / "vm-probed-6.1__a57.xml"


def timed_once(argv: Sequence[str]) -> tuple[float, bytes]:
    started = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, check=False, cwd="/")
    elapsed = time.perf_counter() - started
    if proc.returncode not in (0, 1):
        raise SystemExit(f"{argv[4]}: exit {proc.returncode}: {proc.stderr.decode()}")
    return elapsed, proc.stdout


def engine_calls(fleet: Path, guests: Path, guest: Path) -> dict[str, int]:
    """Engine calls of where and plan, counted in-process with the commands' own code."""
    sys.path.insert(0, str(REPO))
    from psci_hook.commands._fleet import guest_from_xml, guests_from_directory, load_fleet
    from psci_hook.commands.plan import parse_changes
    from psci_hook.fleet import Decider, plan, where

    loaded = load_fleet(fleet)
    decider = Decider()
    judged_one = guest_from_xml(guest.read_bytes(), str(guest))
    where(judged_one.state, loaded, decider, judged_one.vcpu)
    calls = {"where": decider.decisions}
    decider = Decider()
    after = loaded.changed(parse_changes([f"host-a-*={PROBED / '7.2__a57.json'}"], loaded))
    with open("/dev/null", "rb") as stdin:
        judged, _ = guests_from_directory(guests, stdin)
    plan(loaded, after, judged, decider)
    calls["plan"] = decider.decisions
    return calls


def collect(quick: bool = False) -> dict[str, Any]:
    """Every size is measured in each round, interleaved, so that a busy machine slows every
    size alike; the medians over the rounds are reported."""
    sizes = (40, 1000) if quick else (40, 1000, 10000)
    rounds = 1 if quick else 3
    profiles = distinct_profiles()
    cli = [sys.executable, "-I", "-m", "psci_hook"]
    with tempfile.TemporaryDirectory(prefix="psci-bench-fleet-") as tmp:
        guests = Path(tmp) / "guests"
        guest = build_guests(guests, profiles)
        fleets = {}
        for hosts in sizes:
            fleets[hosts] = Path(tmp) / f"fleet-{hosts}"
            build_fleet(fleets[hosts], hosts, profiles)
        argv = {hosts: {
            "where": [*cli, "where", "--domain-xml", str(guest), "--fleet", str(fleet),
                      "--json"],
            "plan": [*cli, "plan", "--fleet", str(fleet), "--change",
                     f"host-a-*={PROBED / '7.2__a57.json'}", "--guests", str(guests),
                     "--format", "json"]} for hosts, fleet in fleets.items()}
        times: dict[int, dict[str, list[float]]] = {
            h: {"where_cold_s": [], "where_warm_s": [], "plan_warm_s": []} for h in sizes}
        outputs: dict[int, dict[str, bytes]] = {h: {} for h in sizes}
        for _ in range(rounds):
            for hosts in sizes:
                (fleets[hosts] / INDEX_NAME).unlink(missing_ok=True)
                elapsed, _ = timed_once(argv[hosts]["where"])  # reads every file, writes the index
                times[hosts]["where_cold_s"].append(elapsed)
                elapsed, outputs[hosts]["where"] = timed_once(argv[hosts]["where"])
                times[hosts]["where_warm_s"].append(elapsed)
                elapsed, outputs[hosts]["plan"] = timed_once(argv[hosts]["plan"])
                times[hosts]["plan_warm_s"].append(elapsed)
        rows = []
        for hosts in sizes:
            answered = len(json.loads(outputs[hosts]["where"])["hosts"])
            assert answered == hosts, (answered, hosts)
            result = json.loads(outputs[hosts]["plan"])
            calls = engine_calls(fleets[hosts], guests, guest)
            rows.append({"hosts": hosts, "distinct_profiles": len(profiles), "runs": rounds,
                         **{k: statistics.median(v) for k, v in times[hosts].items()},
                         "plan_guests": len(result["guests"]),
                         "plan_changed_pairs": len(result["pairs"]),
                         "where_engine_calls": calls["where"],
                         "plan_engine_calls": calls["plan"]})
    return {"machine": machine(), "rows": rows}


def machine() -> dict[str, Any]:
    return {"python": platform.python_version(), "executable": sys.executable,
            "platform": platform.platform(), "cpus": len(__import__("os").sched_getaffinity(0))}


def report(results: dict[str, Any]) -> str:
    rows = results["rows"]
    base = rows[0]
    lines = [f"psci-hook where / plan over fleets of the same {base['distinct_profiles']} "
             f"distinct profiles (Python {results['machine']['python']}, "
             f"{results['machine']['cpus']} CPUs)", "",
             "| hosts | where, cold | where, warm | plan, warm | engine calls (where / plan) |",
             "|---:|---:|---:|---:|---:|"]
    for r in rows:
        def cell(key: str, r: dict[str, Any] = r) -> str:
            return f"{r[key] * 1000:.0f} ms ({r[key] / base[key]:.2f}x)"

        lines.append(f"| {r['hosts']} | {cell('where_cold_s')} | {cell('where_warm_s')} | "
                     f"{cell('plan_warm_s')} | {r['where_engine_calls']} / "
                     f"{r['plan_engine_calls']} |")
    lines += ["", "Ratios are to the same command on 40 hosts. Cold: no fleet index (every "
              "host file read and parsed); warm: the index is current (one stat per file).",
              f"plan: {rows[-1]['plan_guests']} guests, half the hosts moved to 7.2; "
              f"{rows[-1]['plan_changed_pairs']} class pairs change verdict."]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    results = collect(quick=args.quick)
    print(json.dumps(results, indent=1) if args.json else report(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
