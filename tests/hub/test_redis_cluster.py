"""Two ``pulsewire serve`` nodes on a Redis Cluster (``redis+cluster://``): three masters with
one replica each, six local ``redis-server`` processes started by the test
(:mod:`.redis_cluster_topology`, ports 7310-7315).

* Channels spread over every master: cross-node delivery, history, presence and recovery on
  the other node; each channel's keys live on its slot's master, and publications travel by
  sharded pub/sub only (``PUBSUB SHARDNUMSUB`` per master, and the cluster bus counters:
  no classic ``PUBLISH`` is broadcast to every node).
* A master SIGKILLed while publications flow through the API: its replica is promoted,
  publishing works again within a bound, and subscribers on both nodes get every
  acknowledged publication once and in order, or are told (resubscribe, ``recovered:
  false``): never silently skipped. The unavailability window is printed (``-s``).

Without ``redis-server``/``redis-cli`` the tests skip (and fail when ``CI=true``).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from redis.crc import key_slot

from .redis_cluster_topology import ClusterTopology, cli, cluster_tools_missing
from .test_cluster import (
    Node,
    TwoNodes,
    api,
    eventually,
    health,
    http_json,
    publication_data,
    service_missing,
    spawn_nodes,
    stop_nodes,
)
from .test_engine_faults import Follower, engine_available

pytestmark = pytest.mark.timeout(90)

BASE_PORT = 7310
#: A failover must be over (replica promoted, slot map refreshed, publishing again) within
#: this: cluster-node-timeout (1 s) to flag the master failed, the replica's election
#: (~0.5-1 s), the engines' slot map refresh and resubscription (backoff up to 2 s).
FAILOVER_BOUND = 15.0


@dataclass
class RedisClusterNodes(TwoNodes):
    topology: ClusterTopology
    prefix: str
    nodes: list[Node] = field(default_factory=list)


@pytest.fixture(scope="module")
def rc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterNodes]:
    missing = cluster_tools_missing()
    if missing:
        service_missing(f"no Redis Cluster: {missing}")
    topology = ClusterTopology(BASE_PORT)
    nodes: list[Node] = []
    try:
        topology.start()
        prefix = f"pwrc-{uuid.uuid4().hex[:8]}"
        nodes = spawn_nodes(
            tmp_path_factory.mktemp("rediscluster"),
            engines=[topology.url] * 2,
            prefix=prefix,
            names=[f"{prefix}-a", f"{prefix}-b"],
        )
        yield RedisClusterNodes(topology, prefix, nodes)
        for node in nodes:
            assert node.alive(), f"node {node.name} died:\n{node.log()}"
            assert "Traceback" not in node.log(), f"node {node.name} logged:\n{node.log()}"
    finally:
        stop_nodes(nodes)
        topology.stop()


def slot_of(channel: str) -> int:
    """The slot of every key of ``channel`` (its hash tag is the channel)."""
    return key_slot(channel.encode())


def channels_on_every_master(topology: ClusterTopology, namespace: str) -> dict[int, str]:
    """One new channel per master: master port -> channel."""
    found: dict[int, str] = {}
    while len(found) < 3:
        channel = f"{namespace}:{uuid.uuid4().hex[:8]}"
        found.setdefault(topology.owner(slot_of(channel)), channel)
    return found


def bus_counter(port: int, name: str) -> int:
    """A ``CLUSTER INFO`` counter of the cluster bus (0 when never sent)."""
    for line in cli(port, "CLUSTER", "INFO").splitlines():
        key, _, value = line.strip().partition(":")
        if key == name:
            return int(value)
    return 0


async def test_channels_on_every_master(rc: RedisClusterNodes, hub_client: Any) -> None:
    """Delivery across nodes, history, presence and recovery on channels owned by each of the
    three masters; publications go to their shard only."""
    a, b = rc.a, rc.b
    topology = rc.topology
    for node in (a, b):
        state = await health(node)
        assert state["engine"] == "redis+cluster" and state["engine_available"] is True
    channels = channels_on_every_master(topology, "room")
    assert sorted(channels) == sorted(topology.masters())
    alice, bob = await hub_client(a, "alice"), await hub_client(b, "bob")
    for channel in channels.values():
        for client in (alice, bob):
            assert (await client.subscribe(channel))["recoverable"] is True
    bus_before = {
        port: (
            bus_counter(port, "cluster_stats_messages_publish_sent"),
            bus_counter(port, "cluster_stats_messages_publishshard_sent"),
        )
        for port in topology.alive_ports
    }

    for channel in channels.values():
        await api(b, "publish", {"channel": channel, "data": "b-1"})
        await alice.ok("publish", {"channel": channel, "data": "a-2"})
        await api(a, "publish", {"channel": channel, "data": "a-3"})
    for channel in channels.values():
        for client in (alice, bob):
            pubs = await client.publications(channel, 3)
            assert [(p["data"], p["offset"]) for p in pubs] == [("b-1", 1), ("a-2", 2), ("a-3", 3)]
        history = await api(b, "history", {"channel": channel, "limit": 100})
        assert [p["data"] for p in history["publications"]] == ["b-1", "a-2", "a-3"]
        presence = await api(a, "presence", {"channel": channel})
        assert {c["user"] for c in presence["clients"].values()} == {"alice", "bob"}

    # Each channel's keys and subscribers are on its slot's master, and nowhere else.
    for port, channel in channels.items():
        assert cli(port, "XLEN", f"{rc.prefix}:{{{channel}}}:stream").strip() == "3"
        shard_channel = f"{rc.prefix}.ch.{{{channel}}}"
        for master in topology.masters():
            count = cli(master, "PUBSUB", "SHARDNUMSUB", shard_channel).split()[-1]
            assert count == ("2" if master == port else "0"), (master, port, count)
    # Sharded pub/sub: no classic PUBLISH went over the cluster bus (it would reach all six
    # nodes); a master forwards its shard's publications to its own replica only.
    for port in topology.alive_ports:
        publish, shard = bus_before[port]
        assert bus_counter(port, "cluster_stats_messages_publish_sent") == publish
        if port not in topology.masters():
            assert bus_counter(port, "cluster_stats_messages_publishshard_sent") == shard
    forwarded = {
        port: bus_counter(port, "cluster_stats_messages_publishshard_sent") - bus_before[port][1]
        for port in topology.masters()
    }
    print(f"publishshard messages sent over the bus per master: {forwarded}")
    assert all(count >= 3 for count in forwarded.values()), forwarded

    # Recovery on the other node: alice drops, B publishes, alice comes back on B.
    channel = channels[min(channels)]
    seen = publication_data(alice, channel)
    epoch = (await api(a, "history", {"channel": channel, "limit": 0}))["epoch"]
    alice.ws.abort()
    await alice.wait_closed()
    for i in range(3):
        await api(b, "publish", {"channel": channel, "data": f"missed-{i}"})
    back = await hub_client(b, "alice")
    result = await back.subscribe(channel, recover=True, offset=len(seen), epoch=epoch)
    assert result["recovered"] is True
    assert [p["data"] for p in result["publications"]] == ["missed-0", "missed-1", "missed-2"]


@dataclass
class Attempt:
    number: int
    ok: bool
    at: float
    position: dict[str, Any] | None = None


class SteadyPublisher:
    """Publishes 1, 2, 3... through a node's HTTP API every ~10 ms; a failed publish is not
    retried (the next number goes out): the test knows which ones were acknowledged."""

    def __init__(self, node: Node, channel: str) -> None:
        self.node = node
        self.channel = channel
        self.attempts: list[Attempt] = []
        self.errors: dict[str, int] = {}
        """Failed publishes by error code (108: not published, 114: outcome unknown)."""
        self._stop = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        number = 0
        while not self._stop.is_set():
            number += 1
            params = {"channel": self.channel, "data": number}
            try:
                status, body = await http_json(self.node.port, "POST", "/api/publish", params)
            except (OSError, asyncio.TimeoutError):
                status, body = 0, None
            ok = status == 200
            if not ok:  # by error code
                code = str(body["error"]["code"]) if body else "no answer"
                self.errors[code] = self.errors.get(code, 0) + 1
            self.attempts.append(Attempt(number, ok, time.monotonic(), body and body.get("result")))
            await asyncio.sleep(0.01)

    @property
    def acked(self) -> list[Attempt]:
        return [a for a in self.attempts if a.ok]

    async def until_acked(self, count: int, timeout: float) -> None:
        await eventually(lambda: len(self.acked) >= count, f"{count} acknowledged", timeout)

    def window(self) -> tuple[float, int]:
        """(seconds from the first failed publish to the next success, failures)."""
        failed = [i for i, a in enumerate(self.attempts) if not a.ok]
        if not failed:
            return 0.0, 0
        first = failed[0]
        success = next(a for a in self.attempts[first:] if a.ok)
        return success.at - self.attempts[first].at, len(failed)

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.wait_for(self._task, 10)


def caught_up(follower: Follower, publisher: SteadyPublisher) -> bool:
    """The follower is at the last acknowledged publication's position."""
    position = publisher.acked[-1].position or {}
    return follower.epoch == position.get("epoch") and follower.offset >= position["offset"]


def check_follower(follower: Follower, publisher: SteadyPublisher) -> str:
    """Every acknowledged publication once and in order, or the follower was told: returns
    how it went, raises AssertionError when a publication was silently skipped.

    Told means a resubscription whose recovery said ``recovered: false``: it covers the
    publications of older epochs, and those of its own epoch up to the offset it returned
    (the client reloads its state from there)."""
    assert follower.problems == [], follower.problems
    data = follower.data
    assert data == sorted(set(data)), f"out of order or duplicated: {data}"
    told = [e["recovery"] for e in follower.resubscribes if not e["recovery"]["recovered"]]
    missing = [a for a in publisher.acked if a.number not in data]
    for attempt in missing:
        position = attempt.position or {}
        assert any(
            position.get("epoch") != recovery["epoch"]
            or position.get("offset", 0) <= recovery["offset"]
            for recovery in told
        ), f"acknowledged publication {attempt} skipped without telling ({told})"
    return f"{len(data)} received, {len(missing)} not received but told, {len(told)} new epochs"


async def test_master_failover(rc: RedisClusterNodes, hub_client: Any) -> None:
    """SIGKILL the master of a history channel while B publishes to it every 10 ms."""
    a, b = rc.a, rc.b
    topology = rc.topology
    channels = channels_on_every_master(topology, "room")
    victim = next(iter(channels))
    channel, calm = channels[victim], channels[next(p for p in channels if p != victim)]
    followers = [Follower(await hub_client(node, f"f-{node.name}"), channel) for node in (a, b)]
    calm_followers = [Follower(await hub_client(node, f"c-{node.name}"), calm) for node in (a, b)]
    for follower in followers + calm_followers:
        await follower.start()
    publisher = SteadyPublisher(b, channel)
    calm_publisher = SteadyPublisher(a, calm)
    try:
        await publisher.until_acked(20, 10)
        killed, promoted_in = await asyncio.to_thread(topology.kill_master, slot_of(channel))
        acked_at_kill = len(publisher.acked)
        await publisher.until_acked(acked_at_kill + 30, FAILOVER_BOUND + 10)
        for node in (a, b):
            await eventually(lambda n=node: engine_available(n), f"{node.name} available", 10)
    finally:
        await publisher.stop()
        await calm_publisher.stop()
    window, failures = publisher.window()
    calm_window, calm_failures = calm_publisher.window()
    total = publisher.attempts[-1].number
    for follower in followers + calm_followers:
        await follower.client.sync()
    for follower in followers:
        await eventually(
            lambda f=follower: caught_up(f, publisher),
            lambda f=follower: f"the last one acknowledged: {f.data[-5:]}, {f.resubscribes}",
            10,
        )
    outcomes = [check_follower(f, publisher) for f in followers]
    for follower in calm_followers:
        await eventually(lambda f=follower: caught_up(f, calm_publisher), "calm channel", 10)
    calm_outcomes = [check_follower(f, calm_publisher) for f in calm_followers]
    for follower in followers + calm_followers:
        await follower.stop()
    print(
        f"failover of master {killed}: replica promoted and cluster ok {promoted_in:.2f} s "
        f"after SIGKILL; publishing unavailable for {window:.2f} s ({failures} of {total} "
        f"publishes failed: {publisher.errors}); subscribers: {outcomes}; a channel of "
        f"another master: {calm_failures} failed publishes ({calm_window:.2f} s: "
        f"{calm_publisher.errors}), {calm_outcomes}"
    )
    assert window < FAILOVER_BOUND, f"publishing unavailable for {window:.1f} s"
    for node in (a, b):
        assert (await health(node))["engine_available"] is True
