"""End to end: a real HubServer, real WebSocket subscribers, publications through the HTTP
API. The first subscribers of a large channel have a publication while the node is still
handing it to the others (the chunked delivery of hub/delivery.py over the real transports
and aio's write batching), every subscriber gets every publication once and in order, and
a subscriber that disconnects mid-delivery does not disturb the others.

No timings: the order of events, observed in one process.
"""

from __future__ import annotations

import asyncio
from typing import Any

from pulsewire.server.limits import ConnectionLimits

from .fakes import until

SUBSCRIBERS = 600  # several chunks (16, 32, 64, then 128 each): 7 loop iterations per pass
BATCH = 100


async def test_the_first_subscribers_have_it_while_the_node_still_delivers(
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

    # Per subscriber, as each publication arrives: was the node still delivering it?
    seen: list[list[tuple[Any, bool]]] = [[] for _ in clients]
    fanout = server.hub.fanout
    for i, client in enumerate(clients):

        def received(message: dict[str, Any], i: int = i, inner: Any = client.received) -> None:
            if message.get("push") == "publication":
                seen[i].append((message["data"]["n"], fanout.delivering(channel)))
            inner(message)

        client.received = received

    leaving = clients[-1]  # disconnects while the first publication is being delivered
    for n in (1, 2):
        status, _ = await api(server, "publish", {"channel": channel, "data": {"n": n}})
        assert status == 200
        if n == 1:
            await leaving.close()
    await until(
        lambda: all(len(s) == 2 for s in seen[:-1]),
        timeout=30,
        message="not every subscriber had both publications",
    )
    assert all([n for n, _ in s] == [1, 2] for s in seen[:-1])  # once each, in order
    early = sum(1 for s in seen[:-1] if s[0][1])
    # The first chunks' bytes were written, and read by their subscribers, before the node
    # had handed the publication to the last subscribers.
    assert early >= 1, "no subscriber had the publication before the node finished handing it"
