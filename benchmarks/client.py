#!/usr/bin/env python3
"""The Python hub client (``pulsewire.client``): delivery rate and recovery time.

* Delivery: ``N`` publications made in-process (``Hub.publish``) to a history channel, each
  taken by one client with ``async for pub in sub``; publications per second from the first
  publish to the last one received, JSON and MessagePack.
* Recovery: the hub disconnects the client (code 4000) and holds its reconnect (in
  ``on_connect``) while ``M`` publications are made; the time from releasing it to the last
  missed publication received (connect answered, recovery in connect's ``subs``, delivery
  to ``async for``), 20 rounds, median and max.

One process: the hub (a ``HubServer`` on the in-memory engine) and the client share the
event loop, so the numbers include the hub's own work; compare runs on one machine.

    .venv/bin/python benchmarks/client.py           # a few seconds
"""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

import jwt

import pulsewire.client
from pulsewire.hub import ChannelOptions, Hub, HubConfig
from pulsewire.server.app import HubServer

SECRET = "benchmark-secret-0123456789abcdef"
CONFIG = HubConfig(
    token_hmac_secret=SECRET,
    namespaces={"bench": ChannelOptions(history_size=10_000, history_ttl=600)},
    client_queue_max_bytes=64 * 2**20,
)


async def delivery(server: HubServer, codec: str, count: int) -> float:
    url = f"ws://127.0.0.1:{server.port}/connection/websocket"
    token = jwt.encode({"sub": "bench"}, SECRET, algorithm="HS256")
    channel = f"bench:delivery-{codec}-{count}"
    async with pulsewire.client.connect(url, token=token, codec=codec) as client:
        sub = await client.subscribe(channel)
        start = time.perf_counter()

        async def publish() -> None:
            for n in range(count):
                await server.hub.publish(channel, {"n": n, "text": "x" * 64})

        producer = asyncio.ensure_future(publish())
        received = 0
        async for pub in sub:
            received += 1
            if pub.offset == count:
                break
        await producer
        assert received == count, received
        return count / (time.perf_counter() - start)


class Gate:
    """The hub's ``on_connect``: holds reconnecting clients while the publications they
    miss are made, so that every one of them is recovered, none delivered live."""

    def __init__(self) -> None:
        self.open = asyncio.Event()
        self.open.set()

    async def __call__(self, session: Any) -> None:
        await self.open.wait()


async def recovery(server: HubServer, gate: Gate, missed: int, rounds: int) -> list[float]:
    url = f"ws://127.0.0.1:{server.port}/connection/websocket"
    token = jwt.encode({"sub": "rec"}, SECRET, algorithm="HS256")
    channel = f"bench:recovery-{missed}"
    times = []
    async with pulsewire.client.connect(
        url, token=token, min_reconnect_delay=0.0, max_reconnect_delay=0.0
    ) as client:
        sub = await client.subscribe(channel)
        events = sub.__aiter__()
        offset = 0
        for _ in range(rounds):
            gate.open.clear()
            await server.hub.disconnect_user("rec", code=4000, reason="benchmark")
            while client.state == "connected":
                await asyncio.sleep(0.001)
            for _ in range(missed):
                offset = (await server.hub.publish(channel, "missed")).offset  # type: ignore[union-attr]
            start = time.perf_counter()
            gate.open.set()
            while (await events.__anext__()).offset != offset:
                pass
            times.append(time.perf_counter() - start)
            assert sub.recovered
    return times


async def main(delivery_count: int = 20_000, missed: int = 100, rounds: int = 20) -> dict[str, Any]:
    gate = Gate()
    server = HubServer(Hub(CONFIG, on_connect=gate), "127.0.0.1", 0)
    await server.start()
    try:
        results: dict[str, Any] = {}
        for codec in ("json", "msgpack"):
            rate = await delivery(server, codec, delivery_count)
            results[f"delivery_{codec}_per_s"] = rate
            print(f"delivery ({codec}): {delivery_count} publications, {rate:,.0f}/s")
        times = await recovery(server, gate, missed, rounds)
        results["recovery_median_ms"] = statistics.median(times) * 1000
        results["recovery_max_ms"] = max(times) * 1000
        print(
            f"recovery of {missed} missed publications: median "
            f"{results['recovery_median_ms']:.1f} ms, max {results['recovery_max_ms']:.1f} ms "
            f"({rounds} rounds)"
        )
        return results
    finally:
        await server.close()


def run_smoke() -> dict[str, Any]:
    """Tiny counts, for the test that keeps this script running."""
    return asyncio.run(main(delivery_count=50, missed=3, rounds=2))


if __name__ == "__main__":
    asyncio.run(main())
