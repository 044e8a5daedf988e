"""Server connections inside their memory budget, and reading paused while output backs up.

* The default budget of a server follows its ``max_size``; a given budget too small for it is
  refused.
* Every connection charges an account under its peer's IP address, closed with it.
* Reading pauses for three reasons that end separately (queue, write buffer, budget): one
  ending never resumes reading while another holds (driven through the asyncio Protocol
  callbacks on a fake transport).
* A peer that sends pings (or requests) and never reads gets TCP backpressure, in both the
  coroutine and the callback modes; a reading client is never stuck.
* Many compressed messages in one read are delivered, in order, without inflating the whole
  read at once; over a hard limit a connection is closed with 1013 and counted.
"""

from __future__ import annotations

import asyncio
import os
import socket
import zlib
from collections.abc import Callable
from typing import Any

import pytest

import pulsewire
from pulsewire.aio.budget import BudgetLimits, Budgets
from pulsewire.aio.server import Server, ServerConnection
from pulsewire.protocol.frames import build_frame

TIMEOUT = 10.0
KiB = 1024
MiB = 1024 * KiB


async def noop(ws: Any) -> None:
    await ws.wait_closed()


# ================================================================================ defaults


@pytest.mark.parametrize("max_size", [64 * KiB, MiB, 16 * MiB, None])
def test_the_default_budget_follows_max_size(max_size: int | None) -> None:
    server = Server(noop, max_size=max_size)
    limits = server.budgets.limits
    assert limits == BudgetLimits.for_message_size(max_size)
    if max_size is None:
        assert limits.connection_hard >= 2**62  # nothing legal is ever refused
    else:
        # Resuming (under half the high-water mark) must stay possible with a message of
        # max_size in assembly, and one read's worth more must stay under the hard limit.
        assert limits.connection_high // 2 >= max_size + 64 * KiB
        assert limits.connection_hard >= limits.connection_high + 256 * KiB + 2 * max_size
        assert limits.address_high >= 4 * limits.connection_high
        assert limits.address_hard >= limits.address_high


def test_the_defaults_at_one_mib() -> None:
    limits = Server(noop).budgets.limits
    assert (limits.connection_high, limits.connection_hard) == (
        2 * MiB + 256 * KiB,
        4 * MiB + 512 * KiB,
    )
    assert (limits.address_high, limits.address_hard) == (16 * MiB, 32 * MiB)


def test_a_budget_that_cannot_hold_max_size_is_refused_one_too_tight_is_warned(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with pytest.raises(ValueError, match="no message of max_size could ever be held"):
        Server(noop, max_size=16 * MiB, budgets=Budgets())
    with caplog.at_level("WARNING", logger="pulsewire.server"):
        Server(noop, max_size=MiB, budgets=Budgets())  # fits 1 MiB, but without room
    assert "leave no room for messages of max_size=1048576" in caplog.text
    caplog.clear()
    shared = Budgets()
    with caplog.at_level("WARNING", logger="pulsewire.server"):
        assert Server(noop, max_size=64 * KiB, budgets=shared).budgets is shared
    assert not caplog.text


# ================================================================================ accounts


async def test_each_connection_has_an_account_under_its_address(start_server: Any) -> None:
    server, url = await start_server(noop)
    clients = [await pulsewire.connect(url) for _ in range(3)]
    assert server.budgets.addresses == 1
    assert server.budgets.held("127.0.0.1") == 0  # idle connections hold nothing
    for ws in clients:
        await ws.close()
    await wait_for(lambda: server.budgets.addresses == 0)


async def test_what_a_connection_holds_is_reported(start_server: Any, raw_client: Any) -> None:
    released = asyncio.Event()

    async def slow(ws: Any) -> None:
        await released.wait()
        async for message in ws:
            await ws.send(message)

    server, _ = await start_server(slow, max_queue=64)
    raw = await raw_client(server.port)
    for _ in range(10):
        await raw.send_frame(0x2, bytes(50_000))
    # Ten unread messages of 50 kB: the account holds them.
    await wait_for(lambda: server.budgets.held("127.0.0.1") >= 500_000)
    # Half a message in assembly counts too.
    await raw.send_raw(build_frame(0x02, bytes(200_000), os.urandom(4))[:100_000])
    await wait_for(lambda: server.budgets.held("127.0.0.1") >= 590_000)
    released.set()
    for _ in range(10):
        frame = await raw.recv_frame()
        assert frame is not None and len(frame.payload) == 50_000
    await wait_for(lambda: server.budgets.held("127.0.0.1") < 110_000)


# ==================================================================== reasons to pause


class FakeTransport(asyncio.Transport):
    """Records what the connection asks of it; the test sets its write buffer's size and
    calls the protocol's pause_writing/resume_writing as a transport would."""

    def __init__(self, protocol: asyncio.Protocol, peer: str = "10.0.0.9") -> None:
        super().__init__()
        self.protocol = protocol
        self.peer = (peer, 40000)
        self.reading = True
        self.buffered = 0
        self.written: list[bytes] = []
        self.closing = False
        self.eof = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.peer if name == "peername" else default

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written.append(bytes(data))

    def writelines(self, data: Any) -> None:
        for chunk in data:
            self.write(chunk)

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def pause_reading(self) -> None:
        assert self.reading, "paused twice"
        self.reading = False

    def resume_reading(self) -> None:
        assert not self.reading, "resumed while reading"
        self.reading = True

    def is_reading(self) -> bool:
        return self.reading

    def is_closing(self) -> bool:
        return self.closing

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof = True

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = True


def upgrade_request() -> bytes:
    return (
        b"GET / HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )


def message(payload: bytes) -> bytes:
    return build_frame(0x82, payload, os.urandom(4))


async def open_fake(server: Server) -> tuple[ServerConnection, FakeTransport]:
    conn = ServerConnection(server)
    transport = FakeTransport(conn)
    conn.connection_made(transport)
    conn.data_received(upgrade_request())
    assert transport.written[0].startswith(b"HTTP/1.1 101")
    await asyncio.sleep(0)  # the handler starts
    return conn, transport


async def test_one_reason_ending_does_not_resume_reading_while_another_holds() -> None:
    consume = asyncio.Event()
    got: list[bytes] = []

    async def handler(ws: Any) -> None:
        await consume.wait()
        async for data in ws:
            got.append(data)

    server = Server(handler, max_queue=2, max_size=64 * KiB, ping_interval=None)
    conn, transport = await open_fake(server)
    high = server.budgets.limits.connection_high  # 1 MiB

    conn.data_received(message(b"a") + message(b"b"))  # the queue is full
    assert not transport.reading
    transport.buffered = high + 1
    conn.pause_writing()  # the write buffer is over its mark
    conn.resume_writing()  # writing resumes, but what it reports is over the budget's mark
    assert server.budgets.pauses == 1
    conn.pause_writing()  # queue, writing and budget all hold now
    consume.set()
    await wait_for(lambda: len(got) == 2)  # the queue is read
    assert not transport.reading
    transport.buffered = high // 2 + 1
    conn.resume_writing()  # the write buffer drains, but not under half the budget's mark
    assert not transport.reading
    conn.pause_writing()
    transport.buffered = high // 2
    conn.resume_writing()  # under half: no reason holds any more
    assert transport.reading
    conn.connection_lost(None)
    assert server.budgets.addresses == 0


async def test_the_write_buffer_pauses_reading_on_a_server_connection() -> None:
    server = Server(noop, max_size=64 * KiB, ping_interval=None)
    conn, transport = await open_fake(server)
    conn.pause_writing()
    assert not transport.reading
    conn.resume_writing()
    assert transport.reading
    conn.connection_lost(None)


async def test_over_the_hard_limit_a_connection_is_failed_with_1013_once() -> None:
    server = Server(noop, max_size=64 * KiB, ping_interval=None)
    conn, transport = await open_fake(server)
    hard = server.budgets.limits.connection_hard
    transport.buffered = hard + 1
    conn.resume_writing()  # a report: over the hard limit
    assert transport.written[-1][:1] == b"\x88"  # a Close frame
    assert transport.written[-1][2:4] == (1013).to_bytes(2, "big")
    assert transport.written[-1][4:] == b"over its memory budget"
    # Our side is shut after the Close, and what the peer still sends is read and dropped
    # until it closes: closing with unread input would reset the connection, and the peer
    # could lose the Close frame with its code.
    assert transport.eof and transport.reading and not transport.closing
    assert conn.close_code == 1006 and conn.closed  # over for the handler already
    conn.data_received(message(b"late"))  # dropped
    conn.resume_writing()  # reported again: counted once
    assert server.budgets.exceeded == {"connection": 1, "address": 0}
    conn.eof_received()
    conn.connection_lost(None)
    assert server.budgets.addresses == 0


# ============================================================ backpressure over real sockets


def ping_frame() -> bytes:
    return build_frame(0x89, b"p" * 125, os.urandom(4))


async def non_reading_peer(port: int) -> socket.socket:
    """A WebSocket client on a plain non-blocking socket with a tiny receive buffer."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await loop.sock_connect(sock, ("127.0.0.1", port))
    await loop.sock_sendall(sock, upgrade_request())
    head = b""
    while b"\r\n\r\n" not in head:
        head += await asyncio.wait_for(loop.sock_recv(sock, 4096), TIMEOUT)
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


async def flood_until_blocked(sock: socket.socket, frame: bytes, cap: int) -> int:
    """Send ``frame`` over and over without reading until the server stops taking them
    (the socket stays full for a second); return the bytes sent (at most ``cap``)."""
    loop = asyncio.get_running_loop()
    burst = frame * max(1, 65536 // len(frame))
    sent = 0
    idle_since = loop.time()
    while sent < cap:
        try:
            n = sock.send(burst[sent % len(frame) :])
        except BlockingIOError:
            n = 0
        if n:
            sent += n
            idle_since = loop.time()
        elif loop.time() - idle_since > 1.0:
            return sent  # nothing taken for a second: backpressure
        else:
            await asyncio.sleep(0.01)
    return sent


def coroutine_echo() -> Any:
    async def echo(ws: Any) -> None:
        async for data in ws:
            await ws.send(data)

    return echo


class ListenerEcho(pulsewire.Listener):
    def on_message(self, ws: Any, message: Any) -> None:
        ws.send_nowait(message)


@pytest.mark.parametrize(
    "endpoint", [coroutine_echo, lambda: ListenerEcho], ids=["coroutine", "listener"]
)
@pytest.mark.parametrize("kind", ["pings", "messages"])
async def test_a_peer_that_never_reads_gets_backpressure(
    start_server: Any, raw_client: Any, endpoint: Callable[[], Any], kind: str
) -> None:
    server, url = await start_server(endpoint(), compression=None, max_queue=4)
    sock = await non_reading_peer(server.port)
    frame = ping_frame() if kind == "pings" else message(b"x" * 1000)
    # The kernel buffers a few MiB both ways; without backpressure the server would take
    # everything (and hold the pongs or the echoes itself).
    cap = 64 * MiB
    sent = await flood_until_blocked(sock, frame, cap)
    assert sent < cap, "the server kept reading from a peer that never reads"
    (conn,) = server.connections
    assert conn.buffered_amount < 2 * MiB, conn.buffered_amount
    # Another client is served meanwhile.
    async with pulsewire.connect(url) as ws:
        await ws.send("still here")
        assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "still here"
    sock.close()


async def test_a_reading_client_is_never_stuck(start_server: Any) -> None:
    """Echo of max-size messages, several in flight, with a client that reads meanwhile."""
    server, url = await start_server(coroutine_echo(), max_size=MiB)
    payload = os.urandom(MiB)
    async with pulsewire.connect(url, max_size=MiB, compression=None) as ws:

        async def reader() -> int:
            count = 0
            for _ in range(16):
                assert await ws.recv() == payload
                count += 1
            return count

        reading = asyncio.ensure_future(reader())
        for _ in range(16):
            await ws.send(payload)
        assert await asyncio.wait_for(reading, 60) == 16
    assert server.budgets.exceeded == {"connection": 0, "address": 0}


def zeros_message(size: int) -> bytes:
    comp = zlib.compressobj(6, zlib.DEFLATED, -15)
    payload = (comp.compress(bytes(size)) + comp.flush(zlib.Z_SYNC_FLUSH))[:-4]
    return build_frame(0xC2, payload, os.urandom(4))


async def test_many_small_bombs_in_one_read_all_arrive_in_order(
    start_server: Any, raw_client: Any
) -> None:
    sizes: list[int] = []
    done = asyncio.Event()
    peak: list[int] = [0]

    async def count(ws: Any) -> None:
        async for data in ws:
            sizes.append(len(data))
            peak[0] = max(peak[0], server.budgets.held("127.0.0.1"))
            await asyncio.sleep(0)  # a slow consumer: the queue fills and reading pauses
            if len(sizes) == 30:
                done.set()

    server, _ = await start_server(count, max_size=MiB, max_queue=2)
    raw = await raw_client(server.port, "/", [("Sec-WebSocket-Extensions", "permessage-deflate")])
    # 30 legal messages of 1 MiB each, ~30 kB on the wire: one read inflates to 30 MiB
    # unless the core holds the rest back.
    await raw.send_raw(b"".join(zeros_message(MiB - i) for i in range(30)))
    await asyncio.wait_for(done.wait(), TIMEOUT)
    assert sizes == [MiB - i for i in range(30)]
    limits = server.budgets.limits
    assert peak[0] <= limits.connection_high + 2 * MiB, peak[0] / MiB
    assert server.budgets.exceeded == {"connection": 0, "address": 0}


async def test_the_address_budget_closes_what_takes_it_over_its_hard_limit(
    start_server: Any, raw_client: Any
) -> None:
    """Partial messages on many connections from one address, never completed."""
    limits = BudgetLimits(
        connection_high=512 * KiB,
        connection_hard=2 * MiB,
        address_high=1 * MiB,
        address_hard=2 * MiB,
    )
    budgets = Budgets(limits)
    server, _ = await start_server(
        {"/": noop, "/echo": coroutine_echo()},
        max_size=64 * KiB,
        budgets=budgets,
        close_timeout=1,
    )
    partial = build_frame(0x02, bytes(60_000), os.urandom(4))[:-100]
    clients = []
    codes: list[tuple[int | None, str]] = []
    for _ in range(60):
        raw = await raw_client(server.port)
        await raw.send_raw(partial)
        clients.append(raw)
    await wait_for(lambda: budgets.exceeded["address"] > 0)

    async def close_frame(raw: Any) -> None:
        try:
            frame = await raw.recv_frame(1.0)
        except asyncio.TimeoutError:
            return  # still open (and paused)
        if frame is not None and frame.opcode == 0x8:
            codes.append((frame.close_code, frame.close_reason))

    await asyncio.gather(*(close_frame(raw) for raw in clients))
    assert len(codes) == budgets.exceeded["address"]
    assert set(codes) == {(1013, "over its memory budget")}
    assert budgets.held("127.0.0.1") <= limits.address_hard + 256 * KiB
    assert budgets.exceeded["connection"] == 0
    assert budgets.pauses > 0
    # Another address is served meanwhile.
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.2", 0))
    sock.setblocking(False)
    await loop.sock_connect(sock, ("127.0.0.1", server.port))
    async with pulsewire.connect(f"ws://127.0.0.1:{server.port}/echo", sock=sock) as ws:
        await ws.send(b"x" * 60_000)
        assert await asyncio.wait_for(ws.recv(), TIMEOUT) == b"x" * 60_000
    assert budgets.held("127.0.0.2") == 0


async def wait_for(condition: Callable[[], bool]) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + TIMEOUT
    while not condition():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)
