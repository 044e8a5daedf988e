"""A dead node is seen (hub.py, node and presence parts), one layer down: one hub on the
in-memory engine, clients on fake transports (tests/hub/fakes.py), and a *fake peer*: its
announcements, presence entries and joins are written into the hub's engine by the test, as
the peer's own engine would. Silence does the rest. A short announce interval (0.05 s) keeps
it quick; no test asserts a duration, they wait for the outcome. (The hub's node watch reads
``time.monotonic`` and takes no clock, so the few "nothing happens for a while" checks still
wait a few intervals of real time.)

The process-level version (``pulsewire serve`` nodes on Redis and NATS, one killed with
SIGKILL, frozen with SIGSTOP, or stopped) is ``test_cluster_dead_node.py``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from pulsewire.hub import ChannelOptions, HubConfig, config
from pulsewire.hub import node_watch as node_watch_module
from pulsewire.hub.engines.base import EngineUnavailable, PresenceAdd
from pulsewire.hub.hub import Hub
from pulsewire.hub.types import ClientInfo

from .test_cluster import eventually, pushes

pytestmark = pytest.mark.timeout(30)

INTERVAL = 0.05
NAMESPACES = {
    "jl": ChannelOptions(join_leave=True),  # join/leave, no presence: tracked joins
    "pres": ChannelOptions(presence=True),  # presence, no join/leave: no leave pushed
}


def sample(hub: Hub, name: str) -> float:
    value = hub.metrics.registry.get_sample_value(name)
    return 0.0 if value is None else value


class FakePeer:
    """Another node, as seen through the engine: announcements, presence, joins."""

    def __init__(self, hub: Hub, name: str = "peer", instance: str = "peer-instance-1") -> None:
        self.hub = hub
        self.name = name
        self.instance = instance
        self.clients: dict[str, ClientInfo] = {}

    async def announce(self) -> None:
        await self.hub.engine.publish_control(
            {"op": "node", "from": self.name, "instance": self.instance, "info": {"sessions": 1}}
        )

    async def subscribe(self, channel: str, client: str, *, presence: bool, join: bool) -> None:
        info = self.clients.setdefault(client, ClientInfo(client, f"user-{client}"))
        if presence:
            await self.hub.engine.add_presence(channel, info, 60.0, self.instance)
        if join:
            await self.hub.engine.publish_join(channel, info, self.instance)


@pytest.fixture
def start_hub(
    local_hub: Any, hub_config: Callable[..., HubConfig]
) -> Callable[..., Awaitable[Hub]]:
    async def start(**changes: Any) -> Hub:
        changes.setdefault("node_announce_interval", INTERVAL)
        changes.setdefault("namespaces", NAMESPACES)
        hub: Hub = await local_hub(hub_config(**changes))
        return hub

    return start


def leaves(client: Any, channel: str) -> list[str]:
    return [p["info"]["client"] for p in pushes(client, "leave", channel)]


def joins(client: Any, channel: str) -> list[str]:
    return [p["info"]["client"] for p in pushes(client, "join", channel)]


def dead_log(caplog: pytest.LogCaptureFixture, name: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "pulsewire.hub" and r.getMessage().startswith(f"node {name} ")
    ]


async def test_a_silent_peer_is_declared_dead_and_its_clients_leave(
    start_hub: Any, local_client: Any, uniq: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "pulsewire.hub")
    hub = await start_hub()
    chat, jl, pres, elsewhere = uniq("chat"), uniq("jl"), uniq("pres"), uniq("chat")
    watcher = await local_client(hub, "watcher")
    for channel in (chat, jl, pres):
        await watcher.subscribe(channel)
    peer = FakePeer(hub)
    await peer.announce()
    await peer.subscribe(chat, "p1", presence=True, join=True)
    await peer.subscribe(chat, "p2", presence=True, join=True)
    await peer.subscribe(jl, "p2", presence=False, join=True)
    await peer.subscribe(jl, "p3", presence=False, join=True)
    await peer.subscribe(pres, "p4", presence=True, join=False)
    await peer.subscribe(elsewhere, "p5", presence=True, join=True)  # no local subscriber
    await watcher.sync()
    assert sorted(joins(watcher, chat)) == sorted(["p1", "p2", watcher.client_id])
    assert sorted(joins(watcher, jl)) == sorted(["p2", "p3", watcher.client_id])
    assert "peer" in hub.nodes

    await eventually(lambda: dead_log(caplog, "peer") != [], "the peer to be declared dead")
    await watcher.sync()
    assert sorted(leaves(watcher, chat)) == ["p1", "p2"]  # each once
    assert sorted(leaves(watcher, jl)) == ["p2", "p3"]
    assert leaves(watcher, pres) == []  # no join/leave in that namespace
    assert set(await hub.presence(chat)) == {watcher.client_id}
    assert set(await hub.presence(pres)) == {watcher.client_id}
    assert await hub.presence(elsewhere) == {}  # found through the peer's channel index
    assert "peer" not in hub.nodes
    (line,) = dead_log(caplog, "peer")
    assert "instance peer-instance-1" in line and "no announcement for" in line
    assert "removed 4 presence entries in 3 channels, pushed 5 leaves" in line
    assert sample(hub, "pulsewire_dead_nodes_total") == 1
    assert sample(hub, "pulsewire_dead_node_presence_removed_total") == 4
    # chat: p1, p2 (published through the engine); jl: p2, p3 (pushed to local subscribers);
    # the channel without subscribers here: p5's leave is published for the other nodes
    assert sample(hub, "pulsewire_dead_node_leaves_total") == 5


async def test_a_peer_that_keeps_announcing_is_not_declared_dead(
    start_hub: Any, local_client: Any, uniq: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "pulsewire.hub")
    hub = await start_hub()
    channel = uniq("chat")
    watcher = await local_client(hub, "watcher")
    await watcher.subscribe(channel)
    peer = FakePeer(hub)
    await peer.subscribe(channel, "p1", presence=True, join=True)
    for _ in range(40):  # 2 s: 13 timeouts' worth, announced twice per interval
        await peer.announce()
        await asyncio.sleep(INTERVAL / 2)
    assert sample(hub, "pulsewire_dead_nodes_total") == 0
    assert leaves(watcher, channel) == []
    await eventually(lambda: dead_log(caplog, "peer") != [], "the peer, silent, to be dead")
    await watcher.sync()
    assert leaves(watcher, channel) == ["p1"]


async def test_a_deaf_node_judges_nobody(
    start_hub: Any, local_client: Any, uniq: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """While this node's engine is down it hears nobody: no peer is declared dead then, and
    once it is back every peer gets a full timeout again."""
    caplog.set_level(logging.INFO, "pulsewire.hub")
    hub = await start_hub()
    peer = FakePeer(hub)
    await peer.announce()
    hub.on_engine_state(False)
    await asyncio.sleep(20 * INTERVAL)
    assert sample(hub, "pulsewire_dead_nodes_total") == 0
    hub.on_engine_state(True)
    await eventually(lambda: dead_log(caplog, "peer") != [], "the peer to be declared dead")
    assert sample(hub, "pulsewire_dead_nodes_total") == 1


async def test_a_stalled_node_judges_nobody_on_waking(
    start_hub: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """This node's own event loop stalled (a long GC, a starved CPU): the announcements that
    arrived meanwhile are still unread when its deadline check runs late, so the check
    restarts the countdowns instead of declaring every peer dead."""
    caplog.set_level(logging.INFO, "pulsewire.hub")
    hub = await start_hub()
    peer = FakePeer(hub)
    await peer.announce()
    time.sleep(10 * INTERVAL)  # blocks the loop, as a stall does
    await asyncio.sleep(INTERVAL / 2)  # the late check runs now
    assert sample(hub, "pulsewire_dead_nodes_total") == 0
    assert any("event loop stalled" in r.getMessage() for r in caplog.records)
    await peer.announce()
    await eventually(lambda: dead_log(caplog, "peer") != [], "the peer, silent, to be dead")


async def test_a_dead_instance_stays_dead_and_is_told_so(
    start_hub: Any, local_client: Any, uniq: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "pulsewire.hub")
    hub = await start_hub()
    channel = uniq("jl")
    watcher = await local_client(hub, "watcher")
    await watcher.subscribe(channel)
    sent: list[dict[str, Any]] = []
    publish_control = hub.engine.publish_control

    async def recording(message: dict[str, Any]) -> None:
        sent.append(dict(message))
        await publish_control(message)

    hub.engine.publish_control = recording  # type: ignore[method-assign]
    peer = FakePeer(hub)
    await peer.announce()
    await eventually(lambda: dead_log(caplog, "peer") != [], "the peer to be declared dead")
    told = [m for m in sent if m.get("op") == "node_dead"]
    assert told == [
        {"op": "node_dead", "instance": peer.instance, "node": "peer", "from": hub.node_id}
    ]
    # It was only frozen: it speaks again under its old id. It is told again, not revived.
    # What it did before hearing it is still news (a join, here), its own business to redo
    # under its new id.
    sent.clear()
    await peer.announce()
    await peer.subscribe(channel, "late", presence=False, join=True)
    await eventually(lambda: any(m.get("op") == "node_dead" for m in sent), "the reply")
    await watcher.sync()
    assert joins(watcher, channel).count("late") == 1
    assert "peer" not in hub.nodes
    assert sample(hub, "pulsewire_dead_nodes_total") == 1
    # Under its new id it is a live peer again, and joins again.
    peer.instance = "peer-instance-2"
    await peer.announce()
    await peer.subscribe(channel, "late", presence=False, join=True)
    await peer.subscribe(channel, "back", presence=False, join=True)
    assert hub.nodes["peer"]["instance"] == "peer-instance-2"
    await eventually(lambda: len(dead_log(caplog, "peer")) == 2, "the new instance, silent")
    await watcher.sync()
    assert sorted(leaves(watcher, channel)) == ["back", "late"]
    assert sample(hub, "pulsewire_dead_nodes_total") == 2


async def test_a_node_declared_dead_by_mistake_rejoins(
    start_hub: Any, local_client: Any, uniq: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """What the others did (remove this node's presence, push leaves) is undone: a new
    instance id, presence back, join pushed once for each client whose leave was pushed."""
    caplog.set_level(logging.INFO, "pulsewire.hub")
    hub = await start_hub()
    chat, jl = uniq("chat"), uniq("jl")
    alice = await local_client(hub, "alice")
    bob = await local_client(hub, "bob")
    for client in (alice, bob):
        await client.subscribe(chat)
        await client.subscribe(jl)
    first = hub.instance
    # A survivor elsewhere removes this node's entries (with their leaves), then says so.
    removed = await hub.engine.remove_node_presence(chat, first, 60.0, leave=True)
    assert {info.client for info in removed} == {alice.client_id, bob.client_id}
    await hub.engine.publish_control({"op": "node_dead", "instance": first, "from": "s"})
    assert hub.instance != first
    await alice.sync()

    async def back() -> bool:
        return set(await hub.presence(chat)) == {alice.client_id, bob.client_id}

    await eventually(back, "presence to be back")
    await eventually(lambda: len(joins(alice, jl)) == 4, "the joins pushed again in jl")
    await alice.sync()
    for channel in (chat, jl):
        events = [
            (p["push"], p["info"]["client"])
            for p in alice.log
            if p.get("push") in ("join", "leave")
            and p.get("channel") == channel
            and p["info"]["client"] == bob.client_id
        ]
        expected = [("join", bob.client_id), ("leave", bob.client_id), ("join", bob.client_id)]
        assert events == (expected if channel == chat else [expected[0], expected[2]])
    assert sample(hub, "pulsewire_node_rejoins_total") == 1
    # entries are owned by the new instance: a late cleanup of the old one finds nothing
    assert await hub.engine.remove_node_presence(chat, first, 60.0, leave=True) == []
    # a second word about the old instance is old news
    await hub.engine.publish_control({"op": "node_dead", "instance": first, "from": "t"})
    await alice.sync()
    assert sample(hub, "pulsewire_node_rejoins_total") == 1
    assert sample(hub, "pulsewire_dead_nodes_total") == 0


async def test_a_rejoin_cut_short_by_the_next_leaves_no_join_owed(
    start_hub: Any, local_client: Any, uniq: Any
) -> None:
    """Declared dead again while rejoining: the second rejoin pushes the joins the first
    one had not pushed yet, though it finds the entries in place."""
    hub = await start_hub()
    chat = uniq("chat")
    alice = await local_client(hub, "alice")
    bob = await local_client(hub, "bob")
    for client in (alice, bob):
        await client.subscribe(chat)
    first = hub.instance
    await hub.engine.remove_node_presence(chat, first, 60.0, leave=True)
    publish_join = hub.engine.publish_join
    blocked = asyncio.Event()

    async def slow_once(channel: str, info: ClientInfo, node: str = "") -> None:
        if not blocked.is_set():
            blocked.set()
            await asyncio.Event().wait()  # an engine call that never returns
        await publish_join(channel, info, node)

    hub.engine.publish_join = slow_once  # type: ignore[method-assign]
    await hub.engine.publish_control({"op": "node_dead", "instance": first, "from": "s"})
    await blocked.wait()
    second = hub.instance
    await hub.engine.publish_control({"op": "node_dead", "instance": second, "from": "s"})
    assert hub.instance not in (first, second)
    for client in (alice, bob):
        cid = client.client_id
        await eventually(lambda c=cid: joins(alice, chat).count(c) == 2, "the joins owed")
    await alice.sync()
    for client in (alice, bob):
        assert joins(alice, chat).count(client.client_id) == 2
        assert leaves(alice, chat).count(client.client_id) == 1


async def test_a_refresh_that_finds_its_entry_removed_rejoins(
    start_hub: Any, local_client: Any, uniq: Any
) -> None:
    """Declared dead while cut off, the node never heard it: its next presence refresh finds
    the tombstone, and the node rejoins under a new id; the join is pushed once, under that
    id (other nodes take joins of a dead id as news of a node they have not told yet)."""
    hub = await start_hub(presence_update_interval=0.05)
    chat = uniq("chat")
    alice = await local_client(hub, "alice")
    await alice.subscribe(chat)
    first = hub.instance
    published: list[str] = []
    publish_join = hub.engine.publish_join

    async def recording(channel: str, info: ClientInfo, node: str = "") -> None:
        published.append(node)
        await publish_join(channel, info, node)

    refreshes: list[PresenceAdd] = []
    add_presence = hub.engine.add_presence

    async def counting(channel: str, info: ClientInfo, ttl: float, node: str = "") -> Any:
        outcome = await add_presence(channel, info, ttl, node)
        refreshes.append(outcome)
        return outcome

    hub.engine.publish_join = recording  # type: ignore[method-assign]
    hub.engine.add_presence = counting  # type: ignore[method-assign]
    await hub.engine.remove_node_presence(chat, first, 60.0, leave=True)
    await eventually(lambda: len(joins(alice, chat)) == 2, "the join pushed again")
    assert set(await hub.presence(chat)) == {alice.client_id}
    seen = len(refreshes)
    await eventually(lambda: len(refreshes) >= seen + 3, "three refreshes more")
    await alice.sync()
    assert joins(alice, chat) == [alice.client_id] * 2
    assert leaves(alice, chat) == [alice.client_id]
    assert hub.instance != first
    assert published == [hub.instance]  # not the dead id: others would take it for news
    assert sample(hub, "pulsewire_node_rejoins_total") == 1
    assert await hub.engine.node_presence_channels(hub.instance) == [chat]


async def test_a_client_leaving_after_a_cleanup_pushed_its_leave_gets_no_second_one(
    start_hub: Any, local_client: Any, uniq: Any
) -> None:
    hub = await start_hub()
    chat = uniq("chat")
    alice = await local_client(hub, "alice")
    bob = await local_client(hub, "bob")
    for client in (alice, bob):
        await client.subscribe(chat)
    # declared dead elsewhere; before this node hears of it, bob leaves
    await hub.engine.remove_node_presence(chat, hub.instance, 60.0, leave=True)
    await bob.ok("unsubscribe", {"channel": chat})
    await alice.ok("unsubscribe", {"channel": chat})
    await alice.subscribe(chat)  # its own events come after this
    await alice.sync()
    assert leaves(alice, chat).count(bob.client_id) == 1


async def test_a_refresh_racing_an_unsubscribe_does_not_bring_the_client_back(
    start_hub: Any, local_client: Any, uniq: Any
) -> None:
    hub = await start_hub(presence_update_interval=0.05)
    chat = uniq("chat")
    alice = await local_client(hub, "alice")
    await alice.subscribe(chat)
    add = hub.engine.add_presence
    in_refresh, release, landed = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def slow_add(channel: str, info: ClientInfo, ttl: float, node: str = "") -> Any:
        in_refresh.set()
        await release.wait()  # the refresh's write lands after the client left
        outcome = await add(channel, info, ttl, node)
        landed.set()
        return outcome

    hub.engine.add_presence = slow_add  # type: ignore[method-assign]
    await in_refresh.wait()
    await alice.ok("unsubscribe", {"channel": chat})
    assert await hub.presence(chat) == {}
    release.set()
    await asyncio.wait_for(landed.wait(), 5)  # the stray write is in
    hub.engine.add_presence = add  # type: ignore[method-assign]

    async def gone() -> bool:
        return await hub.presence(chat) == {}

    await eventually(gone, "the stray entry to be removed again")


async def test_a_departing_peer_is_not_counted_dead(
    start_hub: Any, local_client: Any, uniq: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "pulsewire.hub")
    hub = await start_hub()
    chat, jl = uniq("chat"), uniq("jl")
    watcher = await local_client(hub, "watcher")
    await watcher.subscribe(chat)
    await watcher.subscribe(jl)
    clean, messy = FakePeer(hub, "clean", "i-clean"), FakePeer(hub, "messy", "i-messy")
    for peer in (clean, messy):
        await peer.announce()
        await peer.subscribe(chat, f"{peer.name}-1", presence=True, join=True)
        await peer.subscribe(jl, f"{peer.name}-2", presence=False, join=True)
    # "clean" left its own leaves as its sessions closed; one of them was lost on the way
    await hub.engine.remove_presence(chat, "clean-1")
    await hub.engine.publish_leave(chat, clean.clients["clean-1"])
    await hub.engine.publish_control({"op": "node_gone", "from": "clean", "instance": "i-clean",
                                      "clean": True})  # fmt: skip
    # "messy" could not remove its presence (engine trouble while closing)
    await hub.engine.publish_control({"op": "node_gone", "from": "messy", "instance": "i-messy",
                                      "clean": False})  # fmt: skip
    await eventually(lambda: len(dead_log(caplog, "messy")) == 1, "messy's leftovers cleaned")
    await asyncio.sleep(6 * INTERVAL)  # past their deadlines: neither is declared dead
    await watcher.sync()
    assert sorted(leaves(watcher, chat)) == ["clean-1", "messy-1"]
    assert sorted(leaves(watcher, jl)) == ["clean-2", "messy-2"]  # the lost one, pushed here
    assert set(await hub.presence(chat)) == {watcher.client_id}
    assert sample(hub, "pulsewire_dead_nodes_total") == 0
    assert "left" in dead_log(caplog, "messy")[0]
    assert {"clean", "messy"}.isdisjoint(hub.nodes)


async def test_closing_tells_the_others(start_hub: Any, local_client: Any, uniq: Any) -> None:
    hub = await start_hub()
    chat = uniq("chat")
    alice = await local_client(hub, "alice")
    await alice.subscribe(chat)
    sent: list[dict[str, Any]] = []
    publish_control = hub.engine.publish_control

    async def recording(message: dict[str, Any]) -> None:
        sent.append(dict(message))
        await publish_control(message)

    hub.engine.publish_control = recording  # type: ignore[method-assign]
    await hub.close()
    gone = [m for m in sent if m.get("op") == "node_gone"]
    assert gone == [{"op": "node_gone", "instance": hub.instance, "clean": True,
                     "from": hub.node_id}]  # fmt: skip
    assert await hub.engine.presence(chat) == {}


async def test_closing_with_presence_left_behind_asks_the_others_to_clean_up(
    start_hub: Any, local_client: Any, uniq: Any
) -> None:
    hub = await start_hub()
    alice = await local_client(hub, "alice")
    await alice.subscribe(uniq("chat"))
    sent: list[dict[str, Any]] = []
    publish_control = hub.engine.publish_control

    async def recording(message: dict[str, Any]) -> None:
        sent.append(dict(message))
        await publish_control(message)

    async def failing(channel: str, client: str) -> bool:
        raise EngineUnavailable("down")

    hub.engine.publish_control = recording  # type: ignore[method-assign]
    hub.engine.remove_presence = failing  # type: ignore[method-assign]
    await hub.close()
    gone = [m for m in sent if m.get("op") == "node_gone"]
    assert [m["clean"] for m in gone] == [False]


async def test_remote_members_tracked_per_channel_are_bounded(
    start_hub: Any, local_client: Any, uniq: Any, caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """In a channel without presence, a node remembers at most MEMBERS_TRACKED_PER_CHANNEL
    remote joins (the oldest go): only those get a leave when their node dies."""
    caplog.set_level(logging.INFO, "pulsewire.hub")
    monkeypatch.setattr(node_watch_module, "MEMBERS_TRACKED_PER_CHANNEL", 3)
    hub = await start_hub()
    jl = uniq("jl")
    watcher = await local_client(hub, "watcher")
    await watcher.subscribe(jl)
    peer = FakePeer(hub)
    await peer.announce()
    for i in range(5):
        await peer.subscribe(jl, f"p{i}", presence=False, join=True)
    await peer.subscribe(jl, "p1", presence=False, join=True)  # seen again: the newest
    await hub.engine.publish_leave(jl, peer.clients["p4"])  # left on its own
    await eventually(lambda: dead_log(caplog, "peer") != [], "the peer to be declared dead")
    await watcher.sync()
    assert sorted(leaves(watcher, jl)) == ["p1", "p3", "p4"]


def test_node_announce_interval_is_checked_and_read_from_toml(tmp_path: Any) -> None:
    assert HubConfig().node_announce_interval == 5.0
    for bad in (0, -1, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="node_announce_interval"):
            HubConfig(node_announce_interval=bad)
    path = tmp_path / "pulsewire.toml"
    path.write_text("[hub]\nnode_announce_interval = 0.5\n")
    hub_config, _ = config.load_config(str(path))
    assert hub_config.node_announce_interval == 0.5


async def test_an_announce_interval_too_long_for_the_presence_ttl_is_warned_about(
    start_hub: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "pulsewire.hub")
    await start_hub(node_announce_interval=30.0)
    assert any("is not under presence_ttl" in r.getMessage() for r in caplog.records)


def test_presence_add_outcomes_are_stable() -> None:
    # engines return them and hubs compare them: part of the engine interface
    assert [int(v) for v in PresenceAdd] == [0, 1, 2]
