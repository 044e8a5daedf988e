"""Channels (subscribe, publish, presence, permissions, hooks), one layer down: a hub and
sessions on fake transports (tests/hub/fakes.py). The HTTP API's side is in test_hub_api.py."""

from __future__ import annotations

import time
from typing import Any

import pytest

from pulsewire.hub import ChannelOptions, HubError

# ------------------------------------------------------------------ subscribe / unsubscribe


async def test_subscribe_receive_unsubscribe(local_hub, local_client, uniq):
    hub = await local_hub()
    client = await local_client(hub, "ann")
    channel = uniq("ro")
    assert await client.subscribe(channel) == {}  # no history: an empty result
    assert hub.channels == {channel: 1}
    await hub.publish(channel, {"n": 1})
    push = await client.wait_push(channel=channel)
    assert push == {"push": "publication", "channel": channel, "data": {"n": 1}}
    assert await client.ok("unsubscribe", {"channel": channel}) == {}
    assert hub.channels == {}
    await hub.publish(channel, {"n": 2})
    await client.sync()
    assert client.take("publication") == []


async def test_subscribe_errors(local_hub, local_client, uniq):
    hub = await local_hub()
    client = await local_client(hub, "ben")
    channel = uniq("ro")
    await client.subscribe(channel)
    assert (await client.fail("subscribe", {"channel": channel}))["code"] == 105
    assert (await client.fail("subscribe", {"channel": "nope:x"}))["code"] == 102
    assert (await client.fail("subscribe", {"channel": "ro:has space"}))["code"] == 107
    assert (await client.fail("subscribe", {"channel": "ro:" + "x" * 300}))["code"] == 107
    assert (await client.fail("subscribe", {}))["code"] == 107
    assert (await client.fail("subscribe", {"channel": 5}))["code"] == 107
    assert (await client.fail("subscribe", {"channel": uniq("nosub")}))["code"] == 103
    assert (await client.fail("unsubscribe", {"channel": uniq("ro")}))["code"] == 113
    assert (await client.fail("unsubscribe", {"channel": "nope:x"}))["code"] == 102
    assert not client.closed  # command errors never end the session


async def test_channel_without_namespace_uses_default_options(
    local_hub, local_client, hub_config, uniq
):
    config = hub_config(channel=ChannelOptions(allow_publish=True))
    hub = await local_hub(config)
    client = await local_client(hub, "cat")
    channel = uniq()
    assert ":" not in channel
    await client.subscribe(channel)
    assert await client.ok("publish", {"channel": channel, "data": 1}) == {}
    assert (await client.wait_push(channel=channel))["data"] == 1


async def test_max_channels_per_connection(local_hub, local_client, hub_config, uniq):
    hub = await local_hub(hub_config(max_channels_per_connection=2))
    client = await local_client(hub, "dan")
    first, second = uniq("ro"), uniq("ro")
    await client.subscribe(first)
    await client.subscribe(second)
    error = await client.fail("subscribe", {"channel": uniq("ro")})
    assert error["code"] == 106
    await client.ok("unsubscribe", {"channel": first})
    await client.subscribe(uniq("ro"))  # room again


# --------------------------------------------------------------------------------- publish


async def test_client_publish_allowed(local_hub, local_client, uniq, make_token):
    hub = await local_hub()
    alice = await local_client(hub, token=make_token("alice", info={"name": "A"}))
    bob = await local_client(hub, "bob")
    channel = uniq("pub")
    await alice.subscribe(channel)
    await bob.subscribe(channel)
    assert await alice.ok("publish", {"channel": channel, "data": {"text": "hi"}}) == {}
    for client in (alice, bob):
        push = await client.wait_push(channel=channel)
        assert push == {
            "push": "publication",
            "channel": channel,
            "data": {"text": "hi"},
            "info": {"client": alice.client_id, "user": "alice", "conn_info": {"name": "A"}},
        }


async def test_client_publish_to_history_channel_returns_position(local_hub, local_client, uniq):
    hub = await local_hub()
    client = await local_client(hub, "eve")
    channel = uniq("chat")
    sub = await client.subscribe(channel)
    first = await client.ok("publish", {"channel": channel, "data": 1})
    second = await client.ok("publish", {"channel": channel, "data": 2})
    assert first == {"offset": 1, "epoch": sub["epoch"]}
    assert second == {"offset": 2, "epoch": sub["epoch"]}
    pushes = await client.publications(channel, 2)
    assert [(p["offset"], p["data"]) for p in pushes] == [(1, 1), (2, 2)]


async def test_client_publish_denied(local_hub, local_client, uniq):
    hub = await local_hub()
    client = await local_client(hub, "fred")
    readonly = uniq("ro")
    await client.subscribe(readonly)
    error = await client.fail("publish", {"channel": readonly, "data": 1})
    assert error["code"] == 103
    not_subscribed = uniq("pub")
    error = await client.fail("publish", {"channel": not_subscribed, "data": 1})
    assert error["code"] == 103
    await client.subscribe(not_subscribed)
    assert (await client.fail("publish", {"channel": not_subscribed}))["code"] == 107
    assert (await client.fail("publish", {"channel": "nope:x", "data": 1}))["code"] == 102
    await client.sync()
    assert client.take("publication") == []
    assert hub.metrics.registry.get_sample_value("pulsewire_publications_total") == 0


# ------------------------------------------------------------------------ presence, join/leave


async def test_presence_and_presence_stats(local_hub, local_client, uniq, make_token):
    hub = await local_hub()
    channel = uniq("chat")
    a1 = await local_client(hub, token=make_token("alice", info={"n": 1}))
    a2 = await local_client(hub, token=make_token("alice", info={"n": 2}))
    b = await local_client(hub, "bob")
    for client in (a1, a2, b):
        await client.subscribe(channel)
    presence = await b.ok("presence", {"channel": channel})
    assert presence["clients"] == {
        a1.client_id: {"client": a1.client_id, "user": "alice", "conn_info": {"n": 1}},
        a2.client_id: {"client": a2.client_id, "user": "alice", "conn_info": {"n": 2}},
        b.client_id: {"client": b.client_id, "user": "bob"},
    }
    assert await b.ok("presence_stats", {"channel": channel}) == {
        "num_clients": 3,
        "num_users": 2,
    }
    assert await hub.presence_stats(channel) == (3, 2)
    await a2.ok("unsubscribe", {"channel": channel})
    assert await b.ok("presence_stats", {"channel": channel}) == {
        "num_clients": 2,
        "num_users": 2,
    }
    await a1.close()
    for _ in range(100):  # the leave is cleaned up in the background
        stats = await b.ok("presence_stats", {"channel": channel})
        if stats["num_clients"] == 1:
            break
    assert stats == {"num_clients": 1, "num_users": 1}
    assert list(await hub.presence(channel)) == [b.client_id]


async def test_presence_errors(local_hub, local_client, uniq):
    hub = await local_hub()
    client = await local_client(hub, "cy")
    plain, locked = uniq("ro"), uniq("locked")
    error = await client.fail("presence", {"channel": plain})
    assert error["code"] == 103  # not subscribed
    await client.subscribe(plain)
    assert (await client.fail("presence", {"channel": plain}))["code"] == 108  # presence off
    assert (await client.fail("presence_stats", {"channel": plain}))["code"] == 108
    await client.subscribe(locked)
    assert (await client.fail("presence", {"channel": locked}))["code"] == 103  # not allowed
    assert (await client.fail("presence_stats", {"channel": locked}))["code"] == 103
    # the server side may always look
    assert client.client_id in await hub.presence(locked)
    with pytest.raises(HubError) as off:
        await hub.presence(plain)
    assert off.value.code == 108


async def test_join_and_leave_pushes(local_hub, local_client, uniq, make_token):
    hub = await local_hub()
    channel = uniq("chat")
    alice = await local_client(hub, "alice")
    await alice.subscribe(channel)
    assert await alice.wait_push("join", channel) == {  # its own join comes too
        "push": "join",
        "channel": channel,
        "info": {"client": alice.client_id, "user": "alice"},
    }
    bob = await local_client(hub, token=make_token("bob", info={"color": "red"}))
    await bob.subscribe(channel)
    bob_info = {"client": bob.client_id, "user": "bob", "conn_info": {"color": "red"}}
    assert (await alice.wait_push("join", channel))["info"] == bob_info
    carl = await local_client(hub, "carl")
    await carl.subscribe(channel)
    assert (await alice.wait_push("join", channel))["info"]["user"] == "carl"
    await bob.ok("unsubscribe", {"channel": channel})
    assert await alice.wait_push("leave", channel) == {
        "push": "leave",
        "channel": channel,
        "info": bob_info,
    }
    await carl.close()  # leaving by disconnecting
    assert (await alice.wait_push("leave", channel))["info"]["user"] == "carl"


async def test_no_join_leave_without_the_option(local_hub, local_client, uniq):
    hub = await local_hub()
    channel = uniq("ro")
    alice, bob = await local_client(hub, "alice"), await local_client(hub, "bob")
    await alice.subscribe(channel)
    await bob.subscribe(channel)
    await bob.ok("unsubscribe", {"channel": channel})
    await alice.sync()
    assert alice.take("join") == [] and alice.take("leave") == []


# ---------------------------------------------------------------------------- permissions


async def test_private_channel_needs_a_subscription_token(
    local_hub, local_client, uniq, make_token
):
    hub = await local_hub()
    channel = uniq("priv")
    client = await local_client(hub, "42")
    assert (await client.fail("subscribe", {"channel": channel}))["code"] == 103

    def sub_token(**claims: Any) -> str:
        claims.setdefault("channel", channel)
        return make_token(claims.pop("user", "42"), **claims)

    cases = {
        "forged": make_token("42", channel=channel, secret="another-secret-" + "x" * 32),
        "wrong-channel": sub_token(channel=uniq("priv")),
        "wrong-user": sub_token(user="17"),
        "no-channel-claim": make_token("42"),
        "garbage": "abc",
    }
    for name, token in cases.items():
        error = await client.fail("subscribe", {"channel": channel, "token": token})
        assert error["code"] == 103, name
    error = await client.fail("subscribe", {"channel": channel, "token": 5})
    assert error["code"] == 107
    expired = sub_token(exp=int(time.time()) - 5)
    error = await client.fail("subscribe", {"channel": channel, "token": expired})
    assert error["code"] == 109
    assert hub.channels == {}

    good = sub_token(info={"role": "admin"})
    await client.subscribe(channel, token=good)
    presence = await client.ok("presence", {"channel": channel})
    assert presence["clients"][client.client_id]["chan_info"] == {"role": "admin"}
    await hub.publish(channel, "secret")
    assert (await client.wait_push(channel=channel))["data"] == "secret"


async def test_channel_grants_in_the_connection_token(local_hub, local_client, uniq, make_token):
    hub = await local_hub()
    exact, team = uniq("priv"), "priv:team-"
    client = await local_client(hub, token=make_token("max", channels=[exact, team + "*"]))
    await client.subscribe(exact)
    await client.subscribe(team + "blue")
    await client.subscribe(team + "red")
    assert (await client.fail("subscribe", {"channel": uniq("priv")}))["code"] == 103
    assert (await client.fail("subscribe", {"channel": "priv:team"}))["code"] == 103


async def test_user_limited_channels(local_hub, local_client, uniq, make_token):
    hub = await local_hub()
    own, pair, other = "notif:#42", "notif:dm#17,42", "notif:#17"
    user42 = await local_client(hub, 42)
    user17 = await local_client(hub, "17")
    user99 = await local_client(hub, "99")
    await user42.subscribe(own)
    await user42.subscribe(pair)
    await user17.subscribe(pair)
    assert (await user42.fail("subscribe", {"channel": other}))["code"] == 103
    assert (await user99.fail("subscribe", {"channel": own}))["code"] == 103
    assert (await user99.fail("subscribe", {"channel": pair}))["code"] == 103
    # a subscription token for the connection's own user and that channel opens it
    token = make_token("99", channel=own)
    await user99.subscribe(own, token=token)
    await hub.publish(pair, "hello")
    assert (await user42.wait_push(channel=pair))["data"] == "hello"
    assert (await user17.wait_push(channel=pair))["data"] == "hello"
    # a token grant may open another user's channel too
    admin = await local_client(hub, token=make_token("admin", channels=["notif:*"]))
    await admin.subscribe(other)
    anonymous_channel = uniq("notif") + "#"
    assert (await user42.fail("subscribe", {"channel": anonymous_channel}))["code"] == 103


# -------------------------------------------------------------------------- on_publish hook


async def test_on_publish_hook_transforms_and_refuses(local_hub, local_client, uniq):
    calls: list[tuple[str, str, Any]] = []

    async def on_publish(session: Any, channel: str, data: Any) -> Any:
        calls.append((session.user, channel, data))
        if data == "forbidden":
            raise HubError(103, "not that")
        if isinstance(data, dict):
            return {**data, "checked": True}
        return None  # keep the data as it is

    hub = await local_hub(on_publish=on_publish)
    channel = uniq("chat")
    writer, reader = await local_client(hub, "writer"), await local_client(hub, "reader")
    await writer.subscribe(channel)
    await reader.subscribe(channel)
    await writer.ok("publish", {"channel": channel, "data": {"text": "hi"}})
    assert (await reader.wait_push(channel=channel))["data"] == {"text": "hi", "checked": True}
    await writer.ok("publish", {"channel": channel, "data": "plain"})
    assert (await reader.wait_push(channel=channel))["data"] == "plain"
    error = await writer.fail("publish", {"channel": channel, "data": "forbidden"})
    assert error == {"code": 103, "message": "not that"}
    history = await reader.ok("history", {"channel": channel})
    assert [p["data"] for p in history["publications"]] == [
        {"text": "hi", "checked": True},
        "plain",
    ]
    assert [c[2] for c in calls] == [{"text": "hi"}, "plain", "forbidden"]
    await reader.sync()
    assert reader.take("publication") == []


async def test_on_subscribe_hook_sets_chan_info_or_refuses(local_hub, local_client, uniq):
    def on_subscribe(session: Any, channel: str, params: dict[str, Any]) -> Any:
        if channel.endswith("-closed"):
            raise HubError(103, "closed room")
        return {"seat": params.get("seat")}

    hub = await local_hub(on_subscribe=on_subscribe)
    client = await local_client(hub, "zed")
    channel = uniq("chat")
    await client.subscribe(channel, seat=7)
    presence = await client.ok("presence", {"channel": channel})
    assert presence["clients"][client.client_id]["chan_info"] == {"seat": 7}
    error = await client.fail("subscribe", {"channel": channel + "-closed"})
    assert error == {"code": 103, "message": "closed room"}
    assert list(hub.channels) == [channel]


@pytest.mark.parametrize("codec", ["json", "msgpack"])
async def test_unrepresentable_data_does_not_break_the_channel(
    local_hub, local_client, uniq, codec
):
    """A MessagePack client may publish what JSON cannot carry (bytes, NaN).

    Whatever the hub decides (refuse it, or deliver it to MessagePack subscribers only), the
    JSON subscribers of the channel must stay connected and keep getting publications, the
    other MessagePack subscribers must not lose it if it was accepted, and the channel's
    history must stay readable for JSON clients.
    """
    hub = await local_hub()
    channel = uniq("chat")
    json_sub = await local_client(hub, "json-sub")
    await json_sub.subscribe(channel)
    publisher = await local_client(hub, "mp-pub", codec="msgpack")
    other = await local_client(hub, "mp-sub", codec=codec)
    await publisher.subscribe(channel)
    await other.subscribe(channel)
    reply = await publisher.call("publish", {"channel": channel, "data": {"raw": b"\x00\xff"}})
    assert reply.get("error", {}).get("code") != 100, f"internal error: {reply}"
    if "result" in reply and codec == "msgpack":
        assert (await other.wait_push(channel=channel))["data"] == {"raw": b"\x00\xff"}
    await json_sub.ok("history", {"channel": channel})  # must not end the connection
    await publisher.ok("publish", {"channel": channel, "data": "after"})
    for client in (json_sub, other):
        pushes = await client.publications(channel, 1)
        while pushes[-1]["data"] != "after":
            pushes += await client.publications(channel, 1)
    assert not json_sub.closed
