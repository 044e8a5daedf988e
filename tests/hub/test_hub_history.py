"""End to end: history, offsets/epochs and recovery after a reconnect, over real WebSockets."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from pulsewire.hub.engines.memory import MemoryEngine
from pulsewire.hub.types import HistoryResult


async def wait_gone(server: Any, client_id: str) -> None:
    for _ in range(200):
        if client_id not in server.hub.sessions:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the server did not notice the disconnection")


def offsets(publications: list[dict[str, Any]]) -> list[int]:
    return [p["offset"] for p in publications]


# ------------------------------------------------------------------------------------ history


async def test_history_limit_reverse_since(hub_server, hub_client, uniq):
    server = await hub_server()
    client = await hub_client(server, "ann")
    channel = uniq("hist")
    sub = await client.subscribe(channel)
    epoch = sub["epoch"]
    assert sub == {"recoverable": True, "epoch": epoch, "offset": 0}
    for n in range(1, 6):
        position = await server.hub.publish(channel, {"n": n})
        assert (position.offset, position.epoch) == (n, epoch)
    await client.publications(channel, 5)

    async def history(**params: Any) -> dict[str, Any]:
        return await client.ok("history", {"channel": channel, **params})  # type: ignore[no-any-return]

    full = await history()
    assert full["offset"] == 5 and full["epoch"] == epoch
    assert full["publications"] == [{"data": {"n": n}, "offset": n} for n in range(1, 6)]
    assert offsets((await history(limit=2))["publications"]) == [1, 2]
    assert offsets((await history(limit=2, reverse=True))["publications"]) == [5, 4]
    assert offsets((await history(reverse=True))["publications"]) == [5, 4, 3, 2, 1]
    since = {"offset": 3, "epoch": epoch}
    assert offsets((await history(since=since))["publications"]) == [4, 5]
    assert offsets((await history(since=since, limit=1))["publications"]) == [4]
    assert offsets((await history(since={"offset": 5, "epoch": epoch}))["publications"]) == []
    only_position = await history(limit=0)
    assert only_position == {"publications": [], "offset": 5, "epoch": epoch}


async def test_history_keeps_the_last_history_size(hub_server, hub_client, uniq, api):
    server = await hub_server()
    client = await hub_client(server, "ben")
    channel = uniq("small")  # history_size = 3
    await client.subscribe(channel)
    for n in range(1, 6):
        await server.hub.publish(channel, n)
    result = await client.ok("history", {"channel": channel})
    assert offsets(result["publications"]) == [3, 4, 5]
    status, body = await api(server, "history", {"channel": channel, "limit": 1, "reverse": True})
    assert status == 200
    assert body["result"]["publications"] == [{"data": 5, "offset": 5}]


async def test_history_errors(hub_server, hub_client, uniq, api):
    server = await hub_server()
    client = await hub_client(server, "cy")
    kept, plain, locked = uniq("hist"), uniq("ro"), uniq("locked")
    assert (await client.fail("history", {"channel": kept}))["code"] == 103  # not subscribed
    await client.subscribe(kept)
    await client.subscribe(plain)
    await client.subscribe(locked)
    assert (await client.fail("history", {"channel": plain}))["code"] == 108  # no history
    assert (await client.fail("history", {"channel": locked}))["code"] == 103  # not allowed
    for bad in ({"limit": -1}, {"limit": "2"}, {"since": 3}, {"since": {"epoch": "x"}}):
        error = await client.fail("history", {"channel": kept, **bad})
        assert error["code"] == 107, bad
    status, body = await api(server, "history", {"channel": plain})
    assert status == 503 and body["error"]["code"] == 108
    status, body = await api(server, "history", {"channel": kept, "limit": -1})
    assert status == 400
    status, body = await api(server, "history", {"channel": locked})
    assert status == 200  # the server API may read any history


# ----------------------------------------------------------------------------------- recovery


@pytest.mark.parametrize("how", ["abort", "api-disconnect"])
async def test_recovery_after_a_forced_disconnect(hub_server, hub_client, api, uniq, how):
    server = await hub_server()
    channel = uniq("hist")
    first = await hub_client(server, "alice")
    sub = await first.subscribe(channel)
    epoch = sub["epoch"]
    for n in range(1, 4):
        await server.hub.publish(channel, f"m{n}")
    seen = await first.publications(channel, 3)
    assert offsets(seen) == [1, 2, 3]
    last = seen[-1]["offset"]

    if how == "abort":
        first.ws.abort()
    else:
        status, _ = await api(
            server, "disconnect", {"user": "alice", "code": 4000, "reason": "maintenance"}
        )
        assert status == 200
        assert (await first.wait_closed()) == (4000, "maintenance")
    await wait_gone(server, first.client_id)
    for n in range(4, 7):  # published while nobody listens
        status, _ = await api(server, "publish", {"channel": channel, "data": f"m{n}"})
        assert status == 200

    second = await hub_client(server, "alice")
    result = await second.subscribe(channel, recover=True, offset=last, epoch=epoch)
    assert result["recovered"] is True
    assert result["recoverable"] is True
    assert (result["epoch"], result["offset"]) == (epoch, 6)
    assert result["publications"] == [
        {"data": "m4", "offset": 4},
        {"data": "m5", "offset": 5},
        {"data": "m6", "offset": 6},
    ]
    for n in (7, 8):
        await server.hub.publish(channel, f"m{n}")
    live = await second.publications(channel, 2)
    assert [(p["offset"], p["data"]) for p in live] == [(7, "m7"), (8, "m8")]
    await second.sync()
    assert second.take("publication") == []  # nothing twice


async def test_recovery_when_nothing_was_missed(hub_server, hub_client, uniq):
    server = await hub_server()
    channel = uniq("hist")
    await server.hub.publish(channel, "a")
    position = await server.hub.publish(channel, "b")
    client = await hub_client(server, "dan")
    result = await client.subscribe(
        channel, recover=True, offset=position.offset, epoch=position.epoch
    )
    assert result["recovered"] is True
    assert result["publications"] == []
    assert result["offset"] == 2


async def test_recovery_from_offset_zero_returns_everything_kept(hub_server, hub_client, uniq):
    server = await hub_server()
    channel = uniq("hist")
    watcher = await hub_client(server, "w")
    epoch = (await watcher.subscribe(channel))["epoch"]
    for n in range(3):
        await server.hub.publish(channel, n)
    client = await hub_client(server, "eve")
    result = await client.subscribe(channel, recover=True, offset=0, epoch=epoch)
    assert result["recovered"] is True
    assert offsets(result["publications"]) == [1, 2, 3]


async def test_recovery_impossible_when_history_was_trimmed(hub_server, hub_client, uniq):
    server = await hub_server()
    channel = uniq("small")  # history_size = 3
    first = await hub_client(server, "fay")
    epoch = (await first.subscribe(channel))["epoch"]
    await server.hub.publish(channel, 1)
    last = (await first.wait_push(channel=channel))["offset"]
    await first.close()
    await wait_gone(server, first.client_id)
    for n in range(2, 7):  # 5 publications > history_size
        await server.hub.publish(channel, n)
    second = await hub_client(server, "fay")
    result = await second.subscribe(channel, recover=True, offset=last, epoch=epoch)
    assert result["recovered"] is False  # the client must reload its state
    assert result["publications"] == []
    assert (result["offset"], result["epoch"]) == (6, epoch)
    await server.hub.publish(channel, 7)
    assert (await second.wait_push(channel=channel))["offset"] == 7


async def test_recovery_impossible_with_unknown_epoch_or_future_offset(
    hub_server, hub_client, uniq
):
    server = await hub_server()
    channel = uniq("hist")
    for n in range(3):
        position = await server.hub.publish(channel, n)
    client = await hub_client(server, "gus")
    result = await client.subscribe(channel, recover=True, offset=1, epoch="not-the-epoch")
    assert result["recovered"] is False
    assert result["publications"] == []
    assert (result["offset"], result["epoch"]) == (3, position.epoch)
    other = uniq("hist")
    await server.hub.publish(other, "x")
    result = await client.subscribe(other, recover=True, offset=10, epoch=position.epoch)
    assert result["recovered"] is False


async def test_recover_needs_offset_and_epoch(hub_server, hub_client, uniq):
    server = await hub_server()
    client = await hub_client(server, "hal")
    channel = uniq("hist")
    for params in ({"offset": 1}, {"epoch": "x"}, {"offset": -1, "epoch": "x"}, {}):
        error = await client.fail("subscribe", {"channel": channel, "recover": True, **params})
        assert error["code"] == 107, params
    assert server.hub.channels == {}  # a failed subscribe leaves nothing behind
    await client.subscribe(channel)


async def test_recover_is_ignored_without_history(hub_server, hub_client, uniq):
    server = await hub_server()
    client = await hub_client(server, "ida")
    result = await client.subscribe(uniq("ro"), recover=True, offset=3, epoch="x")
    assert result == {}


async def test_recovery_in_the_connect_command(hub_server, hub_client, uniq, make_token):
    server = await hub_server()
    channel = uniq("hist")
    for n in range(1, 4):
        position = await server.hub.publish(channel, n)
    client = await hub_client(server, connect=False)
    result = await client.connect(
        make_token("jo"), subs={channel: {"recover": True, "offset": 1, "epoch": position.epoch}}
    )
    sub = result["subs"][channel]
    assert sub["recovered"] is True
    assert offsets(sub["publications"]) == [2, 3]
    await server.hub.publish(channel, 4)
    assert (await client.wait_push(channel=channel))["offset"] == 4


class GatedEngine(MemoryEngine):
    """A memory engine whose next history read can be held, to publish meanwhile."""

    def __init__(self) -> None:
        super().__init__()
        self.gate: asyncio.Event | None = None
        self.entered = asyncio.Event()
        self.read_before_waiting = True

    async def history(self, channel: str, **options: Any) -> HistoryResult:
        gate, self.gate = self.gate, None
        if gate is None:
            return await super().history(channel, **options)
        if self.read_before_waiting:
            result = await super().history(channel, **options)
            self.entered.set()
            await gate.wait()
            return result
        self.entered.set()
        await gate.wait()
        return await super().history(channel, **options)


@pytest.mark.parametrize("read_before_waiting", [True, False])
async def test_publications_during_recovery_are_delivered_once_in_order(
    hub_server, hub_client, uniq, read_before_waiting
):
    """Subscribe-before-read: what is published while history is read is not lost or doubled."""
    engine = GatedEngine()
    engine.read_before_waiting = read_before_waiting
    server = await hub_server(engine=engine)
    channel = uniq("hist")
    for n in range(1, 4):
        position = await server.hub.publish(channel, n)
    client = await hub_client(server, "kai")
    gate = engine.gate = asyncio.Event()
    cid = await client.send(
        "subscribe",
        {"channel": channel, "recover": True, "offset": 1, "epoch": position.epoch},
    )
    await asyncio.wait_for(engine.entered.wait(), 5)
    for n in range(4, 6):  # published between subscribing and the end of the history read
        await server.hub.publish(channel, n)
    gate.set()
    reply = await client.reply(cid)
    result = reply["result"]
    assert result["recovered"] is True
    await server.hub.publish(channel, 6)
    live = await client.wait_push(channel=channel)
    while live["offset"] != 6:
        live = await client.wait_push(channel=channel)
    # everything after offset 1, once each, in order: first in the reply, then as pushes
    pushed = [m for m in client.log if m.get("push") == "publication"]
    delivered = offsets(result["publications"]) + offsets(pushed)
    assert delivered == [2, 3, 4, 5, 6]
    if read_before_waiting:
        assert offsets(result["publications"]) == [2, 3]
    else:
        assert offsets(result["publications"]) == [2, 3, 4, 5]
    # the reply comes before any push of the channel
    index = client.log.index(reply)
    assert all(m.get("push") != "publication" for m in client.log[:index])


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_epoch_change_asks_subscribers_to_resubscribe(
    hub_server, hub_client, hub_config, uniq
):
    clock = Clock()
    server = await hub_server(hub_config(history_meta_ttl=600), engine=MemoryEngine(clock=clock))
    channel = uniq("hist")  # history_ttl = 300
    client = await hub_client(server, "lee")
    old_epoch = (await client.subscribe(channel))["epoch"]
    await server.hub.publish(channel, "old")
    last = (await client.wait_push(channel=channel))["offset"]
    clock.now += 601  # the whole stream expires: the next publication starts a new epoch
    await server.hub.publish(channel, "new")
    push = await client.wait_push("unsubscribe", channel)
    assert push == {
        "push": "unsubscribe",
        "channel": channel,
        "code": 2500,
        "reason": "insufficient state",
        "resubscribe": True,
    }
    assert server.hub.channels == {}
    result = await client.subscribe(channel, recover=True, offset=last, epoch=old_epoch)
    assert result["recovered"] is False
    assert result["epoch"] != old_epoch
    assert result["offset"] == 1
    await server.hub.publish(channel, "newer")
    push = await client.wait_push(channel=channel)
    assert (push["offset"], push["data"]) == (2, "newer")
    await client.sync()
    assert client.take("publication") == []


async def test_history_ttl_expiry_makes_recovery_impossible(hub_server, hub_client, uniq):
    clock = Clock()
    server = await hub_server(engine=MemoryEngine(clock=clock))
    channel = uniq("hist")  # history_ttl = 300
    for n in range(3):
        position = await server.hub.publish(channel, n)
    clock.now += 301
    client = await hub_client(server, "mo")
    result = await client.subscribe(channel, recover=True, offset=1, epoch=position.epoch)
    assert result["recovered"] is False
    assert (result["offset"], result["epoch"]) == (3, position.epoch)
    history = await client.ok("history", {"channel": channel})
    assert history == {"publications": [], "offset": 3, "epoch": position.epoch}
