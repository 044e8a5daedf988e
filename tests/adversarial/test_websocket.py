"""Issue #10's WebSocket rows, against real ``pulsewire serve`` / ``pulsewire echo`` processes
at their default settings, from one address (:data:`ATTACKER`):

* a million pings sent by a peer that never reads (the node used to hold every pong: +192 MiB):
  now the node stops reading from it while its output is backed up, so the peer's sends block
  (TCP backpressure), and the pongs are all there once it reads;
* ten 1 GiB decompression bombs against ``pulsewire echo`` (each used to cost ~2x the limit and
  stay alive in a reference cycle: 26 -> 617 MiB): now each is refused with 1009 at the limit
  plus a constant, and freed at once, with the garbage collector disabled;
* ours: hundreds of connections from one address, each holding most of a legal message it
  never completes: the address's memory budget pauses them, then closes each connection that
  takes it past its hard limit with 1013 ("over its memory budget").

Each keeps a probe client (another address) served, the RSS growth under 64 MiB, and records
its figures in ``test-output/adversarial.jsonl``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import zlib
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from pulsewire.protocol.frames import build_frame

from .conftest import ATTACKER, Node, WsClient, make_token, record, rss_watch

pytestmark = pytest.mark.timeout(300)

MiB = 1 << 20
KiB = 1 << 10


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def attacker(node: Node, *, connect: bool = True, **kw: Any) -> WsClient:
    """A WebSocket from :data:`ATTACKER` (on a hub, connected); paced by the hub's rate of new
    connections per address (429 over it)."""
    while True:
        try:
            client = await WsClient.open(
                node.port,
                node.path,
                source=ATTACKER,
                subprotocol=node.subprotocol,
                expect=None,
                **kw,
            )
        except ConnectionResetError:  # refused (429) before the answer was read
            await asyncio.sleep(0.05)
            continue
        if client.status != 429:
            break
        await client.close()
        await asyncio.sleep(0.05)
    if client.status == 503:
        return client  # the front door refuses the address (over its memory budget)
    assert client.status == 101, (client.status, client.body)
    if connect and node.kind == "serve":
        await client.connect(make_token("attacker"))
    return client


async def served_meanwhile(p: Any, rounds: int = 3) -> None:
    target = p.rounds + rounds
    deadline = time.monotonic() + 30
    while p.rounds < target and time.monotonic() < deadline:
        await asyncio.sleep(0.05)


# ================================================================================= pings


PING = build_frame(0x89, b"p" * 125, b"\x01\x02\x03\x04")  # 131 bytes: the largest ping
PINGS = 1_000_000
STALLED = 2.0
"""Seconds without the server taking a byte that count as backpressure."""


@pytest.mark.parametrize("kind", ["serve", "echo"])
async def test_a_million_pings_from_a_peer_that_never_reads(node, probe, kind: str) -> None:
    n: Node = await node(kind)
    client = await attacker(n, rcvbuf=4096)
    client.writer.transport.pause_reading()  # type: ignore[attr-defined]  # never reads
    writer = client.writer
    burst = PING * 500
    sent = 0
    cpu_before = cpu_seconds(n.pid)
    started = time.monotonic()
    async with probe(n) as p, rss_watch(n) as rss:
        while sent < PINGS:
            writer.write(burst)
            try:
                await asyncio.wait_for(writer.drain(), STALLED)
            except asyncio.TimeoutError:
                break  # the server stopped reading: backpressure
            sent += 500
        flood_seconds = time.monotonic() - started
        await served_meanwhile(p)
    cpu = cpu_seconds(n.pid) - cpu_before
    rss.check()
    # Without backpressure the node takes all the pings (and holds 127 MB of pongs).
    assert sent < PINGS, f"the node took all {PINGS} pings from a peer that never reads"
    # Nothing was dropped: once the peer reads, it gets a pong for every ping the node read.
    client.writer.transport.resume_reading()  # type: ignore[attr-defined]
    pongs = 0
    with contextlib.suppress(asyncio.TimeoutError):
        while True:
            frame = await client.recv_frame(2.0)
            if frame is None or frame.opcode != 0xA:
                break
            assert frame.payload == b"p" * 125
            pongs += 1
    assert pongs >= sent, (pongs, sent)
    await client.close()
    record(
        f"ping flood, never reading [{kind}]",
        pings_sent_before_blocked=sent,
        flood_seconds=round(flood_seconds, 1),
        pongs_read_after=pongs,
        server_cpu_seconds=round(cpu, 2),
        **rss.figures(),
        **p.figures(),
    )


async def test_a_ping_flood_from_a_reading_peer_costs_cpu_not_memory(node, probe) -> None:
    """The same flood from a peer that reads its pongs: never paused, so it measures what
    answering pings costs the hub (the figure that decides against a ping rate limit)."""
    n: Node = await node("serve")
    client = await attacker(n)
    reader, writer = client.reader, client.writer
    burst = PING * 500
    count = 200_000

    async def drain_pongs() -> int:
        """Pongs read: each is 127 bytes (a 2-byte header and the 125-byte payload)."""
        received = 0
        while received < count * 127:
            data = await reader.read(1 << 20)
            if not data:
                break
            received += len(data)
        return received // 127

    reading = asyncio.ensure_future(drain_pongs())
    cpu_before = cpu_seconds(n.pid)
    started = time.monotonic()
    async with probe(n) as p, rss_watch(n) as rss:
        for _ in range(count // 500):
            writer.write(burst)
            await writer.drain()
        got = await asyncio.wait_for(reading, 60)
        elapsed = time.monotonic() - started
        await served_meanwhile(p)
    cpu = cpu_seconds(n.pid) - cpu_before
    rss.check()
    assert got == count
    await client.close()
    record(
        "ping flood, reading [serve]",
        pings=count,
        seconds=round(elapsed, 2),
        server_cpu_us_per_ping=round(cpu / count * 1e6, 2),
        **rss.figures(),
        **p.figures(),
    )


# ================================================================================= bombs


def gigabyte_bomb() -> bytes:
    """1 GiB of zeros as a raw deflate stream (~1 MB), built by repeating the steady block."""
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    zeros = bytes(MiB)
    first = comp.compress(zeros) + comp.flush(zlib.Z_SYNC_FLUSH)
    steady = comp.compress(zeros) + comp.flush(zlib.Z_SYNC_FLUSH)
    return (first + steady * 1023)[:-4]


async def test_ten_gigabyte_bombs_against_echo(node, probe) -> None:
    n: Node = await node("echo", gc=False)  # freed by reference counting, or not at all
    bomb = build_frame(0xC2, gigabyte_bomb(), os.urandom(4))
    codes: list[tuple[int | None, str]] = []

    async def one() -> None:
        client = await attacker(n, deflate=True)
        with contextlib.suppress(ConnectionError):
            await client.send_raw(bomb)
        frame = await client.close_frame(30)
        codes.append((frame.close_code, frame.close_reason))
        await client.close()

    started = time.monotonic()
    async with probe(n) as p, rss_watch(n) as rss:
        await asyncio.gather(*(one() for _ in range(10)))
        await served_meanwhile(p)
    elapsed = time.monotonic() - started
    settled = await n.settle()
    rss.check()
    assert [code for code, _ in codes] == [1009] * 10, codes
    census = await n.census()
    assert not Node.live(census, "ServerConnection", "PerMessageDeflate"), census
    assert settled - rss.baseline < 16 * MiB, (settled - rss.baseline) / MiB
    record(
        "ten 1 GiB bombs [echo]",
        bomb_bytes=len(bomb),
        seconds=round(elapsed, 2),
        rss_settled_growth_mib=round((settled - rss.baseline) / MiB, 1),
        reason=codes[0][1],
        **rss.figures(),
        **p.figures(),
    )


# ====================================================================== partial messages


async def holding(n: Node, partial: bytes) -> tuple[WsClient, Any]:
    """A connection from the attacker that sends ``partial`` and never reads; on a hub it
    connects first, and the connect reply may already be a Close (the address is over)."""
    client = await attacker(n, connect=False, rcvbuf=4096)
    if client.status == 503:
        return client, client.status
    if n.kind == "serve":
        await client.command("connect", {"token": make_token("attacker")})
        reply = await client.recv_frame()
        if reply is not None and reply.opcode == 0x8:
            return client, reply
    client.writer.write(partial)  # not drained: a paused connection takes no more
    return client, None


@pytest.mark.parametrize(
    ("kind", "message", "at_most"),
    [("echo", 1 * MiB, 450), ("serve", 64 * KiB, 990)],
    ids=["echo", "serve"],
)
async def test_partial_messages_on_many_connections_from_one_address(
    node: Callable[..., Awaitable[Node]], probe: Any, kind: str, message: int, at_most: int
) -> None:
    """Connections that each send all but the last 100 bytes of a legal (max-size) message
    and never read: past 16 MiB held for the address each one is paused after its first read;
    past its hard limit (32 MiB) each connection that adds to it is closed with 1013. (How
    much a paused connection holds depends on how its first read was cut, so the hub's are
    opened until its metric shows refusals, within its 1,000 connections per address.)"""
    n = await node(kind)
    header = build_frame(0x82, bytes(message), b"mask")[:-message]
    partial = header + bytes(message - 100)
    before = await n.metrics() if kind == "serve" else None
    clients: list[WsClient] = []
    closes: list[Any] = []
    refused = 0  # new connections the front door answers 503 while the address is over
    async with probe(n) as p, rss_watch(n) as rss:
        for i in range(at_most):
            client, close = await holding(n, partial)
            if close == 503:
                refused += 1
                await client.close()
                if refused >= 5:
                    break
                continue
            clients.append(client)
            if close is not None:
                closes.append(close)
            if before is not None and i % 25 == 24:
                now = await n.metrics()
                if now.delta(before, "pulsewire_budget_exceeded_total", scope="address") >= 5:
                    break
        await n.settle()
        await served_meanwhile(p)

    async def outcome(client: WsClient) -> None:
        try:
            frame = await client.recv_frame(1.0)
        except asyncio.TimeoutError:
            return  # still open, paused
        closes.append(frame)

    await asyncio.gather(*(outcome(c) for c in clients))
    rss.check()
    codes = [(f.close_code, f.close_reason) for f in closes if f is not None and f.opcode == 0x8]
    assert len(codes) == len([f for f in closes if f is not None]), closes[:5]
    if codes:
        assert set(codes) == {(1013, "over its memory budget")}, set(codes)
        assert len(codes) < len(clients)  # the others are paused, not closed
    else:
        # A paused hub connection holds what it read before it was paused: on a quiet
        # machine (seen 2026-12-04: RSS +40.8 MiB over 990 connections, no refusal) the
        # address stayed under its hard limit, so there was nothing to close. The bound is
        # the same: RSS (checked above), and no budget refusal counted below.
        assert kind == "serve", f"no connection was closed: the budget did not hold {rss.figures()}"
    if before is not None:
        after = await n.metrics()
        exceeded = after.delta(before, "pulsewire_budget_exceeded_total", scope="address")
        assert exceeded == len(codes) + refused, (exceeded, len(codes), refused)
        assert after.delta(before, "pulsewire_disconnects_total", code="1013") == len(codes)
    for client in clients:
        await client.close()
    record(
        f"partial messages from one address [{kind}]",
        message_bytes=message,
        connections=len(clients),
        closed_1013=len(codes),
        refused_503=refused,
        **rss.figures(),
        **p.figures(),
    )
