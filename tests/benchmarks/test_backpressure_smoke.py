"""benchmarks/backpressure.py runs end to end (40 subscribers, two half-second steps, no
thresholds): pulsewire across two nodes on a private redis-server (backpressure off, and on
where this pulsewire has it), python-socketio across two processes with its Redis manager; and
benchmarks/hub_report.py makes its page section and chart from the results."""

from __future__ import annotations

import os
import shutil
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from .test_smoke import load

pytestmark = pytest.mark.timeout(120)


def test_backpressure_benchmark_smoke(tmp_path: Path) -> None:
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
            assert step["driver_backlog_kib"] >= 0 and "driver_behind" in step, (name, step)
            assert "a_saw_overload_percent" in step, (name, step)
            if name.startswith("pulsewire"):  # node B's /metrics polled during the step
                assert step["b_reported_lag_ms"] is not None, (name, step)
            # the part after node A's answer: every accepted publication, never longer
            after = step["after_accept_ms"]
            assert after["count"] == step["accepted"], (name, step)
            assert after["max"] <= step["latency_ms"]["max"], (name, step)
        assert run["connections_lost"] == 0, name
        # (whether p99 stayed under the bound depends on the machine's load)
        assert run["sustainable_per_second"] in (0, *bench.SMOKE.rates), name
        assert run["node_b_cpu_percent"] > 0, name
    table = bench.markdown(results)
    assert "python-socketio, AsyncRedisManager" in table and "| 40 | 40 |" in table
    # the page generator takes these results as they are (the fan-out sections left out)
    report = load("hub_report")
    page = report.markdown({"peers": [], "backpressure": results, "fanout": None})
    assert "## Across nodes: a rate-limited publisher and backpressure" in page
    assert "| pulsewire, backpressure off |" in page and "### Per step" in page
    assert report.chart({"peers": [], "backpressure": results}, tmp_path / "chart.png")
    assert (tmp_path / "chart.png").stat().st_size > 0


def test_receive_backlog_counts_unread_bytes_from_the_port() -> None:
    """What the driver has not read from node B's port is what /proc/net/tcp says it is."""
    bench = load("backpressure")
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port)) as client:
            accepted, _ = server.accept()
            with accepted:
                assert bench.receive_backlog(port) == 0
                accepted.sendall(b"x" * 5000)  # the client does not read it
                deadline = time.monotonic() + 10
                while bench.receive_backlog(port) < 5000 and time.monotonic() < deadline:
                    time.sleep(0.01)
                assert bench.receive_backlog(port) == 5000
                client.recv(5000, socket.MSG_WAITALL)
                assert bench.receive_backlog(port) == 0


def test_gate_percent_is_the_share_of_samples_with_a_node_held_overloaded() -> None:
    bench = load("backpressure")
    samples = [(0.0, 0.0), (1.0, 1.0), (2.0, 2.0), (3.0, 0.0), (4.0, 1.0)]
    assert bench.gate_percent(samples, 0.0, 4.0) == 50  # the sample at 4.0 is past the end
    assert bench.gate_percent(samples, 1.0, 3.0) == 100
    assert bench.gate_percent(samples, 5.0, 6.0) is None  # no sample: not known


def test_worst_ms_is_the_largest_sample_of_the_step_in_milliseconds() -> None:
    bench = load("backpressure")
    samples = [(0.0, 9.0), (1.0, 0.25), (2.0, 0.5), (3.0, 7.0)]
    assert bench.worst_ms(samples, 1.0, 3.0) == 500.0  # the sample at 3.0 is past the end
    assert bench.worst_ms(samples, 4.0, 5.0) is None
