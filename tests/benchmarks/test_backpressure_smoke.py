"""benchmarks/backpressure.py runs end to end (40 subscribers, two half-second steps, no
thresholds): pulsewire across two nodes on a private redis-server (backpressure off, and on
where this pulsewire has it), python-socketio across two processes with its Redis manager."""

from __future__ import annotations

import os
import shutil
from typing import Any

import pytest

from .test_smoke import load

pytestmark = pytest.mark.timeout(120)


def test_backpressure_benchmark_smoke() -> None:
    if shutil.which("redis-server") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("redis-server is not installed")
        pytest.skip("redis-server is not installed")
    bench = load("backpressure")
    results: dict[str, Any] = bench.run(bench.SMOKE)
    runs = results["runs"]
    assert set(runs) == set(bench.RUNS)
    expected_on = "ok" if bench.has_backpressure() else "missing"
    assert runs["pulsewire-on"]["status"] == expected_on
    ran = {name: run for name, run in runs.items() if run["status"] == "ok"}
    assert "pulsewire-off" in ran and "python-socketio" in ran
    for name, run in ran.items():
        steps = run["steps"]
        assert [s["offered_per_second"] for s in steps] == list(bench.SMOKE.rates), name
        for step in steps:
            # at these rates nothing is refused or held back, and every publication reaches
            # every subscriber with a measured latency
            assert step["offered"] == step["sent"] == step["accepted"] > 0, (name, step)
            assert step["refused"] == step["skipped"] == step["undelivered"] == 0, (name, step)
            assert step["latency_ms"]["count"] == step["accepted"], (name, step)
            assert 0 < step["latency_ms"]["p50"] <= step["latency_ms"]["max"], (name, step)
            assert step["deliveries_per_second"] > 0, (name, step)
        assert run["connections_lost"] == 0, name
        assert run["sustainable_per_second"] in bench.SMOKE.rates, name
        assert run["node_b_cpu_percent"] > 0, name
    table = bench.markdown(results)
    assert "python-socketio, AsyncRedisManager" in table and "| 40 | 40 |" in table
