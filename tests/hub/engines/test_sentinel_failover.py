"""The ``redis+sentinel`` engine across a planned failover and with a sentinel down.

Each test starts a Sentinel topology of its own (tests/hub/sentinel_topology.py). A planned
failover (``SENTINEL FAILOVER``) leaves the old master up, taking writes on the connections
already open to it until Sentinel reconfigures it seconds later (writes then lost): the
engine must follow the sentinels' ``+switch-master`` announcement at once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest
import redis

from pulsewire.hub.engines.base import EngineOutcomeUnknown, EngineUnavailable
from pulsewire.hub.engines.redis_sentinel import RedisSentinelEngine
from pulsewire.hub.types import Publication, PublishOptions

from ..sentinel_topology import (
    HOST,
    SERVER_PORTS,
    SentinelTopology,
    free_port,
    redis_server_missing,
)
from .conftest import Recorder

HISTORY = PublishOptions(history_size=100, history_ttl=60.0)
#: After every sentinel names the new master, publications reach it within this long.
MOVED_WITHIN = 1.0


@pytest.fixture
def topology() -> Iterator[SentinelTopology]:
    redis_server_missing()
    topology = SentinelTopology().start()
    try:
        yield topology
    finally:
        topology.stop()


async def test_a_planned_failover_moves_the_engine_at_once(
    topology: SentinelTopology, recorder_class: type[Recorder]
) -> None:
    engine = RedisSentinelEngine(topology.url, "planned", ping_interval=0.5)
    recorder = recorder_class("a")
    engine.bind(recorder, "node-a")
    await engine.start()
    try:
        await engine.subscribe("ch")
        before = await engine.publish("ch", Publication(0), HISTORY)
        assert before is not None
        topology.planned_failover()
        await asyncio.to_thread(topology.wait_promoted)
        promoted_at = time.monotonic()
        while True:
            position = await engine.publish("ch", Publication(1), HISTORY)
            assert position is not None
            if position.epoch != before.epoch:
                break  # the new master (fencing: another server, another epoch)
            assert time.monotonic() - promoted_at < MOVED_WITHIN, "still on the old master"
            await asyncio.sleep(0.02)
        assert position.offset == 1
        # The pub/sub connection moves too (lost, then back on the new master).
        await recorder.wait_for(
            lambda: recorder.states[-2:] == [False, True], what="pub/sub on the new master"
        )
        after = await engine.publish("ch", Publication(2), HISTORY)
        assert after is not None and (after.offset, after.epoch) == (2, position.epoch)
        await recorder.wait_for(
            lambda: any(p.epoch == after.epoch and p.offset == 2 for p in recorder.pubs("ch")),
            what="the new master's publication through pub/sub",
        )
    finally:
        await engine.close()


async def test_a_dead_sentinel_is_skipped(
    topology: SentinelTopology, recorder_class: type[Recorder]
) -> None:
    topology.sentinels[0].kill()  # the first one listed, asked first
    engine = RedisSentinelEngine(topology.url, "onedown", ping_interval=0.5)
    engine.bind(recorder_class("a"), "node-a")
    started = time.monotonic()
    await engine.start()
    try:
        assert time.monotonic() - started < 5
        position = await engine.publish("ch", Publication(1), HISTORY)
        assert position is not None and position.offset == 1
        await engine.subscribe("ch")
    finally:
        await engine.close()


async def test_a_demoted_master_refuses_publishes_as_not_published(
    topology: SentinelTopology, recorder_class: type[Recorder]
) -> None:
    """A master demoted under open connections answers writes with READONLY: nothing ran, so
    the publish fails as "not published" (108, retry at once), not "outcome unknown" (114),
    and the connection is dropped (the next one asks the sentinels again)."""
    engine = RedisSentinelEngine(topology.url, "demoted", ping_interval=0.5)
    engine.bind(recorder_class("a"), "node-a")
    await engine.start()
    try:
        assert await engine.publish("ch", Publication(0), HISTORY) is not None
        assert topology.master is not None
        master = redis.Redis(HOST, topology.master.port)
        try:  # a replica of nobody reachable: it stays read-only; the sentinels still name it
            master.execute_command("REPLICAOF", HOST, str(free_port(SERVER_PORTS)))
        finally:
            master.close()
        with pytest.raises(EngineUnavailable) as refused:
            await engine.publish("ch", Publication(1), HISTORY)
        assert not isinstance(refused.value, EngineOutcomeUnknown)
        assert "read only replica" in str(refused.value)
    finally:
        await engine.close()
