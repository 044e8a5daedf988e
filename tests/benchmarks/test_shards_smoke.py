"""benchmarks/shards.py runs end to end (a fraction of a second per case, no thresholds)."""

from __future__ import annotations

import asyncio

import pytest

from hub.redis_servers import require

from .test_smoke import load

pytestmark = pytest.mark.timeout(60)


def test_shards_benchmark_smoke(capsys: pytest.CaptureFixture[str]) -> None:
    require()  # skips without redis-server (fails under CI=true)
    bench = load("shards")
    results = asyncio.run(bench.run(0.3, 20, 4))
    for case, shards in (("one", 1), ("three", 3)):
        outcome = results[case]
        assert outcome["shards"] == shards and outcome["publications"] > 0
        assert outcome["delivered_back"] == outcome["publications"]  # every one came back
    bench.report(results)
    assert "ratio 3/1" in capsys.readouterr().out
