"""Redis faults under two ``pulsewire serve`` nodes: nothing crashes, local delivery goes on,
history channels come out whole (gap filled) or tell their subscribers to resubscribe.

The tests share a ``redis-server`` of their own on a free loopback port (never the shared
one at 6379, which other tests use) and two nodes on it, each connecting as its own ACL user
so that one node can be cut off alone:

* connections killed, data kept: node A's user is disabled and its connections are killed
  (``CLIENT KILL ID``, found by the engine's client name) while B publishes a numbered stream;
  A serves its local clients meanwhile; once A's user is enabled again A reconnects by itself
  and fills the gap from history. A variant kills A's connections over and over (no ACL
  change: A reconnects at once each time) while B publishes.
* Redis restarted, data lost: the server is stopped, then started again on the same port with
  nothing in it; the nodes reconnect by themselves and history subscribers are told to
  resubscribe (code 2500), their recovery then says ``recovered: false`` (new epoch).

Without the ``redis-server`` binary the tests skip (and fail when ``CI=true``).
"""

from __future__ import annotations

import asyncio
import random
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis

from .test_cluster import (
    HOST,
    Node,
    TwoNodes,
    api,
    eventually,
    free_port,
    health,
    http_json,
    publication_data,
    service_missing,
    spawn_nodes,
    stop_nodes,
)

pytestmark = pytest.mark.timeout(90)

NODE_PASSWORD = "node-password"
SERVER_ARGS = ["--save", "", "--appendonly", "no", "--daemonize", "no", "--dir"]


# -------------------------------------------------------------------- a private Redis


class PrivateRedis:
    """A ``redis-server`` of this test alone, on a free loopback port, without persistence."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.users: list[str] = []

    def start(self) -> None:
        """Start (again, on the same port once it had one) and wait until it answers PING."""
        binary = shutil.which("redis-server")
        if binary is None:
            service_missing("redis-server is not installed")
        assert binary is not None
        for _attempt in range(3):
            port = self.port or free_port()
            self.starts += 1
            log = open(self.directory / f"redis-{self.starts}.log", "wb")  # noqa: SIM115
            with log:
                self.proc = subprocess.Popen(
                    [binary, "--port", str(port), "--bind", HOST, *SERVER_ARGS, self.directory],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            deadline = time.monotonic() + 10
            while self.proc.poll() is None and time.monotonic() < deadline:
                try:
                    with self.client(port) as client:
                        if client.ping():
                            self.port = port
                            for user in self.users:  # a restarted server forgot them
                                self._set_user(user)
                            return
                except redis.RedisError:
                    time.sleep(0.02)
            self.stop()
            if self.port:  # restarting on the same port must work
                break
        raise RuntimeError(f"redis-server did not start: see {self.directory}")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()  # nothing to save: it exits at once
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    def client(self, port: int = 0) -> redis.Redis:
        return redis.Redis(
            host=HOST, port=port or self.port, socket_timeout=2, decode_responses=True
        )

    def url(self, user: str) -> str:
        return f"redis://{user}:{NODE_PASSWORD}@{HOST}:{self.port}/0"

    def add_node_user(self, user: str) -> None:
        self.users.append(user)
        self._set_user(user)

    def _set_user(self, user: str) -> None:
        with self.client() as client:
            client.execute_command(
                "ACL", "SETUSER", user, "reset", "on", f">{NODE_PASSWORD}", "~*", "&*", "+@all"
            )

    def set_user_enabled(self, user: str, enabled: bool) -> None:
        with self.client() as client:
            client.execute_command("ACL", "SETUSER", user, "on" if enabled else "off")

    def kill_node_connections(self, node: Node) -> dict[str, int]:
        """Kill the connections of ``node``'s engine (by id, found by client name); returns
        how many of each type (pubsub, normal)."""
        name = re.sub(r"[^\w.:-]", "_", f"pulsewire-{node.name}")
        killed: dict[str, int] = {}
        with self.client() as client:
            for entry in client.client_list():
                if entry.get("name") == name:
                    client.execute_command("CLIENT", "KILL", "ID", entry["id"])
                    kind = "pubsub" if "P" in entry.get("flags", "") else "normal"
                    killed[kind] = killed.get(kind, 0) + 1
        return killed


@dataclass
class FaultCluster(TwoNodes):
    redis: PrivateRedis
    nodes: list[Node]

    def user_of(self, node: Node) -> str:
        return f"user-{node.name}"


@pytest.fixture(scope="module")
def fault_nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultCluster]:
    """A private Redis and two nodes on it, for the whole module (starting them is what
    takes time); :func:`fault_cluster` brings them back to a healthy state for each test."""
    directory = tmp_path_factory.mktemp("faults")
    private = PrivateRedis(directory)
    nodes: list[Node] = []
    try:
        private.start()
        prefix = f"pwf-{uuid.uuid4().hex[:8]}"
        names = [f"{prefix}-a", f"{prefix}-b"]
        for name in names:
            private.add_node_user(f"user-{name}")
        nodes = spawn_nodes(
            directory,
            engines=[private.url(f"user-{name}") for name in names],
            prefix=prefix,
            names=names,
        )
        yield FaultCluster(private, nodes)
    finally:
        stop_nodes(nodes)
        private.stop()


@pytest.fixture
async def fault_cluster(fault_nodes: FaultCluster) -> AsyncIterator[FaultCluster]:
    """The module's cluster, Redis running, every node user enabled, both nodes connected;
    after the test: both processes alive, and no traceback in their logs."""
    cluster = fault_nodes
    for node in cluster.nodes:
        assert node.alive(), f"node {node.name} died earlier:\n{node.log()}"
    if cluster.redis.proc is None:
        cluster.redis.start()
    for node in cluster.nodes:
        cluster.redis.set_user_enabled(cluster.user_of(node), True)
    for node in cluster.nodes:
        await eventually(lambda n=node: engine_available(n), f"{node.name} to be connected")
    yield cluster
    for node in cluster.nodes:
        assert node.alive(), f"node {node.name} died:\n{node.log()}"
        assert "Traceback" not in node.log(), f"node {node.name} logged:\n{node.log()}"


# ------------------------------------------------------------------------------ helpers


async def engine_available(node: Node) -> bool:
    return bool((await health(node))["engine_available"])


async def metric(node: Node, name: str) -> float:
    """A sample of ``GET /metrics``."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, node.port), 5)
    try:
        writer.write(f"GET /metrics HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        length = int(re.search(rb"(?i)content-length: (\d+)", head).group(1))  # type: ignore[union-attr]
        body = await asyncio.wait_for(reader.readexactly(length), 5)
    finally:
        writer.close()
    assert head.startswith(b"HTTP/1.1 200"), head
    match = re.search(rf"^{name} (\S+)$", body.decode(), re.MULTILINE)
    assert match, f"no {name} in /metrics of {node.name}"
    return float(match.group(1))


@dataclass
class Follower:
    """Follows a history channel like a well-behaved client: keeps the last offset and epoch,
    and on an ``unsubscribe`` push with ``resubscribe`` subscribes again with recovery
    (retrying while the engine answers 108)."""

    client: Any
    channel: str
    epoch: str = ""
    offset: int = 0
    data: list[Any] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    resubscribes: list[dict[str, Any]] = field(default_factory=list)
    """The unsubscribe pushes received, with the outcome of the recovery that followed."""
    task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        result = await self.client.subscribe(self.channel)
        self.epoch, self.offset = result["epoch"], result["offset"]
        self.task = asyncio.get_running_loop().create_task(self._run())

    def _take(self, publication: dict[str, Any]) -> None:
        offset = publication["offset"]
        if offset != self.offset + 1:
            self.problems.append(f"offset {offset} after {self.offset}: {publication}")
        self.offset = max(self.offset, offset)
        self.data.append(publication["data"])

    async def _run(self) -> None:
        try:
            await self._follow()
        except Exception as exc:  # shown by the test's timeout message, raised by stop()
            self.problems.append(f"follower failed: {exc!r}")
            raise

    async def _follow(self) -> None:
        while True:
            push = await self.client.wait_push(None, self.channel, timeout=3600)
            if push["push"] == "publication":
                self._take(push)
            elif push["push"] == "unsubscribe":
                event = dict(push)
                self.resubscribes.append(event)
                if not push.get("resubscribe"):
                    self.problems.append(f"unsubscribed for good: {push}")
                    return
                event["recovery"] = result = await self._resubscribe()
                if result["recovered"]:
                    for publication in result["publications"]:
                        self._take(publication)
                else:  # a new stream: reload the state (here: start counting anew)
                    self.epoch, self.offset = result["epoch"], result["offset"]

    async def _resubscribe(self) -> dict[str, Any]:
        deadline = time.monotonic() + 10
        params = {
            "channel": self.channel,
            "recover": True,
            "offset": self.offset,
            "epoch": self.epoch,
        }
        while True:
            reply = await self.client.call("subscribe", params)
            if "result" in reply:
                return reply["result"]  # type: ignore[no-any-return]
            assert reply["error"]["code"] == 108, reply
            assert time.monotonic() < deadline, "could not resubscribe in 10 s"
            await asyncio.sleep(0.1)

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
            if self.task.done() and not self.task.cancelled() and self.task.exception():
                raise self.task.exception()  # type: ignore[misc]


class Publisher:
    """Publishes 1, 2, 3... to a history channel through a node's HTTP API, every ~10 ms."""

    def __init__(self, node: Node, channel: str) -> None:
        self.node = node
        self.channel = channel
        self.count = 0
        self.offsets: list[int] = []
        self._stop = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while not self._stop.is_set():
            number = self.count + 1
            result = await api(self.node, "publish", {"channel": self.channel, "data": number})
            self.count = number
            self.offsets.append(result["offset"])
            await asyncio.sleep(0.01)

    async def until(self, count: int, timeout: float = 10.0) -> None:
        await eventually(lambda: self.count >= count, f"{count} publications", timeout)

    async def stop(self) -> int:
        self._stop.set()
        await asyncio.wait_for(self._task, 10)
        return self.count


# -------------------------------------------------------------------------------- tests


async def test_connections_killed_then_back(
    fault_cluster: FaultCluster, hub_client: Any, uniq: Any
) -> None:
    """Node A loses Redis (connections killed, reconnection refused) while B publishes: A's
    local clients are still served, and after A is back its history subscribers have every
    publication once, in order, without being asked to resubscribe (gap filled)."""
    cluster = fault_cluster
    a, b = cluster.a, cluster.b
    hist, live, fresh = uniq("room"), uniq("live"), uniq("live")
    a_hist = Follower(await hub_client(a, "a-hist"), hist)
    b_hist = Follower(await hub_client(b, "b-hist"), hist)
    for follower in (a_hist, b_hist):
        await follower.start()
    a_live, a_live2 = await hub_client(a, "a-live"), await hub_client(a, "a-live2")
    b_live = await hub_client(b, "b-live")
    for client in (a_live, a_live2, b_live):
        await client.subscribe(live)
    for node in (a, b):
        assert await engine_available(node)
    fills_before = await metric(a, "pulsewire_history_gap_fills_total")

    publisher = Publisher(b, hist)
    try:
        await publisher.until(5)
        await eventually(lambda: len(a_hist.data) >= 5, "A to receive B's stream")

        # -- outage of node A alone
        cluster.redis.set_user_enabled(cluster.user_of(a), False)
        killed = cluster.redis.kill_node_connections(a)
        assert killed.get("pubsub") == 1 and killed.get("normal", 0) >= 1, killed
        await eventually(lambda: _not(engine_available(a)), "A's /health to say unavailable")
        down_at = publisher.count
        assert await engine_available(b)

        # local delivery goes on for channels without history...
        for i in range(3):
            assert await a_live.ok("publish", {"channel": live, "data": f"local-{i}"}) == {}
        for client in (a_live, a_live2):
            await eventually(
                lambda c=client: publication_data(c, live) == ["local-0", "local-1", "local-2"],
                "local delivery on A during the outage",
            )
        # ... while history needs the engine: 108 (HTTP 503) rather than a lost publication
        error = await a_hist.client.fail("publish", {"channel": hist, "data": "x"})
        assert error["code"] == 108
        status, body = await http_json(a.port, "POST", "/api/publish", {"channel": hist, "data": 1})
        assert (status, body["error"]["code"]) == (503, 108)
        error = await a_live.fail("subscribe", {"channel": fresh})  # a channel new to A
        assert error["code"] == 108
        assert await a_live.ok("publish", {"channel": live, "data": "local-3"}) == {}

        await publisher.until(down_at + 15)
        assert not await engine_available(a), "A must not get back in while its user is off"
        missed_from = len(a_hist.data)

        # -- A's user is back: A reconnects by itself and fills the gap from history
        cluster.redis.set_user_enabled(cluster.user_of(a), True)
        await eventually(lambda: engine_available(a), "A's /health to say available again")
        back_at = publisher.count
        await publisher.until(back_at + 10)
    finally:
        total = await publisher.stop()

    assert missed_from < down_at + 15 <= total, "B published while A was cut off"
    expected = list(range(1, total + 1))
    assert publisher.offsets == expected
    for follower in (a_hist, b_hist):
        await eventually(
            lambda f=follower: len(f.data) >= total,
            lambda f=follower: f"all {total} publications: {f.data}, {f.problems}",
            10,
        )
        await follower.client.sync()
        await follower.stop()
        assert follower.data == expected, follower.problems
        assert follower.problems == []
        assert follower.resubscribes == []
    assert await metric(a, "pulsewire_history_gap_fills_total") > fills_before

    # both ways across nodes again, for channels without history too
    await a_live.ok("publish", {"channel": live, "data": "after-a"})
    await b_live.ok("publish", {"channel": live, "data": "after-b"})
    await eventually(lambda: "after-a" in publication_data(b_live, live), "A -> B")
    await eventually(lambda: "after-b" in publication_data(a_live, live), "B -> A")
    assert await a_live.subscribe(fresh) == {}
    assert (await a_hist.client.ok("publish", {"channel": hist, "data": "end"}))["offset"] == (
        total + 1
    )
    for node in (a, b):
        assert (await health(node))["engine_available"] is True


async def test_connections_killed_over_and_over(
    fault_cluster: FaultCluster, hub_client: Any, uniq: Any
) -> None:
    """A's connections are killed every 20-200 ms for 2 s (it reconnects at once each time, and
    a kill may land during a gap fill) while B publishes: A's history subscribers, acting as
    the protocol says (resubscribe with recovery when told to), end up with every
    publication once and in order."""
    cluster = fault_cluster
    a, b = cluster.a, cluster.b
    hist, live = uniq("room"), uniq("live")
    followers = [Follower(await hub_client(a, f"a{i}"), hist) for i in range(2)]
    followers.append(Follower(await hub_client(b, "b0"), hist))
    for follower in followers:
        await follower.start()
    a_live = await hub_client(a, "a-live")
    await a_live.subscribe(live)
    publisher = Publisher(b, hist)
    kills: list[dict[str, int]] = []
    try:
        await publisher.until(3)
        deadline = time.monotonic() + 2.0
        sent = 0
        while time.monotonic() < deadline:
            kills.append(cluster.redis.kill_node_connections(a))
            sent += 1  # local publications keep working whatever the engine does
            assert await a_live.ok("publish", {"channel": live, "data": sent}) == {}
            await asyncio.sleep(random.uniform(0.02, 0.2))
        await eventually(lambda: engine_available(a), "A to be back")
        await publisher.until(publisher.count + 10)
    finally:
        total = await publisher.stop()
    fills = await metric(a, "pulsewire_history_gap_fills_total")
    print(f"kills={kills} gap_fills={fills} resubscribes={[f.resubscribes for f in followers]}")
    assert sum(k.get("pubsub", 0) for k in kills) >= 3, kills
    expected = list(range(1, total + 1))
    for follower in followers:
        await eventually(
            lambda f=follower: len(f.data) >= total,
            lambda f=follower: f"all {total} publications: {f.data}, {f.problems}",
            15,
        )
        await follower.client.sync()
        await follower.stop()
        assert follower.problems == []
        assert follower.data == expected
        for event in follower.resubscribes:
            assert (event["code"], event["resubscribe"]) == (2500, True)
            assert event["recovery"]["recovered"] is True
    await eventually(
        lambda: publication_data(a_live, live) == list(range(1, sent + 1)), "local publications"
    )


async def test_redis_restarted_with_data_lost(
    fault_cluster: FaultCluster, hub_client: Any, uniq: Any
) -> None:
    cluster = fault_cluster
    a, b = cluster.a, cluster.b
    hist, live = uniq("room"), uniq("live")
    a_hist, b_hist = await hub_client(a, "a-hist"), await hub_client(b, "b-hist")
    subscribed = [await client.subscribe(hist) for client in (a_hist, b_hist)]
    epoch = subscribed[0]["epoch"]
    assert subscribed[1]["epoch"] == epoch
    a_live, a_live2 = await hub_client(a, "a-live"), await hub_client(a, "a-live2")
    b_live = await hub_client(b, "b-live")
    for client in (a_live, a_live2, b_live):
        await client.subscribe(live)
    for i in range(3):
        await api(b, "publish", {"channel": hist, "data": f"before-{i}"})
    for client in (a_hist, b_hist):
        pubs = await client.publications(hist, 3)
        assert [p["offset"] for p in pubs] == [1, 2, 3]

    # -- Redis goes away (its data with it)
    cluster.redis.stop()
    for node in (a, b):
        await eventually(lambda n=node: _not(engine_available(n)), f"{node.name} to notice")
    for i in range(3):
        assert await a_live.ok("publish", {"channel": live, "data": f"local-{i}"}) == {}
    await eventually(
        lambda: publication_data(a_live2, live) == ["local-0", "local-1", "local-2"],
        "local delivery while Redis is down",
    )
    error = await a_hist.fail("publish", {"channel": hist, "data": "lost?"})
    assert error["code"] == 108
    status, body = await http_json(b.port, "POST", "/api/publish", {"channel": hist, "data": 0})
    assert (status, body["error"]["code"]) == (503, 108)
    await a_hist.sync()
    assert publication_data(a_hist, hist) == ["before-0", "before-1", "before-2"]

    # -- Redis is back, empty: the nodes reconnect by themselves (backoff at most 2 s)
    cluster.redis.start()
    for node in (a, b):
        await eventually(lambda n=node: engine_available(n), f"{node.name} to reconnect")

    # What the hub does: it cannot fill the gap (the stream's epoch changed), so it tells
    # every local subscriber of the history channel to resubscribe...
    for client in (a_hist, b_hist):
        push = await client.wait_push("unsubscribe", hist, timeout=8)
        assert push == {
            "push": "unsubscribe",
            "channel": hist,
            "code": 2500,
            "reason": "insufficient state",
            "resubscribe": True,
        }
        # ... and their recovery says the state is gone: a new epoch, from the start
        result = await client.subscribe(hist, recover=True, offset=3, epoch=epoch)
        assert result["recovered"] is False and result["publications"] == []
        assert result["epoch"] != epoch and result["offset"] == 0
    new_epoch = result["epoch"]

    # publishing and delivery work again, across nodes, in both kinds of channel
    position = await api(b, "publish", {"channel": hist, "data": "after"})
    assert position == {"offset": 1, "epoch": new_epoch}
    assert (await a_hist.ok("publish", {"channel": hist, "data": "after-a"}))["offset"] == 2
    for client in (a_hist, b_hist):
        pubs = await client.publications(hist, 2)
        assert [(p["data"], p["offset"]) for p in pubs] == [("after", 1), ("after-a", 2)]
    await a_live.ok("publish", {"channel": live, "data": "after-a"})
    await b_live.ok("publish", {"channel": live, "data": "after-b"})
    await eventually(lambda: "after-a" in publication_data(b_live, live), "A -> B")
    await eventually(lambda: "after-b" in publication_data(a_live2, live), "B -> A")
    for node in (a, b):
        state = await health(node)
        assert state["status"] == "ok" and state["engine_available"] is True


async def _not(check: Any) -> bool:
    return not await check
