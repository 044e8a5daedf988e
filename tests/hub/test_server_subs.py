"""Server-side subscriptions, one layer down (a hub and sessions on fake transports, see
tests/hub/fakes.py): made at connect from the token claim ``subs`` or an ``authenticate``
hook, later by ``Hub.subscribe_user``, ended by ``Hub.unsubscribe_user``; recovery across
reconnects through ``connect``'s ``server_subs`` positions; insufficient state handled by the
server; the client may not unsubscribe one (103). The HTTP API's side (/api/subscribe) is in
test_hub_api.py, the cross-node one in test_cluster.py."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from pulsewire.hub import Credentials, HubError, serversubs
from pulsewire.hub.engines.base import EngineUnavailable
from pulsewire.hub.engines.memory import MemoryEngine

from .fakes import FakeClock, until


def connect_result(client: Any) -> dict[str, Any]:
    """The result of the client's connect command (its first, id 1; pushes may come first)."""
    return next(m["result"] for m in client.log if m.get("id") == 1)  # type: ignore[no-any-return]


# ------------------------------------------------------------------------------- at connect


async def test_the_token_claim_subscribes_at_connect(local_hub, local_client, make_token, uniq):
    hub = await local_hub()
    chat, private, plain = uniq("chat"), uniq("priv"), uniq("ro")
    await hub.publish(chat, "before")
    token = make_token("ann", subs=[chat, private, plain, "nope:x", "bad name"])
    client = await local_client(hub, token=token, connect=False)
    result = await client.connect(token)
    epoch = result["server_subs"][chat]["epoch"]
    assert result["server_subs"] == {
        chat: {"recoverable": True, "epoch": epoch, "offset": 1},
        private: {},  # private, no grant: the server decided, no permission checks
        plain: {},
        "nope:x": {"error": {"code": 102, "message": "unknown namespace 'nope'"}},
        "bad name": {"error": {"code": 107, "message": "invalid channel name 'bad name'"}},
    }
    assert "subs" not in result
    assert set(client.session.subscriptions) == {chat, private, plain}
    # they behave like any subscription: publications, join, presence, publish, history
    assert (await client.wait_push("join", chat))["info"]["user"] == "ann"
    for channel in (chat, private, plain):
        await hub.publish(channel, channel)
        assert (await client.wait_push(channel=channel))["data"] == channel
    clients = (await client.ok("presence", {"channel": private}))["clients"]
    assert list(clients) == [client.client_id]
    assert (await client.ok("publish", {"channel": chat, "data": "mine"}))["offset"] == 3
    history = await client.ok("history", {"channel": chat})
    assert [p["data"] for p in history["publications"]] == ["before", chat, "mine"]
    # ... except that the client cannot end one
    for channel in (chat, plain):
        error = await client.fail("unsubscribe", {"channel": channel})
        assert error == {"code": 103, "message": "server-side subscription"}
    assert set(client.session.subscriptions) == {chat, private, plain}
    await hub.publish(plain, "still")
    assert (await client.wait_push(channel=plain))["data"] == "still"
    # nor subscribe to it again
    assert (await client.fail("subscribe", {"channel": chat}))["code"] == 105


@pytest.mark.parametrize("claim", ["chat:x", [1], {"chat:x": True}, [None]])
async def test_a_subs_claim_that_is_not_a_list_of_strings_is_an_invalid_token(
    local_hub, local_client, make_token, claim
):
    hub = await local_hub()
    client = await local_client(hub, connect=False)
    await client.send("connect", {"token": make_token("ann", subs=claim)})
    code, reason = await client.wait_closed()
    assert (code, reason) == (4500, "invalid token: subs must be a list of strings")


async def test_an_authenticate_hook_gives_server_side_subscriptions(local_hub, local_client, uniq):
    channel, team = uniq("hist"), uniq("nosub")

    def authenticate(request: Any) -> Credentials:
        return Credentials(user="bo", subs=(channel, team))

    hub = await local_hub(authenticate=authenticate)
    client = await local_client(hub, connect=False)
    result = await client.connect()
    assert set(result["server_subs"]) == {channel, team}
    assert result["server_subs"][team] == {}  # allow_subscribe = false: the server may
    await hub.publish(team, "hi")
    assert (await client.wait_push(channel=team))["data"] == "hi"


async def test_an_authenticate_hook_giving_subs_as_one_string_is_a_bug(
    local_hub, local_client, caplog
):
    hub = await local_hub(authenticate=lambda request: Credentials(user="bo", subs="ro:x"))
    client = await local_client(hub, connect=False)
    assert await client.fail("connect") == {"code": 100, "message": "internal error"}
    assert "not one string" in caplog.text
    assert client.session.subscriptions == {}


async def test_client_subs_come_after_the_server_ones(local_hub, local_client, make_token, uniq):
    hub = await local_hub()
    mine, both = uniq("ro"), uniq("ro")
    token = make_token("cy", subs=[both])
    client = await local_client(hub, token=token, connect=False)
    result = await client.connect(token, subs={mine: {}, both: {}})
    assert result["server_subs"] == {both: {}}
    assert result["subs"][mine] == {}
    assert result["subs"][both]["error"]["code"] == 105
    await client.ok("unsubscribe", {"channel": mine})  # the client's own: it may
    assert (await client.fail("unsubscribe", {"channel": both}))["code"] == 103


async def test_the_limit_of_channels_counts_server_side_subscriptions(
    local_hub, local_client, hub_config, make_token, uniq
):
    hub = await local_hub(hub_config(max_channels_per_connection=2))
    channels = [uniq("ro") for _ in range(3)]
    client = await local_client(hub, token=make_token("di", subs=channels), connect=False)
    result = await client.connect(client.token)
    assert [r.get("error", {}).get("code") for r in result["server_subs"].values()] == [
        None,
        None,
        106,
    ]
    assert (await client.fail("subscribe", {"channel": uniq("ro")}))["code"] == 106


# ---------------------------------------------------------------------------- after connect


async def test_subscribe_user_pushes_subscribe_then_publications(local_hub, local_client, uniq):
    hub = await local_hub()
    channel, plain = uniq("chat"), uniq("ro")
    position = await hub.publish(channel, "old")
    a1, a2 = await local_client(hub, "alice"), await local_client(hub, "alice")
    bob = await local_client(hub, "bob")
    await hub.subscribe_user("alice", channel)
    for client in (a1, a2):
        push = await client.wait_push("subscribe", channel)
        assert push == {
            "push": "subscribe",
            "channel": channel,
            "recoverable": True,
            "epoch": position.epoch,
            "offset": 1,
        }
    await hub.publish(channel, "new")
    for client in (a1, a2):
        publication = await client.wait_push(channel=channel)
        assert (publication["data"], publication["offset"]) == ("new", 2)
        assert (await client.fail("unsubscribe", {"channel": channel}))["code"] == 103
    await hub.subscribe_user("alice", plain, client=a2.client_id)
    assert await a2.wait_push("subscribe", plain) == {"push": "subscribe", "channel": plain}
    await hub.subscribe_user("bob", plain, client=a1.client_id)  # not bob's connection
    for client in (a1, bob):
        await client.sync()
    assert a1.take("subscribe") == [] and bob.take("subscribe") == []
    assert set(a1.session.subscriptions) == {channel}
    assert bob.session.subscriptions == {}


async def test_subscribe_user_leaves_a_subscribed_connection_as_it_is(
    local_hub, local_client, uniq
):
    hub = await local_hub()
    channel = uniq("ro")
    client = await local_client(hub, "eve")
    await client.subscribe(channel)
    await hub.subscribe_user("eve", channel)
    await hub.subscribe_user("eve", uniq("ro"))  # in order after the first one
    await client.wait_push("subscribe")
    assert client.take("subscribe", channel) == []
    await client.ok("unsubscribe", {"channel": channel})  # still the client's own


async def test_subscribe_user_refuses_a_bad_channel(local_hub):
    hub = await local_hub()
    with pytest.raises(HubError) as unknown:
        await hub.subscribe_user("eve", "nope:x")
    assert unknown.value.code == 102
    with pytest.raises(HubError) as bad:
        await hub.subscribe_user("eve", "bad name")
    assert bad.value.code == 107


async def test_unsubscribe_user_ends_server_side_subscriptions(
    local_hub, local_client, make_token, uniq
):
    hub = await local_hub()
    at_connect, later = uniq("chat"), uniq("ro")
    fay = await local_client(hub, token=make_token("fay", subs=[at_connect]))
    watcher = await local_client(hub, "gus")
    await watcher.subscribe(at_connect)
    await hub.subscribe_user("fay", later)
    await fay.wait_push("subscribe", later)
    await hub.unsubscribe_user("fay", at_connect)
    await hub.unsubscribe_user("fay", later, client=fay.client_id)
    for channel in (at_connect, later):
        push = await fay.wait_push("unsubscribe", channel)
        assert (push["code"], push["resubscribe"]) == (2000, False)
    assert fay.session.subscriptions == {}
    assert (await watcher.wait_push("leave", at_connect))["info"]["user"] == "fay"
    await fay.subscribe(later)  # now as a client subscription of its own
    await fay.ok("unsubscribe", {"channel": later})


async def test_a_subscribe_push_never_overtakes_the_connect_reply(
    local_hub, local_client, make_token, uniq
):
    """subscribe_user while the connection is still being connected (after it counts under
    its user, before the reply): the push comes after the reply."""
    entered, gate = asyncio.Event(), asyncio.Event()
    slow, later = uniq("ro"), uniq("hist")

    async def on_subscribe_hook(session: Any, channel: str, params: Any) -> None:
        entered.set()
        await gate.wait()

    hub = await local_hub(on_subscribe=on_subscribe_hook)
    client = await local_client(hub, connect=False)
    cid = await client.send("connect", {"token": make_token("hal"), "subs": {slow: {}}})
    await asyncio.wait_for(entered.wait(), 5)  # connected, in the client subs' hook
    await hub.subscribe_user("hal", later)
    await asyncio.sleep(0)
    gate.set()
    await client.reply(cid)
    push = await client.wait_push("subscribe", later)
    assert client.log.index(push) > next(i for i, m in enumerate(client.log) if m.get("id") == cid)


# ------------------------------------------------------------------------------- recovery


async def test_recovery_across_a_reconnect_through_server_subs(
    local_hub, local_client, make_token, uniq
):
    hub = await local_hub()
    channel, gone, plain = uniq("hist"), uniq("hist"), uniq("ro")
    token = make_token("ivy", subs=[channel, plain])
    first = await local_client(hub, token=token)
    await hub.publish(channel, 1)
    epoch = first.session.subscriptions[channel].epoch
    last = (await first.wait_push(channel=channel))["offset"]
    await first.close()
    for n in (2, 3):
        await hub.publish(channel, n)
    positions = {
        channel: {"recover": True, "offset": last, "epoch": epoch},
        gone: {"recover": True, "offset": 0, "epoch": epoch},  # not a server sub any more
        plain: {"recover": True, "offset": 5, "epoch": "x"},  # no history: ignored
    }
    second = await local_client(hub, token=token, params={"server_subs": positions})
    result = connect_result(second)["server_subs"]
    assert result[channel]["recovered"] is True
    assert [p["data"] for p in result[channel]["publications"]] == [2, 3]
    assert (result[channel]["offset"], result[channel]["epoch"]) == (3, epoch)
    assert result[plain] == {}
    assert gone not in result
    # from a position of another epoch: recovered false, the current position
    third = await local_client(
        hub,
        token=token,
        params={"server_subs": {channel: {"recover": True, "offset": 1, "epoch": "old"}}},
    )
    again = connect_result(third)["server_subs"][channel]
    assert again == {
        "recoverable": True,
        "epoch": epoch,
        "offset": 3,
        "recovered": False,
        "publications": [],
    }


async def test_bad_server_subs_positions(local_hub, local_client, make_token, uniq):
    hub = await local_hub()
    channel = uniq("hist")
    token = make_token("jo", subs=[channel])
    client = await local_client(hub, token=token, connect=False)
    bad = {channel: {"recover": True, "offset": "1", "epoch": "e"}}
    result = await client.connect(token, server_subs=bad)
    assert result["server_subs"][channel]["error"]["code"] == 107
    assert client.session.subscriptions == {}
    for server_subs in ([channel], {channel: 1}):
        other = await local_client(hub, connect=False)
        await other.send("connect", {"token": token, "server_subs": server_subs})
        code, reason = await other.wait_closed()
        assert code == 4501
        assert "server_subs must be an object" in reason  # type: ignore[operator]


async def test_insufficient_state_resubscribes_server_side_subscriptions(
    local_hub, local_client, hub_config, make_token, uniq
):
    """The stream's epoch changes: client subscriptions are told to resubscribe (2500); a
    server-side one is made again by the server, which pushes the recovery's result."""
    clock = FakeClock()
    hub = await local_hub(hub_config(history_meta_ttl=600), engine=MemoryEngine(clock=clock))
    channel = uniq("chat")  # history, presence, join/leave
    kim = await local_client(hub, token=make_token("kim", subs=[channel]))
    watcher = await local_client(hub, "lou")
    await watcher.subscribe(channel)
    old_epoch = kim.session.subscriptions[channel].epoch
    await hub.publish(channel, "old")
    assert (await kim.wait_push(channel=channel))["offset"] == 1
    clock.advance(601)  # the whole stream expires: the next publication starts a new epoch
    await hub.publish(channel, "new")
    push = await kim.wait_push("subscribe", channel)
    assert push["epoch"] != old_epoch
    assert push == {
        "push": "subscribe",
        "channel": channel,
        "recoverable": True,
        "epoch": push["epoch"],
        "offset": 1,
        "recovered": False,
        "publications": [],
    }
    assert kim.take("unsubscribe") == []
    assert (await watcher.wait_push("unsubscribe", channel))["code"] == 2500
    sub = kim.session.subscriptions[channel]
    assert sub.server and (sub.epoch, sub.offset) == (push["epoch"], 1)
    await until(lambda: list(hub.channels) == [channel])
    await hub.publish(channel, "newer")
    publication = await kim.wait_push(channel=channel)
    assert (publication["data"], publication["offset"]) == ("newer", 2)
    assert list(await hub.presence(channel)) == [kim.client_id]  # forgotten, then written


class LossyEngine(MemoryEngine):
    """A memory engine that can lose the live delivery of its next ``drop`` publications and
    fail its next ``history_failures`` history reads (as an engine outage does)."""

    def __init__(self) -> None:
        super().__init__()
        self.drop = 0
        self.history_failures = 0

    async def publish(self, channel: str, publication: Any, options: Any) -> Any:
        if not self.drop:
            return await super().publish(channel, publication, options)
        self.drop -= 1
        handler, self.handler = self.handler, None
        try:
            return await super().publish(channel, publication, options)
        finally:
            self.handler = handler

    async def history(self, channel: str, **options: Any) -> Any:
        if self.history_failures:
            self.history_failures -= 1
            raise EngineUnavailable("down")
        return await super().history(channel, **options)


async def test_a_gap_that_cannot_be_filled_is_recovered_by_the_server(
    local_hub, local_client, make_token, uniq
):
    """A publication lost on its way and the history read that would fill the gap failing:
    the server makes the server-side subscription again from the last offset it delivered,
    and the subscribe push carries what was missed (recovered: true)."""
    engine = LossyEngine()
    hub = await local_hub(engine=engine)
    channel = uniq("hist")
    ned = await local_client(hub, token=make_token("ned", subs=[channel]))
    watcher = await local_client(hub, "ola")
    await watcher.subscribe(channel)
    await hub.publish(channel, 1)
    assert (await ned.wait_push(channel=channel))["offset"] == 1
    engine.drop = 1
    await hub.publish(channel, 2)  # lost on its way to the node
    engine.history_failures = 1
    position = await hub.publish(channel, 3)  # shows the gap; filling it fails
    push = await ned.wait_push("subscribe", channel)
    assert push == {
        "push": "subscribe",
        "channel": channel,
        "recoverable": True,
        "epoch": position.epoch,
        "offset": 3,
        "recovered": True,
        "publications": [{"data": 2, "offset": 2}, {"data": 3, "offset": 3}],
    }
    assert (await watcher.wait_push("unsubscribe", channel))["code"] == 2500
    await hub.publish(channel, 4)
    assert (await ned.wait_push(channel=channel))["offset"] == 4
    await ned.sync()
    assert [m.get("offset") for m in ned.log if m.get("push") == "publication"] == [1, 4]
    assert ned.take("unsubscribe") == []


# ----------------------------------------------------------------------- failures after connect


class FlakyEngine(MemoryEngine):
    """A memory engine whose next ``failures`` channel subscriptions fail."""

    def __init__(self) -> None:
        super().__init__()
        self.failures = 0

    async def subscribe(self, channel: str) -> None:
        if self.failures:
            self.failures -= 1
            raise EngineUnavailable("down")
        await super().subscribe(channel)


async def test_subscribe_user_is_retried_while_the_engine_is_unavailable(
    local_hub, local_client, uniq, monkeypatch
):
    monkeypatch.setattr(serversubs, "RETRY_DELAYS", (0.001,))
    engine = FlakyEngine()
    hub = await local_hub(engine=engine)
    channel = uniq("hist")
    client = await local_client(hub, "max")
    engine.failures = 2
    await hub.subscribe_user("max", channel)
    assert (await client.wait_push("subscribe", channel))["offset"] == 0
    assert engine.failures == 0
    await hub.publish(channel, "up")
    assert (await client.wait_push(channel=channel))["data"] == "up"


class GivingUp:
    """A session on which every attempt fails with ``code``."""

    def __init__(self, code: int) -> None:
        self.code = code
        self.attempts = 0
        self.pushes: list[dict[str, Any]] = []
        self.connected = True

    async def subscribe_by_server(self, params: dict[str, Any]) -> None:
        self.attempts += 1
        raise HubError(self.code, "no room")

    def push(self, message: dict[str, Any]) -> None:
        self.pushes.append(message)

    def log_context(self) -> dict[str, Any]:
        return {}


async def test_other_failures_are_given_up_and_told_when_the_client_knew():
    for known in (False, True):
        session = GivingUp(106)
        await serversubs.make_until_done(session, {"channel": "ro:x"}, known=known)
        assert session.attempts == 1
        expected = {
            "push": "unsubscribe",
            "channel": "ro:x",
            "code": 2000,
            "reason": "server-side subscription failed: no room",
            "resubscribe": False,
        }
        assert session.pushes == ([expected] if known else [])
