"""The NATS engine on a three-server cluster (tests/hub/nats_cluster.py), beyond the contract
suite (kind ``nats-cluster``): nodes on different servers creating the same R3 streams at
once, and a node whose server dies moving to another one by itself."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

import pytest

from pulsewire.hub.engines.base import EngineUnavailable
from pulsewire.hub.engines.nats_link import same_config
from pulsewire.hub.types import ClientInfo, Publication, PublishOptions

from .conftest import CLUSTER_TIMEOUT, Recorder, delete_nats_streams

if TYPE_CHECKING:
    from pulsewire.hub.engines.nats import NatsEngine

    from ..nats_cluster import NatsCluster

pytestmark = pytest.mark.timeout(60)

HISTORY = PublishOptions(history_size=10, history_ttl=60.0)


@pytest.fixture
async def engines(nats_cluster: NatsCluster) -> AsyncIterator[Callable[..., Any]]:
    """``await make(url)``: a started engine on ``url`` (its own recorder); all closed, and
    their streams deleted, at teardown."""
    from pulsewire.hub.engines.nats import NatsEngine

    prefix = f"pwnc-{uuid.uuid4().hex[:8]}"
    made: list[NatsEngine] = []

    async def make(url: str) -> NatsEngine:
        engine = NatsEngine(url, prefix, timeout=CLUSTER_TIMEOUT)
        engine.bind(Recorder(f"n{len(made)}"), f"{prefix}-{len(made)}")
        await engine.start()
        made.append(engine)
        return engine

    yield make
    for engine in made:
        await engine.close()
    await delete_nats_streams(nats_cluster.url(), prefix)


async def test_nodes_on_every_server_create_the_same_streams_at_once(
    nats_cluster: NatsCluster, engines: Any
) -> None:
    """Three nodes, each on another server, use the history, presence and keyed streams
    for the first time at the same moment: every call succeeds, each stream is R3 with a
    leader."""
    nodes = [await engines(nats_cluster.url(3, [server])) for server in nats_cluster.servers]

    async def first_use(i: int, node: NatsEngine) -> None:
        await node.history(f"h-{i}", options=HISTORY)  # the history stream
        await node.add_presence(f"p-{i}", ClientInfo(f"c{i}", "u"), 30.0, "X")  # presence
        await node.publish_once(f"k-{i}", _pub(i), HISTORY, "key", 60.0)  # keys, history

    await asyncio.gather(*(first_use(i, node) for i, node in enumerate(nodes)))
    import nats

    nc = await nats.connect(servers=[server.url for server in nats_cluster.servers])
    try:
        infos = [i for i in await nc.jetstream().streams_info() if _ours(i, nodes[0].prefix)]
        assert len(infos) == 3  # history, presence, first positions of keys
        for info in infos:
            assert info.config.num_replicas == 3
            assert info.cluster is not None and info.cluster.leader
            assert same_config(info.config, info.config)
    finally:
        await nc.close()
    for i, node in enumerate(nodes):
        assert (await node.history(f"k-{i}", options=HISTORY)).position.offset == 1


async def test_a_node_moves_to_another_server_when_its_server_dies(
    nats_cluster: NatsCluster, engines: Any
) -> None:
    """Given every server, a node whose server is SIGKILLed reports the engine unavailable,
    then available again on another server (nats-py's reconnect), and publishes there."""
    node = await engines(nats_cluster.url(3))
    rec = node.handler
    assert isinstance(rec, Recorder)
    assert await node.publish("ch", _pub("before"), HISTORY) is not None
    url = node.connected_url()
    index = next(i for i, s in enumerate(nats_cluster.servers) if s.url == url)
    try:
        nats_cluster.kill(index)
        await rec.wait_for(lambda: rec.states[-1:] == [True], 15, "the engine back")
        assert rec.states == [False, True]
        assert node.connected_url() not in (None, url)
        # The dead server may have led the stream (or the meta group): publishing fails
        # until a new leader is elected, then works (bounded).
        deadline = time.monotonic() + 20
        while True:
            try:
                if await node.publish("ch", _pub("after"), HISTORY) is not None:
                    break
            except EngineUnavailable:  # EngineOutcomeUnknown too: a timeout
                assert time.monotonic() < deadline, "no leader elected in time"
                await asyncio.sleep(0.1)
        result = await node.history("ch", options=HISTORY)
        data = [p.data for p in result.publications]
        assert data[0] == "before" and data[-1] == "after"
    finally:
        await asyncio.to_thread(nats_cluster.restart, index)


def _ours(info: Any, prefix: str) -> bool:
    return bool(info.config.name and info.config.name.startswith(f"{prefix}_"))


def _pub(data: object) -> Publication:
    return Publication(data, published_at=time.time())
