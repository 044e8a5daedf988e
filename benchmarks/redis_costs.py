#!/usr/bin/env python3
"""What one publication costs Redis, by how many nodes subscribe to its channel.

The figure behind the engine side of the capacity plan (docs/scaling.md): a private
``redis-server`` (no persistence), one publishing engine node and K subscribing engine nodes
(real :class:`~pulsewire.hub.engines.redis.RedisEngine` instances, each subscribed to every
channel, as hub nodes with subscribers there would be). The publisher keeps ``--window``
publishes in flight over ``--channels`` channels, with history (the Lua script that appends to
the stream and PUBLISHes) and without (a bare PUBLISH). Redis's own CPU counters
(``INFO cpu``: ``used_cpu_user`` + ``used_cpu_sys``) over the run, divided by the
publications, give Redis CPU per publication: CPU time, so it holds on a busy machine where
rates do not. Every subscribing node must receive every publication, or the run fails.

    .venv/bin/python benchmarks/redis_costs.py            # ~30 s
    .venv/bin/python benchmarks/redis_costs.py --smoke    # a few seconds

Prints JSON (``run() -> dict`` for tests).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from pulsewire.hub.engines.redis import RedisEngine
from pulsewire.hub.types import ClientInfo, Publication, PublishOptions

HISTORY = PublishOptions(history_size=100, history_ttl=300.0)
PLAIN = PublishOptions()
PAYLOAD = {"text": "x" * 150}  # ~170 bytes of JSON: a chat message


class Counter:
    """An engine handler that counts the publications it receives."""

    def __init__(self) -> None:
        self.received = 0
        self.changed = asyncio.Event()

    def on_publication(self, channel: str, publication: Publication) -> None:
        self.received += 1
        self.changed.set()

    def on_join(self, channel: str, info: ClientInfo, node: str = "") -> None: ...

    def on_leave(self, channel: str, info: ClientInfo) -> None: ...

    def on_control(self, message: dict[str, Any]) -> None: ...

    def on_engine_state(self, available: bool) -> None: ...


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_redis(directory: Path) -> tuple[subprocess.Popen[bytes], int]:
    server = shutil.which("redis-server")
    if server is None:
        raise SystemExit("redis_costs: redis-server is not installed")
    port = free_port()
    proc = subprocess.Popen(
        [server, "--port", str(port), "--save", "", "--appendonly", "no", "--dir", str(directory)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), 0.2) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    return proc, port
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("redis_costs: redis-server did not start")


async def redis_cpu(url: str) -> float:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(url)
    try:
        info = await client.info("cpu")
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])
    finally:
        await client.aclose()


async def measure(
    url: str, nodes: int, options: PublishOptions, publications: int, channels: int, window: int
) -> dict[str, Any]:
    """Redis CPU per publication with ``nodes`` subscribing nodes."""
    prefix = f"rc-{uuid.uuid4().hex[:8]}"
    names = [f"room:{i}" for i in range(channels)]
    publisher = RedisEngine(url, prefix=prefix)
    publisher.bind(Counter(), f"{prefix}-pub")
    await publisher.start()
    subscribers: list[tuple[RedisEngine, Counter]] = []
    try:
        for i in range(nodes):
            engine = RedisEngine(url, prefix=prefix)
            counter = Counter()
            engine.bind(counter, f"{prefix}-sub{i}")
            await engine.start()
            for name in names:
                await engine.subscribe(name)
            subscribers.append((engine, counter))
        body = Publication(PAYLOAD, origin=f"{prefix}-pub")
        cpu0 = await redis_cpu(url)
        started = time.monotonic()
        queue = iter(range(publications))

        async def worker() -> None:
            for i in queue:
                await publisher.publish(names[i % channels], body, options)

        await asyncio.gather(*(worker() for _ in range(window)))
        for _engine, counter in subscribers:
            deadline = time.monotonic() + 30
            while counter.received < publications:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"a node got {counter.received} of {publications}")
                counter.changed.clear()
                try:
                    await asyncio.wait_for(counter.changed.wait(), 1.0)
                except asyncio.TimeoutError:
                    pass
        seconds = time.monotonic() - started
        cpu = await redis_cpu(url) - cpu0
    finally:
        for engine, _counter in subscribers:
            await engine.close()
        await publisher.close()
    return {
        "subscribed_nodes": nodes,
        "history": options.history,
        "publications": publications,
        "redis_cpu_us_per_publication": round(cpu / publications * 1e6, 2),
        "publications_per_second": round(publications / seconds),
    }


async def run_async(publications: int, node_counts: list[int]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="pw-redis-costs-") as tmp:
        proc, port = start_redis(Path(tmp))
        url = f"redis://127.0.0.1:{port}/0"
        try:
            rows = [
                await measure(url, nodes, options, publications, channels=100, window=32)
                for options in (HISTORY, PLAIN)
                for nodes in node_counts
            ]
        finally:
            proc.kill()
            proc.wait()
    return {
        "benchmark": "redis_costs",
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "loadavg": float(Path("/proc/loadavg").read_text().split()[0]),
        "rows": rows,
    }


def run(smoke: bool = False) -> dict[str, Any]:
    if smoke:
        return asyncio.run(run_async(500, [1, 2]))
    return asyncio.run(run_async(20_000, [1, 2, 4, 8]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--smoke", action="store_true", help="500 publications, 1 and 2 nodes")
    args = parser.parse_args(argv)
    print(json.dumps(run(args.smoke), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
