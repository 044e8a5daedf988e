"""Redis Cluster engine specifics: its URL, and a slot migrated between masters (``MOVED``,
``ASK``, ``TRYAGAIN``, a server-sent ``sunsubscribe``) while a subscriber listens and a
publisher publishes. The cluster is the session's (``redis_cluster`` in conftest.py)."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import TYPE_CHECKING, Any

import pytest
from redis.crc import key_slot

from pulsewire.hub.engines import create_engine
from pulsewire.hub.engines.base import Engine, EngineOutcomeUnknown, EngineUnavailable
from pulsewire.hub.engines.redis_cluster import RedisClusterEngine, parse_cluster_url
from pulsewire.hub.types import Publication, PublishOptions, StreamPosition

from ..redis_cluster_topology import HOST, ClusterTopology, cli

if TYPE_CHECKING:
    from conftest import Cluster, Recorder

pytestmark = pytest.mark.timeout(60)
on_cluster = pytest.mark.parametrize("engine_kind", ["redis+cluster"], indirect=True)

HISTORY = PublishOptions(history_size=10_000, history_ttl=60.0)


def recorder(engine: Engine) -> Recorder:
    handler: Any = engine.handler
    return handler


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("redis+cluster://", "'' in"),
        ("redis+cluster://h:1,", "'' in"),
        ("redis+cluster://h", "'h' in"),
        ("redis+cluster://h:0", "'h:0' in"),
        ("redis+cluster://h:70000", "'h:70000' in"),
        ("redis+cluster://h:1/0", "no database"),
        ("redis+cluster://u:p@h:1", "credentials"),
        ("redis+cluster://h:1?x=1", "options"),
    ],
)
def test_bad_urls_name_the_problem(url: str, problem: str) -> None:
    with pytest.raises(ValueError, match="redis cluster engine") as info:
        create_engine(url)
    assert problem in str(info.value)
    assert "\n" not in str(info.value)


def test_a_prefix_with_braces_is_refused() -> None:
    with pytest.raises(ValueError, match="must not contain braces"):
        create_engine("redis+cluster://h:1", prefix="p{x}")


def test_url_seeds() -> None:
    assert parse_cluster_url("redis+cluster://a:7000,10.0.0.2:7001,[::1]:7002") == [
        ("a", 7000),
        ("10.0.0.2", 7001),
        ("::1", 7002),
    ]
    engine = create_engine("redis+cluster://127.0.0.1:7000", prefix="p")
    assert isinstance(engine, RedisClusterEngine) and engine.name == "redis+cluster"


def migrate_slot(topology: ClusterTopology, slot: int, target: int, hold: float) -> int:
    """Move ``slot`` to master ``target`` by hand, as ``redis-cli --cluster reshard`` does:
    IMPORTING/MIGRATING, MIGRATE the keys, then ``hold`` seconds in that state (commands
    for the slot get ASK or TRYAGAIN), then SETSLOT NODE everywhere. Returns the source."""
    source = topology.owner(slot)
    source_id, target_id = topology.node_id(source), topology.node_id(target)
    cli(target, "CLUSTER", "SETSLOT", str(slot), "IMPORTING", source_id)
    cli(source, "CLUSTER", "SETSLOT", str(slot), "MIGRATING", target_id)
    while True:
        keys = cli(source, "CLUSTER", "GETKEYSINSLOT", str(slot), "100").split()
        if not keys:
            break
        cli(source, "MIGRATE", HOST, str(target), "", "0", "5000", "KEYS", *keys)
    time.sleep(hold)
    for port in (target, source, *topology.masters()):
        cli(port, "CLUSTER", "SETSLOT", str(slot), "NODE", target_id)
    return source


def asking_calls(port: int) -> int:
    for line in cli(port, "INFO", "commandstats").splitlines():
        if line.startswith("cmdstat_asking:"):
            return int(line.split("calls=")[1].split(",")[0])
    return 0


@on_cluster
async def test_a_slot_migrated_while_publishing(cluster: Cluster, engine: Engine) -> None:
    """Publications go on while their slot moves to another master (the publisher follows
    ASK/TRYAGAIN/MOVED, nothing published twice), the subscriber is moved to the new owner
    (only that channel reported unavailable then available: the hub fills the gap), and the
    channel starts a new epoch on the new master (fencing: another server writes it)."""
    topology: ClusterTopology = cluster.service
    subscriber = await cluster.add_engine()
    channel = f"mig-{uuid.uuid4().hex[:8]}"
    slot = key_slot(channel.encode())
    target = next(port for port in topology.masters() if port != topology.owner(slot))
    # A channel on another slot of the same master: not concerned by the move.
    bystander = next(
        name
        for name in (f"by-{uuid.uuid4().hex[:8]}" for _ in range(10_000))
        if topology.owner(key_slot(name.encode())) == topology.owner(slot)
        and key_slot(name.encode()) != slot
    )
    await subscriber.subscribe(bystander)
    asking_before = asking_calls(target)
    await subscriber.subscribe(channel)
    rec = recorder(subscriber)
    published: list[StreamPosition] = []
    unknown = 0
    stop = asyncio.Event()

    async def publish() -> None:
        nonlocal unknown
        while not stop.is_set():
            data = len(published) + unknown + 1
            try:
                position = await engine.publish(
                    channel, Publication(data, origin=engine.node_id), HISTORY
                )
            except EngineOutcomeUnknown:
                unknown += 1
            except EngineUnavailable:
                await asyncio.sleep(0.01)
                continue
            else:
                assert position is not None
                published.append(position)
            await asyncio.sleep(0.005)

    task = asyncio.create_task(publish())
    try:
        await rec.wait_for(lambda: len(rec.pubs(channel)) >= 10, what="publications before")
        source = await asyncio.to_thread(migrate_slot, topology, slot, target, 0.3)
        assert topology.owner(slot) == target != source
        moved_at = len(published)
        await rec.wait_for(lambda: len(published) >= moved_at + 20, 10, "publications after")
        await rec.wait_for(lambda: rec.states[-1:] == [True], 10, "the subscriber back")
        count = len(published)
        await rec.wait_for(
            lambda: (
                bool(rec.pubs(channel))
                and rec.pubs(channel)[-1].epoch == published[-1].epoch
                and rec.pubs(channel)[-1].offset >= published[count - 1].offset
            ),
            10,
            "delivery on the new owner",
        )
    finally:
        stop.set()
        await task
    assert unknown == 0
    # Fencing: the new master is another server than the one that wrote the channel, so the
    # channel starts a new epoch there (once: at the first publish it runs, under ASK).
    epochs = list(dict.fromkeys(p.epoch for p in published))
    assert len(epochs) == 2, epochs
    for epoch in epochs:
        offsets = [p.offset for p in published if p.epoch == epoch]
        assert offsets == list(range(1, len(offsets) + 1)), "each published once, in order"
        delivered = [p.offset for p in rec.pubs(channel) if p.epoch == epoch]
        assert delivered == sorted(set(delivered)), "delivered in order, once"
        if delivered != offsets[: len(delivered)]:
            assert False in rec.states, "a gap in delivery is reported (the hub fills it)"
    # Only the moved channel was reported (not the whole engine, nor the bystander).
    assert rec.states and all(f is not None for f in rec.state_filters), rec.state_filters
    assert all(f(channel) and not f(bystander) for f in rec.state_filters if f is not None)
    assert subscriber.available
    history = await subscriber.history(channel, options=HISTORY)
    assert history.position.epoch == epochs[1]
    assert [p.offset for p in history.publications] == [
        p.offset for p in published if p.epoch == epochs[1]
    ]
    assert asking_calls(target) > asking_before, "publishes followed ASK to the new owner"
    assert cli(target, "XLEN", f"{cluster.prefix}:{{{channel}}}:stream").strip() == str(
        len(history.publications)
    )
    print(f"migration: {len(published)} published, states {rec.states}")
