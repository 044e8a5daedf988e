"""The callback API: endpoints served by a :class:`pulsewire.Listener`, no task per connection."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import pytest

import pulsewire
from pulsewire import ConcurrencyError, ConnectionClosed, ConnectionClosedError, Listener
from pulsewire.protocol.frames import build_frame

TIMEOUT = 5


async def recv(ws: Any) -> Any:
    return await asyncio.wait_for(ws.recv(), TIMEOUT)


class Echo(Listener):
    """Echoes every message; records its life cycle."""

    instances: list[Echo] = []

    def __init__(self) -> None:
        self.events: list[Any] = []
        self.closed: asyncio.Future[tuple[int | None, str | None]] = (
            asyncio.get_running_loop().create_future()
        )
        Echo.instances.append(self)

    def on_open(self, ws: pulsewire.Connection) -> None:
        self.events.append("open")
        ws.send_nowait("welcome")

    def on_message(self, ws: pulsewire.Connection, message: str | bytes) -> None:
        self.events.append(message)
        if message == "bye":
            ws.close_nowait(4000, "asked to leave")
        elif message == "boom":
            raise ValueError("a bug in the application")
        else:
            ws.send_nowait(message)

    def on_close(self, ws: pulsewire.Connection) -> None:
        self.events.append("close")
        self.closed.set_result((ws.close_code, ws.close_reason))


@pytest.fixture(autouse=True)
def _reset() -> None:
    Echo.instances = []


async def test_echo_with_one_listener_per_connection(start_server: Any) -> None:
    _, url = await start_server(Echo)
    async with pulsewire.connect(url) as a, pulsewire.connect(url) as b:
        assert await recv(a) == "welcome"
        assert await recv(b) == "welcome"
        await a.send("héllo ✓")
        await b.send(b"\x00\xff")
        assert await recv(a) == "héllo ✓"
        assert await recv(b) == b"\x00\xff"
        for i in range(300):
            await a.send(f"m{i}")
        assert [await recv(a) for _ in range(300)] == [f"m{i}" for i in range(300)]
        await a.send(["frag", "ment"])  # a fragmented message arrives whole
        assert await recv(a) == "fragment"
    assert len(Echo.instances) == 2
    codes = [await asyncio.wait_for(e.closed, TIMEOUT) for e in Echo.instances]
    assert codes == [(1000, ""), (1000, "")]
    first = Echo.instances[0].events
    assert first[0] == "open" and first[-1] == "close" and first[1] == "héllo ✓"


async def test_compressed_messages(start_server: Any) -> None:
    _, url = await start_server(Echo, compression="deflate")
    async with pulsewire.connect(url, compression="deflate") as ws:
        assert ws.extensions == "permessage-deflate"
        assert await recv(ws) == "welcome"
        message = "compressible " * 500
        await ws.send(message)
        assert await recv(ws) == message


async def test_shared_instance_and_routes_mixed_with_coroutines(start_server: Any) -> None:
    class Counter(Listener):
        def __init__(self) -> None:
            self.connections: set[pulsewire.Connection] = set()
            self.messages = 0

        def on_open(self, ws: pulsewire.Connection) -> None:
            self.connections.add(ws)

        def on_message(self, ws: pulsewire.Connection, message: str | bytes) -> None:
            self.messages += 1
            for other in self.connections:
                other.send_nowait(f"{self.messages}:{message!s}")

        def on_close(self, ws: pulsewire.Connection) -> None:
            self.connections.discard(ws)

    async def upper(ws: Any) -> None:
        async for message in ws:
            await ws.send(message.upper())

    counter = Counter()
    server, url = await start_server({"/room": counter, "/upper": upper})
    async with (
        pulsewire.connect(url + "room") as a,
        pulsewire.connect(url + "room") as b,
        pulsewire.connect(url + "upper") as c,
    ):
        await c.send("shout")
        assert await recv(c) == "SHOUT"
        while len(counter.connections) < 2:
            await asyncio.sleep(0.01)
        await a.send("hi")
        assert await recv(a) == "1:hi"
        assert await recv(b) == "1:hi"
    for _ in range(100):
        if not counter.connections:
            break
        await asyncio.sleep(0.01)
    assert counter.connections == set()
    with pytest.raises(pulsewire.InvalidStatus) as refused:
        await pulsewire.connect(url + "nowhere")
    assert refused.value.status == 404
    assert not server._handler_tasks


async def test_close_nowait_from_a_callback(start_server: Any) -> None:
    _, url = await start_server(Echo)
    async with pulsewire.connect(url) as ws:
        assert await recv(ws) == "welcome"
        await ws.send("bye")
        with pytest.raises(ConnectionClosed):
            await recv(ws)
        assert (ws.close_code, ws.close_reason) == (4000, "asked to leave")
    # The server sees the client's echo of its Close: the code, and no reason.
    assert await asyncio.wait_for(Echo.instances[0].closed, TIMEOUT) == (4000, "")


async def test_exception_in_on_message_closes_with_1011(
    start_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    _, url = await start_server(Echo)
    async with pulsewire.connect(url) as ws:
        assert await recv(ws) == "welcome"
        await ws.send("boom")
        with pytest.raises(ConnectionClosedError):
            await recv(ws)
        assert ws.close_code == 1011
    assert "on_message failed" in caplog.text


async def test_exception_in_on_open_closes_with_1011(start_server: Any) -> None:
    class Broken(Listener):
        def on_open(self, ws: pulsewire.Connection) -> None:
            raise RuntimeError("cannot open")

    _, url = await start_server(Broken)
    async with pulsewire.connect(url) as ws:
        with pytest.raises(ConnectionClosedError):
            await recv(ws)
        assert ws.close_code == 1011


async def test_recv_is_refused_and_send_nowait_checks(start_server: Any) -> None:
    result: asyncio.Future[list[str]] = asyncio.get_running_loop().create_future()

    class Probe(Listener):
        def on_message(self, ws: pulsewire.Connection, message: str | bytes) -> None:
            seen = []
            try:
                ws.send_nowait(42)  # type: ignore[arg-type]
            except TypeError:
                seen.append("TypeError")
            task = asyncio.ensure_future(ws.recv())

            def done(t: asyncio.Future[Any]) -> None:
                if isinstance(t.exception(), ConcurrencyError):
                    seen.append("ConcurrencyError")
                result.set_result(seen)

            task.add_done_callback(done)
            ws.send_nowait(memoryview(b"ok"))

    _, url = await start_server(Probe)
    async with pulsewire.connect(url) as ws:
        await ws.send("x")
        assert await recv(ws) == b"ok"
        assert await asyncio.wait_for(result, TIMEOUT) == ["TypeError", "ConcurrencyError"]
    closed = Echo()
    with pytest.raises(ConnectionClosed):
        conn = pulsewire.Connection()
        conn._listener = closed
        conn.send_nowait("after the end")


async def test_replies_to_one_read_go_out_in_one_write(start_server: Any, raw_client: Any) -> None:
    writes: list[int] = []
    opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    class CountingTransport:
        def __init__(self, transport: Any) -> None:
            self._transport = transport

        def write(self, data: bytes) -> None:
            writes.append(len(data))
            self._transport.write(data)

        def writelines(self, data: Any) -> None:
            writes.append(sum(len(d) for d in data))
            self._transport.writelines(data)

        def __getattr__(self, name: str) -> Any:
            return getattr(self._transport, name)

    class Batched(Echo):
        def on_open(self, ws: pulsewire.Connection) -> None:
            ws._transport = CountingTransport(ws._transport)  # type: ignore[assignment]
            opened.set_result(None)

    server, _ = await start_server(Batched, compression=None)
    raw = await raw_client(server.port)
    await asyncio.wait_for(opened, TIMEOUT)
    burst = b"".join(build_frame(0x81, f"n{i}".encode(), os.urandom(4)) for i in range(50))
    await raw.send_raw(burst)  # 50 requests in one segment: one read on the server
    frames = [await raw.recv_frame() for _ in range(50)]
    assert [f.payload for f in frames if f is not None] == [f"n{i}".encode() for i in range(50)]
    assert len(writes) < 50, writes  # batched per read, not one write per reply
    await raw.close()


async def test_a_client_that_does_not_read_cannot_grow_server_memory(
    start_server: Any, raw_client: Any
) -> None:
    connection: asyncio.Future[pulsewire.Connection] = asyncio.get_running_loop().create_future()

    class Track(Echo):
        def on_open(self, ws: pulsewire.Connection) -> None:
            if not connection.done():
                connection.set_result(ws)

    server, _ = await start_server(Track, compression=None, max_size=2**20, close_timeout=1)
    raw = await raw_client(server.port, rcvbuf=4096)  # sends requests, never reads replies
    ws = await asyncio.wait_for(connection, TIMEOUT)
    frame = build_frame(0x82, b"x" * 65536, os.urandom(4))

    async def flood() -> None:
        for _ in range(400):  # 26 MB of requests, each echoed
            await raw.send_raw(frame)

    flooding = asyncio.ensure_future(flood())
    await asyncio.sleep(1.5)
    assert not flooding.done(), "the server took 26 MB of requests it could not answer"
    assert ws._paused_reading
    transport = ws._transport
    assert transport is not None
    # What waits in the server: about the write high-water mark plus one read's replies.
    assert transport.get_write_buffer_size() < 2 * 2**20, transport.get_write_buffer_size()
    flooding.cancel()
    raw.writer.transport.abort()


async def test_frames_sent_with_the_handshake_arrive_after_on_open(
    start_server: Any, raw_client: Any
) -> None:
    server, _ = await start_server(Echo)
    raw = await raw_client(server.port, handshake=False)
    request = raw.request_bytes(key="dGhlIHNhbXBsZSBub25jZQ==")
    await raw.send_raw(request + build_frame(0x81, b"early", b"abcd"))
    assert (await raw.read_head()).status == 101
    first, second = await raw.recv_frame(), await raw.recv_frame()
    assert first is not None and second is not None
    assert (first.payload, second.payload) == (b"welcome", b"early")
    assert Echo.instances[0].events[:2] == ["open", "early"]
    await raw.close()


async def test_server_close_reaches_listeners(start_server: Any) -> None:
    server, url = await start_server(Echo)
    async with pulsewire.connect(url) as ws:
        assert await recv(ws) == "welcome"
        server.close()
        with pytest.raises(ConnectionClosed):
            await recv(ws)
        assert ws.close_code == 1001
    await asyncio.wait_for(server.wait_closed(), TIMEOUT)
    assert await asyncio.wait_for(Echo.instances[0].closed, TIMEOUT) == (1001, "")
