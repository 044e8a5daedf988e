"""benchmarks/hub_peers.py runs end to end against all three servers (100 subscribers, 2 rounds,
no thresholds): pulsewire serve, python-socketio under uvicorn and Node Socket.IO 4."""

from __future__ import annotations

import os
from typing import Any

import pytest

from .test_smoke import load

pytestmark = pytest.mark.timeout(60)


def test_hub_peers_benchmark_smoke() -> None:
    bench = load("hub_peers")
    results: dict[str, Any] = bench.run(bench.SMOKE)
    servers = results["servers"]
    missing = {n: s.get("reason") for n, s in servers.items() if s["status"] != "ok"}
    if missing:
        message = f"hub peer servers missing: {missing}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    assert set(servers) == {"pulsewire", "python-socketio", "node-socketio"}
    for name, server in servers.items():
        assert server["last_receipt_ms"]["count"] == 2, name  # every round reached all 100
        assert server["last_receipt_ms"]["p50"] >= server["first_receipt_ms"]["p50"] > 0, name
        assert server["deliveries_per_second"] > 0, name
        # subscribed connections cost the server memory: the figure the comparison rests on
        assert server["server_rss_mib_subscribed"] > server["server_rss_mib_before"] > 0, name
        assert server["memory_per_connection_kib"] > 0, name
        assert server["server_cpu_us_per_delivery"] >= 0, name
        assert server["driver_cpu_percent"] >= 0, name
        assert server["loadavg_before"] >= 0, name
    assert set(results["ratios_pulsewire_over_peer"]) == {"python-socketio", "node-socketio"}
    table = bench.markdown(results, "benchmarks/hub_peers.py --smoke")
    assert "| node-socketio |" in table and "| python-socketio |" in table
