"""benchmarks/bench_hook.py runs once in CI, in quick mode: its figures go to the log, and
nothing here judges them (the benchmark prints figures; targets are reported, not enforced)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_hook.py"


def test_the_benchmark_runs_and_prints_every_figure(capsys: Any) -> None:
    spec = importlib.util.spec_from_file_location("bench_hook", BENCH)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    results = bench.collect(quick=True)
    text = bench.report(results)
    with capsys.disabled():
        print("\n" + text)
    names = [row["name"] for row in results["latency"]["rows"]]
    assert len(names) == 5 and all(row["median_ms"] > 0 for row in results["latency"]["rows"])
    growth = results["growth"]
    assert len(growth["rows"]) >= 3 and "slope_ms_per_mb" in growth["cpu_fit"]
    assert [row["pairs"] for row in results["matrix"]["rows"]] == [2500, 10000]
    for heading in ("Hook latency", "Targets", "Growth with domain XML size", "Linear fit",
                    "psci-hook matrix", "not measured here"):
        assert heading in text
