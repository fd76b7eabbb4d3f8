"""Session fixture of the nested tests: build the initramfs once, boot every kernel/CPU pair."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import nested_harness as harness

COMBOS = [(kernel, cpu) for kernel in harness.KERNELS for cpu in harness.CPUS]


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
    yield results
