"""Fencing of the Redis engines, and the ``redis+sentinel://`` URL.

Fencing: each channel's meta hash records the run_id of the server that wrote it; a script
run by another server starts a new epoch. Shown on servers of our own (ports 7100-7199):
a replica promoted while a publication acknowledged by the old master had not reached it
(the lost-write case Sentinel cannot prevent), the same server (same epoch), and a meta
written before fencing existed (adopted, same epoch).
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from pulsewire.hub.engines import EngineUnavailable, create_engine
from pulsewire.hub.engines.redis import RedisEngine
from pulsewire.hub.engines.redis_connection import parse_run_id
from pulsewire.hub.engines.redis_sentinel import (
    RedisSentinelEngine,
    SentinelURL,
    parse_sentinel_url,
)
from pulsewire.hub.types import Publication, PublishOptions, StreamPosition

from ..sentinel_topology import (
    SENTINEL_PORTS,
    SERVER_PORTS,
    RedisProcess,
    free_port,
    redis_server_missing,
)

HISTORY = PublishOptions(history_size=100, history_ttl=60.0)

# ------------------------------------------------------------------------------ URL


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "redis+sentinel://10.0.0.1:26379,10.0.0.2:26380/mymaster",
            SentinelURL((("10.0.0.1", 26379), ("10.0.0.2", 26380)), "mymaster"),
        ),
        (
            "redis+sentinel://:secret@s1,[::1]:5000/m/3?sentinel_password=s%20p",
            SentinelURL((("s1", 26379), ("::1", 5000)), "m", 3, "secret", "s p"),
        ),
        (
            "redis+sentinel://s1:1/m?password=pw",
            SentinelURL((("s1", 1),), "m", 0, "pw"),
        ),
    ],
)
def test_sentinel_urls(url: str, expected: SentinelURL) -> None:
    assert parse_sentinel_url(url) == expected
    engine = create_engine(url, prefix="p")
    assert isinstance(engine, RedisSentinelEngine) and engine.sentinel_url == expected


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("redis+sentinel:///m", "no sentinel HOST:PORT"),
        ("redis+sentinel://,/m", "no sentinel HOST:PORT"),
        ("redis+sentinel://s1:26379", "no master name"),
        ("redis+sentinel://s1:26379/", "no master name"),
        ("redis+sentinel://s1:x/m", "bad sentinel port 'x'"),
        ("redis+sentinel://s1:0/m", "bad sentinel port '0'"),
        ("redis+sentinel://s1:65536/m", "bad sentinel port '65536'"),
        ("redis+sentinel://:1/m", "empty sentinel host"),
        ("redis+sentinel://s1/m/zero", "the database after the master name is a number"),
        ("redis+sentinel://s1/m/0/x", "the database after the master name is a number"),
        ("redis+sentinel://s1/m?pasword=x", "unknown parameter 'pasword'"),
    ],
)
def test_malformed_sentinel_urls_are_one_line_errors(url: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem) as caught:
        create_engine(url)
    message = str(caught.value)
    assert "\n" not in message and message.startswith("redis+sentinel engine URL: ")


def test_errors_do_not_echo_passwords() -> None:
    with pytest.raises(ValueError) as caught:
        create_engine("redis+sentinel://:hunter2@s1:x/m?sentinel_password=hunter3")
    assert "hunter" not in str(caught.value)


def test_run_id_from_info() -> None:
    assert parse_run_id(b"# Server\r\nredis_version:7.0.15\r\nrun_id:abc123\r\n") == "abc123"
    assert parse_run_id("# Server\r\n") == ""


# ------------------------------------------------------------------------------ fencing


@pytest.fixture
def servers() -> Iterator[Callable[..., RedisProcess]]:
    """``servers(*args)``: a redis-server of our own (killed by PID at teardown)."""
    redis_server_missing()
    directory = Path(tempfile.mkdtemp(prefix="pw-fencing-"))
    started: list[RedisProcess] = []

    def start(*args: str) -> RedisProcess:
        started.append(RedisProcess(free_port(SERVER_PORTS), directory, list(args)).start())
        return started[-1]

    try:
        yield start
    finally:
        for process in started:
            process.kill()


@pytest.fixture
async def engines() -> AsyncIterator[Callable[[str], RedisEngine]]:
    """``engines(url)``: a Redis engine (prefix ``fence``), closed at teardown."""
    made: list[RedisEngine] = []

    def make(url: str) -> RedisEngine:
        made.append(RedisEngine(url, "fence", ping_interval=0.5))
        return made[-1]

    yield make
    for engine in made:
        await engine.close()


async def _wait_replicated(replica: aioredis.Redis, key: str, offset: int) -> None:
    for _ in range(200):
        if await replica.hget(key, "offset") == str(offset).encode():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"{key} offset {offset} never replicated")


async def test_a_promoted_replica_missing_acknowledged_writes_starts_a_new_epoch(
    servers: Callable[..., RedisProcess], engines: Callable[[str], RedisEngine]
) -> None:
    old = servers()
    new = servers("--replicaof", "127.0.0.1", str(old.port))
    on_old = engines(old.url)
    await on_old.start()
    meta = "fence:{ch}:meta"
    first = await on_old.publish("ch", Publication(1), HISTORY)
    second = await on_old.publish("ch", Publication(2), HISTORY)
    assert first is not None and second == StreamPosition(2, first.epoch)
    admin = aioredis.Redis.from_url(new.url)
    try:
        await _wait_replicated(admin, meta, 2)
        await admin.execute_command("REPLICAOF", "NO", "ONE")  # what Sentinel does
    finally:
        await admin.aclose()
    lost = await on_old.publish("ch", Publication("lost"), HISTORY)  # acknowledged, never copied
    assert lost == StreamPosition(3, first.epoch)

    on_new = engines(new.url)
    await on_new.start()
    history = await on_new.history("ch", since=second, options=HISTORY)
    assert history.position.epoch != first.epoch, "offset 3 would be handed out again"
    assert history.position.offset == 0 and history.publications == []
    reused = await on_new.publish("ch", Publication("other"), HISTORY)
    assert reused == StreamPosition(1, history.position.epoch)

    # The old server (same run_id) goes on in its own epoch.
    assert await on_old.publish("ch", Publication(4), HISTORY) == StreamPosition(4, first.epoch)


async def test_a_publish_on_a_promoted_replica_starts_a_new_epoch(
    servers: Callable[..., RedisProcess], engines: Callable[[str], RedisEngine]
) -> None:
    old = servers()
    new = servers("--replicaof", "127.0.0.1", str(old.port))
    on_old = engines(old.url)
    await on_old.start()
    first = await on_old.publish("ch", Publication(1), HISTORY)
    assert first is not None
    admin = aioredis.Redis.from_url(new.url)
    try:
        await _wait_replicated(admin, "fence:{ch}:meta", 1)
        await admin.execute_command("REPLICAOF", "NO", "ONE")
    finally:
        await admin.aclose()
    on_new = engines(new.url)
    await on_new.start()
    position = await on_new.publish("ch", Publication(2), HISTORY)
    assert position is not None and position.offset == 1 and position.epoch != first.epoch


async def test_the_same_server_keeps_the_epoch_and_old_metas_are_adopted(
    servers: Callable[..., RedisProcess], engines: Callable[[str], RedisEngine]
) -> None:
    server = servers()
    one, two = engines(server.url), engines(server.url)
    await one.start()
    await two.start()
    first = await one.publish("ch", Publication(1), HISTORY)
    assert first is not None
    # Another engine, other connections, the same server: the same epoch.
    assert await two.publish("ch", Publication(2), HISTORY) == StreamPosition(2, first.epoch)
    admin = aioredis.Redis.from_url(server.url, decode_responses=True)
    try:
        run_id = (await admin.info("server"))["run_id"]
        assert await admin.hget("fence:{ch}:meta", "run") == run_id
        await admin.hdel("fence:{ch}:meta", "run")  # as written before fencing existed
        assert await one.publish("ch", Publication(3), HISTORY) == StreamPosition(3, first.epoch)
        assert await admin.hget("fence:{ch}:meta", "run") == run_id
        await admin.hset("fence:{ch}:meta", "run", "another-server")
    finally:
        await admin.aclose()
    history = await two.history("ch", options=HISTORY)
    assert history.position.epoch != first.epoch and history.position.offset == 0


async def test_start_without_a_sentinel_fails_fast_in_one_line() -> None:
    port = free_port(SENTINEL_PORTS)  # nothing listens there
    engine = create_engine(f"redis+sentinel://127.0.0.1:{port}/nomaster")
    started = time.monotonic()
    with pytest.raises(EngineUnavailable) as caught:
        await engine.start()
    assert time.monotonic() - started < 5
    assert str(caught.value) == (
        f"redis+sentinel: no sentinel of 127.0.0.1:{port} names a usable master 'nomaster' "
        "(sentinels unreachable, or the master is down)"
    )


async def test_a_pool_without_run_ids_is_refused_before_writing(
    servers: Callable[..., RedisProcess],
) -> None:
    server = servers()

    def plain_pool(**options: Any) -> aioredis.ConnectionPool:
        return aioredis.BlockingConnectionPool.from_url(server.url, **options)

    engine = RedisEngine(server.url, "fence", pool_factory=plain_pool)
    await engine.start()
    try:
        with pytest.raises(EngineUnavailable, match="run_id"):
            await engine.publish("ch", Publication(1), HISTORY)
    finally:
        await engine.close()
    admin = aioredis.Redis.from_url(server.url)
    try:
        assert await admin.keys("fence:*") == []
    finally:
        await admin.aclose()
