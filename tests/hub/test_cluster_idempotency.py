"""Idempotent publish across two ``pulsewire serve`` processes (Redis and NATS), and across a
Redis stop/continue: nothing lost, nothing published twice.

* ``test_one_key_publishes_once_across_nodes``: the same ``idempotency_key`` sent to node A,
  then to node B, concurrently to both, and by a client's ``publish`` command: one
  publication, delivered once to the subscribers of both nodes; every answer is the first
  one (same offset and epoch for history channels).
* ``test_publisher_retrying_with_keys_across_a_redis_stop``: a private ``redis-server`` is
  stopped (SIGSTOP) for 5 s under a publisher that sends numbered publications through the
  HTTP API, alternating nodes, and retries every failure with the same key until it is
  acknowledged. While stopped, commands already written wait in Redis's socket buffers and
  run when it resumes, after the node answered: 114/504 ("unknown: retry with the same key"),
  where a 503/108 ("not published") would have invited a duplicate. Afterwards history holds
  each number once, in order, and the subscribers of both nodes got each once, in order.

Services missing: skipped (failed when ``CI=true``), like the other cluster tests.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from .conftest import API_KEY
from .test_cluster import (
    HOST,
    REDIS_PORT,
    Node,
    TwoNodes,
    api,
    engine_url,
    eventually,
    health,
    nats_streams_cleanup,
    publication_data,
    redis_keys_cleanup,
    spawn_nodes,
    stop_nodes,
)
from .test_engine_faults import Follower, PrivateRedis

pytestmark = pytest.mark.timeout(120)


def check_logs(nodes: list[Node]) -> None:
    for node in nodes:
        assert node.alive(), f"node {node.name} died:\n{node.log()}"
        assert "Traceback" not in node.log(), f"node {node.name} logged:\n{node.log()}"


@dataclass
class Nodes(TwoNodes):
    kind: str
    nodes: list[Node] = field(default_factory=list)


@pytest.fixture(scope="module", params=["redis", "nats"])
def nodes(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Nodes]:
    kind = request.param
    url = engine_url(kind)
    prefix = f"pwi-{uuid.uuid4().hex[:10]}"
    names = [f"{prefix}-a", f"{prefix}-b"]
    directory = tmp_path_factory.mktemp(f"idem-{kind}")
    started = spawn_nodes(directory, engines=[url, url], prefix=prefix, names=names)
    try:
        yield Nodes(kind, started)
        check_logs(started)
    finally:
        stop_nodes(started)
        if kind == "redis":
            redis_keys_cleanup(REDIS_PORT, prefix)
        else:
            nats_streams_cleanup(prefix)


@pytest.mark.parametrize("namespace", ["room", "live"])
async def test_one_key_publishes_once_across_nodes(
    nodes: Nodes, hub_client: Any, uniq: Any, namespace: str
) -> None:
    a, b = nodes.a, nodes.b
    channel = uniq(namespace)
    history = namespace == "room"
    subscribers = [await hub_client(node, f"sub-{i}") for i, node in enumerate((a, a, b, b))]
    poster = subscribers[-1]
    for client in subscribers:
        await client.subscribe(channel)

    def publish(node: Node, data: Any, key: str) -> Any:
        return api(node, "publish", {"channel": channel, "data": data, "idempotency_key": key})

    # one after the other, on both nodes, with other data each time
    first = await publish(a, "one", "k1")
    assert await publish(b, "one-again", "k1") == first
    assert await publish(a, "one-again", "k1") == first
    # concurrently to both nodes
    answers = await asyncio.gather(
        *(publish(node, f"two-{i}", "k2") for i, node in enumerate((a, b, a, b, a, b)))
    )
    assert all(answer == answers[0] for answer in answers), answers
    # a client's publish command shares the key space of the API
    params = {"channel": channel, "data": "three", "idempotency_key": "k3"}
    third = await poster.ok("publish", params)
    assert await publish(a, "three-again", "k3") == third
    assert await poster.ok("publish", params) == third
    if history:
        assert [first["offset"], answers[0]["offset"], third["offset"]] == [1, 2, 3]
        assert first["epoch"] == answers[0]["epoch"] == third["epoch"]
    else:
        assert first == answers[0] == third == {}

    # end markers through the same path (keyed): once they arrived, a duplicate would have too
    await publish(a, "end-a", "end-a")
    await publish(b, "end-b", "end-b")
    for client in subscribers:
        await eventually(
            lambda c=client: {"end-a", "end-b"} <= set(publication_data(c, channel)),
            "the end markers",
        )
        await client.sync()
    winner = [d for d in publication_data(subscribers[0], channel) if d.startswith("two")]
    assert len(winner) == 1, "one of the concurrent publishes won"
    for client in subscribers:
        data = publication_data(client, channel)
        assert sorted(data) == sorted(["one", winner[0], "three", "end-a", "end-b"]), data
        if history:
            assert data[:3] == ["one", winner[0], "three"]
            pushes = [m for m in client.log if m.get("push") == "publication"]
            assert [p["offset"] for p in pushes if p["channel"] == channel] == [1, 2, 3, 4, 5]
    if history:
        result = await api(b, "history", {"channel": channel})
        assert [p["offset"] for p in result["publications"]] == [1, 2, 3, 4, 5]
        assert result["publications"][0]["data"] == "one"


# ----------------------------------------------------------------- Redis stop / continue


@dataclass
class StoppableCluster(TwoNodes):
    redis: PrivateRedis
    nodes: list[Node]


@pytest.fixture(scope="module")
def stoppable(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StoppableCluster]:
    directory = tmp_path_factory.mktemp("idem-stop")
    private = PrivateRedis(directory)
    started: list[Node] = []
    try:
        private.start()
        prefix = f"pws-{uuid.uuid4().hex[:8]}"
        url = f"redis://{HOST}:{private.port}/0"
        started = spawn_nodes(
            directory, engines=[url, url], prefix=prefix, names=[f"{prefix}-a", f"{prefix}-b"]
        )
        yield StoppableCluster(private, started)
    finally:
        if private.proc is not None:
            os.kill(private.proc.pid, signal.SIGCONT)  # in case the test failed while stopped
        stop_nodes(started)
        private.stop()


async def post(port: int, path: str, body: Any, timeout: float) -> tuple[int, Any]:
    """(status, JSON) of a POST, or (0, None) when no answer came in ``timeout`` seconds
    (a publisher must treat that as "unknown" too)."""
    payload = json.dumps(body).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nConnection: close\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
        f"Authorization: apikey {API_KEY}\r\n\r\n"
    ).encode()
    writer = None
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), timeout)
        writer.write(head + payload)
        raw = await asyncio.wait_for(reader.read(), timeout)  # the node closes after answering
    except (OSError, asyncio.TimeoutError):
        return 0, None
    finally:
        if writer is not None:
            writer.close()
    status_line, _, rest = raw.partition(b"\r\n")
    _, _, body_bytes = rest.partition(b"\r\n\r\n")
    return int(status_line.split()[1]), json.loads(body_bytes)


class KeyedPublisher:
    """Publishes 1, 2, 3... with key ``n<i>`` through the HTTP API; every failure is retried
    with the same key, on the other node, until acknowledged (as docs/protocol.md says)."""

    def __init__(self, nodes: list[Node], channel: str) -> None:
        self.nodes = nodes
        self.channel = channel
        self.acked: list[tuple[int, int, str]] = []  # (number, offset, epoch)
        self.answers: dict[str, int] = {}  # "status/code" -> count of failed attempts
        self._stop = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run())

    @property
    def count(self) -> int:
        return len(self.acked)

    async def _run(self) -> None:
        attempt = 0
        while not self._stop.is_set():
            number = self.count + 1
            body = {"channel": self.channel, "data": number, "idempotency_key": f"n{number}"}
            while True:
                node = self.nodes[attempt % len(self.nodes)]
                attempt += 1
                status, answer = await post(node.port, "/api/publish", body, timeout=15)
                if status == 200:
                    result = answer["result"]
                    self.acked.append((number, result["offset"], result["epoch"]))
                    break
                code = answer["error"]["code"] if answer else None
                label = f"{status}/{code}"
                self.answers[label] = self.answers.get(label, 0) + 1
                assert (status, code) in {(503, 108), (504, 114), (0, None)}, answer
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.01)

    async def until(self, count: int, timeout: float = 20.0) -> None:
        await eventually(lambda: self.count >= count, f"{count} acknowledged", timeout)

    async def stop(self) -> int:
        self._stop.set()
        await asyncio.wait_for(self._task, 60)
        return self.count


async def test_publisher_retrying_with_keys_across_a_redis_stop(
    stoppable: StoppableCluster, hub_client: Any, uniq: Any
) -> None:
    cluster = stoppable
    a, b = cluster.a, cluster.b
    redis = cluster.redis.proc
    assert redis is not None
    channel = uniq("room")
    followers = [Follower(await hub_client(node, f"f-{node.name}"), channel) for node in (a, b)]
    for follower in followers:
        await follower.start()
    publisher = KeyedPublisher([a, b], channel)
    try:
        await publisher.until(10)
        os.kill(redis.pid, signal.SIGSTOP)
        stopped_at = publisher.count
        await asyncio.sleep(5.0)
        os.kill(redis.pid, signal.SIGCONT)
        for node in (a, b):
            await eventually(lambda n=node: _engine_available(n), f"{node.name} to reconnect", 15)
        await publisher.until(publisher.count + 10)
    finally:
        os.kill(redis.pid, signal.SIGCONT)
        total = await publisher.stop()
    print(f"acknowledged={total} stopped_at={stopped_at} failed attempts={publisher.answers}")

    expected = list(range(1, total + 1))
    assert [number for number, _, _ in publisher.acked] == expected
    offsets = [offset for _, offset, _ in publisher.acked]
    assert offsets == expected, "each number acknowledged once, at the next offset"
    assert len({epoch for _, _, epoch in publisher.acked}) == 1
    unknown = publisher.answers.get("504/114", 0)
    assert unknown >= 1, (
        f"a publish sent to the stopped Redis is 'unknown' (114): {publisher.answers}"
    )
    # history holds each number once, in order: no retry published twice
    kept = await api(a, "history", {"channel": channel})
    assert [p["data"] for p in kept["publications"]] == expected
    assert kept["offset"] == total
    # each acknowledged publication reached the subscribers of both nodes once, in order
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
    check_logs(cluster.nodes)


async def _engine_available(node: Node) -> bool:
    return bool((await health(node))["engine_available"])
