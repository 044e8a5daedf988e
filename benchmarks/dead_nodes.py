#!/usr/bin/env python3
"""What knowing dead nodes costs, and how long cleaning up after one takes.

* Presence refresh: 1,000 sequential ``add_presence`` of existing entries (what every node
  does every ``presence_update_interval`` per presence subscription), median and p99, on the
  Redis (127.0.0.1:6379) and NATS (127.0.0.1:4222) the tests use.
* Redis memory per presence entry (``MEMORY USAGE`` of the channel keys over 10,000 entries
  with ~110-byte client infos), owner included.
* Cleanup: a dead instance with 1,000 entries in 50 channels; two survivors remove them at
  once as the hub does (its channel index, then 8 channels at a time): wall time, and the
  entries each removed (they add up to 1,000: each entry is removed by one of them).

The services are shared and the machine may be busy: compare orders of magnitude, not runs.
Everything is written under a random prefix and deleted afterwards.

    .venv/bin/python benchmarks/dead_nodes.py        # ~10 s
"""

from __future__ import annotations

import asyncio
import random
import secrets
import statistics
import time
import uuid
from typing import Any

from pulsewire.hub.engines import create_engine
from pulsewire.hub.engines.base import Engine
from pulsewire.hub.types import ClientInfo

REDIS = "redis://127.0.0.1:6379/0"
NATS = "nats://127.0.0.1:4222"
TTL = 60.0


class Handler:
    def on_publication(self, *args: Any) -> None: ...
    def on_join(self, *args: Any, **kwargs: Any) -> None: ...
    def on_leave(self, *args: Any) -> None: ...
    def on_control(self, *args: Any) -> None: ...
    def on_engine_state(self, *args: Any) -> None: ...


async def engine(url: str, prefix: str, name: str) -> Engine:
    made = create_engine(url, prefix=prefix)
    made.bind(Handler(), name)
    await made.start()
    return made


async def refresh_cost(node: Engine) -> str:
    infos = [ClientInfo(secrets.token_hex(8), f"u{i}") for i in range(100)]
    for info in infos:
        await node.add_presence("refresh", info, TTL, "bench")
    times = []
    for _ in range(10):
        for info in infos:
            started = time.perf_counter()
            await node.add_presence("refresh", info, TTL, "bench")
            times.append(time.perf_counter() - started)
    times.sort()
    median, p99 = statistics.median(times), times[int(len(times) * 0.99)]
    return f"refresh median {median * 1e6:.0f} us, p99 {p99 * 1e6:.0f} us"


async def redis_bytes_per_entry(node: Engine, prefix: str) -> str:
    import redis.asyncio as aioredis

    count = 10_000
    for c in range(10):
        await asyncio.gather(
            *(
                node.add_presence(
                    f"mem{c}",
                    ClientInfo(secrets.token_hex(8), f"user{i}", {"name": "x" * 40}),
                    TTL,
                    "bench",
                )
                for i in range(count // 10)
            )
        )
    client = aioredis.Redis.from_url(REDIS)
    try:
        keys = [key async for key in client.scan_iter(match=f"{prefix}:{{mem*")]
        total = sum([await client.memory_usage(key, samples=0) or 0 for key in keys])
    finally:
        await client.aclose()
    return f"{total / count:.0f} B per presence entry (client info JSON ~110 B)"


async def cleanup_time(url: str, prefix: str, dead: Engine) -> str:
    for c in range(50):
        await asyncio.gather(
            *(
                dead.add_presence(f"dead{c}", ClientInfo(f"d{c}-{i}", "u"), TTL, "x")
                for i in range(20)
            )
        )
    survivors = [await engine(url, prefix, f"s{k}") for k in range(2)]

    async def clean(node: Engine) -> int:
        channels = await node.node_presence_channels("x")
        random.shuffle(channels)
        removed = 0

        async def worker() -> None:
            nonlocal removed
            while channels:
                infos = await node.remove_node_presence(channels.pop(), "x", TTL, leave=True)
                removed += len(infos)

        await asyncio.gather(*(worker() for _ in range(8)))
        return removed

    try:
        started = time.perf_counter()
        counts = await asyncio.gather(*(clean(node) for node in survivors))
        elapsed = time.perf_counter() - started
    finally:
        for node in survivors:
            await node.close()
    return f"cleanup of 1,000 entries in 50 channels by 2 survivors: {elapsed:.3f} s, {counts}"


async def delete(url: str, prefix: str) -> None:
    if url.startswith("redis"):
        import redis.asyncio as aioredis

        client = aioredis.Redis.from_url(url)
        keys = [key async for key in client.scan_iter(match=f"{prefix}:*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()
    else:
        import nats

        nc = await nats.connect(url)
        jsm = nc.jsm()
        for info in await jsm.streams_info():
            if info.config.name and info.config.name.startswith(f"{prefix}_"):
                await jsm.delete_stream(info.config.name)
        await nc.close()


async def main() -> None:
    for kind, url in (("redis", REDIS), ("nats", NATS)):
        prefix = f"pwbench{uuid.uuid4().hex[:8]}"
        node = await engine(url, prefix, "bench")
        try:
            lines = [await refresh_cost(node)]
            if kind == "redis":
                lines.append(await redis_bytes_per_entry(node, prefix))
            lines.append(await cleanup_time(url, prefix, node))
        finally:
            await node.close()
            await delete(url, prefix)
        for line in lines:
            print(f"{kind:5} {line}")


if __name__ == "__main__":
    asyncio.run(main())
