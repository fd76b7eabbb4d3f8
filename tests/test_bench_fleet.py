"""benchmarks/bench_fleet.py runs once in CI, in quick mode (40 and 1,000 hosts): its figures go
to the log; nothing here judges the times, only that every figure was measured."""

from __future__ import annotations

from typing import Any

import pytest

from tests.helpers import run_quick_benchmark

pytestmark = pytest.mark.slow


def test_the_fleet_benchmark_runs_and_prints_every_figure(capsys: Any) -> None:
    results, text = run_quick_benchmark("bench_fleet", capsys)
    rows = results["rows"]
    assert [r["hosts"] for r in rows] == [40, 1000]
    assert all(r["distinct_profiles"] == 30 for r in rows)
    # Engine calls depend on the distinct profiles: `where` decides each one once, and the two
    # where only the PSCI version blocks once more, as a kvm-psci-version boot (Y(psci)).
    assert [r["where_engine_calls"] for r in rows] == [32, 32]
    assert all(r[k] > 0 for r in rows for k in ("where_cold_s", "where_warm_s", "plan_warm_s"))
    assert "where, warm" in text and "(1.00x)" in text
