"""Redis engine specifics: key layout, batching, and faults (killed connections, outages).

Connections are killed by id, found by the engine's client name, never with a blanket
``CLIENT KILL TYPE ...``: the Redis may be shared with other test runs. Outages use a private
``redis-server`` on a free loopback port (skipped when the binary is missing).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import pytest
import redis.asyncio as aioredis
from redis.crc import key_slot

from pulsewire.hub.engines.base import (
    Engine,
    EngineOutcomeUnknown,
    EngineUnavailable,
    PresenceAdd,
)
from pulsewire.hub.engines.redis import RedisEngine
from pulsewire.hub.types import ClientInfo, Publication, PublishOptions, StreamPosition

if TYPE_CHECKING:
    from conftest import Cluster, Recorder

pytestmark = pytest.mark.timeout(60)
on_redis = pytest.mark.parametrize("engine_kind", ["redis"], indirect=True)

HISTORY = PublishOptions(history_size=10_000, history_ttl=60.0)
NO_HISTORY = PublishOptions()


def recorder(engine: Engine) -> Recorder:
    handler: Any = engine.handler
    return handler


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
async def admin(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    await client.aclose()


@pytest.fixture
async def loop_errors() -> AsyncIterator[list[dict[str, Any]]]:
    """Whatever reaches the event loop's exception handler (it must stay empty)."""
    loop = asyncio.get_running_loop()
    errors: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    yield errors
    loop.set_exception_handler(previous)


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


async def kill(admin: aioredis.Redis, engine: Engine, kind: str) -> int:
    """Kill ``engine``'s connections of ``kind`` (pubsub or normal); returns how many."""
    name = f"pulsewire-{engine.node_id}"
    clients = await admin.client_list(_type=kind)
    ids = [c["id"] for c in clients if c.get("name") == name]
    for client_id in ids:
        await admin.client_kill_filter(_id=client_id)
    return len(ids)


# -- layout and batching -------------------------------------------------------------------


@on_redis
async def test_key_layout_ttls_and_channel_names(
    cluster: Cluster, engine: Engine, admin: aioredis.Redis
) -> None:
    prefix = cluster.prefix
    options = PublishOptions(history_size=10, history_ttl=60.0, history_meta_ttl=120.0)
    await engine.subscribe("room:1")
    position = await engine.publish("room:1", Publication("x"), options)
    await engine.add_presence("room:1", ClientInfo("c1", "u1"), 30.0)
    keys = {k: f"{prefix}:{{room:1}}:{k}" for k in ("stream", "meta", "presence", "presence_exp")}
    assert sorted(await admin.keys(f"{prefix}:*")) == sorted(keys.values())
    assert len({key_slot(k.encode()) for k in keys.values()}) == 1, "one hash tag per channel"
    assert [type_ for type_ in [await admin.type(k) for k in keys.values()]] == [
        "stream",
        "hash",
        "hash",
        "zset",
    ]
    (entry_id, fields), *_ = await admin.xrange(keys["stream"])
    assert entry_id == "1-0" and '"offset":1' in fields["p"]
    run_id = (await admin.info("server"))["run_id"]
    meta = {"epoch": position.epoch, "offset": "1", "run": run_id}
    assert await admin.hgetall(keys["meta"]) == meta, "run: the server that wrote it (fencing)"
    assert 59_000 < await admin.pttl(keys["stream"]) <= 60_000
    assert 119_000 < await admin.pttl(keys["meta"]) <= 120_000
    for key in (keys["presence"], keys["presence_exp"]):
        assert 29_000 < await admin.pttl(key) <= 30_000
    channels = await admin.pubsub_channels(f"{prefix}.*")
    assert sorted(channels) == [f"{prefix}.ch.room:1", f"{prefix}.control"]


@on_redis
async def test_presence_owners_tombstones_and_node_index_layout(
    cluster: Cluster, engine: Engine, admin: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    prefix = cluster.prefix
    survivor = await cluster.add_engine()
    for client in ("c1", "c2"):
        await engine.add_presence("room:1", ClientInfo(client, "u"), 30.0, "inst-1")
    keys = {
        k: f"{prefix}:{{room:1}}:{k}"
        for k in ("presence", "presence_exp", "presence_node", "presence_left")
    }
    index = f"{prefix}:node:{{inst-1}}:channels"
    assert await admin.hgetall(keys["presence_node"]) == {"c1": "inst-1", "c2": "inst-1"}
    assert 29_000 < await admin.pttl(keys["presence_node"]) <= 30_000
    assert await admin.zrange(index, 0, -1) == ["room:1"]
    assert 59_000 < await admin.pttl(index) <= 60_000  # twice the ttl: covers every entry
    assert len({key_slot(k.encode()) for k in keys.values()}) == 1, "one hash tag per channel"

    assert len(await survivor.remove_node_presence("room:1", "inst-1", 20.0, leave=False)) == 2
    assert await admin.zrange(keys["presence_left"], 0, -1) == ["c1", "c2"]
    assert 19_000 < await admin.pttl(keys["presence_left"]) <= 20_000
    for kind in ("presence", "presence_exp", "presence_node"):
        assert not await admin.exists(keys[kind])

    # The index is written first (another slot on a Cluster): when that fails the add fails
    # and writes nothing, so no entry is ever left where a dead-node cleanup cannot find it.
    script = engine._script  # type: ignore[attr-defined]

    async def index_down(name: str, keys: Any, args: Any) -> Any:
        if name == "node_index":
            raise EngineUnavailable("redis: down")
        return await script(name, keys, args)

    monkeypatch.setattr(engine, "_script", index_down)
    info = ClientInfo("c3", "u")
    with pytest.raises(EngineUnavailable):
        await engine.add_presence("room:2", info, 30.0, "inst-1")
    assert await engine.presence("room:2") == {}
    assert await engine.node_presence_channels("inst-1") == ["room:1"]
    monkeypatch.setattr(engine, "_script", script)
    assert await engine.add_presence("room:2", info, 30.0, "inst-1") is PresenceAdd.CREATED
    assert sorted(await engine.node_presence_channels("inst-1")) == ["room:1", "room:2"]


@on_redis
async def test_subscribes_in_one_tick_go_out_as_one_batch(
    cluster: Cluster, engine: Engine, admin: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert isinstance(engine, RedisEngine)
    session = engine._pubsub._session
    assert session is not None
    sends: list[Any] = []
    original = session.conn.send_packed_command

    async def spy(command: Any, check_health: bool = True) -> None:
        if b"SUBSCRIBE" in b"".join(command):  # not the reader's keep-alive pings
            sends.append(command)
        await original(command, check_health=check_health)

    monkeypatch.setattr(session.conn, "send_packed_command", spy)
    names = [f"c{i}" for i in range(50)]
    await asyncio.gather(*(engine.subscribe(n) for n in names))
    assert len(sends) == 1
    numsub = dict(await admin.pubsub_numsub(*(f"{cluster.prefix}.ch.{n}" for n in names)))
    assert set(numsub.values()) == {1}
    await asyncio.gather(*(engine.unsubscribe(n) for n in names[:25]))

    async def unsubscribed() -> bool:
        return len(await admin.pubsub_channels(f"{cluster.prefix}.ch.*")) == 25

    await eventually(unsubscribed)
    assert len(sends) == 2
    # subscribe + unsubscribe + subscribe in one tick: the last call wins
    await asyncio.gather(engine.subscribe("x"), engine.unsubscribe("x"), engine.subscribe("x"))
    other = await cluster.add_engine()
    await other.publish("x", Publication("hello"), HISTORY)
    await recorder(engine).wait_for(lambda: len(recorder(engine).pubs("x")) == 1)


@on_redis
async def test_bad_messages_and_handler_errors_do_not_stop_the_reader(
    cluster: Cluster, engine: Engine, admin: aioredis.Redis, loop_errors: list[Any]
) -> None:
    await engine.subscribe("h")
    rec = recorder(engine)
    calls = 0
    original = rec.on_publication

    def flaky(channel: str, publication: Publication) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("handler bug")
        original(channel, publication)

    rec.on_publication = flaky  # type: ignore[method-assign]
    await engine.publish("h", Publication("lost in the handler"), HISTORY)
    for garbage in ("not json", '{"t":"j"}', '{"t":"p","offset":"x"}', "[1]"):
        await admin.publish(f"{cluster.prefix}.ch.h", garbage)
        await admin.publish(f"{cluster.prefix}.control", garbage)
    await engine.publish("h", Publication("delivered"), HISTORY)
    await rec.wait_for(lambda: [p.data for p in rec.pubs("h")] == ["delivered"])
    assert engine.available and rec.states == [] and loop_errors == []


# -- faults --------------------------------------------------------------------------------


@on_redis
async def test_killed_connections_are_recovered(
    cluster: Cluster, admin: aioredis.Redis, loop_errors: list[Any]
) -> None:
    a, b = await cluster.up_to(2)
    for node in (a, b):
        await node.subscribe("h")
        await node.subscribe("plain")
    stop = asyncio.Event()
    outcome = {"ok": 0, "unavailable": 0}

    async def publish_forever() -> None:
        while not stop.is_set():
            try:
                await a.publish("h", Publication(time.time()), HISTORY)
                outcome["ok"] += 1
            except EngineUnavailable:
                outcome["unavailable"] += 1
            await asyncio.sleep(0.002)

    publisher = asyncio.create_task(publish_forever())
    rec_a = recorder(a)
    await rec_a.wait_for(lambda: len(rec_a.pubs("h")) >= 20)
    assert await kill(admin, a, "pubsub") == 1
    await rec_a.wait_for(lambda: rec_a.states == [False, True], what="unavailable, available")
    assert a.available
    killed_at = outcome["ok"]
    assert await kill(admin, a, "normal") >= 1
    await rec_a.wait_for(lambda: outcome["ok"] >= killed_at + 20, what="publishing again")
    assert await kill(admin, a, "pubsub") == 1  # and once more, while publishing
    states = [False, True, False, True]
    await rec_a.wait_for(lambda: rec_a.states == states, what="second recovery")
    count = outcome["ok"]
    await rec_a.wait_for(lambda: outcome["ok"] >= count + 20, what="publishing after recovery")
    stop.set()
    await publisher  # no exception other than EngineUnavailable escaped
    top = (await a.history("h", options=HISTORY)).position.offset
    assert top >= outcome["ok"]

    rec_b = recorder(b)
    await rec_b.wait_for(lambda: len(rec_b.pubs("h")) == top)
    assert [p.offset for p in rec_b.pubs("h")] == list(range(1, top + 1)), "b lost nothing"
    offsets = [p.offset for p in rec_a.pubs("h")]
    assert offsets == sorted(set(offsets)), "a: increasing, no duplicates"
    missed = sorted(set(range(1, top + 1)) - set(offsets))
    if missed:  # what a missed while disconnected is in history, with prev links
        since = StreamPosition(missed[0] - 1, "")
        filled = (await a.history("h", since=since, options=HISTORY)).publications
        assert set(missed) <= {p.offset for p in filled}

    # resubscribed to everything: plain publications, joins and control reach a again
    await b.publish("plain", Publication("after"), PublishOptions())
    await b.publish_join("plain", ClientInfo("c1", "u1"))
    await cluster.settle()
    assert [p.data for p in rec_a.pubs("plain")] == ["after"]
    assert rec_a.joins == [("plain", ClientInfo("c1", "u1"))]
    assert await a.presence("plain") == {}
    assert recorder(b).states == [] and loop_errors == []


async def test_start_fails_fast_when_redis_is_unreachable(
    recorder_class: type[Recorder],
) -> None:
    engine = RedisEngine(f"redis://127.0.0.1:{free_port()}/0", "pwtest-unreachable")
    engine.bind(recorder_class("a"), "unreachable")
    started = time.monotonic()
    with pytest.raises((EngineUnavailable, OSError)):
        await engine.start()
    assert time.monotonic() - started < 3
    assert not engine.available
    with pytest.raises(EngineUnavailable):
        await engine.publish("h", Publication(1), HISTORY)
    await engine.close()


class PrivateRedis:
    """A redis-server of our own on a free loopback port, to stop and restart at will."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            "redis-server",
            *("--port", str(self.port), "--bind", "127.0.0.1", "--save", ""),
            *("--appendonly", "no", "--protected-mode", "no"),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        for _ in range(200):
            client = aioredis.Redis.from_url(self.url)
            try:
                if await client.ping():
                    return
            except (OSError, aioredis.ConnectionError):
                await asyncio.sleep(0.02)
            finally:
                await client.aclose()
        raise RuntimeError("redis-server did not start")

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()
        self.process = None


@pytest.fixture
async def private_redis() -> AsyncIterator[PrivateRedis]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    server = PrivateRedis()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
def admin_of() -> Callable[[PrivateRedis], contextlib.AbstractAsyncContextManager[aioredis.Redis]]:
    @contextlib.asynccontextmanager
    async def open_admin(server: PrivateRedis) -> AsyncIterator[aioredis.Redis]:
        client = aioredis.Redis.from_url(server.url, decode_responses=True)
        try:
            yield client
        finally:
            await client.aclose()

    return open_admin


async def timed(call: Callable[[], Any]) -> float:
    started = time.monotonic()
    with pytest.raises(EngineUnavailable):
        await call()
    return time.monotonic() - started


async def test_outage_fails_calls_fast_and_recovers(
    private_redis: PrivateRedis, recorder_class: type[Recorder], loop_errors: list[Any]
) -> None:
    engine = RedisEngine(private_redis.url, "pwtest", ping_interval=0.5, backoff_max=0.5)
    rec = recorder_class("a")
    engine.bind(rec, "outage")
    await engine.start()
    try:
        await engine.subscribe("h")
        await engine.publish("h", Publication("before"), HISTORY)
        await rec.wait_for(lambda: len(rec.pubs("h")) == 1)
        await private_redis.stop()
        await rec.wait_for(lambda: rec.states == [False], what="unavailable")
        assert not engine.available
        assert await timed(lambda: engine.publish("h", Publication("x"), HISTORY)) < 2.5
        assert await timed(lambda: engine.publish("p", Publication("x"), PublishOptions())) < 2.5
        assert await timed(lambda: engine.history("h", options=HISTORY)) < 2.5
        assert await timed(lambda: engine.presence("h")) < 2.5
        assert await timed(lambda: engine.publish_control({"op": "x"})) < 2.5
        assert await timed(lambda: engine.subscribe("late")) < 2.5  # stays wanted
        await asyncio.sleep(1.0)  # a few failed reconnection attempts
        assert rec.states == [False]
        await private_redis.start()
        await rec.wait_for(lambda: rec.states == [False, True], timeout=5, what="available")
        assert engine.available
        after = await engine.publish("h", Publication("after"), HISTORY)
        assert after is not None and after.offset == 1, "the server lost everything: new epoch"
        await engine.publish("late", Publication("late"), HISTORY)
        await rec.wait_for(lambda: [p.data for p in rec.pubs("late")] == ["late"])
        assert [p.data for p in rec.pubs("h")] == ["before", "after"]
    finally:
        await engine.close()
    assert loop_errors == []


async def test_silent_connection_is_detected(
    private_redis: PrivateRedis, recorder_class: type[Recorder], loop_errors: list[Any]
) -> None:
    engine = RedisEngine(
        private_redis.url, "pwtest", ping_interval=0.2, command_timeout=0.3, backoff_max=0.2
    )
    rec = recorder_class("a")
    engine.bind(rec, "silent")
    await engine.start()
    admin = aioredis.Redis.from_url(private_redis.url)
    try:
        await engine.subscribe("h")
        await admin.execute_command("CLIENT", "PAUSE", "2500")  # nobody gets answers
        await rec.wait_for(lambda: rec.states == [False], timeout=2.0, what="silence noticed")
        await rec.wait_for(lambda: rec.states == [False, True], timeout=5, what="available")
        await engine.publish("h", Publication("back"), HISTORY)
        await rec.wait_for(lambda: [p.data for p in rec.pubs("h")] == ["back"])
    finally:
        with contextlib.suppress(Exception):
            await admin.aclose()
        await engine.close()
    assert loop_errors == []


@on_redis
async def test_close_releases_everything(engine: Engine, admin: aioredis.Redis) -> None:
    name = f"pulsewire-{engine.node_id}"
    await engine.subscribe("h")
    await engine.publish("h", Publication(1), HISTORY)
    assert any(c.get("name") == name for c in await admin.client_list())
    await engine.close()
    assert not engine.available

    async def gone() -> bool:
        return not any(c.get("name") == name for c in await admin.client_list())

    await eventually(gone)
    with pytest.raises(EngineUnavailable):
        await engine.publish("h", Publication(2), HISTORY)


# -- idempotency and what a failed publish means -------------------------------------------


@on_redis
async def test_idempotency_keys_live_in_the_channel_slot_for_the_window(
    cluster: Cluster, engine: Engine, admin: aioredis.Redis
) -> None:
    prefix = cluster.prefix
    first = await engine.publish_once("room:1", Publication("x"), HISTORY, "order 17/é", 30.0)
    assert first.position is not None and not first.duplicate
    await engine.subscribe("live")
    assert not (
        await engine.publish_once("live", Publication("y"), NO_HISTORY, "k", 20.0)
    ).duplicate
    keyed = f"{prefix}:{{room:1}}:idem:order 17/é"
    assert key_slot(keyed.encode()) == key_slot(f"{prefix}:{{room:1}}:stream".encode())
    assert await admin.get(keyed) == f"1,{first.position.epoch}"
    assert 29_000 < await admin.pttl(keyed) <= 30_000
    live = f"{prefix}:{{live}}:idem:k"
    assert await admin.get(live) == "1"
    assert 19_000 < await admin.pttl(live) <= 20_000
    # the first result is what the key holds: a retry reads it back
    again = await engine.publish_once("room:1", Publication("z"), HISTORY, "order 17/é", 30.0)
    assert again.position == first.position and again.duplicate


@on_redis
async def test_a_keyed_live_publish_needs_the_pubsub_connection(
    cluster: Cluster, engine: Engine, admin: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """This node gets keyed live publications through its pub/sub connection only: while it
    is down, refuse (108) rather than publish to the other nodes alone."""
    assert isinstance(engine, RedisEngine)
    await engine.subscribe("live")
    pubsub = engine._pubsub
    reopen = pubsub._open_session

    async def refused() -> Any:
        raise EngineUnavailable("test: no pub/sub connection for now")

    monkeypatch.setattr(pubsub, "_open_session", refused)
    assert await kill(admin, engine, "pubsub") == 1
    rec = recorder(engine)
    await rec.wait_for(lambda: rec.states == [False], what="unavailable")
    with pytest.raises(EngineUnavailable) as info:
        await engine.publish_once("live", Publication("x"), NO_HISTORY, "k", 10.0)
    assert not isinstance(info.value, EngineOutcomeUnknown)
    assert await admin.exists(f"{cluster.prefix}:{{live}}:idem:k") == 0
    monkeypatch.setattr(pubsub, "_open_session", reopen)
    await rec.wait_for(lambda: rec.states == [False, True], what="available again")
    assert not (
        await engine.publish_once("live", Publication("y"), NO_HISTORY, "k", 10.0)
    ).duplicate
    await rec.wait_for(lambda: [p.data for p in rec.pubs("live")] == ["y"], what="the echo")


async def test_publish_to_a_redis_that_is_gone_is_not_published(
    private_redis: PrivateRedis, recorder_class: type[Recorder]
) -> None:
    """Connection refused: the command never left this process."""
    engine = RedisEngine(private_redis.url, "pwtest", ping_interval=0.2, backoff_max=0.5)
    rec = recorder_class("a")
    engine.bind(rec, "gone")
    await engine.start()
    try:
        await engine.subscribe("h")
        await engine.subscribe("p")
        await private_redis.stop()
        calls = [
            lambda: engine.publish("h", Publication(1), HISTORY),
            lambda: engine.publish("p", Publication(2), NO_HISTORY),
            lambda: engine.publish_once("h", Publication(3), HISTORY, "k", 10.0),
            lambda: engine.publish_once("p", Publication(4), NO_HISTORY, "k", 10.0),
        ]
        for call in calls:
            with pytest.raises(EngineUnavailable) as info:
                await call()
            assert not isinstance(info.value, EngineOutcomeUnknown), info.value
        # only the unkeyed one without history reached this node: before it was sent
        assert [(c, p.data) for c, p in rec.publications] == [("p", 2)]
    finally:
        await engine.close()


async def test_publish_with_the_pool_exhausted_is_not_published(
    private_redis: PrivateRedis, recorder_class: type[Recorder], admin_of: Any
) -> None:
    engine = RedisEngine(private_redis.url, "pwtest", max_connections=1, command_timeout=0.3)
    engine.bind(recorder_class("a"), "exhausted")
    await engine.start()
    assert engine._redis is not None
    pool = engine._redis.connection_pool
    held = await pool.get_connection()  # the only command connection
    try:
        with pytest.raises(EngineUnavailable) as info:
            await engine.publish_once("h", Publication("x"), HISTORY, "k", 10.0)
        assert not isinstance(info.value, EngineOutcomeUnknown), info.value
    finally:
        await pool.release(held)
    async with admin_of(private_redis) as admin:
        assert await admin.exists("pwtest:{h}:idem:k") == 0
    outcome = await engine.publish_once("h", Publication("y"), HISTORY, "k", 10.0)
    assert not outcome.duplicate and outcome.position is not None
    assert outcome.position.offset == 1
    await engine.close()


async def test_a_publish_sent_to_a_stopped_redis_has_an_unknown_outcome(
    private_redis: PrivateRedis, recorder_class: type[Recorder]
) -> None:
    """SIGSTOP: commands already written wait in the socket buffers and run when Redis
    resumes, after the engine gave up on them. Those are "unknown" (and were applied); a
    command that could not even get a connection is "not published" (and was not); a retry
    with the key returns the first result and writes nothing."""
    engine = RedisEngine(
        private_redis.url, "pwtest", command_timeout=0.5, connect_timeout=0.5, ping_interval=0.3
    )
    rec = recorder_class("a")
    engine.bind(rec, "stopped")
    await engine.start()
    process = private_redis.process
    assert process is not None
    try:
        await engine.subscribe("h")
        # two connected command connections in the pool
        await asyncio.gather(*(engine.history(c, options=HISTORY) for c in ("x", "y")))
        before = await engine.publish("h", Publication("before"), HISTORY)
        assert before is not None
        os.kill(process.pid, signal.SIGSTOP)
        try:
            # at once, so that each takes one of the connected connections
            outcomes = await asyncio.gather(
                engine.publish_once("h", Publication("keyed"), HISTORY, "k", 60.0),
                engine.publish("h", Publication("plain"), HISTORY),
                return_exceptions=True,
            )
            assert [type(outcome) for outcome in outcomes] == [EngineOutcomeUnknown] * 2
            with pytest.raises(EngineUnavailable) as info:  # no connected connection left
                await engine.publish("h", Publication("never sent"), HISTORY)
            assert not isinstance(info.value, EngineOutcomeUnknown), info.value
        finally:
            os.kill(process.pid, signal.SIGCONT)

        async def stored() -> list[Any]:
            try:
                result = await engine.history("h", options=HISTORY)
            except EngineUnavailable:
                return []
            return [p.data for p in result.publications]

        await eventually(lambda: _async_len(stored, 3), timeout=10)
        assert sorted(await stored(), key=str) == sorted(["before", "keyed", "plain"], key=str)
        data = await stored()
        keyed_offset = data.index("keyed") + 1
        retry = await engine.publish_once("h", Publication("retry"), HISTORY, "k", 60.0)
        assert retry.duplicate
        assert retry.position == StreamPosition(keyed_offset, before.epoch)
        assert await stored() == data, "the retry wrote nothing"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGCONT)
        await engine.close()


async def _async_len(read: Callable[[], Awaitable[list[Any]]], count: int) -> bool:
    return len(await read()) >= count
