"""End to end: what the server side does to clients (disconnect, unsubscribe, send), and
slow consumers."""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any

from pulsewire.hub.hub import Hub
from pulsewire.server.app import HubServer


async def test_disconnect_user(hub_server, hub_client, api):
    server = await hub_server()
    a1, a2 = await hub_client(server, "alice"), await hub_client(server, "alice")
    bob = await hub_client(server, "bob")
    await server.hub.disconnect_user("alice")
    for client in (a1, a2):
        code, reason = await client.wait_closed()
        assert code == 4502  # default: do not reconnect
        assert reason == "disconnected by the server"
    await bob.sync()
    assert not bob.closed
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


async def test_unsubscribe_user(hub_server, hub_client, api, uniq):
    server = await hub_server()
    channel, kept = uniq("chat"), uniq("ro")
    alice, bob = await hub_client(server, "alice"), await hub_client(server, "bob")
    for client in (alice, bob):
        await client.subscribe(channel)
    await alice.subscribe(kept)
    await server.hub.unsubscribe_user("alice", channel)
    push = await alice.wait_push("unsubscribe", channel)
    assert push == {
        "push": "unsubscribe",
        "channel": channel,
        "code": 2000,
        "reason": "unsubscribed by the server",
        "resubscribe": False,
    }
    assert (await bob.wait_push("leave", channel))["info"]["user"] == "alice"
    await server.hub.publish(channel, "after")
    await server.hub.publish(kept, "still")
    assert (await bob.wait_push(channel=channel))["data"] == "after"
    assert (await alice.wait_push(channel=kept))["data"] == "still"
    await alice.sync()
    assert alice.take("publication", channel) == []
    assert (await alice.fail("presence", {"channel": channel}))["code"] == 103
    await alice.subscribe(channel)  # may subscribe again
    status, body = await api(server, "unsubscribe", {"user": "bob", "channel": channel})
    assert (status, body) == (200, {"result": {}})
    assert (await bob.wait_push("unsubscribe", channel))["code"] == 2000
    status, _ = await api(server, "unsubscribe", {"user": "bob"})
    assert status == 400


async def test_send_to_a_user_or_a_client(hub_server, hub_client, api):
    server = await hub_server()
    a1, a2 = await hub_client(server, "alice"), await hub_client(server, "alice")
    bob = await hub_client(server, "bob")
    await server.hub.send({"hello": "alice"}, user="alice")
    for client in (a1, a2):
        assert await client.wait_push("message") == {"push": "message", "data": {"hello": "alice"}}
    await server.hub.send("just you", client=a2.client_id)
    assert await a2.wait_push("message") == {"push": "message", "data": "just you"}
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


async def test_server_close_disconnects_clients_with_4000(hub_config, hub_client):
    """Closing the hub tells clients to reconnect (elsewhere)."""
    hub = Hub(hub_config())
    server = HubServer(hub, "127.0.0.1", 0)
    await server.start()
    try:
        client = await hub_client(server, "ned")
        await asyncio.wait_for(server.close(), 5)
        code, _ = await client.wait_closed()
        assert code == 4000
    finally:
        if not hub.closing:
            await server.close()


# ------------------------------------------------------------------------------ slow consumer


def small_send_buffer_listener() -> socket.socket:
    """Accepted sockets inherit the listener's small send buffer: the kernel holds little, so
    the hub's own queue grows as soon as a client stops reading."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.setblocking(False)
    return listener


async def stalled_subscriber(server: Any, raw_client: Any, token: str, channel: str) -> Any:
    """A raw WebSocket client that connects, subscribes, then reads nothing."""
    slow = await raw_client(server.port, "/connection/websocket", rcvbuf=4096)
    commands = [
        {"id": 1, "method": "connect", "params": {"token": token}},
        {"id": 2, "method": "subscribe", "params": {"channel": channel}},
    ]
    for command in commands:
        await slow.send_frame(0x1, json.dumps(command).encode())
        frame = await slow.recv_frame()
        assert frame is not None and json.loads(frame.payload)["id"] == command["id"]
    return slow


async def test_slow_consumer_is_disconnected_others_keep_receiving(
    hub_server, hub_client, hub_config, make_token, raw_client, uniq
):
    closed: list[tuple[str, int]] = []

    def on_disconnect(session: Any, code: int, reason: str) -> None:
        closed.append((session.user, code))

    server = await hub_server(
        hub_config(client_queue_max_bytes=64 * 1024),
        sock=small_send_buffer_listener(),
        on_disconnect=on_disconnect,
    )
    channel = uniq("hist")
    fast = await hub_client(server, "fast", compression=None)
    await fast.subscribe(channel)
    slow = await stalled_subscriber(server, raw_client, make_token("slow"), channel)

    payload = "x" * 16384
    sent = 0
    while not closed and sent < 200:
        sent += 1
        await server.hub.publish(channel, {"n": sent, "pad": payload})
        assert (await fast.wait_push(channel=channel))["data"]["n"] == sent
    assert closed == [("slow", 1013)]
    assert sent < 200
    assert server.hub.metrics.slow_consumers._value.get() == 1
    assert [s.user for s in server.hub.sessions.values()] == ["fast"]
    await server.hub.publish(channel, {"n": "after"})
    assert (await fast.wait_push(channel=channel))["data"]["n"] == "after"

    # the slow client finds, after what was queued for it, a 1013 close frame (it may
    # reconnect and recover the rest from history)
    frames = await slow.recv_until_close(timeout=5)
    assert frames[-1].opcode == 0x8
    assert frames[-1].close_code == 1013
    assert "slow consumer" in frames[-1].close_reason
    data = [json.loads(f.payload) for f in frames[:-1]]
    assert [d["data"]["n"] for d in data] == list(range(1, len(data) + 1))
    await slow.close()


async def test_slow_consumer_in_a_drop_channel_loses_publications_not_its_session(
    hub_server, hub_client, hub_config, make_token, raw_client, uniq
):
    server = await hub_server(
        hub_config(client_queue_max_bytes=64 * 1024), sock=small_send_buffer_listener()
    )
    channel = uniq("lossy")  # slow_consumer = "drop"
    fast = await hub_client(server, "fast", compression=None)
    await fast.subscribe(channel)
    slow = await stalled_subscriber(server, raw_client, make_token("slow"), channel)
    metrics = server.hub.metrics

    payload = "x" * 16384
    sent = 0
    while metrics.queue_drops._value.get() < 3 and sent < 200:
        sent += 1
        await server.hub.publish(channel, {"n": sent, "pad": payload})
        assert (await fast.wait_push(channel=channel))["data"]["n"] == sent
    assert sent < 200
    assert len(server.hub.sessions) == 2  # still connected

    # reading again, it gets what was queued, then new publications; the offsets show the gap
    received: list[int] = []

    async def read_until_last() -> None:
        while True:
            frame = await slow.recv_frame()
            assert frame is not None and frame.opcode == 0x1
            message = json.loads(frame.payload)
            received.append(message["offset"])
            if message["data"]["n"] == "last":
                return

    reader = asyncio.ensure_future(read_until_last())
    session = next(s for s in server.hub.sessions.values() if s.user == "slow")
    for _ in range(500):  # the queue drains as the client reads
        if session.transport.buffered() == 0:
            break
        await asyncio.sleep(0.01)
    await server.hub.publish(channel, {"n": "last"})
    await asyncio.wait_for(reader, 5)
    assert received == sorted(received) and len(set(received)) == len(received)
    assert received[-1] == sent + 1
    assert len(received) < sent + 1  # some were dropped for this client only
    assert len(received) + metrics.queue_drops._value.get() == sent + 1
    await slow.close()


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


async def test_send_refuses_data_json_cannot_carry(hub_server, hub_client, api):
    """Like publications, ``send`` data must be JSON-representable: refused before delivery."""
    server = await hub_server()
    client = await hub_client(server, "mp", codec="msgpack")  # could carry NaN itself
    status, body = await api(server, "send", body=b'{"user": "mp", "data": {"x": NaN}}')
    assert status == 400 and body["error"]["code"] == 107
    await client.sync()
    assert client.take("message") == []
