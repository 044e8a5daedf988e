#!/usr/bin/env python3
"""What an ``idempotency_key`` costs: memory per remembered key and publish latency.

* Memory engine: bytes held per key (``tracemalloc``) for 100,000 keys of 36 and 256
  characters (the map stores a 16-byte digest, so the key's length does not matter).
* Redis: ``MEMORY USAGE`` of the key ``{prefix}:{<channel>}:idem:<key>`` for a history
  channel (it holds ``offset,epoch``) and for a channel without history (``1``).
* Latency: 500 sequential publishes per case, with and without a key, on the memory engine
  and on the Redis (127.0.0.1:6379) and NATS (127.0.0.1:4222) the tests use; median and p99.
  The services are shared and the machine may be busy: compare the columns, not the runs.

Everything is written under a random prefix and deleted afterwards.

    .venv/bin/python benchmarks/idempotency.py        # ~10 s
"""

from __future__ import annotations

import asyncio
import statistics
import time
import tracemalloc
import uuid
from typing import Any

from pulsewire.hub.engines.base import Engine
from pulsewire.hub.engines.memory import MemoryEngine
from pulsewire.hub.types import Publication, PublishOptions

HISTORY = PublishOptions(history_size=100, history_ttl=60.0)
LIVE = PublishOptions()
REDIS = "redis://127.0.0.1:6379/0"
NATS = "nats://127.0.0.1:4222"
ROUNDS = 500


class Handler:
    def on_publication(self, *args: Any) -> None: ...
    def on_join(self, *args: Any) -> None: ...
    def on_leave(self, *args: Any) -> None: ...
    def on_control(self, *args: Any) -> None: ...
    def on_engine_state(self, *args: Any) -> None: ...


async def memory_per_key(count: int, key_length: int) -> None:
    engine = MemoryEngine(max_idempotency_keys=count)
    options = PublishOptions(history_size=1, history_ttl=60.0)
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    for i in range(count):
        await engine.publish_once(
            "chat:room", Publication(None), options, f"{i:0{key_length}d}", 300
        )
    used = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    print(
        f"memory engine: {count} keys of {key_length} chars: "
        f"{used / 2**20:.1f} MiB, {used / count:.0f} B/key"
    )


async def redis_per_key(prefix: str) -> None:
    import redis.asyncio as aioredis

    from pulsewire.hub.engines.redis import RedisEngine

    engine = RedisEngine(REDIS, prefix)
    engine.bind(Handler(), "bench")
    await engine.start()
    admin = aioredis.Redis.from_url(REDIS)
    try:
        for key_length in (36, 256):
            key = "k" * key_length
            for channel, options in (("chat:room", HISTORY), ("chat:live", LIVE)):
                await engine.publish_once(channel, Publication(1), options, key, 300)
                usage = await admin.memory_usage(f"{prefix}:{{{channel}}}:idem:{key}")
                print(f"redis: {channel}, key of {key_length} chars: MEMORY USAGE {usage} B")
    finally:
        await admin.aclose()
        await engine.close()


async def latency(engine: Engine, label: str) -> None:
    engine.bind(Handler(), "bench")
    await engine.start()
    try:
        for options, kind in ((HISTORY, "history"), (LIVE, "no history")):
            for keyed in (False, True):
                times = []
                for i in range(ROUNDS):
                    started = time.perf_counter()
                    if keyed:
                        await engine.publish_once(kind, Publication(i), options, f"k{i}", 300)
                    else:
                        await engine.publish(kind, Publication(i), options)
                    times.append(time.perf_counter() - started)
                times.sort()
                print(
                    f"{label:6} {kind:10} {'keyed' if keyed else 'plain':5}: "
                    f"median {statistics.median(times) * 1e6:6.0f} us, "
                    f"p99 {times[int(ROUNDS * 0.99)] * 1e6:6.0f} us"
                )
    finally:
        await engine.close()


async def cleanup(prefix: str) -> None:
    import nats
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(REDIS)
    keys = [key async for key in client.scan_iter(match=f"{prefix}:*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()
    nc = await nats.connect(NATS)
    js = nc.jetstream()
    for info in await js.streams_info():
        if (info.config.name or "").startswith(f"{prefix}_"):
            await js.delete_stream(info.config.name or "")
    await nc.close()


async def main() -> None:
    from pulsewire.hub.engines.nats import NatsEngine
    from pulsewire.hub.engines.redis import RedisEngine

    prefix = f"pwbench_{uuid.uuid4().hex[:8]}"
    try:
        await memory_per_key(100_000, 36)
        await memory_per_key(100_000, 256)
        await redis_per_key(prefix)
        await latency(MemoryEngine(), "memory")
        await latency(RedisEngine(REDIS, prefix), "redis")
        await latency(NatsEngine(NATS, prefix), "nats")
    finally:
        await cleanup(prefix)


if __name__ == "__main__":
    asyncio.run(main())
