"""Helpers shared by the test modules: the repository, shared/ beside it, profiles built for one
rule at a time, and the benchmarks loaded as modules."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from types import ModuleType
from typing import Any

from psci_hook import registers as regs
from psci_hook.profile import HostProfile

REPO = Path(__file__).resolve().parent.parent
# In CI the repository is cloned somewhere with a copy of shared/ beside it.
SHARED = Path(os.environ.get("PSCI_HOOK_SHARED", REPO.parent / "shared"))
# libvirt's in-process test driver: a real libvirt connection, no daemon.
TEST_URI = "test:///default"


def fw(**values: int) -> dict[int, int]:
    return {regs.FW_BY_NAME[name].reg_id: value for name, value in values.items()}


def make_profile(release: str = "6.12.0-test", registers: dict[int, int] | None = None,
                 lists: dict[str, tuple[int, ...]] | None = None, **kw: Any) -> HostProfile:
    return HostProfile(kernel_release=release, machine="aarch64",
                       registers=registers if registers is not None else {},
                       cpreg_lists=lists, **kw)


def load_benchmark(name: str) -> ModuleType:
    """benchmarks/<name>.py as a module (benchmarks/ is scripts, not a package)."""
    path = REPO / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_quick_benchmark(name: str, capsys: Any) -> tuple[dict[str, Any], str]:
    """benchmarks/<name>.py in quick mode, as CI runs it: its results, and its report, which goes
    to the test log."""
    bench = load_benchmark(name)
    results: dict[str, Any] = bench.collect(quick=True)
    text: str = bench.report(results)
    with capsys.disabled():
        print("\n" + text)
    return results, text
