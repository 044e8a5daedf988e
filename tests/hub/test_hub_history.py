"""History, offsets/epochs and recovery after a reconnect, one layer down: a hub and sessions
on fake transports (tests/hub/fakes.py), the memory engine on a fake clock for expiry. The
HTTP API's history endpoint is tested in test_hub_api.py."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from pulsewire.hub import HubError
from pulsewire.hub.engines.memory import MemoryEngine
from pulsewire.hub.types import HistoryResult

from .fakes import FakeClock, until


async def wait_gone(hub: Any, client_id: str) -> None:
    await until(lambda: client_id not in hub.sessions, message="the hub kept the session")


def offsets(publications: list[dict[str, Any]]) -> list[int]:
    return [p["offset"] for p in publications]


# ------------------------------------------------------------------------------------ history


async def test_history_limit_reverse_since(local_hub, local_client, uniq):
    hub = await local_hub()
    client = await local_client(hub, "ann")
    channel = uniq("hist")
    sub = await client.subscribe(channel)
    epoch = sub["epoch"]
    assert sub == {"recoverable": True, "epoch": epoch, "offset": 0}
    for n in range(1, 6):
        position = await hub.publish(channel, {"n": n})
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


async def test_history_keeps_the_last_history_size(local_hub, local_client, uniq):
    hub = await local_hub()
    client = await local_client(hub, "ben")
    channel = uniq("small")  # history_size = 3
    await client.subscribe(channel)
    for n in range(1, 6):
        await hub.publish(channel, n)
    result = await client.ok("history", {"channel": channel})
    assert offsets(result["publications"]) == [3, 4, 5]
    result = await client.ok("history", {"channel": channel, "limit": 1, "reverse": True})
    assert result["publications"] == [{"data": 5, "offset": 5}]


async def test_history_errors(local_hub, local_client, uniq):
    hub = await local_hub()
    client = await local_client(hub, "cy")
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
    with pytest.raises(HubError) as off:
        await hub.history(plain)
    assert off.value.code == 108
    await hub.history(locked)  # the server side may read any history


# ----------------------------------------------------------------------------------- recovery


@pytest.mark.parametrize("how", ["abort", "server-disconnect"])
async def test_recovery_after_a_forced_disconnect(local_hub, local_client, uniq, how):
    hub = await local_hub()
    channel = uniq("hist")
    first = await local_client(hub, "alice")
    sub = await first.subscribe(channel)
    epoch = sub["epoch"]
    for n in range(1, 4):
        await hub.publish(channel, f"m{n}")
    seen = await first.publications(channel, 3)
    assert offsets(seen) == [1, 2, 3]
    last = seen[-1]["offset"]

    if how == "abort":
        await first.close(1006)  # the connection broke
    else:
        await hub.disconnect_user("alice", 4000, "maintenance")
        assert (await first.wait_closed()) == (4000, "maintenance")
    await wait_gone(hub, first.client_id)
    for n in range(4, 7):  # published while nobody listens
        await hub.publish(channel, f"m{n}")

    second = await local_client(hub, "alice")
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
        await hub.publish(channel, f"m{n}")
    live = await second.publications(channel, 2)
    assert [(p["offset"], p["data"]) for p in live] == [(7, "m7"), (8, "m8")]
    await second.sync()
    assert second.take("publication") == []  # nothing twice


async def test_recovery_when_nothing_was_missed(local_hub, local_client, uniq):
    hub = await local_hub()
    channel = uniq("hist")
    await hub.publish(channel, "a")
    position = await hub.publish(channel, "b")
    client = await local_client(hub, "dan")
    result = await client.subscribe(
        channel, recover=True, offset=position.offset, epoch=position.epoch
    )
    assert result["recovered"] is True
    assert result["publications"] == []
    assert result["offset"] == 2


async def test_recovery_from_offset_zero_returns_everything_kept(local_hub, local_client, uniq):
    hub = await local_hub()
    channel = uniq("hist")
    watcher = await local_client(hub, "w")
    epoch = (await watcher.subscribe(channel))["epoch"]
    for n in range(3):
        await hub.publish(channel, n)
    client = await local_client(hub, "eve")
    result = await client.subscribe(channel, recover=True, offset=0, epoch=epoch)
    assert result["recovered"] is True
    assert offsets(result["publications"]) == [1, 2, 3]


async def test_recovery_impossible_when_history_was_trimmed(local_hub, local_client, uniq):
    hub = await local_hub()
    channel = uniq("small")  # history_size = 3
    first = await local_client(hub, "fay")
    epoch = (await first.subscribe(channel))["epoch"]
    await hub.publish(channel, 1)
    last = (await first.wait_push(channel=channel))["offset"]
    await first.close()
    await wait_gone(hub, first.client_id)
    for n in range(2, 7):  # 5 publications > history_size
        await hub.publish(channel, n)
    second = await local_client(hub, "fay")
    result = await second.subscribe(channel, recover=True, offset=last, epoch=epoch)
    assert result["recovered"] is False  # the client must reload its state
    assert result["publications"] == []
    assert (result["offset"], result["epoch"]) == (6, epoch)
    await hub.publish(channel, 7)
    assert (await second.wait_push(channel=channel))["offset"] == 7


async def test_recovery_impossible_with_unknown_epoch_or_future_offset(
    local_hub, local_client, uniq
):
    hub = await local_hub()
    channel = uniq("hist")
    for n in range(3):
        position = await hub.publish(channel, n)
    client = await local_client(hub, "gus")
    result = await client.subscribe(channel, recover=True, offset=1, epoch="not-the-epoch")
    assert result["recovered"] is False
    assert result["publications"] == []
    assert (result["offset"], result["epoch"]) == (3, position.epoch)
    other = uniq("hist")
    await hub.publish(other, "x")
    result = await client.subscribe(other, recover=True, offset=10, epoch=position.epoch)
    assert result["recovered"] is False


async def test_recover_needs_offset_and_epoch(local_hub, local_client, uniq):
    hub = await local_hub()
    client = await local_client(hub, "hal")
    channel = uniq("hist")
    for params in ({"offset": 1}, {"epoch": "x"}, {"offset": -1, "epoch": "x"}, {}):
        error = await client.fail("subscribe", {"channel": channel, "recover": True, **params})
        assert error["code"] == 107, params
    assert hub.channels == {}  # a failed subscribe leaves nothing behind
    await client.subscribe(channel)


async def test_recover_is_ignored_without_history(local_hub, local_client, uniq):
    hub = await local_hub()
    client = await local_client(hub, "ida")
    result = await client.subscribe(uniq("ro"), recover=True, offset=3, epoch="x")
    assert result == {}


async def test_recovery_in_the_connect_command(local_hub, local_client, uniq, make_token):
    hub = await local_hub()
    channel = uniq("hist")
    for n in range(1, 4):
        position = await hub.publish(channel, n)
    client = await local_client(hub, connect=False)
    result = await client.connect(
        make_token("jo"), subs={channel: {"recover": True, "offset": 1, "epoch": position.epoch}}
    )
    sub = result["subs"][channel]
    assert sub["recovered"] is True
    assert offsets(sub["publications"]) == [2, 3]
    await hub.publish(channel, 4)
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
    local_hub, local_client, uniq, read_before_waiting
):
    """Subscribe-before-read: what is published while history is read is not lost or doubled."""
    engine = GatedEngine()
    engine.read_before_waiting = read_before_waiting
    hub = await local_hub(engine=engine)
    channel = uniq("hist")
    for n in range(1, 4):
        position = await hub.publish(channel, n)
    client = await local_client(hub, "kai")
    gate = engine.gate = asyncio.Event()
    cid = await client.send(
        "subscribe",
        {"channel": channel, "recover": True, "offset": 1, "epoch": position.epoch},
    )
    await asyncio.wait_for(engine.entered.wait(), 5)
    for n in range(4, 6):  # published between subscribing and the end of the history read
        await hub.publish(channel, n)
    gate.set()
    reply = await client.reply(cid)
    result = reply["result"]
    assert result["recovered"] is True
    await hub.publish(channel, 6)
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


async def test_epoch_change_asks_subscribers_to_resubscribe(
    local_hub, local_client, hub_config, uniq
):
    clock = FakeClock()
    hub = await local_hub(hub_config(history_meta_ttl=600), engine=MemoryEngine(clock=clock))
    channel = uniq("hist")  # history_ttl = 300
    client = await local_client(hub, "lee")
    old_epoch = (await client.subscribe(channel))["epoch"]
    await hub.publish(channel, "old")
    last = (await client.wait_push(channel=channel))["offset"]
    clock.advance(601)  # the whole stream expires: the next publication starts a new epoch
    await hub.publish(channel, "new")
    push = await client.wait_push("unsubscribe", channel)
    assert push == {
        "push": "unsubscribe",
        "channel": channel,
        "code": 2500,
        "reason": "insufficient state",
        "resubscribe": True,
    }
    assert hub.channels == {}
    result = await client.subscribe(channel, recover=True, offset=last, epoch=old_epoch)
    assert result["recovered"] is False
    assert result["epoch"] != old_epoch
    assert result["offset"] == 1
    await hub.publish(channel, "newer")
    push = await client.wait_push(channel=channel)
    assert (push["offset"], push["data"]) == (2, "newer")
    await client.sync()
    assert client.take("publication") == []


async def test_history_ttl_expiry_makes_recovery_impossible(local_hub, local_client, uniq):
    clock = FakeClock()
    hub = await local_hub(engine=MemoryEngine(clock=clock))
    channel = uniq("hist")  # history_ttl = 300
    for n in range(3):
        position = await hub.publish(channel, n)
    clock.advance(301)
    client = await local_client(hub, "mo")
    result = await client.subscribe(channel, recover=True, offset=1, epoch=position.epoch)
    assert result["recovered"] is False
    assert (result["offset"], result["epoch"]) == (3, position.epoch)
    history = await client.ok("history", {"channel": channel})
    assert history == {"publications": [], "offset": 3, "epoch": position.epoch}
