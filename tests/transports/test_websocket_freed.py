"""A hub client's WebSocket session is freed by reference counting, whatever ended it.

With the garbage collector off, each ending must leave no :class:`Session`,
:class:`WebSocketTransport`, :class:`ServerConnection` or protocol core alive once the hub and
the server let go of them: no reference cycle among them, their timers, or a stored exception.
"""

from __future__ import annotations

import asyncio
import gc
import json
import socket
import struct
import weakref
import zlib
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest

from pulsewire.hub import ChannelOptions, Hub, HubConfig
from pulsewire.server.app import HubServer

HOST = "127.0.0.1"
WS_PATH = "/connection/websocket"
TIMEOUT = 10.0
# A failed connection may wait for its peer up to the server's close_timeout (10 s) before it
# lets go: wait longer than that for it to be freed, so the two 10 s bounds never race.
FREED_TIMEOUT = 25.0
MiB = 2**20


@pytest.fixture
def no_gc() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


class Tracked:
    """Weak references to each session's objects, taken when the hub opens the session."""

    def __init__(self, hub: Hub) -> None:
        self.refs: list[tuple[str, weakref.ref[Any]]] = []
        self.opened = asyncio.Event()
        original = hub.open_session

        def open_session(transport: Any, codec: Any, request: Any) -> Any:
            session = original(transport, codec, request)
            ws = transport.ws
            for name, obj in (
                ("Session", session),
                ("WebSocketTransport", transport),
                ("ServerConnection", ws),
                ("protocol.Connection", ws._proto),
            ):
                self.refs.append((name, weakref.ref(obj)))
            self.opened.set()
            return session

        hub.open_session = open_session  # type: ignore[method-assign]

    def alive(self) -> list[str]:
        return [name for name, ref in self.refs if ref() is not None]

    async def wait_freed(self) -> None:
        assert self.refs, "no session was opened"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + FREED_TIMEOUT
        while self.alive() and loop.time() < deadline:
            await asyncio.sleep(0.01)
        assert not self.alive(), f"still alive without the garbage collector: {self.alive()}"


def command(cid: int, method: str, **params: Any) -> bytes:
    return json.dumps({"id": cid, "method": method, "params": params}).encode()


async def connected(raw_client: Any, server: HubServer, **kw: Any) -> Any:
    client = await raw_client(server.port, WS_PATH, **kw)
    await client.send_frame(0x1, command(1, "connect"))
    reply = await client.recv_frame()
    assert reply is not None and b'"result"' in reply.payload, reply
    return client


async def close_code(client: Any) -> int | None:
    """The code of the server's Close frame; answers it, as a client does."""
    frames = await client.recv_until_close(TIMEOUT)
    if not frames or frames[-1].opcode != 0x8:
        return None
    code: int | None = frames[-1].close_code
    try:
        await client.send_close(code or 1000)
    except ConnectionError:
        pass  # the server failed the connection and closed TCP already
    return code


def bomb(mib: int) -> bytes:
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    zeros = bytes(MiB)
    first = comp.compress(zeros) + comp.flush(zlib.Z_SYNC_FLUSH)
    steady = comp.compress(zeros) + comp.flush(zlib.Z_SYNC_FLUSH)
    return (first + steady * (mib - 1))[:-4]


# Each ending gets the raw_client fixture, the server and its hub; it returns once the server
# has ended the connection (or the client vanished).


async def clean_close(raw_client: Any, server: HubServer) -> None:
    client = await connected(raw_client, server)
    await client.send_close(1000)
    assert await close_code(client) == 1000
    assert await client.at_eof()


async def invalid_token(raw_client: Any, server: HubServer) -> None:
    client = await raw_client(server.port, WS_PATH)
    await client.send_frame(0x1, command(1, "connect", token="not-a-token"))
    assert await close_code(client) == 4500


async def bad_request(raw_client: Any, server: HubServer) -> None:
    client = await raw_client(server.port, WS_PATH)
    await client.send_frame(0x1, b"this is not JSON")
    assert await close_code(client) == 4501


async def stale(raw_client: Any, server: HubServer) -> None:
    client = await raw_client(server.port, WS_PATH)  # and no connect command in time
    assert await close_code(client) == 4003


async def rate_limited(raw_client: Any, server: HubServer) -> None:
    client = await connected(raw_client, server)
    for i in range(2, 20):  # the burst is 5 messages
        await client.send_frame(0x1, command(i, "ping"))
    assert await close_code(client) == 1008


async def slow_consumer(raw_client: Any, server: HubServer) -> None:
    client = await connected(raw_client, server, rcvbuf=4096)  # and never reads again
    await client.send_frame(0x1, command(2, "subscribe", channel="news:x"))
    hub = server.hub
    loop = asyncio.get_running_loop()
    deadline = loop.time() + TIMEOUT
    while hub.sessions and loop.time() < deadline:
        await hub.publish("news:x", {"text": "x" * 4000})
        await asyncio.sleep(0)
    assert not hub.sessions, "the slow consumer was never disconnected"
    assert await close_code(client) == 1013


async def message_too_big(raw_client: Any, server: HubServer) -> None:
    client = await connected(raw_client, server)
    await client.send_frame(0x1, b"x" * (65536 + 1))
    assert await close_code(client) == 1009


async def deflate_bomb(raw_client: Any, server: HubServer) -> None:
    headers = [("Sec-WebSocket-Extensions", "permessage-deflate")]
    client = await raw_client(server.port, WS_PATH, headers)
    await client.send_frame(0x1, command(1, "connect"))
    reply = await client.recv_frame()  # compressed: its flag is enough
    assert reply is not None and reply.rsv1
    await client.send_frame(0x1, bomb(16), rsv1=True)
    assert await close_code(client) == 1009


async def protocol_error(raw_client: Any, server: HubServer) -> None:
    client = await connected(raw_client, server)
    await client.send_frame(0x1, command(2, "ping"), mask=False)
    assert await close_code(client) == 1002


async def peer_resets(raw_client: Any, server: HubServer) -> None:
    client = await connected(raw_client, server)
    sock = client.writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.writer.transport.abort()


async def server_shutdown(raw_client: Any, server: HubServer) -> None:
    client = await connected(raw_client, server)
    closing = asyncio.ensure_future(server.close())
    assert await close_code(client) == 4000
    await asyncio.wait_for(closing, TIMEOUT)


ENDINGS: dict[str, Callable[[Any, HubServer], Awaitable[None]]] = {
    "clean close": clean_close,
    "4500 invalid token": invalid_token,
    "4501 bad request": bad_request,
    "4003 no connect in time": stale,
    "1008 rate limit": rate_limited,
    "1013 slow consumer": slow_consumer,
    "1009 message too big": message_too_big,
    "1009 deflate bomb": deflate_bomb,
    "1002 protocol error": protocol_error,
    "peer resets (RST)": peer_resets,
    "server shutdown": server_shutdown,
}


@pytest.mark.parametrize("ending", list(ENDINGS), ids=list(ENDINGS))
async def test_a_hub_session_is_freed_by_reference_counting(
    no_gc: None, start_hub_server: Any, raw_client: Any, ending: str
) -> None:
    config = HubConfig(
        token_hmac_secret="freed-tests-secret-0123456789abcdef",
        allow_anonymous=True,
        connect_timeout=0.5,
        client_messages_per_second=1.0,
        client_messages_burst=5.0,
        client_queue_max_bytes=64 * 1024,
        namespaces={"news": ChannelOptions(allow_anonymous=True)},
    )
    hub = Hub(config)
    tracked = Tracked(hub)
    server = await start_hub_server(HubServer(hub, HOST, 0, web_root=None))
    await ENDINGS[ending](raw_client, server)
    assert tracked.opened.is_set()
    await tracked.wait_freed()
