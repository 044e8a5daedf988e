"""The public seams of the asyncio bindings, on real loopback sockets.

* ``Server.attach(..., request=...)``: a request head parsed elsewhere is handed over as it is
  (not re-serialised and parsed again), and the handshake checks still run on it.
* one definition of the request head limits (:class:`HeadLimits`).
* what ``broadcast()`` and the hub's WebSocket transport use: ``send_prepared`` (one frame
  for many connections), ``flush``, ``writing_paused`` (the slow-reader check), ``failure``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, cast

import httptools
import pytest

import pulsewire
from pulsewire.protocol.frames import PreparedFrame
from pulsewire.protocol.handshake import Headers, HeadLimits, Request, ServerHandshake

TIMEOUT = 5
HOST = "127.0.0.1"


seen_requests: list[Any] = []


async def echo(ws: Any) -> None:
    seen_requests.append(ws.request)
    async for message in ws:
        await ws.send(message)


class _Head:
    """httptools callbacks: the request head, and where it ended."""

    def __init__(self) -> None:
        self.target = b""
        self.headers: list[tuple[str, str]] = []

    def on_url(self, url: bytes) -> None:
        self.target += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.decode("latin-1"), value.decode("latin-1")))


class FrontDoor(asyncio.Protocol):
    """A minimal HTTP server that parses the upgrade head itself, then hands the connection
    and the parsed :class:`Request` to a WebSocket server."""

    def __init__(self, ws_server: pulsewire.Server, handed: list[Request]) -> None:
        self.ws_server = ws_server
        self.handed = handed
        self.head = _Head()
        self.parser = httptools.HttpRequestParser(self.head)
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            trailing = data[exc.args[0] :]
        else:
            return
        request = Request(
            self.parser.get_method().decode(),
            self.head.target.decode("latin-1"),
            self.parser.get_http_version(),
            Headers(self.head.headers),
        )
        self.handed.append(request)
        assert self.transport is not None
        self.ws_server.attach(self.transport, trailing, request=request)


@pytest.fixture
async def front_door() -> AsyncIterator[Callable[..., Awaitable[tuple[Any, str, list[Request]]]]]:
    servers: list[Any] = []
    ws_servers: list[pulsewire.Server] = []

    async def start(**options: Any) -> tuple[Any, str, list[Request]]:
        ws_server = pulsewire.Server(echo, None, None, **options)
        ws_servers.append(ws_server)
        handed: list[Request] = []
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: FrontDoor(ws_server, handed), HOST, 0)
        servers.append(server)
        port = server.sockets[0].getsockname()[1]
        return ws_server, f"ws://{HOST}:{port}/", handed

    yield start
    for ws_server in ws_servers:
        ws_server.close()
        await asyncio.wait_for(ws_server.wait_closed(), 15)
    for server in servers:
        server.close()
        await server.wait_closed()


async def test_attach_takes_a_parsed_request(front_door: Any) -> None:
    # The WebSocket server's own head limits are far below this request's head: it is
    # accepted because the head was parsed (within its own limits) by the front door, once.
    seen_requests.clear()
    ws_server, url, handed = await front_door(head_limits=HeadLimits(max_head=200))
    headers = [("X-Padding", "p" * 400)]
    async with pulsewire.connect(url + "chat?room=1", additional_headers=headers) as ws:
        await ws.send("hello")
        assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "hello"
    (request,) = handed
    # The very object parsed by the front door reached the connection, with the peer's
    # address filled in by the handshake.
    assert request.path == "/chat"
    assert request.remote_address == HOST
    assert request.secure is False
    assert seen_requests == [request] and seen_requests[0] is request
    assert ws_server.handshakes == 1


async def test_frames_sent_with_the_head_are_not_lost(front_door: Any) -> None:
    _, url, _ = await front_door()
    reader, writer = await asyncio.open_connection(*url[5:-1].split(":"))
    key = "dGhlIHNhbXBsZSBub25jZQ=="
    head = (
        f"GET / HTTP/1.1\r\nHost: {HOST}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()
    mask = b"\x01\x02\x03\x04"
    payload = bytes(b ^ mask[i % 4] for i, b in enumerate(b"early"))
    writer.write(head + b"\x81\x85" + mask + payload)  # one write: head and a frame
    response = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
    assert response.startswith(b"HTTP/1.1 101")
    frame = await asyncio.wait_for(reader.readexactly(7), TIMEOUT)
    assert frame == b"\x81\x05early"
    writer.close()


async def test_an_attached_request_is_still_checked(front_door: Any) -> None:
    ws_server, url, _ = await front_door()
    reader, writer = await asyncio.open_connection(*url[5:-1].split(":"))
    # No Sec-WebSocket-Key: refused by the handshake checks, after the hand-over.
    writer.write(
        f"GET / HTTP/1.1\r\nHost: {HOST}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    response = await asyncio.wait_for(reader.read(), TIMEOUT)
    assert response.startswith(b"HTTP/1.1 400")
    assert ws_server.refusals == {400: 1}
    writer.close()


def test_head_limits_have_one_definition() -> None:
    from pulsewire.server.http import HttpLimits

    defaults = HeadLimits()
    assert (defaults.max_target, defaults.max_headers, defaults.max_head) == (8192, 100, 16384)
    front = HttpLimits()
    assert (front.max_target, front.max_headers, front.max_head) == (
        defaults.max_target,
        defaults.max_headers,
        defaults.max_head,
    )
    assert ServerHandshake().limits == defaults
    # The old keywords still work, and override the dataclass's fields.
    handshake = ServerHandshake(limits=HeadLimits(max_headers=7), max_header_bytes=999)
    assert handshake.limits == HeadLimits(max_headers=7, max_head=999)
    server = pulsewire.Server(echo, max_request_line=100)
    assert server.head_limits == HeadLimits(max_target=100)


async def test_the_client_keeps_the_request_it_sent(echo_server: str) -> None:
    async with pulsewire.connect(echo_server + "?x=1", origin="http://o.example") as ws:
        request = ws.request
        assert request is not None
        assert request.target == "/?x=1"
        assert request.headers.get("Origin") == "http://o.example"
        assert request.headers.get("Sec-WebSocket-Version") == "13"


# ------------------------------------------------------------ the connection's public API


def holding() -> tuple[list[Any], Any]:
    """A handler that keeps every server connection in a list until its client leaves."""
    held: list[Any] = []

    async def hold(ws: Any) -> None:
        held.append(ws)
        await ws.wait_closed()

    return held, hold


async def wait_for(predicate: Callable[[], bool]) -> None:
    for _ in range(500):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached")


async def test_a_prepared_frame_goes_to_several_connections(start_server: Any) -> None:
    held, hold = holding()
    _, url = await start_server(hold, compression="deflate")
    clients = [await pulsewire.connect(url, compression=None) for _ in range(3)]
    clients.append(await pulsewire.connect(url))  # this one compresses
    try:
        await wait_for(lambda: len(held) == 4)
        text = "prepared " * 50
        frame = PreparedFrame(text)
        binary = PreparedFrame(b"\x00\x01")
        for conn in held:
            conn.send_prepared(frame)  # queued: written at the end of the loop iteration
            conn.send_prepared(binary, now=True)  # written now, with what was queued
            assert conn.buffered_amount == 0 or conn.writing_paused
        for ws in clients:
            assert await asyncio.wait_for(ws.recv(), TIMEOUT) == text
            assert await asyncio.wait_for(ws.recv(), TIMEOUT) == b"\x00\x01"
        assert [ws.extensions for ws in clients] == ["", "", "", "permessage-deflate"]
        await clients[0].close()
        await wait_for(lambda: not held[0].open)
        with pytest.raises(pulsewire.ConnectionClosed):
            held[0].send_prepared(frame)
    finally:
        for ws in clients:
            await ws.close()


async def test_a_slow_reader_is_seen_and_skipped(start_server: Any, raw_client: Any) -> None:
    held, hold = holding()
    server, _ = await start_server(hold, write_limit=4096)
    slow = await raw_client(server.port, rcvbuf=4096)  # never reads
    await wait_for(lambda: len(held) == 1)
    slow_conn = held[0]
    fast = await pulsewire.connect(f"ws://{HOST}:{server.port}/")
    try:
        await wait_for(lambda: len(held) == 2)
        assert not slow_conn.writing_paused
        chunk = PreparedFrame(b"x" * 65536)
        for _ in range(200):
            if slow_conn.writing_paused:
                break
            slow_conn.send_prepared(chunk, now=True)
            await asyncio.sleep(0)
        assert slow_conn.writing_paused
        assert slow_conn.buffered_amount > 0
        assert pulsewire.broadcast(held, "news") == 1  # the slow one is skipped
        assert await asyncio.wait_for(fast.recv(), TIMEOUT) == "news"
    finally:
        await fast.close()
        await slow.close()


async def test_failure_says_why_this_side_failed(start_server: Any, raw_client: Any) -> None:
    held, hold = holding()
    server, url = await start_server(hold)
    bad = await raw_client(server.port)
    await wait_for(lambda: len(held) == 1)
    assert held[0].failure is None
    await bad.send_frame(0x3, b"")  # a reserved opcode: the server fails the connection
    await wait_for(lambda: held[0].closed)
    failure = held[0].failure
    assert failure is not None and failure.code == 1002
    # A normal close is no failure.
    async with pulsewire.connect(url):
        await wait_for(lambda: len(held) == 2)
    await held[1].wait_closed()
    assert held[1].failure is None and held[1].close_code == 1000
