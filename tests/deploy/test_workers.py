"""``pulsewire serve --workers N``: several nodes on one port under a supervisor."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest

from pulsewire.server.workers import RestartPolicy

from .conftest import API_KEY, HOST, Client, api, redis_config

pytestmark = pytest.mark.timeout(120)


async def clients_on_every_worker(url: str, names: set[str], limit: int = 64) -> list[Client]:
    """Open connections until each worker node has at least one (the kernel spreads them)."""
    clients: list[Client] = []
    while {c.node for c in clients} != names:
        assert len(clients) < limit, f"only {sorted({c.node for c in clients})} after {limit}"
        clients.append(await Client.open(url))
    return clients


async def test_workers_share_the_port_and_the_engine_and_drain_on_sigterm(
    serve, write_config, redis_engine
):
    config = write_config(redis_config(redis_engine))
    node = await serve(
        "--config",
        config,
        "--port",
        "0",
        "--workers",
        "2",
        "--node-name",
        "w",
        "--drain-timeout",
        "3",
    )
    port = await node.listening()
    url = f"ws://{HOST}:{port}/connection/websocket"
    clients = await clients_on_every_worker(url, {"w-1", "w-2"})
    one = next(c for c in clients if c.node == "w-1")
    two = next(c for c in clients if c.node == "w-2")
    await one.subscribe("news:x")
    await two.subscribe("news:x")
    # Each API call is a new connection, landing on either worker; both subscribers see all.
    for n in range(6):
        status, answer = await api(port, "publish", {"channel": "news:x", "data": n})
        assert status == 200, answer
    for client in (one, two):
        assert [await client.publication() for _ in range(6)] == list(range(6))

    started = time.monotonic()
    node.signal(signal.SIGTERM)
    codes = await asyncio.gather(*(c.close_code() for c in clients))
    assert set(codes) == {1012}
    assert await node.exit_status(10) == 0
    assert time.monotonic() - started < 3 + 2
    assert sum(line.startswith("listening on") for line in node.stdout) == 1


async def test_a_dead_worker_is_restarted(serve, write_config, redis_engine):
    config = write_config(redis_config(redis_engine))
    node = await serve(
        "--config",
        config,
        "--port",
        "0",
        "--workers",
        "2",
        "--node-name",
        "r",
        "--drain-timeout",
        "2",
    )
    port = await node.listening()
    pid = int((await node.wait_line(r"worker r-2 started \(pid (\d+)\)")).group(1))
    os.kill(pid, signal.SIGKILL)
    await node.wait_line(r"worker r-2 died \(exit status -9\); restarting in")
    again = await node.wait_line(r"worker r-2 started \(pid (\d+)\)", 30, nth=2)
    assert int(again.group(1)) != pid
    await node.wait_line(r"worker r-2 ready", 30, nth=2)
    clients = await clients_on_every_worker(
        f"ws://{HOST}:{port}/connection/websocket", {"r-1", "r-2"}
    )
    node.signal(signal.SIGINT)  # Ctrl-C: forwarded as SIGTERM, workers drain
    assert set(await asyncio.gather(*(c.close_code() for c in clients))) == {1012}
    assert await node.exit_status(10) == 0
    assert sum(line.startswith("listening on") for line in node.stdout) == 1


async def test_sighup_reaches_every_worker(serve, write_config, redis_engine):
    path = write_config(redis_config(redis_engine))
    node = await serve("--config", path, "--port", "0", "--workers", "2", "--node-name", "h")
    port = await node.listening()
    clients = await clients_on_every_worker(
        f"ws://{HOST}:{port}/connection/websocket", {"h-1", "h-2"}
    )
    write_config(redis_config(redis_engine).replace(API_KEY, "rotated-key"))
    node.signal(signal.SIGHUP)
    for name in ("h-1", "h-2"):
        await node.wait_line(rf"\[{name}\] pulsewire.server: reloaded .*api_key changed")
    # New connections land on either worker: every one of them knows the new key only.
    for _ in range(8):
        assert (await api(port, "info", {}, "rotated-key"))[0] == 200
        assert (await api(port, "info", {}))[0] == 403
    assert all(c.ws.close_code is None for c in clients)
    node.signal(signal.SIGTERM)
    assert set(await asyncio.gather(*(c.close_code() for c in clients))) == {1012}
    assert await node.exit_status(15) == 0


async def test_several_workers_refuse_the_memory_engine(serve):
    node = await serve("--workers", "2", "--port", "0")
    assert await node.exit_status(30) == 2
    assert "in-memory engine" in node.output
    assert "separate hub" in node.output
    assert not any(line.startswith("listening") for line in node.stdout)


async def test_zero_workers_is_a_usage_error(serve):
    node = await serve("--workers", "0", "--port", "0")
    assert await node.exit_status(30) == 2
    assert "argument --workers: expected a positive integer, got '0'" in node.output


async def test_a_worker_that_cannot_start_stops_the_supervisor(serve, tmp_path):
    missing = tmp_path / "missing-cert.pem"
    node = await serve("--workers", "1", "--port", "0", "--tls-cert", str(missing))
    assert await node.exit_status(30) == 2
    assert "missing-cert.pem" in node.output
    assert not any(line.startswith("listening") for line in node.stdout)


def test_restart_policy_backs_off_and_gives_up():
    policy = RestartPolicy(base_delay=0.25, max_delay=5.0, max_failures=5, healthy_after=10.0)
    assert [policy.delay(n) for n in range(1, 7)] == [0.25, 0.5, 1.0, 2.0, 4.0, 5.0]
    assert policy.failed_run(None)  # died before it was ready
    assert policy.failed_run(2.0)  # crash loop: died soon after being ready
    assert not policy.failed_run(60.0)  # a good run: the count starts over
