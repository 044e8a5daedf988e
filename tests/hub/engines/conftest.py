"""Engine fixtures: a cluster of engine nodes of one kind, each bound to a recording handler.

* ``nats_cluster``: a three-server NATS cluster started for the session (kind
  ``nats-cluster``, R3 streams); skipped without ``nats-server`` (failed when ``CI=true``).
* ``redis_url``: the Redis at 127.0.0.1:6379; the test is skipped when it does not answer
  (failed instead when ``CI=true``).
* ``redis_shards``: three private ``redis-server`` processes (tests/hub/redis_servers.py),
  started once per session, for the ``redis+shards`` kind.
* ``sentinel_service``: a Sentinel topology of our own (tests/hub/sentinel_topology.py),
  started once per session for the ``redis+sentinel`` kind.
* ``cluster``: parametrised over :data:`ENGINE_KINDS`; ``await cluster.add_engine()`` starts
  one more node (another process, as far as the engine can tell) on a per-test key prefix;
  for single-process engines (memory) a second node skips the test. Teardown closes the
  nodes and deletes the prefix's keys.
* ``engine``: the cluster's first node, started, its ``handler`` a :class:`Recorder`.
* ``await cluster.advance(seconds)``: let time pass for expiry (history, presence,
  tombstones, node index, idempotency keys): a fake clock shared by the cluster's nodes
  where the engine takes one (memory), a sleep where time is the service's (Redis's clock,
  NATS's message timestamps).

A new engine kind is one more :class:`EngineKind` entry: how to build an engine from the value
of its service fixture (e.g. a ``nats_url`` fixture) and a prefix, and how to clean up.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pytest

from pulsewire.hub.engines.base import ChannelFilter, Engine
from pulsewire.hub.engines.memory import MemoryEngine
from pulsewire.hub.types import ClientInfo, Publication

from ..redis_servers import RedisServers
from ..sentinel_topology import SentinelTopology, redis_server_missing

if TYPE_CHECKING:
    from ..nats_cluster import NatsCluster

REDIS_HOST = "127.0.0.1"
REDIS_PORT = 6379


def redis_answers(host: str = REDIS_HOST, port: int = REDIS_PORT, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def service_missing(message: str) -> None:
    """Skip the test, or fail it on CI where every service must be there."""
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def redis_url() -> str:
    if not redis_answers():
        service_missing(f"Redis not reachable at {REDIS_HOST}:{REDIS_PORT}")
    return f"redis://{REDIS_HOST}:{REDIS_PORT}/0"


async def delete_redis_keys(url: str, prefix: str) -> None:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(url)
    try:
        keys = [key async for key in client.scan_iter(match=f"{prefix}:*", count=1000)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


# ------------------------------------------------------------------------------ recorder


class Recorder:
    """An EngineHandler that records every callback and lets tests wait for conditions."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.publications: list[tuple[str, Publication]] = []
        self.joins: list[tuple[str, ClientInfo]] = []
        self.join_nodes: list[str] = []
        """The ``node`` of each join, in the same order."""
        self.leaves: list[tuple[str, ClientInfo]] = []
        self.controls: list[dict[str, Any]] = []
        self.states: list[bool] = []
        self.state_filters: list[ChannelFilter | None] = []
        """The ``channels`` of each state report, in the same order (None: the engine)."""
        self._changed = asyncio.Event()

    def on_publication(self, channel: str, publication: Publication) -> None:
        self.publications.append((channel, publication))
        self._changed.set()

    def on_join(self, channel: str, info: ClientInfo, node: str = "") -> None:
        self.joins.append((channel, info))
        self.join_nodes.append(node)
        self._changed.set()

    def on_leave(self, channel: str, info: ClientInfo) -> None:
        self.leaves.append((channel, info))
        self._changed.set()

    def on_control(self, message: dict[str, Any]) -> None:
        self.controls.append(message)
        self._changed.set()

    def on_engine_state(self, available: bool, channels: ChannelFilter | None = None) -> None:
        self.states.append(available)
        self.state_filters.append(channels)
        self._changed.set()

    def pubs(self, channel: str) -> list[Publication]:
        return [p for c, p in self.publications if c == channel]

    async def wait_for(
        self, predicate: Callable[[], bool], timeout: float = 5.0, what: str = "condition"
    ) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"node {self.name}: timed out waiting for {what}")
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), min(remaining, 0.1))
            except asyncio.TimeoutError:
                pass


def recorder(engine: Engine) -> Recorder:
    assert isinstance(engine.handler, Recorder)
    return engine.handler


# ------------------------------------------------------------------------------ clocks


class FakeClock:
    """A clock that moves only when told: ``advance(seconds)``."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


# ------------------------------------------------------------------------------ clusters


@dataclass(frozen=True)
class EngineKind:
    #: (service fixture value, key prefix, the cluster's clock or None) -> an engine, not
    #: started.
    make: Callable[[Any, str, FakeClock | None], Engine]
    #: Name of the fixture giving the service address (skips when the service is missing).
    service_fixture: str | None = None
    #: Whether several engine instances share state (act as one hub).
    multi_node: bool = True
    #: (service fixture value, key prefix) -> delete what the test left behind.
    cleanup: Callable[[Any, str], Awaitable[None]] | None = None
    #: Whether the engine takes a clock (``make`` then gets the cluster's fake clock):
    #: False when time is the service's, and tests sleep.
    fake_clock: bool = False
    #: Why concurrent compare-and-set appends may both succeed on this kind ("" if they
    #: cannot): the tests that race them are expected to fail (not strictly).
    racy_cas: str = ""


NATS_HOST, NATS_PORT = "127.0.0.1", 4222


def nats_answers(timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((NATS_HOST, NATS_PORT), timeout) as sock:
            sock.settimeout(timeout)
            return sock.recv(5) == b"INFO "  # a NATS server greets first
    except OSError:
        return False


@pytest.fixture(scope="session")
def nats_service() -> str:
    if not nats_answers():
        service_missing(f"NATS not reachable at {NATS_HOST}:{NATS_PORT}")
    return f"nats://{NATS_HOST}:{NATS_PORT}"


@pytest.fixture(scope="session")
def nats_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsCluster]:
    """A three-server NATS cluster of this session's own (tests/hub/nats_cluster.py).
    Skips without ``nats-server`` (fails when ``CI=true``)."""
    from ..nats_cluster import NatsCluster, nats_server

    if nats_server() is None:
        service_missing("nats-server is not installed")
    cluster = NatsCluster(tmp_path_factory.mktemp("nats-cluster"))
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


CLUSTER_TIMEOUT = 3.0  # the nats-cluster kind's engine timeout


def nats_seed_url(cluster: NatsCluster) -> str:
    """The ``nats-cluster`` kind's engine URL: R3 streams, one seed server.

    Every node connects to the seed, so a node's subscription is known where the others
    publish when subscribe() returns (interest reaches the other servers over the routes a
    little later: see the scaling notes, NATS cluster). The R3 streams' leaders are spread
    over the three servers, so appends, reads and the republished fan-out cross the routes.
    """
    return cluster.url(replicas=3, servers=cluster.servers[:1])


def _make_nats_cluster(cluster: NatsCluster, prefix: str, _clock: FakeClock | None) -> Engine:
    from pulsewire.hub.engines.nats import NatsEngine

    # R3 writes wait for a quorum of three servers sharing this loaded machine's 2 cores: a
    # more generous timeout than the engine's default 1.5 s.
    return NatsEngine(nats_seed_url(cluster), prefix, timeout=CLUSTER_TIMEOUT)


async def _delete_nats_cluster_streams(cluster: NatsCluster, prefix: str) -> None:
    await delete_nats_streams(nats_seed_url(cluster), prefix)


async def delete_nats_streams(url: str, prefix: str) -> None:
    import nats

    from pulsewire.hub.engines.nats_url import parse_nats_url

    nc = await nats.connect(servers=list(parse_nats_url(url).servers))
    try:
        js = nc.jetstream()
        for info in await js.streams_info():
            if info.config.name and info.config.name.startswith(f"{prefix}_"):
                await js.delete_stream(info.config.name)
    finally:
        await nc.close()


def _racy_cas() -> str:
    """Why compare-and-set is racy on this nats-server's replicated streams, or ""."""
    from ..nats_cluster import CAS_FIXED_IN, server_version

    version = server_version()
    if version == (0, 0, 0) or version >= CAS_FIXED_IN:
        return ""
    found = ".".join(map(str, version))
    return (
        f"nats-server {found} < 2.9.21: Nats-Expected-Last-Subject-Sequence is racy on "
        "replicated (R3) streams (nats-server issue #4320), two concurrent appends can both "
        "succeed"
    )


def _make_memory(_service: None, _prefix: str, clock: FakeClock | None) -> Engine:
    return MemoryEngine() if clock is None else MemoryEngine(clock)


def _make_nats(url: str, prefix: str, _clock: FakeClock | None) -> Engine:
    from pulsewire.hub.engines.nats import NatsEngine

    return NatsEngine(url, prefix)


def _make_redis(url: str, prefix: str, _clock: FakeClock | None) -> Engine:
    from pulsewire.hub.engines.redis import RedisEngine

    return RedisEngine(url, prefix, ping_interval=0.5)


@pytest.fixture(scope="session")
def redis_shards() -> Iterator[list[str]]:
    """Three independent redis-servers of our own (ports 7200-7299): their URLs."""
    with RedisServers(3) as servers:
        yield servers.urls


def _make_redis_shards(urls: list[str], prefix: str, _clock: FakeClock | None) -> Engine:
    from pulsewire.hub.engines.redis_shards import ShardedRedisEngine

    return ShardedRedisEngine(urls, prefix, ping_interval=0.5)


async def delete_shards_keys(urls: list[str], prefix: str) -> None:
    for url in urls:
        await delete_redis_keys(url, prefix)


@pytest.fixture(scope="session")
def sentinel_service() -> Iterator[SentinelTopology]:
    """A master, a replica and three sentinels of our own for the whole session (never
    failed over: tests/hub/test_sentinel.py kills masters of its own topology)."""
    redis_server_missing()
    topology = SentinelTopology().start()
    try:
        yield topology
    finally:
        topology.stop()


#: Ports of the session's Redis Cluster (the brief's range 7300-7399; bus on port+10000).
REDIS_CLUSTER_PORT = 7300


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[Any]:
    """A Redis Cluster of six local redis-server processes (3 masters, 3 replicas) for the
    session; skipped (failed on CI) without redis-server/redis-cli."""
    from ..redis_cluster_topology import ClusterTopology, cluster_tools_missing

    missing = cluster_tools_missing()
    if missing:
        service_missing(f"no Redis Cluster: {missing}")
    topology = ClusterTopology(REDIS_CLUSTER_PORT)
    topology.start()
    try:
        yield topology
    finally:
        topology.stop()


def _make_sentinel(topology: SentinelTopology, prefix: str, _clock: FakeClock | None) -> Engine:
    from pulsewire.hub.engines.redis_sentinel import RedisSentinelEngine

    return RedisSentinelEngine(topology.url, prefix, ping_interval=0.5)


async def _delete_sentinel_keys(topology: SentinelTopology, prefix: str) -> None:
    await delete_redis_keys(f"redis://127.0.0.1:{topology.master_port()}/0", prefix)


def _make_redis_cluster(topology: Any, prefix: str, _clock: FakeClock | None) -> Engine:
    from pulsewire.hub.engines.redis_cluster import RedisClusterEngine

    return RedisClusterEngine(topology.url, prefix, ping_interval=0.5)


async def delete_redis_cluster_keys(topology: Any, prefix: str) -> None:
    """Delete the prefix's keys on every master, one by one (keys of different slots)."""
    import redis.asyncio as aioredis

    for port in topology.masters():
        client = aioredis.Redis(host="127.0.0.1", port=port)
        try:
            async for key in client.scan_iter(match=f"{prefix}:*", count=1000):
                await client.delete(key)
        finally:
            await client.aclose()


ENGINE_KINDS: dict[str, EngineKind] = {
    "memory": EngineKind(_make_memory, multi_node=False, fake_clock=True),
    "redis": EngineKind(_make_redis, "redis_url", cleanup=delete_redis_keys),
    "redis+shards": EngineKind(_make_redis_shards, "redis_shards", cleanup=delete_shards_keys),
    "redis+sentinel": EngineKind(_make_sentinel, "sentinel_service", cleanup=_delete_sentinel_keys),
    "nats": EngineKind(_make_nats, "nats_service", cleanup=delete_nats_streams),
    # Three servers, R3 streams: the same contract on a cluster (see nats_seed_url).
    "nats-cluster": EngineKind(
        _make_nats_cluster,
        "nats_cluster",
        cleanup=_delete_nats_cluster_streams,
        racy_cas=_racy_cas(),
    ),
    "redis+cluster": EngineKind(
        _make_redis_cluster, "redis_cluster", cleanup=delete_redis_cluster_keys
    ),
}


@dataclass
class Cluster:
    """Engine nodes of one kind sharing one key prefix."""

    kind_name: str
    kind: EngineKind
    service: Any
    prefix: str
    engines: list[Engine] = field(default_factory=list)
    clock: FakeClock | None = None

    def __post_init__(self) -> None:
        if self.kind.fake_clock:
            self.clock = FakeClock()

    async def advance(self, seconds: float) -> None:
        """Let ``seconds`` pass for expiry: on the nodes' fake clock if they have one, else
        really (the service's time)."""
        if self.clock is None:
            await asyncio.sleep(seconds)
        else:
            self.clock.advance(seconds)

    @property
    def multi_node(self) -> bool:
        return self.kind.multi_node

    async def add_engine(self, name: str | None = None) -> Engine:
        if self.engines and not self.kind.multi_node:
            pytest.skip(f"the {self.kind_name} engine runs in one process only")
        name = name or "abcdefgh"[len(self.engines)]
        engine = self.kind.make(self.service, self.prefix, self.clock)
        engine.bind(Recorder(name), f"{self.prefix}-{name}")
        await engine.start()
        self.engines.append(engine)
        return engine

    async def up_to(self, count: int) -> list[Engine]:
        """``count`` nodes when the engine connects processes, else the only one."""
        want = count if self.kind.multi_node else 1
        while len(self.engines) < want:
            await self.add_engine()
        return self.engines[:want]

    async def subscribe(self, channel: str, nodes: list[Engine]) -> None:
        """Subscribe ``nodes`` to ``channel``, then wait until every node's service knows it.

        In a NATS cluster a subscription reaches the other servers over their routes a
        moment after ``subscribe`` returns, and a publication without history sent before
        that misses it (core NATS delivers to the interest known when it is published; seen
        in CI, on a loaded machine). A control message each subscriber sends afterwards
        travels the same routes behind that interest: once every node has it, the interest
        is known everywhere."""
        for node in nodes:
            await node.subscribe(channel)
        if self.multi_node:
            for node in nodes:
                await self.settle([node, *(e for e in self.engines if e is not node)])

    async def settle(self, engines: list[Engine] | None = None) -> None:
        """Wait until a control message sent now has reached every node: whatever was
        published before it has been delivered."""
        engines = engines or self.engines
        marker = {"settle": uuid.uuid4().hex}
        await engines[0].publish_control(marker)
        for engine in engines:
            rec = recorder(engine)
            await rec.wait_for(lambda rec=rec: marker in rec.controls, what="settle marker")

    async def close(self) -> None:
        for engine in self.engines:
            await engine.close()
        if self.kind.cleanup is not None:
            await self.kind.cleanup(self.service, self.prefix)


@pytest.fixture(params=list(ENGINE_KINDS))
def engine_kind(request: pytest.FixtureRequest) -> tuple[str, EngineKind, Any]:
    kind = ENGINE_KINDS[request.param]
    service = request.getfixturevalue(kind.service_fixture) if kind.service_fixture else None
    return request.param, kind, service


@pytest.fixture
async def cluster(engine_kind: tuple[str, EngineKind, Any]) -> AsyncIterator[Cluster]:
    name, kind, service = engine_kind
    cluster = Cluster(name, kind, service, f"pwtest-{uuid.uuid4().hex[:12]}")
    try:
        yield cluster
    finally:
        await cluster.close()


@pytest.fixture
async def engine(cluster: Cluster) -> Engine:
    return await cluster.add_engine()


@pytest.fixture
def recorder_class() -> type[Recorder]:
    """The Recorder class, for tests that build engines by hand."""
    return Recorder
