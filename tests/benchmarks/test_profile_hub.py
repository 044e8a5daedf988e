"""benchmarks/profile_hub.py: py-spy's raw samples grouped by where they were taken, and one
short real run against ``pulsewire serve`` (100 subscribers, 2 s of samples)."""

from __future__ import annotations

import os
from dataclasses import replace

import pytest

from .test_smoke import load

pytestmark = pytest.mark.timeout(90)

TOP = "<module> (pulsewire:8);run (asyncio/runners.py:118)"
RAW = f"""\
{TOP};Sender.flush (pulsewire/aio/sending.py:359);write (libc.so.6) 60
{TOP};Delivery._hand (pulsewire/hub/delivery.py:329) 10
{TOP};Sender.buffered_amount (pulsewire/aio/sending.py:193) 10
{TOP};UVStream__initiate_write (loop.c:107347) 5
{TOP};Py_SIZE (object.h:142) 5
{TOP};epoll_pwait (libc.so.6) 10
"""


def test_samples_are_grouped_by_their_leaf_frame() -> None:
    bench = load("profile_hub")
    summary = bench.summarize(RAW)
    assert summary["samples"] == 100
    assert summary["busy_samples"] == 90  # waiting in epoll is not work
    assert summary["percent_waiting"] == 10.0
    assert summary["percent_of_busy"] == {
        "write(2)": round(100 * 60 / 90, 1),
        "hub": round(100 * 10 / 90, 1),
        "transport, aio, protocol": round(100 * 10 / 90, 1),
        "event loop": round(100 * 5 / 90, 1),
        "interpreter, other": round(100 * 5 / 90, 1),
    }
    assert summary["top_leaves"][0] == {"frame": "write (libc.so.6)", "percent_of_busy": 66.7}
    assert all("epoll" not in leaf["frame"] for leaf in summary["top_leaves"])


def test_profile_hub_smoke() -> None:
    bench = load("profile_hub")
    peers = load("hub_peers")
    if bench.find_py_spy() is None:
        message = "py-spy is not installed"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    settings = replace(peers.SMOKE, client_procs=1)
    result = bench.profile(settings, 2.0, 200)
    assert result["rounds"] >= 1
    assert result["busy_samples"] > 0
    assert result["server_cpu_us_per_delivery"] > 0
    assert set(result["percent_of_busy"]) == set(bench.GROUPS) - {"waiting (epoll)"}
    assert "| write(2) |" in bench.markdown(result)
    section = "\n".join(load("hub_report").profile_section(result))
    assert "## Where the node's time goes" in section and "| write(2) |" in section
