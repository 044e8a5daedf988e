"""End to end: the HTTP API (/api/*) against a hub with real WebSocket clients.

The hub logic behind these calls is tested one layer down (test_hub_channels.py,
test_hub_history.py...); these stay end to end because they test the API layer itself:
request parsing (e.g. NaN, which Python's JSON parser accepts), status codes, result shapes
and error mapping (102 -> 404, 108 -> 503...), and that what it publishes reaches clients.
"""

from __future__ import annotations


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


async def test_presence_via_http_api(hub_server, hub_client, uniq, api):
    server = await hub_server()
    channel, locked, plain = uniq("chat"), uniq("locked"), uniq("ro")
    client = await hub_client(server, "cy")
    for name in (channel, locked, plain):
        await client.subscribe(name)
    status, body = await api(server, "presence_stats", {"channel": channel})
    assert (status, body) == (200, {"result": {"num_clients": 1, "num_users": 1}})
    status, body = await api(server, "presence", {"channel": channel})
    assert status == 200 and list(body["result"]["clients"]) == [client.client_id]
    # the server API may always look, even where clients may not
    status, body = await api(server, "presence", {"channel": locked})
    assert status == 200 and client.client_id in body["result"]["clients"]
    status, body = await api(server, "presence", {"channel": plain})
    assert status == 503 and body["error"]["code"] == 108


async def test_history_via_http_api(hub_server, hub_client, uniq, api):
    server = await hub_server()
    client = await hub_client(server, "cy")
    small, plain, locked = uniq("small"), uniq("ro"), uniq("locked")  # small: history_size 3
    await client.subscribe(small)
    for n in range(1, 6):
        await server.hub.publish(small, n)
    status, body = await api(server, "history", {"channel": small, "limit": 1, "reverse": True})
    assert status == 200
    assert body["result"]["publications"] == [{"data": 5, "offset": 5}]
    status, body = await api(server, "history", {"channel": plain})
    assert status == 503 and body["error"]["code"] == 108
    status, body = await api(server, "history", {"channel": small, "limit": -1})
    assert status == 400
    status, body = await api(server, "history", {"channel": locked})
    assert status == 200  # the server API may read any history


async def test_disconnect_via_http_api(hub_server, hub_client, api):
    server = await hub_server()
    bob = await hub_client(server, "bob")
    status, body = await api(server, "disconnect", {"user": "bob", "code": 4001, "reason": "go"})
    assert (status, body) == (200, {"result": {}})
    assert (await bob.wait_closed()) == (4001, "go")
    assert server.hub.users == {}


async def test_disconnect_api_validation(hub_server, api):
    server = await hub_server()
    for params in ({"user": "x", "code": 1000}, {"user": "x", "code": "4000"}, {"code": 4000}):
        status, body = await api(server, "disconnect", params)
        assert status == 400 and body["error"]["code"] == 107, params
    status, _ = await api(server, "disconnect", {"user": "nobody-here"})
    assert status == 200


async def test_disconnect_with_a_long_non_ascii_reason(hub_server, hub_client, api):
    """Close reasons are cut to fit a Close frame (123 bytes of UTF-8), not refused."""
    server = await hub_server()
    client = await hub_client(server, "zoe")
    reason = "é" * 100  # 100 characters, 200 bytes
    status, body = await api(server, "disconnect", {"user": "zoe", "code": 4000, "reason": reason})
    assert (status, body) == (200, {"result": {}})
    code, got = await client.wait_closed()
    assert code == 4000
    assert got and reason.startswith(got) and len(got.encode()) <= 123


async def test_unsubscribe_via_http_api(hub_server, hub_client, api, uniq):
    server = await hub_server()
    channel = uniq("chat")
    bob = await hub_client(server, "bob")
    await bob.subscribe(channel)
    status, body = await api(server, "unsubscribe", {"user": "bob", "channel": channel})
    assert (status, body) == (200, {"result": {}})
    assert (await bob.wait_push("unsubscribe", channel))["code"] == 2000
    status, _ = await api(server, "unsubscribe", {"user": "bob"})
    assert status == 400


async def test_subscribe_via_http_api(hub_server, hub_client, api, uniq):
    """A server-side subscription: a subscribe push, then publications; ended by unsubscribe."""
    server = await hub_server()
    channel, other = uniq("hist"), uniq("ro")
    ann1, ann2 = await hub_client(server, "ann"), await hub_client(server, "ann")
    status, body = await api(server, "subscribe", {"user": "ann", "channel": channel})
    assert (status, body) == (200, {"result": {}})
    for client in (ann1, ann2):
        push = await client.wait_push("subscribe", channel)
        assert (push["recoverable"], push["offset"]) == (True, 0)
    await api(server, "publish", {"channel": channel, "data": "hi"})
    for client in (ann1, ann2):
        assert (await client.wait_push(channel=channel))["data"] == "hi"
    params = {"user": "ann", "channel": other, "client": ann2.client_id}
    assert (await api(server, "subscribe", params))[0] == 200
    assert await ann2.wait_push("subscribe", other) == {"push": "subscribe", "channel": other}
    assert (await api(server, "unsubscribe", params))[0] == 200
    assert (await ann2.wait_push("unsubscribe", other))["code"] == 2000
    await ann1.sync()
    assert ann1.take("subscribe", other) == []
    refusals = [
        ({"user": "ann", "channel": "nope:x"}, 404, 102),
        ({"user": "ann", "channel": "bad name"}, 400, 107),
        ({"user": "ann"}, 400, 107),
        ({"channel": channel}, 400, 107),
        ({"user": "ann", "channel": channel, "client": 7}, 400, 107),
    ]
    for params, status, code in refusals:
        answer = await api(server, "subscribe", params)
        assert (answer[0], answer[1]["error"]["code"]) == (status, code), params


async def test_send_via_http_api(hub_server, hub_client, api):
    server = await hub_server()
    a1 = await hub_client(server, "alice")
    bob = await hub_client(server, "bob")
    status, body = await api(server, "send", {"user": "bob", "data": [1, 2]})
    assert (status, body) == (200, {"result": {}})
    assert (await bob.wait_push("message"))["data"] == [1, 2]
    status, _ = await api(server, "send", {"client": a1.client_id, "data": None})
    assert status == 200
    assert (await a1.wait_push("message"))["data"] is None
    for client in (a1, bob):
        await client.sync()
    assert a1.take("message") == [] and bob.take("message") == []
    for params in ({"data": 1}, {"user": "bob", "client": "x", "data": 1}, {"user": "bob"}):
        status, body = await api(server, "send", params)
        assert status == 400, params


async def test_send_refuses_data_json_cannot_carry(hub_server, hub_client, api):
    """Like publications, ``send`` data must be JSON-representable: refused before delivery."""
    server = await hub_server()
    client = await hub_client(server, "mp", codec="msgpack")  # could carry NaN itself
    status, body = await api(server, "send", body=b'{"user": "mp", "data": {"x": NaN}}')
    assert status == 400 and body["error"]["code"] == 107
    await client.sync()
    assert client.take("message") == []


async def test_api_channels_and_info(hub_server, hub_client, api, uniq):
    server = await hub_server()
    one, two = uniq("ro"), uniq("chat")
    alice, bob = await hub_client(server, "alice"), await hub_client(server, "bob")
    await alice.subscribe(one)
    await alice.subscribe(two)
    await bob.subscribe(two)
    status, body = await api(server, "channels")
    assert (status, body) == (200, {"result": {"channels": {one: 1, two: 2}}})
    status, body = await api(server, "info")
    assert status == 200
    assert body["result"]["node"] == server.hub.node_id
    assert server.hub.node_id in body["result"]["nodes"]  # the node announces itself
