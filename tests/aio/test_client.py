"""End-to-end tests of pulsewire.connect, against pulsewire servers and hand-written ones."""

from __future__ import annotations

import asyncio
import re
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

import pulsewire
from pulsewire import (
    ConcurrencyError,
    ConnectionClosed,
    ConnectionClosedError,
    ConnectionClosedOK,
    InvalidHandshake,
    InvalidStatus,
    NegotiationError,
    State,
)
from pulsewire.protocol.frames import build_frame
from pulsewire.protocol.handshake import accept_key

TIMEOUT = 5

RawHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, str], Awaitable[None]]


async def recv(ws: Any) -> Any:
    return await asyncio.wait_for(ws.recv(), TIMEOUT)


@pytest.fixture
async def raw_server() -> AsyncIterator[Callable[[RawHandler], Awaitable[str]]]:
    """``url = await raw_server(handler)``: a TCP server whose ``handler(reader, writer, key)``
    runs after the request head was read (``key`` is the client's Sec-WebSocket-Key)."""
    servers: list[asyncio.Server] = []
    writers: list[asyncio.StreamWriter] = []

    async def start(handler: RawHandler) -> str:
        async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writers.append(writer)
            head = await reader.readuntil(b"\r\n\r\n")
            match = re.search(rb"Sec-WebSocket-Key: (\S+)", head)
            await handler(reader, writer, match.group(1).decode() if match else "")

        server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
        servers.append(server)
        return f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/"

    yield start
    for writer in writers:
        writer.close()
    for server in servers:
        server.close()
        await server.wait_closed()


def switching(key: str, *extra: str) -> bytes:
    lines = [
        "HTTP/1.1 101 Switching Protocols",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Accept: {accept_key(key)}",
        *extra,
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One masked frame from the client: (opcode, unmasked payload)."""
    b0, b1 = await reader.readexactly(2)
    assert b1 & 0x80, "client frames must be masked"
    length = b1 & 0x7F
    if length == 126:
        (length,) = struct.unpack("!H", await reader.readexactly(2))
    elif length == 127:
        (length,) = struct.unpack("!Q", await reader.readexactly(8))
    key = await reader.readexactly(4)
    payload = await reader.readexactly(length)
    return b0 & 0x0F, bytes(b ^ key[i % 4] for i, b in enumerate(payload))


# =============================================================================== basics


async def test_await_and_async_with(echo_server: str) -> None:
    ws = await pulsewire.connect(echo_server)
    assert ws.state is State.OPEN and ws.open and not ws.closed
    assert ws.close_code is None
    await ws.send("one")
    assert await recv(ws) == "one"
    await ws.close()
    assert ws.state is State.CLOSED and ws.closed
    assert ws.close_code == 1000

    async with pulsewire.connect(echo_server) as ws2:
        await ws2.send(b"two")
        assert await recv(ws2) == b"two"
    assert ws2.closed and ws2.close_code == 1000


async def test_request_headers_reach_the_server(start_server: Any) -> None:
    async def handler(ws: Any) -> None:
        h = ws.request.headers
        await ws.send("|".join(str(h.get(k)) for k in ("Origin", "User-Agent", "X-Token")))

    _, url = await start_server(handler)
    async with pulsewire.connect(
        url, origin="https://app.example", additional_headers=[("X-Token", "abc")]
    ) as ws:
        assert await recv(ws) == "https://app.example|pulsewire/0.1|abc"
        assert ws.request.headers.get("X-Token") == "abc"
        assert ws.response_headers.get("Upgrade").lower() == "websocket"
    async with pulsewire.connect(url, user_agent=None, additional_headers={"X-Token": "d"}) as ws:
        assert await recv(ws) == "None|None|d"


async def test_recv_concurrency(echo_server: str) -> None:
    async with pulsewire.connect(echo_server) as ws:
        first = asyncio.ensure_future(ws.recv())
        await asyncio.sleep(0)
        with pytest.raises(ConcurrencyError):
            await ws.recv()
        await ws.send("x")
        assert await asyncio.wait_for(first, TIMEOUT) == "x"


async def test_same_ping_payload_twice(echo_server: str) -> None:
    async with pulsewire.connect(echo_server) as ws:
        first = asyncio.ensure_future(ws.ping(b"same"))
        await asyncio.sleep(0)
        with pytest.raises(ConcurrencyError):
            await ws.ping(b"same")
        assert isinstance(await asyncio.wait_for(first, TIMEOUT), float)


async def test_messages_received_before_close_are_still_delivered(start_server: Any) -> None:
    async def handler(ws: Any) -> None:
        for i in range(5):
            await ws.send(str(i))
        await ws.close(1000, "that's all")

    _, url = await start_server(handler)
    ws = await pulsewire.connect(url)
    await ws.wait_closed()
    assert ws.closed
    assert [await recv(ws) for _ in range(5)] == ["0", "1", "2", "3", "4"]
    with pytest.raises(ConnectionClosedOK):
        await recv(ws)
    assert ws.close_reason == "that's all"


async def test_send_while_a_fragmented_message_is_being_sent(echo_server: str) -> None:
    started = asyncio.Event()
    proceed = asyncio.Event()

    async def fragments() -> AsyncIterator[str]:
        yield "a"
        yield "b"  # "a" goes out once the next fragment is known
        started.set()
        await proceed.wait()
        yield "c"

    async with pulsewire.connect(echo_server) as ws:
        fragmented = asyncio.ensure_future(ws.send(fragments()))
        await asyncio.wait_for(started.wait(), TIMEOUT)
        # A ping is a control frame: it may go out between fragments.
        assert isinstance(await asyncio.wait_for(ws.ping(), TIMEOUT), float)
        # Another message must wait for the end of the fragmented one (or be refused
        # with ConcurrencyError), never interleave nor leak the core's InvalidState.
        other = asyncio.ensure_future(ws.send("other"))
        await asyncio.sleep(0.05)
        proceed.set()
        await asyncio.wait_for(fragmented, TIMEOUT)
        try:
            await asyncio.wait_for(other, TIMEOUT)
        except ConcurrencyError:
            expected = ["abc"]
        else:
            expected = ["abc", "other"]
        assert [await recv(ws) for _ in expected] == expected


# =============================================================================== handshake


async def test_refused_handshake_is_invalid_status(start_server: Any) -> None:
    _, url = await start_server(origins=["https://good.example"])
    with pytest.raises(InvalidStatus) as info:
        await pulsewire.connect(url, origin="https://evil.example")
    assert info.value.status == 403
    assert b"evil.example" in info.value.body
    async with pulsewire.connect(url, origin="https://good.example") as ws:
        await ws.send("ok")
        assert await recv(ws) == "ok"


async def test_connection_refused() -> None:
    import socket

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    with pytest.raises(OSError):
        await pulsewire.connect(f"ws://127.0.0.1:{port}/", open_timeout=TIMEOUT)


async def test_open_timeout(raw_server: Any) -> None:
    async def silent(reader: Any, writer: Any, key: str) -> None:
        await asyncio.sleep(30)

    url = await raw_server(silent)
    with pytest.raises(asyncio.TimeoutError):
        await pulsewire.connect(url, open_timeout=0.3)


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        (lambda key: switching("x" * 24), InvalidHandshake),
        (lambda key: switching(key).replace(b"Upgrade: websocket\r\n", b""), InvalidHandshake),
        (lambda key: switching(key, "Sec-WebSocket-Protocol: chat"), NegotiationError),
        (lambda key: switching(key, "Sec-WebSocket-Extensions: x-foo"), NegotiationError),
        (
            lambda key: switching(key, "Sec-WebSocket-Extensions: permessage-deflate; bogus=1"),
            NegotiationError,
        ),
        (lambda key: b"HTTP/1.1 500 Oops\r\nContent-Length: 3\r\n\r\nbad", InvalidStatus),
        (lambda key: b"HTTP/1.1 101 Switching", InvalidHandshake),  # then EOF
        (lambda key: b"not http at all\r\n\r\n", InvalidHandshake),
    ],
    ids=[
        "bad-accept",
        "no-upgrade",
        "subprotocol",
        "extension",
        "deflate-param",
        "500",
        "truncated",
        "garbage",
    ],
)
async def test_bad_answers(raw_server: Any, answer: Any, error: type[Exception]) -> None:
    async def handler(reader: Any, writer: Any, key: str) -> None:
        writer.write(answer(key))
        await writer.drain()
        writer.close()

    url = await raw_server(handler)
    with pytest.raises(error):
        await pulsewire.connect(url, open_timeout=TIMEOUT)


async def test_status_body_is_reported(raw_server: Any) -> None:
    async def handler(reader: Any, writer: Any, key: str) -> None:
        writer.write(b"HTTP/1.1 429 Too Many Requests\r\n\r\nslow down\n")
        await writer.drain()
        writer.close()  # no Content-Length: the body ends with the connection

    url = await raw_server(handler)
    with pytest.raises(InvalidStatus) as info:
        await pulsewire.connect(url, open_timeout=TIMEOUT)
    assert info.value.status == 429 and info.value.body == b"slow down\n"


async def test_compression_offer(start_server: Any) -> None:
    async def handler(ws: Any) -> None:
        await ws.send(str(ws.request.headers.get("Sec-WebSocket-Extensions")))

    _, url = await start_server(handler)
    async with pulsewire.connect(url) as ws:
        assert await recv(ws) == "permessage-deflate; client_max_window_bits"
        assert ws.extensions == "permessage-deflate"
    async with pulsewire.connect(url, compression=None) as ws:
        assert await recv(ws) == "None"
        assert ws.extensions == ""
    opts = pulsewire.DeflateOptions(server_no_context_takeover=True)
    async with pulsewire.connect(url, compression=opts) as ws:
        assert (
            await recv(ws) == "permessage-deflate; server_no_context_takeover; "
            "client_max_window_bits"
        )
        assert ws._proto.deflate.remote_no_context_takeover


async def test_frames_right_after_the_101(raw_server: Any) -> None:
    async def handler(reader: Any, writer: Any, key: str) -> None:
        writer.write(switching(key) + build_frame(0x81, b"welcome", None))
        await writer.drain()
        await asyncio.sleep(30)

    url = await raw_server(handler)
    ws = await pulsewire.connect(url, open_timeout=TIMEOUT)
    assert await recv(ws) == "welcome"
    ws.abort()


async def test_ssl_only_for_wss() -> None:
    import ssl

    with pytest.raises(ValueError):
        pulsewire.connect("ws://127.0.0.1:1/", ssl=ssl.create_default_context())
    with pytest.raises(ValueError):
        pulsewire.connect("http://127.0.0.1:1/")


# =============================================================================== closing


async def test_client_masks_and_closes_cleanly(raw_server: Any) -> None:
    seen: list[tuple[int, bytes]] = []

    async def handler(reader: Any, writer: Any, key: str) -> None:
        writer.write(switching(key))
        seen.append(await read_frame(reader))
        seen.append(await read_frame(reader))  # the Close
        writer.write(build_frame(0x88, seen[-1][1], None))
        await writer.drain()
        writer.close()

    url = await raw_server(handler)
    ws = await pulsewire.connect(url, compression=None)
    await ws.send("masked")
    await asyncio.wait_for(ws.close(4002, "client done"), TIMEOUT)
    assert seen == [(0x1, b"masked"), (0x8, struct.pack("!H", 4002) + b"client done")]
    assert ws.close_code == 4002


async def test_close_timeout_when_the_server_never_closes_tcp(raw_server: Any) -> None:
    async def handler(reader: Any, writer: Any, key: str) -> None:
        writer.write(switching(key))
        _, payload = await read_frame(reader)
        writer.write(build_frame(0x88, payload, None))  # answer the Close...
        await writer.drain()
        await asyncio.sleep(30)  # ...but keep TCP open

    url = await raw_server(handler)
    ws = await pulsewire.connect(url, close_timeout=0.3)
    await asyncio.wait_for(ws.close(), TIMEOUT)
    assert ws.closed
    assert ws.close_code == 1000


async def test_close_timeout_when_the_server_never_answers(raw_server: Any) -> None:
    async def handler(reader: Any, writer: Any, key: str) -> None:
        writer.write(switching(key))
        await asyncio.sleep(30)

    url = await raw_server(handler)
    ws = await pulsewire.connect(url, close_timeout=0.3)
    await asyncio.wait_for(ws.close(), TIMEOUT)
    assert ws.closed
    assert ws.close_code == 1006
    with pytest.raises(ConnectionClosedError):
        await ws.recv()


async def test_server_dropping_tcp(raw_server: Any) -> None:
    async def handler(reader: Any, writer: Any, key: str) -> None:
        writer.write(switching(key) + build_frame(0x82, b"last words", None))
        await writer.drain()
        writer.close()

    url = await raw_server(handler)
    ws = await pulsewire.connect(url)
    assert await recv(ws) == b"last words"
    with pytest.raises(ConnectionClosedError) as info:
        await recv(ws)
    assert info.value.code == 1006
    assert info.value.rcvd is None and info.value.sent is None
    with pytest.raises(ConnectionClosed):
        await ws.send("x")


async def test_protocol_error_from_the_server(raw_server: Any) -> None:
    received: list[tuple[int, bytes]] = []

    async def handler(reader: Any, writer: Any, key: str) -> None:
        writer.write(switching(key) + build_frame(0x81, b"masked!", b"abcd"))
        await writer.drain()
        received.append(await read_frame(reader))

    url = await raw_server(handler)
    ws = await pulsewire.connect(url)
    with pytest.raises(ConnectionClosedError) as info:
        await recv(ws)
    assert info.value.sent is not None and info.value.sent.code == 1002
    await asyncio.sleep(0.1)
    assert received and received[0][0] == 0x8
    assert struct.unpack("!H", received[0][1][:2])[0] == 1002


async def test_client_keepalive_gives_up_on_a_silent_server(raw_server: Any) -> None:
    frames: list[tuple[int, bytes]] = []

    async def handler(reader: Any, writer: Any, key: str) -> None:
        writer.write(switching(key))
        try:
            while True:
                frames.append(await read_frame(reader))  # read, never answer
        except asyncio.IncompleteReadError:
            pass

    url = await raw_server(handler)
    ws = await pulsewire.connect(url, ping_interval=0.2, ping_timeout=0.2)
    with pytest.raises(ConnectionClosedError):
        await recv(ws)
    assert ws.closed
    await asyncio.sleep(0.1)
    assert [opcode for opcode, _ in frames][:1] == [0x9]
    assert frames[-1][0] == 0x8 and struct.unpack("!H", frames[-1][1][:2])[0] == 1011


async def test_pending_ping_fails_when_the_connection_closes(raw_server: Any) -> None:
    async def handler(reader: Any, writer: Any, key: str) -> None:
        writer.write(switching(key))
        await read_frame(reader)  # the Ping, never answered
        writer.close()

    url = await raw_server(handler)
    ws = await pulsewire.connect(url, ping_interval=None)
    with pytest.raises(ConnectionClosedError):
        await asyncio.wait_for(ws.ping(b"lost"), TIMEOUT)


async def test_client_answers_server_pings(raw_server: Any) -> None:
    pongs: list[tuple[int, bytes]] = []

    async def handler(reader: Any, writer: Any, key: str) -> None:
        writer.write(switching(key) + build_frame(0x89, b"are you there", None))
        await writer.drain()
        pongs.append(await read_frame(reader))
        writer.close()

    url = await raw_server(handler)
    ws = await pulsewire.connect(url)
    with pytest.raises(ConnectionClosedError):
        await recv(ws)
    assert pongs == [(0xA, b"are you there")]


# =============================================================================== event loops


def test_echo_on_uvloop() -> None:
    uvloop = pytest.importorskip("uvloop")

    async def main() -> list[Any]:
        async def echo(ws: Any) -> None:
            async for message in ws:
                await ws.send(message)

        async with pulsewire.serve(echo, "127.0.0.1", 0) as server:
            url = f"ws://127.0.0.1:{server.port}/"
            async with pulsewire.connect(url) as ws:
                out = []
                for message in ("text", b"bytes", "x" * 300_000, ["fr", "ag"]):
                    await ws.send(message)
                    out.append(await asyncio.wait_for(ws.recv(), TIMEOUT))
                out.append(await ws.ping())
                return out

    out = uvloop.run(main())
    assert out[:4] == ["text", b"bytes", "x" * 300_000, "frag"]
    assert isinstance(out[4], float)
