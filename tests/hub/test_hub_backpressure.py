"""A hub client that reads normally is never stuck by the server's backpressure.

A server connection stops reading while its output is backed up: a client receiving a heavy
fan-out while it sends commands has its commands wait in TCP buffers until it has read its
pushes, then they are answered. Nothing deadlocks, and nothing is lost.

End to end on purpose: what is tested is the WebSocket connection's flow control (TCP
windows, pause_writing, the memory budget) under a hub fan-out, which only real sockets have.
The session-level slow-consumer policy is tested one layer down in test_hub_server_side.py.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest

from pulsewire.aio.server import ServerConnection
from pulsewire.hub import ChannelOptions

from .conftest import build_config

TIMEOUT = 30.0


async def test_commands_are_answered_during_a_heavy_fan_out(
    hub_server: Any, hub_client: Any, uniq: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    pauses: list[int] = []
    pause_writing = ServerConnection.pause_writing

    def counted(self: ServerConnection) -> None:
        pauses.append(1)
        pause_writing(self)

    monkeypatch.setattr(ServerConnection, "pause_writing", counted)
    config = build_config(
        client_queue_max_bytes=8 << 20,  # the subscriber is slow on purpose, not cut
        client_commands_per_second=10_000.0,
        client_commands_burst=10_000.0,
        namespaces={"feed": ChannelOptions()},
    )
    server = await hub_server(config)
    channel = uniq("feed")
    # A small receive window: the client reads all the time, but slower than the hub writes.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", server.port))
    client = await hub_client(server, "reader", sock=sock, compression=None)
    await client.subscribe(channel)
    hub = server.hub
    blob = "x" * 16_000
    publications = 400  # 6.4 MB: far more than the write buffer's high-water mark (64 KiB)

    async def publish() -> None:
        for seq in range(publications):
            await hub.publish(channel, {"seq": seq, "blob": blob})
            if seq % 20 == 0:
                await asyncio.sleep(0)  # let the loop write meanwhile

    async def commands() -> int:
        answered = 0
        for _ in range(200):
            assert await client.ok("ping") == {}
            answered += 1
        return answered

    publishing = asyncio.ensure_future(publish())
    answered = await asyncio.wait_for(commands(), TIMEOUT)
    await asyncio.wait_for(publishing, TIMEOUT)
    assert answered == 200
    assert pauses, "the output never backed up: the test did not test the pause"
    seqs: list[int] = []
    while len(seqs) < publications:
        push = await client.wait_push("publication", timeout=TIMEOUT)
        seqs.append(push["data"]["seq"])
    assert seqs == list(range(publications))
    (ws,) = server.websocket.connections
    assert server.budgets.exceeded == {"connection": 0, "address": 0}
    assert ws.open
