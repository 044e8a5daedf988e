"""benchmarks/client.py runs end to end (tiny counts, no thresholds), so it cannot rot."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "client.py"


def test_client_benchmark_smoke() -> None:
    spec = importlib.util.spec_from_file_location("bench_client", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    results = module.run_smoke()
    assert results["delivery_json_per_s"] > 0 and results["delivery_msgpack_per_s"] > 0
    assert results["recovery_median_ms"] > 0
