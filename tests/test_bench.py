"""benchmarks/bench_hook.py runs once in CI, in quick mode: its figures go to the log, and
nothing here judges them (the benchmark prints figures; targets are reported, not enforced)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.helpers import run_quick_benchmark

pytestmark = pytest.mark.slow


def test_the_benchmark_runs_and_prints_every_figure(capsys: Any) -> None:
    results, text = run_quick_benchmark("bench_hook", capsys)
    names = [row["name"] for row in results["latency"]["rows"]]
    assert len(names) == 5 and all(row["median_ms"] > 0 for row in results["latency"]["rows"])
    growth = results["growth"]
    assert len(growth["rows"]) >= 3 and "slope_ms_per_mb" in growth["cpu_fit"]
    assert [row["pairs"] for row in results["matrix"]["rows"]] == [2500, 10000]
    for heading in ("Hook latency", "Targets", "Growth with domain XML size", "Linear fit",
                    "psci-hook matrix", "not measured here"):
        assert heading in text
