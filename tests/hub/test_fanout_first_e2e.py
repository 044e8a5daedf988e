"""End to end: a real HubServer, real WebSocket subscribers, publications through the HTTP
API. The subscribers of a large channel have a publication chunk by chunk, the first ones
loop iterations before the last ones (the chunked delivery of hub/delivery.py over the real
transports and aio's write batching: without it, every subscriber's bytes were written in
the same iteration, after the last one had been handed the publication); every subscriber
gets every publication once and in order; one disconnecting mid-delivery disturbs nobody.

No timings: the order of events, counted in loop iterations, in one process.
"""

from __future__ import annotations

import asyncio
from typing import Any

from pulsewire.server.limits import ConnectionLimits

from .fakes import until

SUBSCRIBERS = 600  # three chunks: 16, 128, 456
BATCH = 100


async def test_the_first_subscribers_have_it_iterations_before_the_last(
    hub_server: Any, hub_client: Any, api: Any, uniq: Any
) -> None:
    limits = ConnectionLimits(
        max_connections_per_ip=SUBSCRIBERS + 10, connections_burst_per_ip=SUBSCRIBERS + 10
    )
    server = await hub_server(limits=limits)
    channel = uniq("ro")
    clients: list[Any] = []
    for start in range(0, SUBSCRIBERS, BATCH):
        batch = range(start, start + BATCH)
        clients += await asyncio.gather(*(hub_client(server, f"user-{i}") for i in batch))
    for start in range(0, SUBSCRIBERS, BATCH):
        await asyncio.gather(*(c.subscribe(channel) for c in clients[start : start + BATCH]))

    # Per subscriber, as each publication arrives: in which loop iteration?
    loop = asyncio.get_running_loop()
    iteration = 0

    def tick() -> None:
        nonlocal iteration, ticker
        iteration += 1
        ticker = loop.call_soon(tick)

    ticker = loop.call_soon(tick)
    seen: list[list[tuple[Any, int]]] = [[] for _ in clients]
    for i, client in enumerate(clients):

        def received(message: dict[str, Any], i: int = i, inner: Any = client.received) -> None:
            if message.get("push") == "publication":
                seen[i].append((message["data"]["n"], iteration))
            inner(message)

        client.received = received

    leaving = clients[-1]  # disconnects while the first publication is being delivered
    for n in (1, 2):
        status, _ = await api(server, "publish", {"channel": channel, "data": {"n": n}})
        assert status == 200
        if n == 1:
            await leaving.close()
    try:
        await until(
            lambda: all(len(s) == 2 for s in seen[:-1]),
            timeout=30,
            message="not every subscriber had both publications",
        )
    finally:
        ticker.cancel()
    assert all([n for n, _ in s] == [1, 2] for s in seen[:-1])  # once each, in order
    for n in (0, 1):
        arrived = sorted({s[n][1] for s in seen[:-1]})
        # one chunk's bytes per loop iteration: the first subscribers read theirs while the
        # node was still to write (or even to hand over) the last ones'
        assert arrived[-1] - arrived[0] >= 2, arrived
