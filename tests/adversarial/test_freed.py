"""Issue #10, "what must show" item 2, for WebSocket connections: with the garbage collector
disabled in the server process, 1,000 connections that end by every path leave no live
connection or session object behind.

Each node (``pulsewire echo`` and ``pulsewire serve``, at their default settings, started with
``gc.disable()``) gets about 1,000 WebSocket connections, spread evenly over the ways a
connection ends that a peer can cause: a clean close, protocol errors (1002, 1007), messages
too big (1009) and decompression bombs, the peer vanishing (RST, EOF, in the middle of a
message), an opening handshake refused or timed out, and on the hub its disconnects (4500 bad
token, 4501 bad request, 4003 no connect in time, 1008 rate limit, 1013 slow consumer). Then
the census (``gc.get_objects()``, no collection) must count no ``ServerConnection``, protocol
``Connection``, ``Session``, ``WebSocketTransport``, memory ``Account`` or transport: anything
left was either still referenced or caught in a reference cycle only the collector frees.
The timeouts the peer cannot cause at the default settings (keepalive, close) are covered
in-process, with short timeouts, by tests/aio/test_freed.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import struct
import time
import traceback
import zlib
from collections.abc import Awaitable, Callable

import pytest

from .conftest import API_KEY, HOST, Node, WsClient, http, make_token, open_tcp, record

pytestmark = pytest.mark.timeout(300)

MiB = 1 << 20
TOTAL = 1000
"""Connections per node, spread over its endings."""
SOURCES = [f"127.0.1.{i}" for i in range(1, 21)]
"""Source addresses, so that the hub's per-address connection rate (a burst of 200) admits
the 1,000 connections at once."""
CONCURRENCY = 100
SLOW_CONSUMERS = 20
"""Fewer of these: each makes the hub queue ~1 MiB, which its client reads back."""
CONNECTION_CLASSES = (
    "ServerConnection",
    "Connection",  # the protocol core (and the aio base class)
    "Session",
    "WebSocketTransport",
    "Subscription",
    "Account",
    "PerMessageDeflate",
    "ServerHandshake",
    "Utf8Decoder",
)
TRANSPORT_SUFFIX = "Transport"  # asyncio's or uvloop's socket transports


def bomb(mib: int) -> bytes:
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    zeros = bytes(MiB)
    first = comp.compress(zeros) + comp.flush(zlib.Z_SYNC_FLUSH)
    steady = comp.compress(zeros) + comp.flush(zlib.Z_SYNC_FLUSH)
    return (first + steady * (mib - 1))[:-4]


BOMB = bomb(64)  # 64 KB that inflate to 64 MiB


async def opened(node: Node, source: str, **kw: object) -> WsClient:
    return await WsClient.open(
        node.port, node.path, source=source, subprotocol=node.subprotocol, **kw
    )


async def connected(node: Node, source: str, **kw: object) -> WsClient:
    """Open; on a hub, also send the connect command and wait for its reply."""
    client = await opened(node, source, **kw)
    if node.kind == "serve":
        await client.connect(make_token("freed"))
    return client


async def closed_with(client: WsClient, code: int) -> None:
    frame = await client.close_frame(30)
    assert frame.close_code == code, (frame.close_code, frame.close_reason)
    # Answer the Close, as a client does, and wait for the server to close TCP.
    try:
        await client.send_frame(0x8, struct.pack("!H", code))
    except ConnectionError:
        pass
    assert await client.at_eof(30)
    await client.close()


def reset(client: WsClient) -> None:
    sock = client.writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.writer.transport.abort()


# -- endings any WebSocket server has ------------------------------------------------------


async def clean_close(node: Node, source: str) -> None:
    client = await connected(node, source)
    await client.send_frame(0x8, struct.pack("!H", 1000))
    await closed_with(client, 1000)


async def protocol_error(node: Node, source: str) -> None:
    client = await connected(node, source)
    client.writer.write(bytes([0x81, 0x02]) + b"hi")  # unmasked
    await closed_with(client, 1002)


async def invalid_utf8(node: Node, source: str) -> None:
    client = await connected(node, source)
    await client.send_frame(0x1, b"ok \xff\xfe")
    await closed_with(client, 1007)


async def too_big(node: Node, source: str) -> None:
    client = await connected(node, source)
    await client.send_raw(bytes([0x82, 0xFF]) + (64 * MiB).to_bytes(8, "big") + b"mask")
    await closed_with(client, 1009)


async def deflate_bomb(node: Node, source: str) -> None:
    client = await connected(node, source, deflate=True)
    await client.send_frame(0x2, BOMB, rsv1=True)
    await closed_with(client, 1009)


async def peer_resets(node: Node, source: str) -> None:
    client = await connected(node, source)
    reset(client)


async def peer_half_closes(node: Node, source: str) -> None:
    client = await connected(node, source)
    client.writer.write_eof()
    assert await client.at_eof(30)
    await client.close()


async def vanishes_mid_message(node: Node, source: str) -> None:
    client = await connected(node, source)
    await client.send_raw(bytes([0x82, 0xFE]) + (60000).to_bytes(2, "big") + b"mask" + bytes(30000))
    reset(client)


async def handshake_refused(node: Node, source: str) -> None:
    reader, writer = await open_tcp(node.port, source)
    writer.write(f"GET {node.path} HTTP/1.1\r\nHost: {HOST}\r\nUpgrade: websocket\r\n\r\n".encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
    assert head.split()[1] in (b"400", b"426"), head
    writer.close()


async def handshake_timeout(node: Node, source: str) -> None:
    """Half a request head, then nothing: the server answers 408 (after 10 s by default)."""
    async with RUN.opening:
        reader, writer = await open_tcp(node.port, source)
        writer.write(f"GET {node.path} HTTP/1.1\r\nHost: {HOST}\r\n".encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 60)
    assert head.split()[1] == b"408", head
    writer.close()


# -- the hub's disconnects --------------------------------------------------------------------


async def invalid_token(node: Node, source: str) -> None:
    client = await opened(node, source)
    await client.command("connect", {"token": "not-a-token"})
    await closed_with(client, 4500)


async def bad_request(node: Node, source: str) -> None:
    client = await opened(node, source)
    await client.send_text("this is not JSON")
    await closed_with(client, 4501)


async def stale(node: Node, source: str) -> None:
    async with RUN.opening:
        client = await opened(node, source)  # no connect command: 4003 after connect_timeout
    await closed_with(client, 4003)


async def rate_limited(node: Node, source: str) -> None:
    client = await connected(node, source)
    batch = "\n".join(json.dumps({"id": i, "method": "ping"}) for i in range(1, 400))
    await client.send_text(batch)
    await closed_with(client, 1008)


SLOW_CHANNEL = "chat:freed-slow"


async def slow_consumer(node: Node, source: str) -> None:
    async with RUN.opening:
        client = await connected(node, source, rcvbuf=4096)
        await client.ok("subscribe", {"channel": SLOW_CHANNEL})
    client.writer.transport.pause_reading()  # type: ignore[attr-defined]
    RUN.slow.append(client)
    await RUN.slow_done.wait()
    client.writer.transport.resume_reading()  # type: ignore[attr-defined]
    # Up to ~1 MiB of publications first: skipped, not decoded (dozens of clients read here).
    deadline = time.monotonic() + 60
    frames = 0
    while True:
        try:
            frame = await client.recv_frame(max(0.01, deadline - time.monotonic()))
        except asyncio.TimeoutError:
            raise AssertionError(f"no Close and no EOF after {frames} frames") from None
        assert frame is not None, f"closed without a Close frame after {frames} frames"
        frames += 1
        if frame.opcode == 0x8:
            break
    assert frame.close_code == 1013, (frame.close_code, frame.close_reason)
    await client.close()


class Run:
    """What the endings of the running test share (made in its event loop)."""

    def __init__(self) -> None:
        self.opening = asyncio.Semaphore(20)
        """Endings that then wait (for the server's timeouts, or for the publisher) open
        their connection under this, not under the limit on concurrent connections."""
        self.slow: list[WsClient] = []
        """The stalled subscribers (slow_consumer endings)."""
        self.slow_done = asyncio.Event()
        """Set once the publisher has seen them all disconnected."""


RUN = Run.__new__(Run)


async def publish_until_slow_consumers_are_cut(node: Node, count: int) -> None:
    """Publish 64 KiB messages on the slow channel until its ``count`` stalled subscribers
    have all been disconnected (the hub's 1013 slow-consumer policy)."""
    deadline = time.monotonic() + 120
    while len(RUN.slow) < count:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    blob = "x" * 60000
    before = await node.metrics()
    while True:
        assert time.monotonic() < deadline, "the slow consumers were never disconnected"
        answer = await http(
            node.port,
            "POST",
            "/api/publish",
            body=json.dumps({"channel": SLOW_CHANNEL, "data": blob}).encode(),
            headers=[("Content-Type", "application/json"), ("Authorization", f"apikey {API_KEY}")],
        )
        assert answer.status == 200, answer
        metrics = await node.metrics()
        if metrics.delta(before, "pulsewire_slow_consumer_disconnects_total") >= count:
            break
    RUN.slow_done.set()


Ending = Callable[[Node, str], Awaitable[None]]
COMMON: dict[str, Ending] = {
    "clean close": clean_close,
    "1002 protocol error": protocol_error,
    "1007 invalid UTF-8": invalid_utf8,
    "1009 too big": too_big,
    "1009 deflate bomb": deflate_bomb,
    "RST": peer_resets,
    "EOF": peer_half_closes,
    "vanished mid-message": vanishes_mid_message,
    "handshake refused": handshake_refused,
    "handshake timeout": handshake_timeout,
}
HUB: dict[str, Ending] = {
    "4500 invalid token": invalid_token,
    "4501 bad request": bad_request,
    "4003 no connect in time": stale,
    "1008 rate limit": rate_limited,
    "1013 slow consumer": slow_consumer,
}


@pytest.mark.parametrize("kind", ["echo", "serve"])
async def test_a_thousand_connections_ending_every_way_leave_nothing_alive(
    node: Callable[..., Awaitable[Node]], kind: str
) -> None:
    n = await node(kind, gc=False)
    endings = dict(COMMON, **(HUB if kind == "serve" else {}))
    each = -(-(TOTAL - SLOW_CONSUMERS) // (len(endings) - 1)) if kind == "serve" else 0
    each = each or -(-TOTAL // len(endings))
    global RUN
    RUN = Run()
    before = await n.census()
    started = time.monotonic()
    limit = asyncio.Semaphore(CONCURRENCY)
    failures: list[str] = []

    async def one(name: str, ending: Ending, i: int) -> None:
        # Slow consumers wait for the publisher, timeouts for the server: not under the limit.
        waits = name in ("1013 slow consumer", "handshake timeout", "4003 no connect in time")
        async with contextlib.nullcontext() if waits else limit:
            try:
                await ending(n, SOURCES[i % len(SOURCES)])
            except Exception as exc:  # collected: one failure should not hide the others
                ours = [f for f in traceback.extract_tb(exc.__traceback__) if "tests" in f.filename]
                where = " < ".join(f"{f.name}:{f.lineno}" for f in reversed(ours[-3:]))
                failures.append(f"{name} #{i}: {type(exc).__name__}: {exc} ({where})")

    counts = {name: SLOW_CONSUMERS if name == "1013 slow consumer" else each for name in endings}
    jobs = [one(name, ending, i) for name, ending in endings.items() for i in range(counts[name])]
    if kind == "serve":
        jobs.append(publish_until_slow_consumers_are_cut(n, SLOW_CONSUMERS))
    await asyncio.gather(*jobs)
    assert not failures, failures[:10]
    total = sum(counts.values())
    # Every connection has ended on the client side; give the server the time to see it.
    deadline = time.monotonic() + 30
    while True:
        counts = await n.census()
        live = Node.live(counts, *CONNECTION_CLASSES)
        transports = {
            k: v for k, v in counts.items() if k.endswith(TRANSPORT_SUFFIX) and v > before.get(k, 0)
        }
        if (not live and not transports) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)
    record(
        f"freed[{kind}]",
        connections=total,
        endings=list(endings),
        seconds=round(time.monotonic() - started, 1),
        live=live,
        transports=transports,
    )
    assert not live, f"alive after {total} connections ended, with the GC disabled: {live}"
    assert not transports, f"transports alive: {transports}"
