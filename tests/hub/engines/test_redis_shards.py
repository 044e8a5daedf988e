"""The sharded Redis engine's own parts: placement, URL parsing, and one shard's outage.

Placement and parsing are pure functions. The outage tests run two engines (two "nodes") on
three private ``redis-server`` processes (tests/hub/redis_servers.py) and SIGKILL one: only
its channels fail and are reported, control messages and the other channels go on, and once
it is back its channels work again and are reported back.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any

import pytest

from pulsewire.hub.engines import create_engine
from pulsewire.hub.engines.base import Engine, EngineUnavailable
from pulsewire.hub.engines.redis_shards import ShardedRedisEngine
from pulsewire.hub.engines.sharding import jump_hash, parse_shards_url, shard_index
from pulsewire.hub.types import ClientInfo, Publication, PublishOptions

from ..redis_servers import RedisServers

if TYPE_CHECKING:
    from conftest import Recorder

pytestmark = pytest.mark.timeout(60)

HISTORY = PublishOptions(history_size=100, history_ttl=60.0)


# -- placement -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "buckets", "bucket"),
    # The test vectors of the Go implementations of the paper's algorithm (go-jump).
    [(1, 1, 0), (42, 57, 43), (0xDEAD10CC, 1, 0), (0xDEAD10CC, 666, 361), (256, 1024, 520)],
)
def test_jump_hash_matches_the_reference_vectors(key: int, buckets: int, bucket: int) -> None:
    assert jump_hash(key, buckets) == bucket


def test_jump_hash_needs_a_bucket() -> None:
    with pytest.raises(ValueError, match="at least one bucket"):
        jump_hash(1, 0)


def test_known_channels_live_on_known_shards() -> None:
    # Pinned: a change here moves live channels between shards on upgrade.
    names = ("news", "room:7", "x", "room:3", "chat")
    placed = {c: [shard_index(c, n) for n in (1, 2, 3, 4)] for c in names}
    assert placed == {
        "news": [0, 0, 2, 3],
        "room:7": [0, 1, 1, 1],
        "x": [0, 0, 0, 0],
        "room:3": [0, 1, 2, 3],
        "chat": [0, 1, 2, 2],
    }


def channels(count: int = 10_000) -> Iterator[str]:
    return (f"room:{i}" for i in range(count))


def test_channels_spread_evenly_over_three_shards() -> None:
    counts = [0, 0, 0]
    for channel in channels():
        counts[shard_index(channel, 3)] += 1
    assert all(abs(c / 10_000 - 1 / 3) < 0.02 for c in counts), counts


def test_appending_a_fourth_shard_moves_a_quarter_of_the_channels_to_it() -> None:
    moved = [c for c in channels() if shard_index(c, 4) != shard_index(c, 3)]
    assert 0.22 < len(moved) / 10_000 < 0.28, len(moved)
    assert all(shard_index(c, 4) == 3 for c in moved)  # only to the new shard


# -- URLs ----------------------------------------------------------------------------------


def test_a_url_gives_one_redis_url_per_shard_in_order() -> None:
    assert parse_shards_url("redis+shards://b:7001,a:7000/3") == [
        "redis://b:7001/3",
        "redis://a:7000/3",
    ]
    assert parse_shards_url("redis+shards://u:p%40ss@a:1,[::1]:2") == [
        "redis://u:p%40ss@a:1/0",  # as given: redis-py decodes it (password p@ss)
        "redis://u:p%40ss@[::1]:2/0",
    ]
    engine = create_engine("redis+shards://127.0.0.1:7000,127.0.0.1:7001/2", prefix="p")
    assert isinstance(engine, ShardedRedisEngine)
    assert engine.urls == ["redis://127.0.0.1:7000/2", "redis://127.0.0.1:7001/2"]
    secret = ShardedRedisEngine.from_url("redis+shards://:pw@a:1,b:2")
    assert secret.addresses == ["a:1", "b:2"]  # what logs and errors show: no password


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        ("redis+shards://", "no shard"),
        ("redis+shards:///0", "no shard"),
        ("redis+shards://a:1,,b:2", "'' is not HOST:PORT"),
        ("redis+shards://a:1,b", "'b' is not HOST:PORT"),
        ("redis+shards://a:0", "'a:0' has no valid port"),
        ("redis+shards://a:65536", "no valid port"),
        ("redis+shards://a:x1", "no valid port"),
        ("redis+shards://a:1/db1", "the database 'db1' is not a number"),
        ("redis+shards://a:1,A:1", "'A:1' is listed twice"),
        ("redis+shards://a:1?timeout=1", "no query"),
    ],
)
def test_bad_urls_say_what_is_wrong(spec: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem.replace("?", r"\?")) as info:
        create_engine(spec)
    assert "\n" not in str(info.value) and spec in str(info.value)


# -- one shard's outage --------------------------------------------------------------------


@pytest.fixture
def servers() -> Iterator[RedisServers]:
    with RedisServers(3) as started:
        yield started


@pytest.fixture
async def nodes(
    servers: RedisServers, recorder_class: type[Recorder]
) -> AsyncIterator[list[ShardedRedisEngine]]:
    prefix = f"pwshards-{uuid.uuid4().hex[:8]}"
    engines: list[ShardedRedisEngine] = []
    try:
        for name in "ab":
            engine = ShardedRedisEngine(
                servers.urls, prefix, ping_interval=0.2, connect_timeout=0.5, backoff_max=0.3
            )
            engine.bind(recorder_class(name), f"{prefix}-{name}")
            await engine.start()
            engines.append(engine)
        yield engines
    finally:
        for engine in engines:
            await engine.close()


def on_shard(shard: int, count: int = 3) -> str:
    """A channel name placed on ``shard``."""
    return next(
        c
        for c in (f"room:{uuid.uuid4().hex}" for _ in range(1000))
        if shard_index(c, count) == shard
    )


def rec(engine: Engine) -> Recorder:
    handler: Any = engine.handler
    return handler  # type: ignore[no-any-return]


async def publish_and_receive(sender: Engine, receiver: Engine, channel: str, data: Any) -> None:
    await sender.publish(channel, Publication(data), HISTORY)
    await rec(receiver).wait_for(
        lambda: data in [p.data for p in rec(receiver).pubs(channel)], 10.0, f"{data} in {channel}"
    )


async def test_a_dead_shard_fails_only_its_channels_and_they_return(
    servers: RedisServers, nodes: list[ShardedRedisEngine]
) -> None:
    a, b = nodes
    chans = [on_shard(i) for i in range(3)]
    for channel in chans:
        await b.subscribe(channel)
        await a.add_presence(channel, ClientInfo("c-" + channel[-4:], "u"), 30.0, a.node_id)
    servers.kill(0)  # the first: control must not depend on it
    await rec(a).wait_for(lambda: False in rec(a).states, 10.0, "shard 0 reported down")
    down = rec(a).state_filters[rec(a).states.index(False)]
    assert down is not None and down(chans[0]) and not down(chans[1]) and not down(chans[2])
    assert a.available  # the others still carry control messages

    for channel in (chans[1], chans[2]):
        await publish_and_receive(a, b, channel, "while-1-is-down")
    with pytest.raises(EngineUnavailable):
        await a.publish(chans[0], Publication("lost?"), HISTORY)
    await a.publish_control({"op": "ping"})
    await rec(b).wait_for(lambda: {"op": "ping"} in rec(b).controls, 10.0, "control")
    assert sorted(await b.node_presence_channels(a.node_id)) == sorted([chans[1], chans[2]])

    servers.restart(0)
    await rec(b).wait_for(lambda: rec(b).states[-1:] == [True], 15.0, "shard 0 reported back")
    back = rec(b).state_filters[-1]
    assert back is not None and back(chans[0]) and not back(chans[1])
    await publish_and_receive(a, b, chans[0], "after-restart")
    assert [p.offset for p in rec(b).pubs(chans[0])] == [1]  # an empty Redis: a new stream
    assert rec(b).controls.count({"op": "ping"}) == 1


async def test_control_is_delivered_once_while_every_shard_is_up(
    nodes: list[ShardedRedisEngine],
) -> None:
    a = nodes[0]
    sent = [{"op": "n", "i": i} for i in range(50)]
    for message in sent:
        await a.publish_control(message)
    for node in nodes:
        await rec(node).wait_for(lambda node=node: sent[-1] in rec(node).controls, 10.0, "50")
    await asyncio.sleep(0.2)  # room for any duplicate to arrive (there is none to wait for)
    for node in nodes:
        assert [m for m in rec(node).controls if m.get("op") == "n"] == sent  # once, in order


async def test_control_fails_only_when_every_shard_is_down(
    servers: RedisServers, nodes: list[ShardedRedisEngine]
) -> None:
    a, _ = nodes
    for index in range(3):
        servers.kill(index)
    await rec(a).wait_for(lambda: rec(a).states.count(False) == 3, 10.0, "all shards down")
    assert not a.available
    with pytest.raises(EngineUnavailable, match="no shard"):
        await a.publish_control({"op": "x"})
    with pytest.raises(EngineUnavailable, match="no shard"):
        await a.node_presence_channels(a.node_id)


async def test_start_fails_only_when_no_shard_answers(servers: RedisServers) -> None:
    for index in range(3):
        servers.kill(index)
    engine = ShardedRedisEngine(servers.urls, "pwshards-start", connect_timeout=0.5)
    with pytest.raises(
        EngineUnavailable, match=f"no shard can be reached: 127.0.0.1:{servers.ports[0]}: "
    ):
        await engine.start()
    await engine.close()


async def test_a_shard_down_at_start_is_started_when_it_answers(
    servers: RedisServers, recorder_class: type[Recorder]
) -> None:
    servers.kill(2)
    engine = ShardedRedisEngine(
        servers.urls, f"pwshards-{uuid.uuid4().hex[:8]}", connect_timeout=0.5, backoff_max=0.3
    )
    engine.bind(recorder_class("a"), "node-a")
    try:
        await engine.start()  # two of three answer: the node serves their channels
        up, down = on_shard(0), on_shard(2)
        await engine.subscribe(up)
        await engine.publish(up, Publication("up"), HISTORY)
        await rec(engine).wait_for(lambda: rec(engine).pubs(up) != [], 10.0, "delivery")
        with pytest.raises(EngineUnavailable):
            await engine.subscribe(down)
        with pytest.raises(EngineUnavailable):
            await engine.publish(down, Publication("no"), HISTORY)
        assert rec(engine).states == []  # start reports nothing

        servers.restart(2)
        await rec(engine).wait_for(lambda: rec(engine).states == [True], 15.0, "shard 2 started")
        back = rec(engine).state_filters[0]
        assert back is not None and back(down) and not back(up)
        # subscribed as the shard started (the failed subscribe left it wanted)
        await engine.publish(down, Publication("yes"), HISTORY)
        await rec(engine).wait_for(lambda: rec(engine).pubs(down) != [], 10.0, "delivery")
    finally:
        await engine.close()
