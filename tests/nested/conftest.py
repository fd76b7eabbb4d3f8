"""Session fixture of the nested tests: build the initramfs once, boot every kernel/CPU pair."""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Iterator

import pytest

from tests.nested import nested_harness as harness

COMBOS = [(kernel, cpu) for kernel in harness.KERNELS for cpu in harness.CPUS]
# The hook timings of the last nested run (hook_timings), for the terminal summary; the same
# figures go to <cache>/hook-timings.json, which benchmarks/bench_hook.py reports.
HOOK_TIMINGS_FILE = "hook-timings.json"
_last_hook_timings: dict[str, dict[str, object]] = {}


def _conformance_counts(result: harness.BootResult) -> dict[str, int]:
    step = result.steps.get("conformance-json")
    if step is None or step.rc not in (0, 1):
        return {}
    try:
        checks = json.loads(step.stdout)["checks"]
    except (ValueError, KeyError):
        return {}
    accepted = sum(1 for c in checks if c["kernel"] == "accepted")
    return {"values": len(checks), "accepted": accepted, "refused": len(checks) - accepted,
            "disagreements": sum(1 for c in checks if c["verdict"] == "disagree")}


def hook_timings(results: dict[str, harness.BootResult]) -> dict[str, dict[str, object]]:
    """Per boot: the real hook's wall time (process start to exit, as libvirt waits for it) and
    its own decision time (the audit event's duration_ms), medians over the stamped sources,
    with the boot-time cache missing (the hook probes inline and writes it) and warm."""
    out: dict[str, dict[str, object]] = {}
    for label, result in sorted(results.items()):
        step = result.steps.get("hook")
        if step is None or step.rc != 0:
            continue
        try:
            runs = json.loads(step.stdout)["runs"].values()
        except (ValueError, KeyError):
            continue
        figures: dict[str, object] = {"release": result.release, "sources": len(runs)}
        for kind in ("cold", "warm"):
            walls = [r[kind]["seconds"] * 1000 for r in runs]
            decisions = [r[kind]["event"]["duration_ms"] for r in runs if r[kind]["event"]]
            figures[f"{kind}_wall_ms"] = round(statistics.median(walls), 1)
            if decisions:
                figures[f"{kind}_decision_ms"] = round(statistics.median(decisions), 1)
        out[label] = figures
    return out


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _last_hook_timings:
        return
    write = terminalreporter.write_line
    terminalreporter.section("real hook on nested arm64 KVM (TCG-emulated: not hardware figures)")
    write("medians over the stamped sources; wall = the hook process as libvirt waits for it, "
          "decision = its own duration_ms")
    write(f"{'boot':12} {'release':24} {'inline probe wall':>17} {'warm wall':>10} "
          f"{'inline probe decision':>21} {'warm decision':>13}")
    for label, f in _last_hook_timings.items():
        write(f"{label:12} {f['release']!s:24} {f['cold_wall_ms']!s:>14} ms "
              f"{f['warm_wall_ms']!s:>7} ms {f.get('cold_decision_ms', '?')!s:>18} ms "
              f"{f.get('warm_decision_ms', '?')!s:>10} ms")


@pytest.fixture(scope="session")
def nested_results(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, harness.BootResult]]:
    start = time.monotonic()
    try:
        initramfs = harness.build_initramfs(tmp_path_factory.mktemp("nested") / "initramfs.cpio")
        built = time.monotonic() - start
        results = {r.label: r for r in harness.boot_all(COMBOS, initramfs, parallel=2)}
    except harness.HarnessError as exc:
        pytest.fail(f"nested arm64 KVM test could not run: {exc}", pytrace=False)
    total = time.monotonic() - start
    report = {
        "initramfs_seconds": round(built, 1),
        "total_seconds": round(total, 1),
        "boots": {
            label: {
                "release": r.release,
                "wall_seconds": r.wall_seconds,
                "steps": {name: {"rc": s.rc, "seconds": s.seconds} for name, s in r.steps.items()},
                "conformance": _conformance_counts(r),
            }
            for label, r in sorted(results.items())
        },
    }
    (harness.cache_dir() / "last-run.json").write_text(json.dumps(report, indent=1) + "\n")
    # Each boot's probe output, for scripts/regenerate-probed-profiles --from-dir.
    probed = harness.cache_dir() / "last-probes"
    probed.mkdir(exist_ok=True)
    for label, result in results.items():
        try:
            (probed / f"{label}.json").write_text(json.dumps(result.probe_profile()) + "\n")
        except harness.HarnessError:
            continue
    timings = hook_timings(results)
    _last_hook_timings.update(timings)
    if timings:
        (harness.cache_dir() / HOOK_TIMINGS_FILE).write_text(json.dumps({
            "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "emulation": "qemu-system-aarch64 TCG, -M virt,virtualization=on, -smp 1, "
                         "2 boots in parallel; the kernel's own KVM inside",
            "boots": timings,
        }, indent=1) + "\n")
    yield results
