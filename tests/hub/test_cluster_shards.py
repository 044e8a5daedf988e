"""Issue #14, check 3: two ``pulsewire serve`` nodes on three independent Redis servers.

Two tests one layer down (an in-process hub on the same servers): the engine counts as up
while any shard is, and a shard coming back has only its own channels' gaps filled.

Three private ``redis-server`` processes (tests/hub/redis_servers.py, no persistence) and two
nodes (``spawn_nodes`` of test_cluster.py) on ``redis+shards://`` over them; one channel per
shard (``room``: history kept), a ``pulsewire.client`` on each node subscribed to the three.

1. Every publication made through either node's API reaches both clients (cross-node).
2. One server is SIGKILLed: the other two shards' channels keep working, every publication
   acknowledged there reaches both clients once, in order; the dead shard's channel refuses
   publications with 108 (not available: not published) or 114 (outcome unknown, for one
   in flight when it died), never an acknowledgement that is then lost.
3. The server is started again on its port, empty: once the nodes see it back, both
   subscribers are told ``recovered: false`` (the history they would recover from is
   gone), and the channel takes publications again (a new stream, offset 1) that reach
   both.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

import pulsewire.client
from pulsewire.client import Event, Publication, Subscribed
from pulsewire.hub.engines.redis_shards import ShardedRedisEngine
from pulsewire.hub.engines.sharding import shard_index

from .conftest import encode_token
from .redis_servers import RedisServers
from .test_cluster import HOST, Node, eventually, health, http_json, spawn_nodes, stop_nodes

pytestmark = pytest.mark.timeout(90)

SHARDS = 3
DEAD = 1  # the shard killed
TIMEOUT = 15.0  # generous: the machine is shared
OUTAGE = 3.0  # at least: the nodes' reconnection backoff reaches its 2 s maximum


def channel_on(shard: int, namespace: str = "room") -> str:
    """A channel of ``namespace`` placed on ``shard``."""
    names = (f"{namespace}:{uuid.uuid4().hex[:12]}" for _ in range(1000))
    return next(c for c in names if shard_index(c, SHARDS) == shard)


async def publish(node: Node, channel: str, data: Any) -> tuple[int, dict[str, Any]]:
    """``(HTTP status, body)`` of a publication through ``node``'s API."""
    status, body = await http_json(
        node.port, "POST", "/api/publish", {"channel": channel, "data": data}
    )
    return status, body


async def presence_stats(node: Node, channel: str) -> tuple[int, Any]:
    """``(HTTP status, body)`` of ``presence_stats`` through ``node``'s API (its result)."""
    status, body = await http_json(node.port, "POST", "/api/presence_stats", {"channel": channel})
    return status, body.get("result", body)


async def metrics(node: Node) -> str:
    """The node's ``/metrics`` text."""
    reader, writer = await asyncio.open_connection(HOST, node.port)
    try:
        writer.write(f"GET /metrics HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode())
        return (await asyncio.wait_for(reader.read(), TIMEOUT)).decode()
    finally:
        writer.close()


class Listener:
    """A ``pulsewire.client`` on one node, subscribed to ``channels``; every event kept."""

    def __init__(self, node: Node, channels: list[str]) -> None:
        self.node = node
        self.channels = channels
        self.events: dict[str, list[Event]] = {c: [] for c in channels}
        self._tasks: list[asyncio.Task[None]] = []

    async def run(self, client: pulsewire.client.Client) -> None:
        for channel in self.channels:
            sub = await client.subscribe(channel)
            self._tasks.append(asyncio.create_task(self._collect(channel, sub.events())))

    async def _collect(self, channel: str, events: Any) -> None:
        async for event in events:
            self.events[channel].append(event)

    def data(self, channel: str) -> list[Any]:
        return [e.data for e in self.events[channel] if isinstance(e, Publication)]

    def subscribed(self, channel: str) -> list[Subscribed]:
        return [e for e in self.events[channel] if isinstance(e, Subscribed)]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


@pytest.fixture
def servers() -> Iterator[RedisServers]:
    with RedisServers(SHARDS) as started:
        yield started


@pytest.fixture
def nodes(servers: RedisServers, tmp_path: Path) -> Iterator[list[Node]]:
    prefix = f"pwsh-{uuid.uuid4().hex[:8]}"
    url = servers.shards_url()
    started = spawn_nodes(
        tmp_path, engines=[url, url], prefix=prefix, names=[f"{prefix}-a", f"{prefix}-b"]
    )
    try:
        yield started
        for node in started:
            assert node.alive(), f"node {node.name} died:\n{node.log()}"
            assert "Traceback" not in node.log(), f"node {node.name} logged:\n{node.log()}"
    finally:
        stop_nodes(started)


@pytest.fixture
async def listeners(nodes: list[Node]) -> AsyncIterator[list[Listener]]:
    channels = [channel_on(shard) for shard in range(SHARDS)]
    made: list[Listener] = []
    async with (
        pulsewire.client.connect(
            f"ws://{HOST}:{nodes[0].port}/connection/websocket",
            token=encode_token("listener-a"),
            min_reconnect_delay=0.05,
            max_reconnect_delay=0.3,
        ) as on_a,
        pulsewire.client.connect(
            f"ws://{HOST}:{nodes[1].port}/connection/websocket",
            token=encode_token("listener-b"),
            min_reconnect_delay=0.05,
            max_reconnect_delay=0.3,
        ) as on_b,
    ):
        for node, client in zip(nodes, (on_a, on_b), strict=True):
            listener = Listener(node, channels)
            await listener.run(client)
            made.append(listener)
        try:
            yield made
        finally:
            for listener in made:
                await listener.stop()


async def test_a_dead_shard_affects_only_its_channels_and_they_recover(
    servers: RedisServers, nodes: list[Node], listeners: list[Listener]
) -> None:
    a, b = nodes
    channels = listeners[0].channels
    acked: dict[str, list[str]] = {c: [] for c in channels}

    async def publish_acked(node: Node, channel: str, data: str) -> None:
        status, body = await publish(node, channel, data)
        assert status == 200, f"{channel} via {node.name}: {status} {body}"
        acked[channel].append(data)

    async def everyone_got_everything() -> None:
        for listener in listeners:
            for channel in channels:
                await eventually(
                    lambda ls=listener, c=channel: ls.data(c) == acked[c],
                    lambda ls=listener, c=channel: f"{ls.node.name}: {ls.data(c)} == {acked[c]}",
                    TIMEOUT,
                )

    # 1. cross-node on every shard, both ways
    for channel in channels:
        await publish_acked(a, channel, "before-a")
        await publish_acked(b, channel, "before-b")
    await everyone_got_everything()

    # 2. one server dies
    servers.kill(DEAD)
    dead, alive = channels[DEAD], [c for i, c in enumerate(channels) if i != DEAD]
    outage = time.monotonic()
    round_ = 0
    while round_ < 5 or time.monotonic() - outage < OUTAGE:  # long enough to back off fully
        round_ += 1
        for channel in alive:
            await publish_acked(a, channel, f"during-{round_}-a")
            await publish_acked(b, channel, f"during-{round_}-b")
        for node in nodes:
            status, body = await publish(node, dead, f"refused-{round_}")
            assert status != 200 and body["error"]["code"] in (108, 114), body
        await asyncio.sleep(0.2)  # a pace: each API call is a new connection (50/s per address)
    await everyone_got_everything()  # nothing lost or repeated on the live shards
    for node in nodes:  # seen as one shard's outage, not the engine's
        await eventually(
            lambda n=node: "(one shard) is unavailable" in n.log(), "the outage logged", TIMEOUT
        )
        assert (await health(node))["engine_available"] is True
        assert "\npulsewire_engine_up 1.0\n" in await metrics(node)
        for channel in alive:  # presence of the live shards' channels: both listeners
            assert await presence_stats(node, channel) == (200, {"num_clients": 2, "num_users": 2})
        status, body = await presence_stats(node, dead)
        assert status != 200 and body["error"]["code"] == 108, body

    # 3. it comes back, empty: each node fills the gap of the shard's channel, finds the
    # history gone, and its subscribers are told (they resubscribe: recovered false)
    servers.restart(DEAD)
    restarted = time.monotonic()
    for listener in listeners:
        await eventually(
            lambda ls=listener: len(ls.subscribed(dead)) >= 2,
            lambda ls=listener: f"{ls.node.name} to resubscribe: {ls.events[dead]}",
            TIMEOUT,
        )
        again = listener.subscribed(dead)[-1]
        assert again.recovering and not again.recovered, listener.events[dead]
    # the figure of the scaling guide (pytest -s shows it)
    during = sum(len([d for d in acked[c] if d.startswith("during-")]) for c in alive)
    print(
        f"\nshard down {restarted - outage:.1f} s: {during} publications acked on the other "
        f"shards, all delivered on both nodes; {round_ * 2} refused on its channel; both "
        f"subscribers told recovered false {time.monotonic() - restarted:.2f} s after the restart"
    )
    status, body = await publish(a, dead, "after-a")
    assert status == 200 and body["result"]["offset"] == 1, body  # a new stream
    acked[dead].append("after-a")
    await publish_acked(b, dead, "after-b")
    await everyone_got_everything()
    for node in nodes:  # written again on the empty server (the listeners resubscribed)
        assert await presence_stats(node, dead) == (200, {"num_clients": 2, "num_users": 2})


async def test_the_engine_counts_as_up_while_any_shard_is(
    servers: RedisServers, local_hub: Any
) -> None:
    """One layer down (an in-process hub): ``pulsewire_engine_up`` and the node watch follow
    the whole engine (any shard up), not each shard."""
    engine = ShardedRedisEngine(
        servers.urls, f"pwsh-{uuid.uuid4().hex[:8]}", ping_interval=0.2, backoff_max=0.3
    )
    hub = await local_hub(engine=engine)

    def engine_up() -> float | None:
        return hub.metrics.registry.get_sample_value("pulsewire_engine_up")

    for index in (0, 1):
        servers.kill(index)
        await eventually(lambda i=index: not engine.shards[i].available, f"shard {index} down")
        assert engine_up() == 1.0
    servers.kill(2)
    await eventually(lambda: engine_up() == 0.0, "the engine counted down", TIMEOUT)
    servers.restart(2)
    await eventually(lambda: engine_up() == 1.0, "the engine counted up again", TIMEOUT)


async def test_a_shard_back_refills_only_its_own_channels(
    servers: RedisServers, local_hub: Any, local_client: Any
) -> None:
    """One layer down: with two shards dead, the one that comes back has its channels'
    gaps filled (empty: 2500, resubscribe) and the other's channels are left alone until it
    is back too (a whole-engine resync would bounce their subscribers while it is dead)."""
    engine = ShardedRedisEngine(
        servers.urls, f"pwsh-{uuid.uuid4().hex[:8]}", ping_interval=0.2, backoff_max=0.3
    )
    hub = await local_hub(engine=engine)
    client = await local_client(hub, "u")
    first, second = channel_on(0, "hist"), channel_on(1, "hist")
    for channel in (first, second):
        await client.subscribe(channel)
        await hub.publish(channel, "before")
        await client.wait_push("publication", channel, TIMEOUT)
    for index in (0, 1):
        servers.kill(index)
    await eventually(
        lambda: not (engine.shards[0].available or engine.shards[1].available), "both down"
    )
    servers.restart(1)
    push = await client.wait_push("unsubscribe", second, TIMEOUT)
    assert (push["code"], push["resubscribe"]) == (2500, True)
    await client.sync()
    assert client.take("unsubscribe", first) == []  # shard 0 is still down: left alone
    servers.restart(0)
    push = await client.wait_push("unsubscribe", first, TIMEOUT)
    assert (push["code"], push["resubscribe"]) == (2500, True)
