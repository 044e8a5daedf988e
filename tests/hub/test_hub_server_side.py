"""What the server side does to clients (disconnect, unsubscribe, send, close) and slow
consumers, one layer down: a hub and sessions on fake transports (tests/hub/fakes.py), a
slow reader played by the fake transport's ``buffered()``.

One slow-consumer test stays end to end (a real socket that stops reading): it shows what
only the WebSocket transport can, that its ``buffered()`` follows the socket's backlog and
that the 1013 Close frame reaches the client after what was queued before it. The HTTP
API's side (/api/disconnect, /api/unsubscribe, /api/send...) is in test_hub_api.py.
"""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any

from pulsewire.hub import Hub
from pulsewire.server.app import HubServer


async def test_disconnect_user(local_hub, local_client):
    hub = await local_hub()
    a1, a2 = await local_client(hub, "alice"), await local_client(hub, "alice")
    bob = await local_client(hub, "bob")
    await hub.disconnect_user("alice")
    for client in (a1, a2):
        code, reason = await client.wait_closed()
        assert code == 4502  # default: do not reconnect
        assert reason == "disconnected by the server"
    await bob.sync()
    assert not bob.closed
    await hub.disconnect_user("bob", 4001, "go")
    assert (await bob.wait_closed()) == (4001, "go")
    assert hub.users == {}


async def test_unsubscribe_user(local_hub, local_client, uniq):
    hub = await local_hub()
    channel, kept = uniq("chat"), uniq("ro")
    alice, bob = await local_client(hub, "alice"), await local_client(hub, "bob")
    for client in (alice, bob):
        await client.subscribe(channel)
    await alice.subscribe(kept)
    await hub.unsubscribe_user("alice", channel)
    push = await alice.wait_push("unsubscribe", channel)
    assert push == {
        "push": "unsubscribe",
        "channel": channel,
        "code": 2000,
        "reason": "unsubscribed by the server",
        "resubscribe": False,
    }
    assert (await bob.wait_push("leave", channel))["info"]["user"] == "alice"
    await hub.publish(channel, "after")
    await hub.publish(kept, "still")
    assert (await bob.wait_push(channel=channel))["data"] == "after"
    assert (await alice.wait_push(channel=kept))["data"] == "still"
    await alice.sync()
    assert alice.take("publication", channel) == []
    assert (await alice.fail("presence", {"channel": channel}))["code"] == 103
    await alice.subscribe(channel)  # may subscribe again


async def test_send_to_a_user_or_a_client(local_hub, local_client):
    hub = await local_hub()
    a1, a2 = await local_client(hub, "alice"), await local_client(hub, "alice")
    bob = await local_client(hub, "bob")
    await hub.send({"hello": "alice"}, user="alice")
    for client in (a1, a2):
        assert await client.wait_push("message") == {"push": "message", "data": {"hello": "alice"}}
    await hub.send("just you", client=a2.client_id)
    assert await a2.wait_push("message") == {"push": "message", "data": "just you"}
    await hub.send(None, client=a1.client_id)
    assert (await a1.wait_push("message"))["data"] is None
    for client in (a1, a2, bob):
        await client.sync()
    assert a1.take("message") == [] and a2.take("message") == [] and bob.take("message") == []


async def test_channels_lists_local_subscribers(local_hub, local_client, uniq):
    hub = await local_hub()
    one, two = uniq("ro"), uniq("chat")
    alice, bob = await local_client(hub, "alice"), await local_client(hub, "bob")
    await alice.subscribe(one)
    await alice.subscribe(two)
    await bob.subscribe(two)
    assert hub.channels == {one: 1, two: 2}
    await alice.close()
    assert hub.channels == {two: 1}


async def test_hub_close_disconnects_clients_with_4000(hub_config, local_hub, local_client):
    """Closing the hub tells clients to reconnect (elsewhere)."""
    hub = await local_hub(hub_config())
    client = await local_client(hub, "ned")
    await hub.close()
    code, _ = await client.wait_closed()
    assert code == 4000
    assert hub.sessions == {}


# ------------------------------------------------------------------------------ slow consumer


async def test_slow_consumer_is_disconnected_with_1013(local_hub, local_client, hub_config, uniq):
    closed: list[tuple[str, int]] = []

    def on_disconnect(session: Any, code: int, reason: str) -> None:
        closed.append((session.user, code))

    hub = await local_hub(hub_config(client_queue_max_bytes=1000), on_disconnect=on_disconnect)
    channel = uniq("hist")
    fast, slow = await local_client(hub, "fast"), await local_client(hub, "slow")
    for client in (fast, slow):
        await client.subscribe(channel)
    await hub.publish(channel, 1)
    slow.transport.pending = 1000  # at the limit: still delivered
    await hub.publish(channel, 2)
    assert [p["data"] for p in slow.take("publication")] == [1, 2]
    slow.transport.pending = 1001  # over it
    await hub.publish(channel, 3)
    assert slow.transport.closed is not None
    assert slow.transport.closed[0] == 1013 and "slow consumer" in slow.transport.closed[1]
    assert slow.take("publication") == []
    assert closed == [("slow", 1013)]
    assert hub.metrics.registry.get_sample_value("pulsewire_slow_consumer_disconnects_total") == 1
    assert [s.user for s in hub.sessions.values()] == ["fast"]
    await hub.publish(channel, 4)
    assert [p["data"] for p in await fast.publications(channel, 4)] == [1, 2, 3, 4]


async def test_slow_consumer_in_a_drop_channel_loses_publications_not_its_session(
    local_hub, local_client, hub_config, uniq
):
    hub = await local_hub(hub_config(client_queue_max_bytes=1000))
    channel = uniq("lossy")  # slow_consumer = "drop"
    fast, slow = await local_client(hub, "fast"), await local_client(hub, "slow")
    for client in (fast, slow):
        await client.subscribe(channel)
    for n in range(1, 4):
        await hub.publish(channel, n)
    slow.transport.pending = 5000  # stops reading
    for n in range(4, 7):
        await hub.publish(channel, n)
    slow.transport.pending = 0  # reads again
    await hub.publish(channel, 7)
    assert slow.transport.closed is None and len(hub.sessions) == 2
    assert [p["offset"] for p in slow.take("publication")] == [1, 2, 3, 7]  # the gap shows
    assert [p["offset"] for p in await fast.publications(channel, 7)] == list(range(1, 8))
    assert hub.metrics.registry.get_sample_value("pulsewire_queue_drops_total") == 3


# End to end: the WebSocket transport's buffered() and the 1013 Close frame on a real socket;
# a HubServer closing its hub.


async def test_server_close_disconnects_clients_with_4000(hub_config, hub_client):
    """Closing the server closes the hub, which tells clients to reconnect (elsewhere)."""
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
    slow_consumers = "pulsewire_slow_consumer_disconnects_total"
    assert server.hub.metrics.registry.get_sample_value(slow_consumers) == 1
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
