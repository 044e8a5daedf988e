"""End to end: channels over real WebSockets (subscribe, publish, presence, permissions)."""

from __future__ import annotations

import time
from typing import Any

import pytest

from pulsewire.hub import ChannelOptions, HubError

# ------------------------------------------------------------------ subscribe / unsubscribe


async def test_subscribe_receive_unsubscribe(hub_server, hub_client, uniq):
    server = await hub_server()
    client = await hub_client(server, "ann")
    channel = uniq("ro")
    assert await client.subscribe(channel) == {}  # no history: an empty result
    assert server.hub.channels == {channel: 1}
    await server.hub.publish(channel, {"n": 1})
    push = await client.wait_push(channel=channel)
    assert push == {"push": "publication", "channel": channel, "data": {"n": 1}}
    assert await client.ok("unsubscribe", {"channel": channel}) == {}
    assert server.hub.channels == {}
    await server.hub.publish(channel, {"n": 2})
    await client.sync()
    assert client.take("publication") == []


async def test_subscribe_errors(hub_server, hub_client, uniq):
    server = await hub_server()
    client = await hub_client(server, "ben")
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
    hub_server, hub_client, hub_config, uniq
):
    config = hub_config(channel=ChannelOptions(allow_publish=True))
    server = await hub_server(config)
    client = await hub_client(server, "cat")
    channel = uniq()
    assert ":" not in channel
    await client.subscribe(channel)
    assert await client.ok("publish", {"channel": channel, "data": 1}) == {}
    assert (await client.wait_push(channel=channel))["data"] == 1


async def test_max_channels_per_connection(hub_server, hub_client, hub_config, uniq):
    server = await hub_server(hub_config(max_channels_per_connection=2))
    client = await hub_client(server, "dan")
    first, second = uniq("ro"), uniq("ro")
    await client.subscribe(first)
    await client.subscribe(second)
    error = await client.fail("subscribe", {"channel": uniq("ro")})
    assert error["code"] == 106
    await client.ok("unsubscribe", {"channel": first})
    await client.subscribe(uniq("ro"))  # room again


# --------------------------------------------------------------------------------- publish


async def test_client_publish_allowed(hub_server, hub_client, uniq, make_token):
    server = await hub_server()
    alice = await hub_client(server, token=make_token("alice", info={"name": "A"}))
    bob = await hub_client(server, "bob")
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


async def test_client_publish_to_history_channel_returns_position(hub_server, hub_client, uniq):
    server = await hub_server()
    client = await hub_client(server, "eve")
    channel = uniq("chat")
    sub = await client.subscribe(channel)
    first = await client.ok("publish", {"channel": channel, "data": 1})
    second = await client.ok("publish", {"channel": channel, "data": 2})
    assert first == {"offset": 1, "epoch": sub["epoch"]}
    assert second == {"offset": 2, "epoch": sub["epoch"]}
    pushes = await client.publications(channel, 2)
    assert [(p["offset"], p["data"]) for p in pushes] == [(1, 1), (2, 2)]


async def test_client_publish_denied(hub_server, hub_client, uniq):
    server = await hub_server()
    client = await hub_client(server, "fred")
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
    assert server.hub.metrics.publications._value.get() == 0


async def test_publish_via_http_api(hub_server, hub_client, api, uniq):
    server = await hub_server()
    client = await hub_client(server, "gil")
    plain, kept = uniq("ro"), uniq("hist")
    await client.subscribe(plain)
    sub = await client.subscribe(kept)
    status, body = await api(server, "publish", {"channel": plain, "data": {"a": 1}})
    assert (status, body) == (200, {"result": {}})
    status, body = await api(
        server, "publish", {"channel": kept, "data": "x", "tags": {"kind": "news"}}
    )
    assert (status, body) == (200, {"result": {"offset": 1, "epoch": sub["epoch"]}})
    assert await client.wait_push(channel=plain) == {
        "push": "publication",
        "channel": plain,
        "data": {"a": 1},
    }
    assert await client.wait_push(channel=kept) == {
        "push": "publication",
        "channel": kept,
        "data": "x",
        "offset": 1,
        "tags": {"kind": "news"},
    }
    # channels nobody subscribed to may be published to (and keep history)
    status, body = await api(server, "publish", {"channel": uniq("hist"), "data": 0})
    assert status == 200 and body["result"]["offset"] == 1
    status, body = await api(server, "publish", {"channel": "nope:x", "data": 0})
    assert status == 404 and body["error"]["code"] == 102


async def test_broadcast_via_http_api(hub_server, hub_client, api, uniq):
    server = await hub_server()
    first, second = await hub_client(server, "hal"), await hub_client(server, "ida")
    one, two, three = uniq("ro"), uniq("hist"), uniq("pub")
    await first.subscribe(one)
    await first.subscribe(two)
    sub = await second.subscribe(two)
    await second.subscribe(three)
    status, body = await api(
        server, "broadcast", {"channels": [one, two, "nope:x", three], "data": {"b": 1}}
    )
    assert status == 200
    responses = body["result"]["responses"]
    assert responses[0] == {"result": {}}
    assert responses[1] == {"result": {"offset": 1, "epoch": sub["epoch"]}}
    assert responses[2]["error"]["code"] == 102
    assert responses[3] == {"result": {}}
    for client, channels in ((first, (one, two)), (second, (two, three))):
        for channel in channels:
            assert (await client.wait_push(channel=channel))["data"] == {"b": 1}
    status, body = await api(server, "broadcast", {"channels": [], "data": 1})
    assert status == 400
    status, body = await api(server, "broadcast", {"channels": [one]})
    assert status == 400


# ------------------------------------------------------------------------ presence, join/leave


async def test_presence_and_presence_stats(hub_server, hub_client, uniq, make_token, api):
    server = await hub_server()
    channel = uniq("chat")
    a1 = await hub_client(server, token=make_token("alice", info={"n": 1}))
    a2 = await hub_client(server, token=make_token("alice", info={"n": 2}))
    b = await hub_client(server, "bob")
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
    status, body = await api(server, "presence_stats", {"channel": channel})
    assert (status, body) == (200, {"result": {"num_clients": 3, "num_users": 2}})
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
    status, body = await api(server, "presence", {"channel": channel})
    assert status == 200 and list(body["result"]["clients"]) == [b.client_id]


async def test_presence_errors(hub_server, hub_client, uniq, api):
    server = await hub_server()
    client = await hub_client(server, "cy")
    plain, locked = uniq("ro"), uniq("locked")
    error = await client.fail("presence", {"channel": plain})
    assert error["code"] == 103  # not subscribed
    await client.subscribe(plain)
    assert (await client.fail("presence", {"channel": plain}))["code"] == 108  # presence off
    assert (await client.fail("presence_stats", {"channel": plain}))["code"] == 108
    await client.subscribe(locked)
    assert (await client.fail("presence", {"channel": locked}))["code"] == 103  # not allowed
    assert (await client.fail("presence_stats", {"channel": locked}))["code"] == 103
    # the server API may always look
    status, body = await api(server, "presence", {"channel": locked})
    assert status == 200 and client.client_id in body["result"]["clients"]
    status, body = await api(server, "presence", {"channel": plain})
    assert status == 503 and body["error"]["code"] == 108


async def test_join_and_leave_pushes(hub_server, hub_client, uniq, make_token):
    server = await hub_server()
    channel = uniq("chat")
    alice = await hub_client(server, "alice")
    await alice.subscribe(channel)
    assert await alice.wait_push("join", channel) == {  # its own join comes too
        "push": "join",
        "channel": channel,
        "info": {"client": alice.client_id, "user": "alice"},
    }
    bob = await hub_client(server, token=make_token("bob", info={"color": "red"}))
    await bob.subscribe(channel)
    bob_info = {"client": bob.client_id, "user": "bob", "conn_info": {"color": "red"}}
    assert (await alice.wait_push("join", channel))["info"] == bob_info
    carl = await hub_client(server, "carl")
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


async def test_no_join_leave_without_the_option(hub_server, hub_client, uniq):
    server = await hub_server()
    channel = uniq("ro")
    alice, bob = await hub_client(server, "alice"), await hub_client(server, "bob")
    await alice.subscribe(channel)
    await bob.subscribe(channel)
    await bob.ok("unsubscribe", {"channel": channel})
    await alice.sync()
    assert alice.take("join") == [] and alice.take("leave") == []


# ---------------------------------------------------------------------------- permissions


async def test_private_channel_needs_a_subscription_token(hub_server, hub_client, uniq, make_token):
    server = await hub_server()
    channel = uniq("priv")
    client = await hub_client(server, "42")
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
    assert server.hub.channels == {}

    good = sub_token(info={"role": "admin"})
    await client.subscribe(channel, token=good)
    presence = await client.ok("presence", {"channel": channel})
    assert presence["clients"][client.client_id]["chan_info"] == {"role": "admin"}
    await server.hub.publish(channel, "secret")
    assert (await client.wait_push(channel=channel))["data"] == "secret"


async def test_channel_grants_in_the_connection_token(hub_server, hub_client, uniq, make_token):
    server = await hub_server()
    exact, team = uniq("priv"), "priv:team-"
    client = await hub_client(server, token=make_token("max", channels=[exact, team + "*"]))
    await client.subscribe(exact)
    await client.subscribe(team + "blue")
    await client.subscribe(team + "red")
    assert (await client.fail("subscribe", {"channel": uniq("priv")}))["code"] == 103
    assert (await client.fail("subscribe", {"channel": "priv:team"}))["code"] == 103


async def test_user_limited_channels(hub_server, hub_client, uniq, make_token):
    server = await hub_server()
    own, pair, other = "notif:#42", "notif:dm#17,42", "notif:#17"
    user42 = await hub_client(server, 42)
    user17 = await hub_client(server, "17")
    user99 = await hub_client(server, "99")
    await user42.subscribe(own)
    await user42.subscribe(pair)
    await user17.subscribe(pair)
    assert (await user42.fail("subscribe", {"channel": other}))["code"] == 103
    assert (await user99.fail("subscribe", {"channel": own}))["code"] == 103
    assert (await user99.fail("subscribe", {"channel": pair}))["code"] == 103
    # a subscription token for the connection's own user and that channel opens it
    token = make_token("99", channel=own)
    await user99.subscribe(own, token=token)
    await server.hub.publish(pair, "hello")
    assert (await user42.wait_push(channel=pair))["data"] == "hello"
    assert (await user17.wait_push(channel=pair))["data"] == "hello"
    # a token grant may open another user's channel too
    admin = await hub_client(server, token=make_token("admin", channels=["notif:*"]))
    await admin.subscribe(other)
    anonymous_channel = uniq("notif") + "#"
    assert (await user42.fail("subscribe", {"channel": anonymous_channel}))["code"] == 103


# -------------------------------------------------------------------------- on_publish hook


async def test_on_publish_hook_transforms_and_refuses(hub_server, hub_client, uniq):
    calls: list[tuple[str, str, Any]] = []

    async def on_publish(session: Any, channel: str, data: Any) -> Any:
        calls.append((session.user, channel, data))
        if data == "forbidden":
            raise HubError(103, "not that")
        if isinstance(data, dict):
            return {**data, "checked": True}
        return None  # keep the data as it is

    server = await hub_server(on_publish=on_publish)
    channel = uniq("chat")
    writer, reader = await hub_client(server, "writer"), await hub_client(server, "reader")
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


async def test_on_subscribe_hook_sets_chan_info_or_refuses(hub_server, hub_client, uniq):
    def on_subscribe(session: Any, channel: str, params: dict[str, Any]) -> Any:
        if channel.endswith("-closed"):
            raise HubError(103, "closed room")
        return {"seat": params.get("seat")}

    server = await hub_server(on_subscribe=on_subscribe)
    client = await hub_client(server, "zed")
    channel = uniq("chat")
    await client.subscribe(channel, seat=7)
    presence = await client.ok("presence", {"channel": channel})
    assert presence["clients"][client.client_id]["chan_info"] == {"seat": 7}
    error = await client.fail("subscribe", {"channel": channel + "-closed"})
    assert error == {"code": 103, "message": "closed room"}
    assert list(server.hub.channels) == [channel]


@pytest.mark.parametrize("codec", ["json", "msgpack"])
async def test_unrepresentable_data_does_not_break_the_channel(hub_server, hub_client, uniq, codec):
    """A MessagePack client may publish what JSON cannot carry (bytes, NaN).

    Whatever the hub decides (refuse it, or deliver it to MessagePack subscribers only), the
    JSON subscribers of the channel must stay connected and keep getting publications, the
    other MessagePack subscribers must not lose it if it was accepted, and the channel's
    history must stay readable for JSON clients.
    """
    server = await hub_server()
    channel = uniq("chat")
    json_sub = await hub_client(server, "json-sub")
    await json_sub.subscribe(channel)
    publisher = await hub_client(server, "mp-pub", codec="msgpack")
    other = await hub_client(server, "mp-sub", codec=codec)
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


async def test_api_publish_of_nan_does_not_poison_the_channel(hub_server, hub_client, api, uniq):
    """Python's JSON parser accepts NaN; the hub's JSON encoder does not (allow_nan=False).

    The API must refuse such data before it is stored and delivered, so that the channel's
    subscribers and its history stay usable.
    """
    server = await hub_server()
    channel = uniq("hist")
    client = await hub_client(server, "nan-watcher")
    await client.subscribe(channel)
    body = b'{"channel": "' + channel.encode() + b'", "data": {"x": NaN}}'
    status, answer = await api(server, "publish", body=body)
    assert status == 400 and answer["error"]["code"] == 107
    history = await client.ok("history", {"channel": channel})
    assert history["publications"] == [] and history["offset"] == 0
    status, answer = await api(server, "publish", {"channel": channel, "data": "ok"})
    assert status == 200 and answer["result"]["offset"] == 1
    assert (await client.wait_push(channel=channel))["data"] == "ok"
