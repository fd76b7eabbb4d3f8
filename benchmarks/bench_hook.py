#!/usr/bin/env python3
"""How fast the hook answers libvirt, and how that scales. Prints figures; never fails.

    .venv/bin/python benchmarks/bench_hook.py            # the full run (a few minutes)
    .venv/bin/python benchmarks/bench_hook.py --quick    # fewer runs and sizes (CI, ~30 s)
    .venv/bin/python benchmarks/bench_hook.py --json     # the figures as JSON

Run it with the interpreter the hook uses (the virtualenv's python, which is Debian's
/usr/bin/python3 with the system's site packages): every figure is a ratio to that interpreter
measured in the same run, interleaved run by run so that a busy machine slows every variant
alike. CI runs it once, in quick mode, from tests/test_bench.py.

What is measured, each as wall time of the whole process as libvirt sees it (fork, exec,
interpreter start, imports, decision, exit), median and 95th percentile:
- the bare interpreter, ``python3 -I -c pass``, and the floor the hook cannot go below,
  ``python3 -I -c "import lxml.etree, structlog"``;
- the hook for an operation it ignores (``started begin``), for ``migrate begin`` that allows
  and annotates, and for one it vetoes, with the host profile in a warm boot-time cache;
- ``migrate begin`` as the domain XML grows (devices and others' <metadata>), with a linear fit;
- ``psci-hook matrix`` over hundreds of generated host profiles.
Targets (issue 8): ignored operation <= 1.3x bare; migrate decision <= 1.25x the floor; linear
growth. The probe's cost when the cache is missing is not measured here: it needs arm64 KVM.
When a nested run (tests/nested/, within NESTED_MAX_AGE_DAYS) left its figures in
<cache>/nested/hook-timings.json, they are printed: the real hook on Debian's arm64 kernels under
TCG, with the boot-time cache missing (inline probe) and warm; emulated, so only their ratio and
difference mean anything.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
HOOK_SOURCE = REPO / "hooks" / "50-psci-hook"
PROFILES = REPO / "psci_hook" / "data" / "profiles"
LIBVIRT_ENV = {"LC_ALL": "C", "PATH": "/usr/bin:/bin", "HOME": "/root"}
TARGET_IGNORED = 1.3  # x bare interpreter
TARGET_DECISION = 1.25  # x floor

DOMAIN = """<domain type='kvm'>
  <name>vm1</name>
  <uuid>c7a5fdbd-edaf-9455-926a-d65c16db1809</uuid>
  <memory unit='KiB'>4194304</memory>
  <vcpu placement='static'>4</vcpu>
  <os>
    <type arch='aarch64' machine='virt-7.2'>hvm</type>
    <loader readonly='yes' type='pflash'>/usr/share/AAVMF/AAVMF_CODE.fd</loader>
  </os>
  <features>
    <acpi/>
    <gic version='3'/>
  </features>
  <cpu mode='host-passthrough' check='none'/>
  <devices>
    <emulator>/usr/bin/qemu-system-aarch64</emulator>
{devices}  </devices>
{metadata}</domain>
"""
DEVICE = """    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2' cache='none'/>
      <source file='/var/lib/libvirt/images/vm1-disk{i}.qcow2'/>
      <target dev='vd{i}' bus='virtio'/>
      <address type='pci' domain='0x0000' bus='0x{bus:02x}' slot='0x{slot:02x}' function='0x0'/>
    </disk>
"""
FOREIGN = "      <app:item id='{i}' owner='team-{i}'>note {i}: caf\u00e9 &amp; more</app:item>\n"


# ---------------------------------------------------------------------------------------------
# Set-up: the hook installed as libvirt runs it, a warm cache, the inputs
# ---------------------------------------------------------------------------------------------


def install_hook(directory: Path, run_dir: Path | None = None) -> Path:
    """A copy of the hook with this interpreter (as ``psci-hook install`` does for a pip
    install); with ``run_dir``, its boot-time cache is read from there, not /run/psci-hook."""
    first, rest = HOOK_SOURCE.read_text().split("\n", 1)
    assert first.startswith("#!"), first
    if run_dir is not None:
        call = "return int(hook_main(Environment.from_process()))"
        assert call in rest
        rest = rest.replace(call, (
            "import pathlib\n"
            "    env = Environment.from_process()\n"
            f"    env.run_dir = pathlib.Path({str(run_dir)!r})\n"
            "    return int(hook_main(env))"))
    target = directory / ("50-psci-hook" if run_dir is None else "50-psci-hook-cached")
    target.write_text(f"#!{sys.executable} -I\n{rest}")
    target.chmod(0o755)
    return target


def warm_cache(run_dir: Path, profile_name: str) -> None:
    """<run_dir>/host.json as `psci-hook probe --write` leaves it for this boot and kernel."""
    data = json.loads((PROFILES / f"{profile_name}.json").read_text())
    data["kernel_release"] = os.uname().release
    data["boot_id"] = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "host.json").write_text(json.dumps(data, indent=1) + "\n")


def domain_xml(devices: int = 0, foreign: int = 0, booted_on: str = "6.1__a57") -> bytes:
    """A domain with ``devices`` disks and ``foreign`` items of another application's
    <metadata>, carrying the record of a guest cold-booted on the profile ``booted_on``."""
    from psci_hook.engine import GuestState
    from psci_hook.profile import load_profile
    from psci_hook.record import GuestRecord, Origin, record_xml
    from psci_hook.splice import splice_record

    metadata = ""
    if foreign:
        metadata = ("  <metadata>\n    <app:data xmlns:app='https://example.org/app/1'>\n"
                    + "".join(FOREIGN.format(i=i) for i in range(foreign))
                    + "    </app:data>\n  </metadata>\n")
    text = DOMAIN.format(devices="".join(
        DEVICE.format(i=i, bus=1 + i // 32 % 255, slot=i % 32) for i in range(devices)),
        metadata=metadata)
    record = GuestRecord(GuestState.booted_on(load_profile(PROFILES / f"{booted_on}.json")),
                         Origin("booted", "host-a", "6.1.0-26-arm64", "2026-11-30T00:00:00Z"))
    return splice_record(text.encode(), lambda indent: record_xml(record, indent)).data


class LogSink:
    """A syslog socket that keeps up (a real journal or syslog daemon would)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.1)
        self.received = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._drain, daemon=True)
        self.thread.start()

    def _drain(self) -> None:
        while not self.stop.is_set():
            try:
                self.sock.recv(1 << 20)
                self.received += 1
            except (socket.timeout, OSError):
                continue

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        self.sock.close()


# ---------------------------------------------------------------------------------------------
# Measuring
# ---------------------------------------------------------------------------------------------


class Variant:
    def __init__(self, name: str, argv: Sequence[str], stdin: bytes = b"",
                 env: dict[str, str] | None = None, expect: int = 0) -> None:
        self.name, self.argv, self.stdin = name, list(argv), stdin
        self.env = env if env is not None else dict(LIBVIRT_ENV)
        self.expect = expect
        self.times: list[float] = []  # wall seconds
        self.cpu: list[float] = []  # user + system seconds of the child

    def once(self) -> None:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        proc = subprocess.run(self.argv, input=self.stdin, env=self.env, cwd="/",
                              capture_output=True, check=False)
        elapsed = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if proc.returncode != self.expect:
            raise SystemExit(f"{self.name}: exit {proc.returncode}, expected {self.expect}: "
                             f"{proc.stderr.decode(errors='replace').strip()}")
        self.times.append(elapsed)
        self.cpu.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def p95(self) -> float:
        ordered = sorted(self.times)
        return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]

    @property
    def cpu_median(self) -> float:
        return statistics.median(self.cpu)


def measure(variants: Sequence[Variant], runs: int, warmup: int = 3) -> None:
    """Round robin: every variant once per round, so that load changes hit all alike."""
    for _ in range(warmup):
        for v in variants:
            v.once()
    for v in variants:
        v.times.clear()
        v.cpu.clear()
    for _ in range(runs):
        for v in variants:
            v.once()


def linear_fit(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float, float]:
    """Least squares y = a + b x: (a, b, r squared)."""
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys))
    b = sxy / sxx
    a = my - b * mx
    ss_tot = sum((y - my) ** 2 for y in ys)
    ss_res = sum((y - a - b * x) ** 2 for x, y in zip(xs, ys))
    return a, b, (1 - ss_res / ss_tot) if ss_tot else 1.0


# ---------------------------------------------------------------------------------------------
# The benchmarks
# ---------------------------------------------------------------------------------------------


def bench_latency(tmp: Path, runs: int, log: LogSink) -> dict[str, Any]:
    run_dir = tmp / "run"
    warm_cache(run_dir, "6.12__a76")
    cached = install_hook(tmp, run_dir)
    veto_run = tmp / "run-veto"
    warm_cache(veto_run, "5.10__a57")
    (tmp / "veto").mkdir()
    cached_veto = install_hook(tmp / "veto", veto_run)
    config = tmp / "psci-hook.conf"
    config.write_text("[hook]\nrehearse = no\n[log]\ntarget = syslog\n"
                      f"syslog_socket = {log.path}\n")
    env = {**LIBVIRT_ENV, "PSCI_HOOK_CONFIG": str(config)}
    allow_xml, veto_xml = domain_xml(), domain_xml(booted_on="6.12__a57")
    py = sys.executable
    variants = [
        Variant("bare interpreter: python3 -I -c pass", [py, "-I", "-c", "pass"]),
        Variant("floor: python3 -I -c 'import lxml.etree, structlog'",
                [py, "-I", "-c", "import lxml.etree, structlog"]),
        Variant("hook, ignored operation (started begin)",
                [str(cached), "vm1", "started", "begin", "-"], allow_xml, env),
        Variant("hook, migrate begin: allow + annotate",
                [str(cached), "vm1", "migrate", "begin", "-"], allow_xml, env),
        Variant("hook, migrate begin: veto",
                [str(cached_veto), "vm1", "migrate", "begin", "-"], veto_xml, env, expect=1),
    ]
    measure(variants, runs)
    bare, floor = variants[0].median, variants[1].median
    cpu_bare, cpu_floor = variants[0].cpu_median, variants[1].cpu_median
    rows = []
    for v in variants:
        rows.append({"name": v.name, "median_ms": v.median * 1000, "p95_ms": v.p95 * 1000,
                     "x_bare": v.median / bare, "x_floor": v.median / floor,
                     "cpu_median_ms": v.cpu_median * 1000, "cpu_x_bare": v.cpu_median / cpu_bare,
                     "cpu_x_floor": v.cpu_median / cpu_floor, "runs": runs})
    ignored, allow, veto = (variants[i].median for i in (2, 3, 4))
    return {
        "rows": rows,
        "targets": {
            "ignored_x_bare": ignored / bare,
            "ignored_met": ignored / bare <= TARGET_IGNORED,
            "allow_x_floor": allow / floor,
            "veto_x_floor": veto / floor,
            "decision_met": max(allow, veto) / floor <= TARGET_DECISION,
            "cpu_ignored_x_bare": variants[2].cpu_median / cpu_bare,
            "cpu_allow_x_floor": variants[3].cpu_median / cpu_floor,
            "cpu_veto_x_floor": variants[4].cpu_median / cpu_floor,
        },
    }


def bench_growth(tmp: Path, runs: int, sizes: Sequence[int], log: LogSink) -> dict[str, Any]:
    run_dir = tmp / "run-growth"
    warm_cache(run_dir, "6.12__a76")
    (tmp / "growth").mkdir()
    hook = install_hook(tmp / "growth", run_dir)
    config = tmp / "growth.conf"
    config.write_text("[hook]\nrehearse = no\n[log]\ntarget = syslog\n"
                      f"syslog_socket = {log.path}\n")
    env = {**LIBVIRT_ENV, "PSCI_HOOK_CONFIG": str(config)}
    variants = []
    for n in sizes:
        xml = domain_xml(devices=n, foreign=n)
        variants.append(Variant(f"{n} devices + {n} metadata items", [
            str(hook), "vm1", "migrate", "begin", "-"], xml, env))
    measure(variants, runs, warmup=1)
    xs = [len(v.stdin) for v in variants]
    a, b, r2 = linear_fit(xs, [v.median for v in variants])
    cpu_a, cpu_b, cpu_r2 = linear_fit(xs, [v.cpu_median for v in variants])
    rows = []
    for n, v, size in zip(sizes, variants, xs):
        extra = (v.cpu_median - variants[0].cpu_median) / (size - xs[0]) * 1e9 \
            if size != xs[0] else None
        rows.append({"devices": n, "metadata_items": n, "bytes": size,
                     "median_ms": v.median * 1000, "p95_ms": v.p95 * 1000,
                     "cpu_median_ms": v.cpu_median * 1000, "cpu_ms_per_mb_over_minimal": extra})
    # Linear growth: the cost per MB over the minimal domain stays about the same from the
    # middle sizes to the largest; a superlinear step would show a rising ms/MB column.
    return {"rows": rows, "runs": runs,
            "fit": {"intercept_ms": a * 1000, "slope_ms_per_mb": b * 1e9, "r_squared": r2},
            "cpu_fit": {"intercept_ms": cpu_a * 1000, "slope_ms_per_mb": cpu_b * 1e9,
                        "r_squared": cpu_r2}}


def profile_variants(count: int, directory: Path) -> list[Path]:
    """``count`` host profiles: the bundled ones with register values varied (each value one
    that some bundled profile has, so every variant is a plausible kernel)."""
    bundled = [json.loads(p.read_text()) for p in sorted(PROFILES.glob("*.json"))]
    seen: dict[str, list[int]] = {}
    for data in bundled:
        for name, value in data["registers"].items():
            if value not in seen.setdefault(name, []):
                seen[name].append(value)
    names = sorted(seen)
    combos = list(itertools.product(*(seen[n] for n in names)))
    out = []
    for i, (values, base) in enumerate(itertools.product(combos, bundled)):
        if i == count:
            break
        data = json.loads(json.dumps(base))
        data["registers"] = {n: v for n, v in zip(names, values) if n in base["registers"]}
        path = directory / f"variant-{i:04d}.json"
        path.write_text(json.dumps(data))
        out.append(path)
    if len(out) < count:
        raise SystemExit(f"only {len(out)} distinct profile variants, {count} asked for")
    return out


def bench_matrix(tmp: Path, counts: Sequence[int], runs: int) -> dict[str, Any]:
    directory = tmp / "profiles"
    directory.mkdir()
    paths = profile_variants(max(counts), directory)
    rows = []
    for count in counts:
        argv = [sys.executable, "-I", "-m", "psci_hook", "matrix", "--format", "json",
                *map(str, paths[:count])]
        times = []
        for _ in range(runs):
            started = time.perf_counter()
            proc = subprocess.run(argv, capture_output=True, check=False, cwd="/")
            times.append(time.perf_counter() - started)
            if proc.returncode != 0:
                raise SystemExit(f"matrix: exit {proc.returncode}: {proc.stderr.decode()}")
            cells = len(json.loads(proc.stdout)["cells"])
            assert cells == count * count, cells
        median = statistics.median(times)
        rows.append({"profiles": count, "pairs": count * count, "median_s": median,
                     "us_per_pair": median / (count * count) * 1e6, "runs": runs})
    return {"rows": rows}


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "cpu model")):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / (1 << 30)
    import lxml.etree
    import structlog.processors  # noqa: F401

    try:
        from importlib.metadata import version
        structlog_version = version("structlog")
    except Exception:
        structlog_version = "?"
    return {
        "cpu": model or platform.processor() or "?",
        "arch": platform.machine(),
        "cpus": os.cpu_count(),
        "memory_gib": round(mem_gib, 1),
        "kernel": platform.release(),
        "python": f"{platform.python_version()} ({sys.executable})",
        "lxml": ".".join(map(str, lxml.etree.LXML_VERSION[:3])),
        "structlog": structlog_version,
        "loadavg_start": os.getloadavg(),
    }


def report(results: dict[str, Any]) -> str:
    m = results["machine"]
    out = [
        f"Machine: {m['cpu']} ({m['arch']}), {m['cpus']} CPUs, {m['memory_gib']} GiB, "
        f"Linux {m['kernel']}; Python {m['python']}; lxml {m['lxml']}, structlog "
        f"{m['structlog']}; load average {m['loadavg_start'][0]:.2f} at start, "
        f"{m['loadavg_end'][0]:.2f} at end.",
        "",
        "Hook latency (wall time of the whole process, warm boot-time cache, "
        f"{results['latency']['rows'][0]['runs']} interleaved runs each):",
        "",
        "| | median ms | p95 ms | x bare | x floor | CPU ms | CPU x bare | CPU x floor |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results["latency"]["rows"]:
        out.append(f"| {r['name']} | {r['median_ms']:.1f} | {r['p95_ms']:.1f} | "
                   f"{r['x_bare']:.2f} | {r['x_floor']:.2f} | {r['cpu_median_ms']:.1f} | "
                   f"{r['cpu_x_bare']:.2f} | {r['cpu_x_floor']:.2f} |")
    t = results["latency"]["targets"]
    out += ["",
            f"Targets (wall medians): ignored operation {t['ignored_x_bare']:.2f}x bare (target "
            f"<= {TARGET_IGNORED}: {'met' if t['ignored_met'] else 'MISSED'}); migrate decision "
            f"{t['allow_x_floor']:.2f}x (allow) and {t['veto_x_floor']:.2f}x (veto) the floor "
            f"(target <= {TARGET_DECISION}: {'met' if t['decision_met'] else 'MISSED'}). "
            f"In CPU time, which a busy machine disturbs less: {t['cpu_ignored_x_bare']:.2f}x, "
            f"{t['cpu_allow_x_floor']:.2f}x and {t['cpu_veto_x_floor']:.2f}x.",
            "",
            f"Growth with domain XML size (migrate begin, allow + annotate, "
            f"{results['growth']['runs']} runs each):",
            "",
            "| devices | metadata items | bytes | median ms | p95 ms | CPU ms | "
            "CPU ms per MB over minimal |",
            "|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results["growth"]["rows"]:
        per = r["cpu_ms_per_mb_over_minimal"]
        out.append(f"| {r['devices']} | {r['metadata_items']} | {r['bytes']} | "
                   f"{r['median_ms']:.1f} | {r['p95_ms']:.1f} | {r['cpu_median_ms']:.1f} | "
                   f"{'' if per is None else f'{per:.1f}'} |")
    f, c = results["growth"]["fit"], results["growth"]["cpu_fit"]
    out += ["", f"Linear fit, wall: {f['intercept_ms']:.1f} ms + {f['slope_ms_per_mb']:.1f} "
                f"ms/MB, r^2 = {f['r_squared']:.4f}; CPU: {c['intercept_ms']:.1f} ms + "
                f"{c['slope_ms_per_mb']:.1f} ms/MB, r^2 = {c['r_squared']:.4f}.", "",
            "psci-hook matrix over generated host profiles (JSON output):", "",
            "| profiles | pairs | median s | us per pair |", "|---:|---:|---:|---:|"]
    for r in results["matrix"]["rows"]:
        out.append(f"| {r['profiles']} | {r['pairs']} | {r['median_s']:.2f} | "
                   f"{r['us_per_pair']:.1f} |")
    out += ["", *nested_report(results.get("nested_hook"))]
    return "\n".join(out) + "\n"


NESTED_MAX_AGE_DAYS = 30


def nested_hook_timings(max_age_days: float = NESTED_MAX_AGE_DAYS) -> dict[str, Any] | None:
    """The hook timings a recent nested run wrote (tests/nested/conftest.py), else None.

    The file is under the nested harness's cache: $PSCI_HOOK_CACHE_DIR, else
    $XDG_CACHE_HOME/psci-hook, else ~/.cache/psci-hook; then nested/hook-timings.json.
    """
    override = os.environ.get("PSCI_HOOK_CACHE_DIR")
    if override:
        base = Path(override)
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        base = (Path(xdg) if xdg else Path.home() / ".cache") / "psci-hook"
    path = base / "nested" / "hook-timings.json"
    try:
        if time.time() - path.stat().st_mtime > max_age_days * 86400:
            return None
        data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data.get("boots"), dict) and data["boots"] else None


def nested_report(nested: dict[str, Any] | None) -> list[str]:
    head = "Probe cost with a missing cache on arm64 hardware: not measured here (it needs an " \
           "arm64 host with KVM)."
    if nested is None:
        return [head + " The nested arm64 harness (tests/nested/) measures the real hook under "
                "TCG when it runs; no recent run left figures (<cache>/nested/hook-timings.json)."]
    out = [head + f" The nested harness's last run ({nested.get('measured_at', '?')}) ran the real "
           "hook on Debian's arm64 kernels' own KVM, emulated by TCG "
           f"({nested.get('emulation', '?')}): figures of emulation, far above hardware; "
           "compare only the two columns of a row. Medians over the stamped guests; wall = the "
           "hook process, decision = its own duration_ms.", "",
           "| boot | kernel | inline probe: wall ms | warm: wall ms | inline probe: decision ms "
           "| warm: decision ms |", "|---|---|---:|---:|---:|---:|"]
    for label, f in sorted(nested["boots"].items()):
        out.append(f"| {label} | {f.get('release', '?')} | {f.get('cold_wall_ms', '?')} | "
                   f"{f.get('warm_wall_ms', '?')} | {f.get('cold_decision_ms', '?')} | "
                   f"{f.get('warm_decision_ms', '?')} |")
    return out


def collect(runs: int = 40, quick: bool = False) -> dict[str, Any]:
    """Every figure, as a dict (``report`` renders it)."""
    if quick:
        runs = min(runs, 8)
    sizes = [0, 300, 1000, 3000] if quick else [0, 100, 300, 1000, 3000, 10000]
    counts = [50, 100] if quick else [100, 200, 400]
    results: dict[str, Any] = {"machine": machine(), "quick": quick}
    with tempfile.TemporaryDirectory(prefix="psci-hook-bench.") as name:
        tmp = Path(name)
        log = LogSink(tmp / "log")
        try:
            results["latency"] = bench_latency(tmp, runs, log)
            results["growth"] = bench_growth(tmp, max(3, runs // 4), sizes, log)
        finally:
            log.close()
        results["matrix"] = bench_matrix(tmp, counts, 1)  # seconds-long runs: one each
    results["machine"]["loadavg_end"] = os.getloadavg()
    results["nested_hook"] = nested_hook_timings()
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=40, help="runs per latency variant")
    parser.add_argument("--quick", action="store_true",
                        help="fewer runs and sizes (CI): the figures are rougher")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    results = collect(args.runs, args.quick)
    print(json.dumps(results, indent=1) if args.json else report(results), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
