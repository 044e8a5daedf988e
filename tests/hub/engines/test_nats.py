"""NatsEngine against a real NATS server with JetStream at 127.0.0.1:4222.

Two engine instances on one server stand for two hub nodes. Every test uses its own subject
prefix and deletes its streams afterwards. Without a server the tests skip (fail with CI=true).
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

try:
    import nats
except ImportError:  # pragma: no cover
    if os.environ.get("CI") == "true":
        raise
    pytest.skip("nats-py is not installed", allow_module_level=True)

from pulsewire.hub.engines.base import (
    EngineOutcomeUnknown,
    EngineUnavailable,
    PresenceAdd,
    PublishOnce,
)
from pulsewire.hub.engines.nats import NatsEngine, decode_token, encode_token
from pulsewire.hub.types import (
    ClientInfo,
    HistoryResult,
    Publication,
    PublishOptions,
    StreamPosition,
)

HOST, PORT = "127.0.0.1", 4222
NO_HISTORY = PublishOptions()
HISTORY = PublishOptions(history_size=10, history_ttl=60.0, history_meta_ttl=600.0)


def nats_answers(timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((HOST, PORT), timeout) as sock:
            sock.settimeout(timeout)
            return sock.recv(5) == b"INFO "  # a NATS server greets first
    except OSError:
        return False


@pytest.fixture
def nats_url() -> str:
    """The NATS at 127.0.0.1:4222; skips without it (fails when ``CI=true``)."""
    if not nats_answers():
        message = f"NATS not reachable at {HOST}:{PORT}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return f"nats://{HOST}:{PORT}"


@dataclass
class Recorder:
    """An EngineHandler that records what it receives."""

    pubs: list[tuple[str, Publication]] = field(default_factory=list)
    joins: list[tuple[str, ClientInfo]] = field(default_factory=list)
    leaves: list[tuple[str, ClientInfo]] = field(default_factory=list)
    controls: list[dict[str, Any]] = field(default_factory=list)
    states: list[bool] = field(default_factory=list)

    def on_publication(self, channel: str, publication: Publication) -> None:
        self.pubs.append((channel, publication))

    def on_join(self, channel: str, info: ClientInfo, node: str = "") -> None:
        self.joins.append((channel, info))

    def on_leave(self, channel: str, info: ClientInfo) -> None:
        self.leaves.append((channel, info))

    def on_control(self, message: dict[str, Any]) -> None:
        self.controls.append(message)

    def on_engine_state(self, available: bool) -> None:
        self.states.append(available)

    def data(self, channel: str) -> list[Any]:
        return [p.data for c, p in self.pubs if c == channel]


@dataclass
class Node:
    engine: NatsEngine
    rec: Recorder


async def eventually(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def on_all(
    nodes: Sequence[Node], predicate: Callable[[Node], bool], timeout: float = 5.0
) -> None:
    await eventually(lambda: all(predicate(node) for node in nodes), timeout)


@pytest.fixture
async def prefix(nats_url: str) -> AsyncIterator[str]:
    value = f"pwtest_{secrets.token_hex(4)}"
    yield value
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        for info in await js.streams_info():
            if info.config.name and info.config.name.startswith(f"{value}_"):
                await js.delete_stream(info.config.name)
    finally:
        await nc.close()


NodeFactory = Callable[..., Awaitable[Node]]


@pytest.fixture
async def make_node(nats_url: str, prefix: str) -> AsyncIterator[NodeFactory]:
    nodes: list[Node] = []

    async def make(node_id: str, url: str | None = None, **options: Any) -> Node:
        engine = NatsEngine(url or nats_url, prefix, **options)
        rec = Recorder()
        engine.bind(rec, node_id)
        await engine.start()
        node = Node(engine, rec)
        nodes.append(node)
        return node

    yield make
    for node in nodes:
        await node.engine.close()


async def delete_stream(url: str, name: str) -> None:
    nc = await nats.connect(url)
    try:
        await nc.jetstream().delete_stream(name)
    finally:
        await nc.close()


def stream_name(prefix: str, options: PublishOptions) -> str:
    age_ms = round(max(options.history_ttl, options.history_meta_ttl) * 1000)
    return f"{prefix}_H_{options.history_size}_{age_ms}"


def pub(data: Any, **fields: Any) -> Publication:
    return Publication(data, published_at=time.time(), **fields)


async def publish(
    node: Node, channel: str, data: Any, options: PublishOptions = HISTORY
) -> StreamPosition:
    """Publish to a history channel; returns the position."""
    position = await node.engine.publish(channel, pub(data), options)
    assert position is not None
    return position


# -- subjects -------------------------------------------------------------------------------


def test_channel_names_escape_into_one_reversible_token() -> None:
    names = ["chat:lobby", "a.b.c", "*", ">", "a b\tc", "%41", "#,/$", "émoji 🎉", "", "%"]
    tokens = [encode_token(name) for name in names]
    assert len(set(tokens)) == len(names)
    for name, token in zip(names, tokens, strict=True):
        assert token and not set(token) & set(".*> \t\r\n")
        assert decode_token(token) == name
    assert encode_token("chat:lobby#42,x") == "chat:lobby#42,x"


# -- fan-out --------------------------------------------------------------------------------


async def test_publish_without_history_reaches_other_node_not_own_echo(
    make_node: NodeFactory,
) -> None:
    a, b, c = await make_node("a"), await make_node("b"), await make_node("c")
    await a.engine.subscribe("room.1")
    await b.engine.subscribe("room.1")
    await c.engine.subscribe("room")
    sent = pub({"n": 1}, origin="a")
    assert await a.engine.publish("room.1", sent, NO_HISTORY) is None
    assert a.rec.pubs == [("room.1", sent)]  # delivered here by publish() itself
    await a.engine.publish_join("room.1", ClientInfo("sentinel", "u"))
    await eventually(lambda: len(b.rec.pubs) == 1 and len(a.rec.joins) == 1)
    # the join went out after the publication on the same subject: its echo was skipped
    assert a.rec.pubs == [("room.1", sent)]
    (got,) = b.rec.data("room.1")
    assert got == {"n": 1}
    received = b.rec.pubs[0][1]
    assert (received.offset, received.origin, received.published_at) == (0, "a", sent.published_at)
    await c.engine.publish_join("room", ClientInfo("sentinel", "u"))
    await eventually(lambda: len(c.rec.joins) == 1)
    assert c.rec.pubs == []


@pytest.mark.parametrize("data", [{"text": "héllo ✓", "n": [1, 2.5, None, 2**53]}, b"\x00\xff"])
async def test_history_publications_reach_every_node_with_all_fields(
    make_node: NodeFactory, data: Any
) -> None:
    a, b = await make_node("a"), await make_node("b")
    for node in (a, b):
        await node.engine.subscribe("h")
    info = ClientInfo("client-1", "user-1", {"name": "Zoë"}, ["chan", 1])
    sent = pub(data, info=info, tags={"k": "v"}, origin="a")
    pos = await a.engine.publish("h", sent, HISTORY)
    assert pos is not None and pos.offset == 1 and pos.epoch
    (stored,) = (await b.engine.history("h", options=HISTORY)).publications
    await on_all((a, b), lambda node: len(node.rec.pubs) == 1)  # the publisher included
    for got in [stored, a.rec.pubs[0][1], b.rec.pubs[0][1]]:
        assert (got.data, got.info, got.tags, got.origin) == (data, info, {"k": "v"}, "a")
        assert (got.offset, got.prev, got.epoch) == (1, 0, pos.epoch)
        assert got.published_at == pytest.approx(sent.published_at)


async def test_unsubscribe_stops_delivery(make_node: NodeFactory) -> None:
    a, b = await make_node("a"), await make_node("b")
    await b.engine.subscribe("x")
    await b.engine.subscribe("y")
    await b.engine.unsubscribe("x")
    await a.engine.publish("x", pub(1), NO_HISTORY)
    await a.engine.publish("y", pub(2), HISTORY)
    await eventually(lambda: b.rec.data("y") == [2])
    assert b.rec.data("x") == []
    await b.engine.unsubscribe("y")
    await b.engine.unsubscribe("y")  # no-op
    await a.engine.publish("y", pub(3), HISTORY)
    await a.engine.publish_control({"settle": 1})  # after the publication on the server
    await eventually(lambda: len(b.rec.controls) == 1)
    assert b.rec.data("y") == [2]


async def test_join_leave_reach_subscribed_nodes_only(make_node: NodeFactory) -> None:
    a, b, c = await make_node("a"), await make_node("b"), await make_node("c")
    await a.engine.subscribe("chat")
    await b.engine.subscribe("chat")
    await c.engine.subscribe("other")
    info = ClientInfo("c1", "u1", {"name": "Ann"}, None)
    await a.engine.publish_join("chat", info)
    await a.engine.publish_leave("chat", info)
    await c.engine.publish_join("other", ClientInfo("sentinel", "u"))
    await on_all((a, b), lambda node: len(node.rec.leaves) == 1)
    for node in (a, b):
        assert node.rec.joins == [("chat", info)] and node.rec.leaves == [("chat", info)]
    await eventually(lambda: len(c.rec.joins) == 1)
    assert c.rec.joins[0][0] == "other" and c.rec.leaves == []


async def test_control_reaches_all_nodes(make_node: NodeFactory) -> None:
    nodes = [await make_node(name) for name in "abc"]
    await nodes[1].engine.publish_control({"op": "disconnect", "user": "u1"})
    await on_all(nodes, lambda node: len(node.rec.controls) == 1)
    for node in nodes:
        assert node.rec.controls == [{"op": "disconnect", "user": "u1"}]


# -- history --------------------------------------------------------------------------------


def offsets(result: HistoryResult) -> list[int]:
    return [p.offset for p in result.publications]


async def test_history_offsets_are_contiguous_and_prev_chains_them(
    make_node: NodeFactory,
) -> None:
    a, b = await make_node("a"), await make_node("b")
    for node in (a, b):
        await node.engine.subscribe("c")
    positions = [await publish((a, b)[i % 2], "c", i) for i in range(5)]
    await publish(a, "other", "x")  # same stream, another channel
    epoch = positions[0].epoch
    assert epoch and positions == [StreamPosition(i, epoch) for i in range(1, 6)]
    await on_all((a, b), lambda node: len(node.rec.pubs) == 5)
    for node in (a, b):  # both publishers included, in offset order
        got = [p for _, p in node.rec.pubs]
        assert [(p.offset, p.prev, p.epoch, p.data) for p in got] == [
            (i + 1, i, epoch, i) for i in range(5)
        ]
    result = await b.engine.history("c", options=HISTORY)
    assert [(p.offset, p.prev, p.data) for p in result.publications] == [
        (i + 1, i, i) for i in range(5)
    ]
    assert {p.epoch for p in result.publications} == {epoch}
    assert result.position == StreamPosition(5, epoch)


async def test_history_is_trimmed_to_size(make_node: NodeFactory) -> None:
    a = await make_node("a")
    options = PublishOptions(history_size=3, history_ttl=60.0, history_meta_ttl=600.0)
    for i in range(5):
        await publish(a, "c", i, options)
    result = await a.engine.history("c", options=options)
    assert offsets(result) == [3, 4, 5] and result.position.offset == 5
    assert result.publications[0].prev == 2  # the chain shows what is missing


@pytest.mark.parametrize("count", [3, 8], ids=["one-by-one", "consumer"])
async def test_history_since_returns_exactly_the_later_publications(
    make_node: NodeFactory, count: int
) -> None:
    a, b = await make_node("a"), await make_node("b")
    for i in range(count):
        await publish((a, b)[i % 2], "c", i)
    top = (await a.engine.history("c", limit=0, options=HISTORY)).position
    assert top.offset == count

    async def since(offset: int, **kw: Any) -> list[int]:
        result = await b.engine.history(
            "c", since=StreamPosition(offset, top.epoch), options=HISTORY, **kw
        )
        assert result.position == top
        if result.publications and not kw:
            assert result.publications[0].prev == offset  # complete: chains back to `since`
        return offsets(result)

    assert await since(0) == list(range(1, count + 1))
    assert await since(1) == list(range(2, count + 1))
    assert await since(count - 1) == [count]
    assert await since(count) == []
    assert await since(count + 5) == []
    assert await since(1, reverse=True, limit=2) == [count, count - 1]
    result = await a.engine.history("c", since=StreamPosition(1, "other"), options=HISTORY)
    assert offsets(result) == list(range(2, count + 1)), "no epoch filtering"
    # a position older than what is kept: the first prev does not match -> not provable
    small = PublishOptions(history_size=2, history_ttl=60.0, history_meta_ttl=600.0)
    for i in range(4):
        await publish(a, "d", i, small)
    result = await a.engine.history("d", since=StreamPosition(1, top.epoch), options=small)
    assert offsets(result) == [3, 4] and result.publications[0].prev == 2


async def test_history_reverse_and_limit(make_node: NodeFactory) -> None:
    a = await make_node("a")
    for i in range(6):
        await publish(a, "c", i)

    async def got(**kw: Any) -> list[int]:
        result = await a.engine.history("c", options=HISTORY, **kw)
        assert result.position.offset == 6
        return offsets(result)

    since = StreamPosition(2, "")
    assert await got(reverse=True) == [6, 5, 4, 3, 2, 1]
    assert await got(reverse=True, limit=2) == [6, 5]
    assert await got(reverse=True, limit=1) == [6]
    assert await got(limit=2) == [1, 2]
    assert await got(limit=0) == []
    assert await got(limit=10) == [1, 2, 3, 4, 5, 6]
    assert await got(since=since, limit=2) == [3, 4]
    assert await got(since=since, reverse=True) == [6, 5, 4, 3]
    assert await got(since=since, reverse=True, limit=5) == [6, 5, 4, 3]


async def test_history_read_creates_the_epoch(make_node: NodeFactory) -> None:
    a, b = await make_node("a"), await make_node("b")
    none = await a.engine.history("plain", options=NO_HISTORY)
    assert none.publications == [] and none.position == StreamPosition(0, "")
    first = await a.engine.history("h", options=HISTORY)
    assert first.publications == [] and first.position.offset == 0 and first.position.epoch
    assert (await b.engine.history("h", options=HISTORY)).position == first.position
    assert await publish(b, "h", 1) == StreamPosition(1, first.position.epoch)


async def test_epoch_new_after_the_stream_is_deleted(
    make_node: NodeFactory, nats_url: str, prefix: str
) -> None:
    a, b = await make_node("a"), await make_node("b")
    first = [await publish((a, b)[i % 2], "c", i) for i in range(4)]
    epoch = first[0].epoch
    await delete_stream(nats_url, stream_name(prefix, HISTORY))
    pos_a = await publish(a, "c", "a")
    assert pos_a.offset == 1 and pos_a.epoch != epoch
    pos_b = await publish(b, "c", "b")  # b's cached tip is stale
    assert pos_b == StreamPosition(2, pos_a.epoch)
    result = await b.engine.history("c", options=HISTORY)
    assert [p.data for p in result.publications] == ["a", "b"] and result.position == pos_b


async def test_epoch_new_once_the_meta_ttl_is_over(make_node: NodeFactory) -> None:
    a = await make_node("a")
    options = PublishOptions(history_size=10, history_ttl=0.3, history_meta_ttl=0.5)
    first = [await publish(a, "c", i, options) for i in range(2)]
    await asyncio.sleep(0.8)
    after = await publish(a, "c", "new", options)
    assert after.offset == 1 and after.epoch != first[0].epoch
    result = await a.engine.history("c", options=options)
    assert [(p.offset, p.prev, p.data) for p in result.publications] == [(1, 0, "new")]
    assert result.position == after


async def test_history_expires_after_ttl_but_position_and_chain_remain(
    make_node: NodeFactory,
) -> None:
    a = await make_node("a")
    options = PublishOptions(history_size=10, history_ttl=0.5, history_meta_ttl=600.0)
    old = [await publish(a, "c", i, options) for i in range(2)]
    assert len((await a.engine.history("c", options=options)).publications) == 2
    await asyncio.sleep(0.8)
    result = await a.engine.history("c", options=options)
    assert result.publications == [] and result.position == old[-1]
    assert await publish(a, "c", "new", options) == StreamPosition(3, old[-1].epoch)
    result = await a.engine.history("c", options=options)  # the idle gap hides the old ones
    assert [(p.offset, p.prev, p.data) for p in result.publications] == [(3, 2, "new")]


async def test_remove_history_keeps_position_and_chain(make_node: NodeFactory) -> None:
    a, b = await make_node("a"), await make_node("b")
    await a.engine.subscribe("c")
    old = [await publish(a, "c", i) for i in range(3)]
    await b.engine.remove_history("c")
    await b.engine.remove_history("c")  # idempotent
    await b.engine.remove_history("never-published")
    result = await a.engine.history("c", options=HISTORY)
    assert result.publications == [] and result.position == old[-1]
    assert await publish(a, "c", "new") == StreamPosition(4, old[-1].epoch)
    result = await b.engine.history("c", options=HISTORY)
    assert [(p.offset, p.prev) for p in result.publications] == [(4, 3)]
    await eventually(lambda: len(a.rec.pubs) == 4)
    assert [p.offset for _, p in a.rec.pubs] == [1, 2, 3, 4]  # markers are not delivered


async def test_concurrent_publishers_keep_one_ordered_chain(make_node: NodeFactory) -> None:
    a, b, c = await make_node("a"), await make_node("b"), await make_node("c")
    options = PublishOptions(history_size=1000, history_ttl=60.0, history_meta_ttl=600.0)
    await a.engine.subscribe("busy")  # b publishes without subscribing: no hints for b
    await c.engine.subscribe("busy")

    async def burst(node: Node) -> list[int]:
        name = node.engine.node_id
        positions = await asyncio.gather(
            *(node.engine.publish("busy", pub(f"{name}{i}"), options) for i in range(200))
        )
        return [p.offset for p in positions if p is not None]

    got_a, got_b = await asyncio.gather(burst(a), burst(b))
    assert got_a == sorted(got_a) and got_b == sorted(got_b)
    assert sorted(got_a + got_b) == list(range(1, 401))
    expected = {f"{n}{i}" for n in "ab" for i in range(200)}
    await on_all((a, c), lambda node: len(node.rec.pubs) >= 400, 15)
    for node in (a, c):
        received = {p.offset: p for _, p in node.rec.pubs}  # dedupe
        by_prev = {p.prev: p for p in received.values()}
        chain, prev = [], 0
        while prev in by_prev:  # reorder by the chain: unbroken from 0
            chain.append(by_prev[prev])
            prev = chain[-1].offset
        assert len(chain) == 400 and {p.data for p in chain} == expected
        assert [p.offset for _, p in node.rec.pubs] == list(range(1, 401)), "in offset order"
    result = await b.engine.history("busy", options=options)
    assert offsets(result) == list(range(1, 401))


# -- presence -------------------------------------------------------------------------------


async def test_presence_across_nodes(make_node: NodeFactory) -> None:
    a, b = await make_node("a"), await make_node("b")
    assert await a.engine.presence("room") == {}
    assert await a.engine.presence_stats("room") == (0, 0)
    await a.engine.add_presence("room", ClientInfo("c1", "u1"), 30.0)
    await b.engine.add_presence("room", ClientInfo("c2", "u1"), 30.0)
    await b.engine.add_presence("room", ClientInfo("c3", "u2", {"n": 1}), 30.0)
    await b.engine.add_presence("room.2", ClientInfo("c4", "u4"), 30.0)
    for node in (a, b):
        entries = await node.engine.presence("room")
        assert set(entries) == {"c1", "c2", "c3"}
        assert entries["c3"] == ClientInfo("c3", "u2", {"n": 1})
        assert await node.engine.presence_stats("room") == (3, 2)
    await a.engine.add_presence("room", ClientInfo("c3", "u2", {"n": 2}), 30.0)  # refresh
    assert (await b.engine.presence("room"))["c3"].conn_info == {"n": 2}
    await a.engine.remove_presence("room", "c2")
    await a.engine.remove_presence("room", "nobody")
    assert set(await b.engine.presence("room")) == {"c1", "c3"}
    assert await b.engine.presence_stats("room") == (2, 2)
    assert set(await a.engine.presence("room.2")) == {"c4"}


async def test_presence_entries_expire_without_their_node(make_node: NodeFactory) -> None:
    a, b = await make_node("a"), await make_node("b")
    await a.engine.add_presence("room", ClientInfo("stays", "u1"), 30.0)
    await b.engine.add_presence("room", ClientInfo("short", "u2"), 1.0)
    await b.engine.close()  # the node dies; its entry must still go
    assert set(await a.engine.presence("room")) == {"stays", "short"}
    await asyncio.sleep(1.3)
    assert set(await a.engine.presence("room")) == {"stays"}
    await a.engine.add_presence("room", ClientInfo("short", "u2"), 1.0)
    await asyncio.sleep(0.6)
    await a.engine.add_presence("room", ClientInfo("short", "u2"), 1.0)  # refreshed in time
    await asyncio.sleep(0.6)
    assert set(await a.engine.presence("room")) == {"stays", "short"}


async def test_presence_survives_its_stream_being_deleted(
    make_node: NodeFactory, nats_url: str, prefix: str
) -> None:
    a = await make_node("a")
    await a.engine.add_presence("room", ClientInfo("c1", "u1"), 30.0)
    await delete_stream(nats_url, f"{prefix}_P")
    assert await a.engine.presence("room") == {}
    await a.engine.remove_presence("room", "c1")
    await a.engine.add_presence("room", ClientInfo("c2", "u2"), 30.0)
    assert set(await a.engine.presence("room")) == {"c2"}


async def test_presence_owner_tombstone_and_node_index_records(
    make_node: NodeFactory, nats_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = await make_node("a"), await make_node("b")
    info = ClientInfo("c1", "u1")
    assert await a.engine.add_presence("chat.1", info, 30.0, "inst-1") is PresenceAdd.CREATED
    entry = f"{prefix}.p.{encode_token('chat.1')}.c1"
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        raw = await js.get_last_msg(f"{prefix}_P", entry)
        assert json.loads(raw.data) == {"i": info.to_dict(), "ttl": 30.0, "n": "inst-1"}
        raw = await js.get_last_msg(f"{prefix}_P", f"{prefix}.p.!n.inst-1.chat%2E1")
        assert json.loads(raw.data) == {"ttl": 60.0}  # twice the ttl: covers every entry
        assert await b.engine.node_presence_channels("inst-1") == ["chat.1"]
        assert await b.engine.presence("!n") == {}  # a channel named like the index: apart
        assert await b.engine.remove_node_presence("chat.1", "inst-1", 20.0, leave=False) == [info]
        raw = await js.get_last_msg(f"{prefix}_P", entry)
        stone = {"i": info.to_dict(), "ttl": 20.0, "n": "inst-1", "x": 1}
        assert json.loads(raw.data) == stone
        assert await a.engine.presence("chat.1") == {}
    finally:
        await nc.close()
    # The index is best effort: a failed write does not fail the add, and is retried.
    presence_part = a.engine._presence_part
    index_subject = presence_part.index_subject
    monkeypatch.setattr(presence_part, "index_subject", lambda node, channel=None: "nowhere.x")
    assert await a.engine.add_presence("chat.2", info, 30.0, "inst-1") is PresenceAdd.CREATED
    assert await b.engine.node_presence_channels("inst-1") == ["chat.1"]
    monkeypatch.setattr(presence_part, "index_subject", index_subject)
    assert await a.engine.add_presence("chat.2", info, 30.0, "inst-1") is PresenceAdd.REFRESHED
    assert sorted(await b.engine.node_presence_channels("inst-1")) == ["chat.1", "chat.2"]


# -- faults ---------------------------------------------------------------------------------


class Proxy:
    """A TCP proxy to NATS whose connections the test can cut, or mute: while ``muted``,
    what the server sends is dropped (requests get through, their answers are lost)."""

    def __init__(self) -> None:
        self.port = 0
        self.server: asyncio.Server | None = None
        self.writers: list[asyncio.StreamWriter] = []
        self.muted = False

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, HOST, self.port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(HOST, PORT)
        except OSError:
            writer.close()
            return
        self.writers += [writer, up_writer]

        async def pipe(
            src: asyncio.StreamReader, dst: asyncio.StreamWriter, mutable: bool = False
        ) -> None:
            try:
                while data := await src.read(65536):
                    if mutable and self.muted:
                        continue
                    dst.write(data)
                    await dst.drain()
            except OSError:
                pass
            finally:
                dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer, mutable=True))

    async def cut(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in self.writers:
            writer.transport.abort()
        self.writers.clear()
        await self.server.wait_closed()


async def test_start_fails_fast_when_nats_is_unreachable(prefix: str) -> None:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    engine = NatsEngine(f"nats://{HOST}:{port}", prefix, connect_timeout=1.0)
    started = time.monotonic()
    with pytest.raises(EngineUnavailable):
        await engine.start()
    assert time.monotonic() - started < 3.0
    assert not engine.available


async def test_connection_loss_reports_state_fails_fast_and_recovers(
    make_node: NodeFactory,
) -> None:
    proxy = Proxy()
    await proxy.start()
    a = await make_node("a", url=f"nats://{HOST}:{proxy.port}", reconnect_wait=0.2)
    b = await make_node("b")
    await a.engine.subscribe("ch")
    before = await publish(a, "ch", "before")
    await eventually(lambda: a.rec.data("ch") == ["before"])

    await proxy.cut()
    await eventually(lambda: a.rec.states == [False])
    assert not a.engine.available
    calls: list[Callable[[], Awaitable[object]]] = [
        lambda: a.engine.publish("ch", pub("lost"), HISTORY),
        lambda: a.engine.publish("ch", pub("lost"), NO_HISTORY),
        lambda: a.engine.publish_once("ch", pub("lost"), HISTORY, "k", 60.0),
        lambda: a.engine.publish_once("ch", pub("lost"), NO_HISTORY, "k", 60.0),
        lambda: a.engine.history("ch", options=HISTORY),
        lambda: a.engine.add_presence("ch", ClientInfo("c", "u"), 10.0),
        lambda: a.engine.presence("ch"),
        lambda: a.engine.subscribe("other"),
        lambda: a.engine.publish_control({}),
    ]
    for call in calls:
        started = time.monotonic()
        with pytest.raises(EngineUnavailable) as info:
            await call()
        assert time.monotonic() - started < 2.5
        assert not isinstance(info.value, EngineOutcomeUnknown), "not sent: not published"
    missed = await publish(b, "ch", "missed")
    assert missed == StreamPosition(2, before.epoch)

    await proxy.start()  # same port
    await eventually(lambda: a.rec.states == [False, True], timeout=10)
    assert a.engine.available
    await b.engine.publish("ch", pub("after"), NO_HISTORY)  # resubscribed
    await eventually(lambda: "after" in a.rec.data("ch"))
    # the unkeyed "lost" without history was delivered here before NATS refused it
    assert a.rec.data("ch") == ["before", "lost", "after"]
    result = await a.engine.history("ch", since=before, options=HISTORY)  # the hub's gap fill
    assert [p.data for p in result.publications] == ["missed"]
    assert result.position == missed
    assert await publish(a, "ch", "again") == StreamPosition(3, missed.epoch)
    await eventually(lambda: a.rec.data("ch")[-1] == "again")
    assert [p.offset for _, p in a.rec.pubs if p.offset] == [1, 3]
    await a.engine.close()
    await proxy.cut()
    assert a.rec.states == [False, True]  # close() reports nothing


async def test_a_lost_ack_is_an_unknown_outcome_and_the_key_retry_finds_the_first(
    make_node: NodeFactory,
) -> None:
    """The append reaches JetStream, its ack is lost: "unknown" (it was stored), and a retry
    with the same key, after reconnecting, is answered with the first offset and epoch."""
    proxy = Proxy()
    await proxy.start()
    a = await make_node("a", url=f"nats://{HOST}:{proxy.port}", reconnect_wait=0.2, timeout=0.5)
    b = await make_node("b")
    for node in (a, b):
        await node.engine.subscribe("ch")

    async def lose_the_ack(channel: str, data: str, options: PublishOptions, key: str) -> None:
        # a knows the stream (for this window) and the channel's tip: the append goes out
        await a.engine.publish_once(channel, pub("warm"), options, f"warm-{key}", 60.0)
        proxy.muted = True
        with pytest.raises(EngineOutcomeUnknown):
            await a.engine.publish_once(channel, pub(data), options, key, 60.0)
        await proxy.cut()  # fresh connections, not muted
        proxy.muted = False
        states = len(a.rec.states)
        await proxy.start()
        await eventually(lambda: a.rec.states[states:] == [False, True], timeout=15)

    await lose_the_ack("ch", "one", HISTORY, "k")
    assert b.rec.data("ch") == ["warm", "one"], "it was stored (and fanned out)"
    for node in (a, b):
        retry = await node.engine.publish_once("ch", pub("retry"), HISTORY, "k", 60.0)
        assert retry.duplicate and retry.position is not None
        assert retry.position.offset == 2 and retry.position.epoch
    result = await b.engine.history("ch", options=HISTORY)
    assert [p.data for p in result.publications] == ["warm", "one"]

    # No note of the position (a never got the ack) and the record trimmed: the next record
    # chains back to it. Retrying then notes it, so it outlives the next trim too.
    one = PublishOptions(history_size=1, history_ttl=60.0, history_meta_ttl=600.0)
    await lose_the_ack("last", "first", one, "k")
    await publish(a, "last", "second", one)  # (by a: its tip stays known, no race to lose)
    retry = await a.engine.publish_once("last", pub("retry"), one, "k", 60.0)
    assert retry.duplicate and retry.position is not None and retry.position.offset == 2
    await publish(a, "last", "third", one)
    assert await b.engine.publish_once("last", pub("retry"), one, "k", 60.0) == retry
    # ... and without even that: a duplicate still, of a position no longer known
    await lose_the_ack("last", "lost", one, "k2")
    for i in range(2):
        await publish(a, "last", f"after-{i}", one)
    unknown = await a.engine.publish_once("last", pub("retry"), one, "k2", 60.0)
    assert unknown == PublishOnce(StreamPosition(0, ""), duplicate=True)
    assert (await b.engine.history("last", options=one)).position.offset == 8


async def test_a_duplicate_of_a_trimmed_or_removed_publication_keeps_its_position(
    make_node: NodeFactory,
) -> None:
    a = await make_node("a")
    b = await make_node("b")
    small = PublishOptions(history_size=2, history_ttl=60.0, history_meta_ttl=600.0)
    first = await a.engine.publish_once("t", pub("first"), small, "k", 60.0)
    assert first.position is not None and first.position.offset == 1
    for i in range(3):  # trims "first" from the stream (2 kept per channel)
        await publish(a, "t", i, small)
    assert [p.data for p in (await a.engine.history("t", options=small)).publications] == [1, 2]
    for node in (a, b):
        assert await node.engine.publish_once("t", pub("x"), small, "k", 60.0) == PublishOnce(
            first.position, duplicate=True
        )
    removed = await a.engine.publish_once("r", pub("gone"), HISTORY, "k", 60.0)
    await a.engine.remove_history("r")  # purged; a marker follows it
    assert await b.engine.publish_once("r", pub("x"), HISTORY, "k", 60.0) == PublishOnce(
        removed.position, duplicate=True
    )


async def test_dedup_windows_of_the_streams(
    make_node: NodeFactory, nats_url: str, prefix: str
) -> None:
    a = await make_node("a")
    short = PublishOptions(history_size=5, history_ttl=10.0, history_meta_ttl=20.0)
    await a.engine.publish_once("h", pub(1), HISTORY, "k", 120.0)
    await a.engine.publish_once("s", pub(1), short, "k", 120.0)
    await a.engine.subscribe("live")
    await a.engine.publish_once("live", pub(1), NO_HISTORY, "k", 120.0)
    await eventually(lambda: a.rec.data("live") == [1])  # republished to this node too
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        history = (await js.stream_info(stream_name(prefix, HISTORY))).config
        assert history.duplicate_window == 120.0
        capped = (await js.stream_info(stream_name(prefix, short))).config
        assert capped.duplicate_window == capped.max_age == 20.0  # not beyond the messages
        live = (await js.stream_info(f"{prefix}_I")).config
        assert (live.duplicate_window, live.max_age, live.max_msgs_per_subject) == (120, 120, 1)
    finally:
        await nc.close()
    # a new window reconfigures the streams
    await a.engine.publish_once("live", pub(2), NO_HISTORY, "k2", 30.0)
    await a.engine.publish_once("h", pub(2), HISTORY, "k2", 30.0)
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        assert (await js.stream_info(f"{prefix}_I")).config.duplicate_window == 30.0
        history = (await js.stream_info(stream_name(prefix, HISTORY))).config
        assert history.duplicate_window == 30.0
    finally:
        await nc.close()
