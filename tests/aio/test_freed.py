"""A connection that ended is freed by reference counting, whatever ended it.

The garbage collector is disabled for each test (``no_gc``): a server-side object kept alive by
a reference cycle (a stored exception's traceback holding the handler's frame, a future
holding an exception raised through the frame that awaits it, a timer, a callback) stays
alive, and the weak reference to it with it. Nothing here calls ``gc.collect()``.
"""

from __future__ import annotations

import asyncio
import gc
import socket
import struct
import weakref
import zlib
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest

import pulsewire
from pulsewire.aio.budget import BudgetLimits, Budgets

TIMEOUT = 10.0
MiB = 2**20
RawClient = Any  # tests/conftest.py's RawClient, from the raw_client fixture


@pytest.fixture
def no_gc() -> Iterator[None]:
    gc.collect()  # start clean: what follows must go without the collector
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


class Tracked:
    """Weak references to the server-side objects of every connection a handler sees."""

    def __init__(self) -> None:
        self.refs: list[tuple[str, weakref.ref[Any]]] = []
        self.seen = asyncio.Event()

    def track(self, ws: Any) -> None:
        self.refs.append(("ServerConnection", weakref.ref(ws)))
        self.refs.append(("protocol.Connection", weakref.ref(ws._proto)))
        self.seen.set()

    def alive(self) -> list[str]:
        return [name for name, ref in self.refs if ref() is not None]

    async def wait_freed(self) -> None:
        """Until every tracked object is gone (by reference counting: the GC is off)."""
        assert self.refs, "no connection was tracked"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + TIMEOUT
        while self.alive() and loop.time() < deadline:
            await asyncio.sleep(0.01)
        alive = self.alive()
        assert not alive, f"still alive without the garbage collector: {alive}"


def bomb(mib: int) -> bytes:
    """A raw deflate stream of ``mib`` MiB of zeros, about 1 KB per MiB."""
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    zeros = bytes(MiB)
    first = comp.compress(zeros) + comp.flush(zlib.Z_SYNC_FLUSH)
    steady = comp.compress(zeros) + comp.flush(zlib.Z_SYNC_FLUSH)
    return (first + steady * (mib - 1))[:-4]


async def connect(raw_client: Any, port: int, path: str = "/", *, deflate: bool = False) -> Any:
    headers = [("Sec-WebSocket-Extensions", "permessage-deflate")] if deflate else []
    return await raw_client(port, path, headers)


def reset(client: RawClient) -> None:
    """Vanish: close with an RST (SO_LINGER 0), no Close frame, no FIN."""
    sock = client.writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.writer.transport.abort()


async def echo_once(client: RawClient) -> None:
    await client.send_frame(0x1, b"hello")
    frame = await client.recv_frame()
    assert frame is not None and frame.payload == b"hello"


# Each ending: what the peer does, given a fresh connection on the server's "/" (echo) route.
# They all end with the server having closed or lost the TCP connection.


async def clean_close_by_client(client: RawClient, server: Any) -> None:
    await echo_once(client)
    await client.send_close(1000)
    frames = await client.recv_until_close()
    assert frames[-1].close_code == 1000
    assert await client.at_eof()


async def protocol_error(client: RawClient, server: Any) -> None:
    await client.send_frame(0x1, b"unmasked", mask=False)
    assert (await client.recv_until_close())[-1].close_code == 1002
    assert await client.at_eof()


async def invalid_utf8(client: RawClient, server: Any) -> None:
    await client.send_frame(0x1, b"ok", fin=False)
    await client.send_frame(0x0, b"\xff\xfe")
    assert (await client.recv_until_close())[-1].close_code == 1007


async def message_too_big(client: RawClient, server: Any) -> None:
    await client.send_frame(0x2, bytes(MiB + 1))
    assert (await client.recv_until_close())[-1].close_code == 1009


async def keepalive_timeout(client: RawClient, server: Any) -> None:
    # Pings are never answered: the server gives up with 1011 and closes.
    frames = await client.recv_until_close(TIMEOUT)
    assert frames[-1].close_code == 1011
    assert await client.at_eof()


async def peer_resets(client: RawClient, server: Any) -> None:
    await echo_once(client)
    reset(client)


async def peer_half_closes(client: RawClient, server: Any) -> None:
    await echo_once(client)
    client.writer.write_eof()
    assert await client.at_eof()


async def server_shuts_down(client: RawClient, server: Any) -> None:
    await echo_once(client)
    server.close()
    assert (await client.recv_until_close())[-1].close_code == 1001
    await client.send_close(1001)
    assert await client.at_eof()


async def server_shuts_down_unanswered(client: RawClient, server: Any) -> None:
    # The Close is never answered: the close timeout aborts the connection.
    await echo_once(client)
    server.close()
    assert (await client.recv_until_close())[-1].close_code == 1001
    assert await client.at_eof(TIMEOUT)


ENDINGS: dict[str, Callable[[RawClient, Any], Awaitable[None]]] = {
    "clean close (client first)": clean_close_by_client,
    "protocol error 1002": protocol_error,
    "invalid UTF-8 1007": invalid_utf8,
    "message too big 1009": message_too_big,
    "keepalive timeout 1011": keepalive_timeout,
    "peer resets (RST)": peer_resets,
    "peer half-closes (EOF)": peer_half_closes,
    "server shutdown": server_shuts_down,
    "server shutdown, Close unanswered (close timeout)": server_shuts_down_unanswered,
}

OPTIONS_NO_SIZE: dict[str, Any] = {"ping_interval": None, "close_timeout": 0.5, "open_timeout": 0.5}
OPTIONS: dict[str, Any] = {"max_size": MiB, **OPTIONS_NO_SIZE}


def coroutine_echo(tracked: Tracked) -> Any:
    async def echo(ws: Any) -> None:
        tracked.track(ws)
        async for message in ws:
            await ws.send(message)

    return echo


def listener_echo(tracked: Tracked) -> Any:
    class Echo(pulsewire.Listener):
        def on_open(self, ws: Any) -> None:
            tracked.track(ws)

        def on_message(self, ws: Any, message: Any) -> None:
            ws.send_nowait(message)

    return Echo


@pytest.mark.parametrize("mode", [coroutine_echo, listener_echo], ids=["coroutine", "listener"])
@pytest.mark.parametrize("ending", list(ENDINGS), ids=list(ENDINGS))
async def test_a_connection_is_freed_by_reference_counting(
    no_gc: None, start_server: Any, raw_client: Any, mode: Any, ending: str
) -> None:
    tracked = Tracked()
    options = dict(OPTIONS)
    if ending.startswith("keepalive"):
        options.update(ping_interval=0.2, ping_timeout=0.2)
    server, _ = await start_server(mode(tracked), **options)
    client = await connect(raw_client, server.port)
    await asyncio.wait_for(tracked.seen.wait(), TIMEOUT)
    await ENDINGS[ending](client, server)
    await tracked.wait_freed()
    assert server.budgets.addresses == 0  # the memory account went with the connection


async def test_after_a_decompression_bomb(no_gc: None, start_server: Any, raw_client: Any) -> None:
    tracked = Tracked()
    server, _ = await start_server(coroutine_echo(tracked), **OPTIONS)
    client = await connect(raw_client, server.port, deflate=True)
    await asyncio.wait_for(tracked.seen.wait(), TIMEOUT)
    await client.send_frame(0x2, bomb(64), rsv1=True)
    assert (await client.recv_until_close())[-1].close_code == 1009
    await tracked.wait_freed()


async def test_after_an_opening_handshake_timeout(
    no_gc: None, start_server: Any, raw_client: Any
) -> None:
    server, _ = await start_server(coroutine_echo(Tracked()), **OPTIONS)
    raw = await raw_client(server.port, handshake=False)
    await raw.send_raw(b"GET / HTTP/1.1\r\n")  # and nothing more
    await asyncio.wait_for(tracked_connection_appears(server), TIMEOUT)
    ref = weakref.ref(next(iter(server.connections)))
    assert (await raw.read_head()).status == 408
    assert await raw.at_eof()
    await wait_dead(ref)


async def test_after_a_refused_handshake(no_gc: None, start_server: Any, raw_client: Any) -> None:
    server, _ = await start_server({"/": coroutine_echo(Tracked())}, **OPTIONS)
    raw = await raw_client(server.port, handshake=False)
    await asyncio.wait_for(tracked_connection_appears(server), TIMEOUT)
    ref = weakref.ref(next(iter(server.connections)))
    await raw.send_raw(raw.request_bytes("/nowhere", key="dGhlIHNhbXBsZSBub25jZQ=="))
    assert (await raw.read_head()).status == 404
    assert await raw.at_eof()
    await wait_dead(ref)


async def test_when_the_handler_returns_or_fails(
    no_gc: None, start_server: Any, raw_client: Any
) -> None:
    tracked = Tracked()

    async def bye(ws: Any) -> None:
        tracked.track(ws)
        await ws.send(await ws.recv())

    async def fails(ws: Any) -> None:
        tracked.track(ws)
        await ws.recv()
        raise RuntimeError("handler bug")

    server, _ = await start_server({"/bye": bye, "/fails": fails}, **OPTIONS)
    for path, code in (("/bye", 1000), ("/fails", 1011)):
        client = await connect(raw_client, server.port, path)
        await client.send_frame(0x1, b"x")
        frames = await client.recv_until_close()
        assert frames[-1].close_code == code
        await client.send_close(code)
        assert await client.at_eof()
        await client.close()
    # The failing handler's exception is logged with its traceback: the logging capture of
    # the test runner may keep that record (and the frames in it) until the test ends.
    del tracked.refs[2:]
    await tracked.wait_freed()


async def test_when_the_handler_waits_for_a_pong_or_a_drain(
    no_gc: None, start_server: Any, raw_client: Any
) -> None:
    tracked = Tracked()
    outcome: list[str] = []

    async def pinger(ws: Any) -> None:
        tracked.track(ws)
        try:
            await ws.ping()
        except pulsewire.ConnectionClosed as exc:
            outcome.append(f"ping: {exc.code}")

    async def flooder(ws: Any) -> None:
        tracked.track(ws)
        try:
            while True:  # the client never reads: send() ends up waiting for the drain
                await ws.send(bytes(65536))
        except pulsewire.ConnectionClosed as exc:
            outcome.append(f"send: {exc.code}")

    server, _ = await start_server({"/ping": pinger, "/flood": flooder}, **OPTIONS)
    for path in ("/ping", "/flood"):
        tracked.seen.clear()
        client = await connect(raw_client, server.port, path)
        await asyncio.wait_for(tracked.seen.wait(), TIMEOUT)
        if path == "/flood":
            await wait_paused_writing(server)
        reset(client)
    await tracked.wait_freed()
    assert sorted(outcome) == ["ping: 1006", "send: 1006"]


async def test_when_over_its_memory_budget(no_gc: None, start_server: Any, raw_client: Any) -> None:
    tracked = Tracked()

    class Amplifier(pulsewire.Listener):
        """Answers a message with 12 MiB: more than the kernel's socket buffers take at once
        (at most 4 MiB), and the connection's hard limit is 4 MiB."""

        def on_open(self, ws: Any) -> None:
            tracked.track(ws)

        def on_message(self, ws: Any, message: Any) -> None:
            for _ in range(12):
                ws.send_nowait(bytes(MiB))

    budgets = Budgets(BudgetLimits.for_message_size(64 * 1024))
    options = {**OPTIONS_NO_SIZE, "close_timeout": TIMEOUT}  # time to read 12 MiB
    server, _ = await start_server(Amplifier, budgets=budgets, max_size=64 * 1024, **options)
    client = await raw_client(server.port, rcvbuf=4096)
    await asyncio.wait_for(tracked.seen.wait(), TIMEOUT)
    await client.send_frame(0x1, b"go")
    close = (await client.recv_until_close(TIMEOUT))[-1]
    assert (close.close_code, close.close_reason) == (1013, "over its memory budget")
    assert await client.at_eof(TIMEOUT)
    await tracked.wait_freed()
    assert budgets.exceeded == {"connection": 1, "address": 0}


async def tracked_connection_appears(server: Any) -> None:
    while not server.connections:
        await asyncio.sleep(0.01)


async def wait_paused_writing(server: Any) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + TIMEOUT
    while loop.time() < deadline:
        if any(ws.buffered_amount > 65536 for ws in server.connections):
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the server's output never backed up")


async def wait_dead(ref: weakref.ref[Any]) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + TIMEOUT
    while ref() is not None and loop.time() < deadline:
        await asyncio.sleep(0.01)
    assert ref() is None, "the connection is still alive without the garbage collector"
