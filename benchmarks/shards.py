#!/usr/bin/env python3
"""Publications through the sharded Redis engine: 1 shard against 3, side by side.

Three private ``redis-server`` processes (no persistence, free ports of 7250-7299) are
started and killed by PID. Each case is one ``redis+shards`` engine (a hub node) subscribed to
``--channels`` history channels, with ``--concurrency`` tasks publishing to them round-robin
for ``--seconds``; every publication must come back through pub/sub (it is counted when it
does). Reported per case:

* publications/s (acknowledged and delivered back),
* the Redis CPU per publication (``INFO cpu``: user + sys, summed over the shards, divided by
  the publications), and each shard's share of it,
* the per-shard ceiling that CPU figure implies: one Redis core / CPU per publication
  (extrapolated: it assumes the Redis main thread is the only limit).

The publisher is one Python process: on a small machine it is the bottleneck, so the
publications/s of the two cases are close, and the Redis CPU per publication is the figure to
plan shards with. The last lines are the 3-shard / 1-shard ratios.

    .venv/bin/python benchmarks/shards.py                 # ~15 s
    .venv/bin/python benchmarks/shards.py --seconds 1 --channels 50    # a smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from pulsewire.hub.engines.redis_shards import ShardedRedisEngine
from pulsewire.hub.types import Publication, PublishOptions

HOST = "127.0.0.1"
PORTS = range(7250, 7300)
OPTIONS = PublishOptions(history_size=100, history_ttl=60.0)


class Counter:
    """An EngineHandler counting the publications that came back."""

    def __init__(self) -> None:
        self.received = 0

    def on_publication(self, channel: str, publication: Publication) -> None:
        self.received += 1

    def on_join(self, *args: Any) -> None: ...
    def on_leave(self, *args: Any) -> None: ...
    def on_control(self, *args: Any) -> None: ...
    def on_engine_state(self, *args: Any) -> None: ...


def free_ports(count: int) -> list[int]:
    ports: list[int] = []
    for port in PORTS:
        with socket.socket() as sock:
            try:
                sock.bind((HOST, port))
            except OSError:
                continue
        ports.append(port)
        if len(ports) == count:
            return ports
    raise RuntimeError(f"fewer than {count} free ports in {PORTS}")


def start_servers(count: int, directory: Path) -> tuple[list[int], list[subprocess.Popen[bytes]]]:
    ports, procs = free_ports(count), []
    for port in ports:
        procs.append(
            subprocess.Popen(
                [
                    *("redis-server", "--port", str(port), "--bind", HOST),
                    *("--save", "", "--appendonly", "no", "--dir", str(directory)),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
    for port in ports:
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection((HOST, port), 0.5) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server on {port} did not start")
            time.sleep(0.02)
    return ports, procs


async def delivered(counter: Counter, count: int, timeout: float = 10.0) -> None:
    """Wait until ``count`` publications came back (at most ``timeout`` seconds)."""
    deadline = time.monotonic() + timeout
    while counter.received < count and time.monotonic() < deadline:
        await asyncio.sleep(0.005)


async def redis_cpu(ports: list[int]) -> list[float]:
    """Each server's CPU seconds so far (user + sys)."""
    import redis.asyncio as aioredis

    out = []
    for port in ports:
        client = aioredis.Redis(host=HOST, port=port)
        try:
            info = await client.info("cpu")
            out.append(float(info["used_cpu_user"]) + float(info["used_cpu_sys"]))
        finally:
            await client.aclose()
    return out


async def run_case(
    ports: list[int], *, seconds: float, channels: int, concurrency: int
) -> dict[str, Any]:
    engine = ShardedRedisEngine(
        [f"redis://{HOST}:{p}/0" for p in ports],
        f"bench-{uuid.uuid4().hex[:8]}",
        max_connections=max(64, concurrency),  # one connection per task in flight
    )
    counter = Counter()
    engine.bind(counter, "bench")
    await engine.start()
    names = [f"room:{i}" for i in range(channels)]
    try:
        for name in names:
            await engine.subscribe(name)
        cycle = itertools.cycle(names)
        published = 0
        stop = asyncio.Event()

        async def publisher() -> None:
            nonlocal published
            while not stop.is_set():
                await engine.publish(next(cycle), Publication({"n": published}), OPTIONS)
                published += 1

        warm_up = concurrency * 20  # connections opened, scripts cached
        for _ in range(warm_up):
            await engine.publish(next(cycle), Publication(None), OPTIONS)
        await delivered(counter, warm_up)
        cpu_before = await redis_cpu(ports)
        started = time.perf_counter()
        tasks = [asyncio.create_task(publisher()) for _ in range(concurrency)]
        await asyncio.sleep(seconds)
        stop.set()
        await asyncio.gather(*tasks)
        await delivered(counter, warm_up + published)
        elapsed = time.perf_counter() - started
        cpu_after = await redis_cpu(ports)
        cpu = [after - before for before, after in zip(cpu_before, cpu_after, strict=True)]
        return {
            "shards": len(ports),
            "publications": published,
            "delivered_back": counter.received - warm_up,
            "per_second": published / elapsed,
            "redis_cpu_us_per_publication": 1e6 * sum(cpu) / published,
            "cpu_share": [c / sum(cpu) for c in cpu] if sum(cpu) else [],
        }
    finally:
        await engine.close()


async def run(seconds: float, channels: int, concurrency: int) -> dict[str, Any]:
    if shutil.which("redis-server") is None:
        raise SystemExit("benchmarks/shards.py: redis-server is not installed")
    directory = Path(tempfile.mkdtemp(prefix="pw-bench-shards-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        ports, procs = start_servers(3, directory)
        one = await run_case(ports[:1], seconds=seconds, channels=channels, concurrency=concurrency)
        three = await run_case(ports, seconds=seconds, channels=channels, concurrency=concurrency)
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
        shutil.rmtree(directory, ignore_errors=True)
    return {"one": one, "three": three}


def report(results: dict[str, Any]) -> None:
    print(
        f"{'shards':>6} {'pubs':>8} {'back':>8} {'pubs/s':>9} {'redis µs/pub':>13}  "
        f"{'per-shard ceiling pubs/s':>25}  cpu share per shard"
    )
    for case in (results["one"], results["three"]):
        cpu = case["redis_cpu_us_per_publication"]
        share = " ".join(f"{s:.0%}" for s in case["cpu_share"])
        print(
            f"{case['shards']:>6} {case['publications']:>8} {case['delivered_back']:>8} "
            f"{case['per_second']:>9.0f} {cpu:>13.1f}  {1e6 / cpu if cpu else 0:>25.0f}  {share}"
        )
    one, three = results["one"], results["three"]
    cpu_ratio = three["redis_cpu_us_per_publication"] / one["redis_cpu_us_per_publication"]
    print(
        f"ratio 3/1: publications/s {three['per_second'] / one['per_second']:.2f}, "
        f"Redis CPU per publication {cpu_ratio:.2f}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="measured time per case")
    parser.add_argument("--channels", type=int, default=1000, help="history channels")
    parser.add_argument("--concurrency", type=int, default=32, help="publishing tasks")
    args = parser.parse_args(argv)
    report(asyncio.run(run(args.seconds, args.channels, args.concurrency)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
