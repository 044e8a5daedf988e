"""benchmarks/compare_commits.py: the verdict and table on made-up numbers, and a tiny A/A run
end to end (HEAD against itself: two exported, built trees, each server checked to import
its own tree)."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


def load() -> ModuleType:
    name = "bench_compare_commits"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / "compare_commits.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


compare = load()


def metric(values: dict[str, list[float]], higher_is_better: bool = True) -> object:
    m = compare.Metric("k", "title", "msg/s", higher_is_better)
    m.values = values
    return m


def test_verdict() -> None:
    same = [100.0, 101, 99, 100, 102]
    slower = [90.0, 91, 89, 92, 90]
    mixed = [90.0, 105, 89, 92, 90]
    assert compare.verdict(metric({"A": same, "B": slower})) == "B worse (-10.0%)"
    assert compare.verdict(metric({"A": same, "B": slower}, False)) == "B better (-10.0%)"
    assert compare.verdict(metric({"A": same, "B": mixed})) == "within noise"
    # a difference no larger than A/A's is noise, even when every round agrees
    noisy_aa = [100.0, 101, 99, 112, 102]  # one round 12 % off
    with_aa = metric({"A": same, "B": slower, "A2": noisy_aa})
    assert compare.noise_floor(with_aa) == pytest.approx(0.12)
    assert compare.verdict(with_aa) == "within noise"
    assert compare.verdict(metric({"A": same, "B": slower, "A2": same})) == "B worse (-10.0%)"
    # without A2: half of A's range over its median
    assert compare.noise_floor(metric({"A": [90.0, 100, 110], "B": same})) == pytest.approx(0.1)
    assert compare.verdict(metric({"A": same[:2], "B": slower[:2]})).startswith("(fewer")


def test_round_order_alternates() -> None:
    arms = ["A", "B", "A2"]
    assert compare.round_order(arms, 0) == ["A", "B", "A2"]
    assert compare.round_order(arms, 1) == ["A2", "B", "A"]


def test_cell_and_ratios() -> None:
    assert compare.cell([100.0, 110, 90]) == "100 [90.0..110] ±10%"
    assert compare.ratio([110.0, 100, 120], [100.0, 100, 100]) == pytest.approx(1.1)
    assert compare.paired([110.0, 95], [100.0, 100]) == "0.950..1.100"


@pytest.mark.timeout(300)
def test_a_tiny_aa_run(tmp_path: Path) -> None:
    if shutil.which("git") is None or shutil.which("gcc") is None:
        pytest.skip("needs git and gcc")
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True)
    if head.returncode:
        pytest.skip("not a git checkout")
    settings = compare.Settings(
        rounds=1,
        aa=False,
        scenarios=("tp_1x100_32",),
        duration=0.3,
        warmup=0.1,
        subscribers=40,
        publications=1,
    )
    result = compare.compare("HEAD", "HEAD", settings)
    assert [a["label"] for a in result["arms"]] == ["A", "B"]
    assert result["arms"][0]["identity"].startswith("before/src/pulsewire/__init__.py + before/")
    assert result["arms"][1]["identity"].startswith("after/src/pulsewire/__init__.py + after/")
    values = {m["key"]: m["values"] for m in result["metrics"]}
    assert set(values) == {
        "echo tp_1x100_32",
        "fanout first_ms",
        "fanout last_ms",
        "fanout deliveries_per_s",
        "fanout server_cpu_us_per_delivery",
    }
    for per_arm in values.values():
        assert set(per_arm) == {"A", "B"}
        assert all(v > 0 for v in per_arm["A"] + per_arm["B"])
    assert "| echo: 1 conn" in result["markdown"]
