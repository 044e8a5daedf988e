"""Reading into memory: :meth:`Connection.get_buffer` and :meth:`Connection.buffer_updated`,
the entry point of ``asyncio.BufferedProtocol``: a buffer shared by every connection, or the
connection's own for the rest of a frame.

Every test runs on both receive paths (the ``parser`` fixture: the C fast path and pure
Python). Reads are written into the returned view while it stays alive, as an event loop
does, so a bytearray resized under a live view would fail here with ``BufferError``.
"""

from __future__ import annotations

import random
import zlib
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from pulsewire.protocol import Connection, PerMessageDeflate, Ping, Side, receiving
from pulsewire.protocol.receiving import GROWTH, MIN_OWN

from .helpers import BINARY, CONT, PING, TEXT, failed_with, frame, server

pytestmark = pytest.mark.usefixtures("parser")

KiB = 1024
MiB = 1024 * KiB

SHARED_SIZE = 256 * KiB
SHARED = memoryview(bytearray(SHARED_SIZE))
"""The memory every connection of these tests reads into when it holds no partial frame (as
an event loop's connections share one)."""

SETTINGS = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


def read_into(conn: Connection, data: bytes) -> int:
    """One read of (at most) ``data`` into ``conn``: how many bytes it took."""
    buf = conn.get_buffer(SHARED)
    assert len(buf) > 0
    n = min(len(buf), len(data))
    buf[:n] = data[:n]
    conn.buffer_updated(n)  # with ``buf`` alive, as asyncio and uvloop call it
    del buf
    return n


def drain(conn: Connection) -> list[object]:
    """The events so far, going on with input held back after much inflation."""
    events = list(conn.events_received())  # a list of our own (the core's may be empty)
    while conn.input_held_back:
        conn.receive_data(b"")
        events += conn.events_received()
    return events


def feed_reads(conn: Connection, wire: bytes, sizes: list[int]) -> list[object]:
    """``wire`` as reads of the given sizes in turn (each also bounded by the buffer)."""
    events: list[object] = []
    pos = i = 0
    least = len(wire) // 500  # tiny reads, but not tens of thousands of them (test time)
    while pos < len(wire):
        pos += read_into(conn, wire[pos : pos + max(least, sizes[i % len(sizes)])])
        i += 1
        events += drain(conn)
    return events


# ------------------------------------------------------------------------------- the model


@dataclass(frozen=True)
class Msg:
    text: bool
    size: int
    seed: int
    fragments: int
    compress: bool

    def data(self) -> str | bytes:
        raw = random.Random(self.seed).randbytes(self.size)
        return raw.hex()[: self.size] if self.text else raw


# Sizes around every boundary of the receive path: header lengths (126, 65536), the own
# buffer's smallest size, the whole-frame limit, the shared buffer.
SIZES = st.one_of(
    st.integers(0, 300),
    st.sampled_from([125, 126, 127, 65535, 65536, 65537, MIN_OWN - 1, MIN_OWN + 1]),
    st.integers(60 * KiB, 200 * KiB),
)


@st.composite
def msgs(draw: st.DrawFn) -> Msg:
    return Msg(
        draw(st.booleans()),
        draw(SIZES),
        draw(st.integers(0, 2**32)),
        draw(st.sampled_from([1, 1, 1, 3])),
        draw(st.sampled_from([False, False, True])),
    )


def wire_of(messages: list[Msg], deflate: bool) -> tuple[bytes, list[object], Connection]:
    """What a client sends for ``messages`` (with a Ping after each), the events a server
    should report, and a fresh server that negotiated the same thing."""
    sender = Connection(Side.CLIENT, deflate=PerMessageDeflate() if deflate else None)
    expected: list[object] = []
    for index, msg in enumerate(messages):
        data = msg.data()
        step = max(1, -(-len(data) // msg.fragments))
        pieces = [data[i : i + step] for i in range(0, len(data), step)] or [data]
        for i, piece in enumerate(pieces):
            last = i == len(pieces) - 1
            if i:
                sender.send_continuation(piece, fin=last)
            elif msg.text:
                sender.send_text(piece, fin=last, compress=msg.compress)
            else:
                sender.send_binary(piece, fin=last, compress=msg.compress)  # type: ignore[arg-type]
        sender.send_ping(index.to_bytes(4, "big"))
        expected += [data, Ping(index.to_bytes(4, "big"))]
    receiver = Connection(
        Side.SERVER,
        deflate=PerMessageDeflate() if deflate else None,
        max_message_size=None,
        max_inflated_per_read=MiB,
    )
    return b"".join(sender.data_to_send()), expected, receiver


# Always run, whatever Hypothesis draws: a 64 KiB binary frame, fragmented text past the
# whole-frame path, and compressed binary larger than a read of the shared buffer.
LARGE = [
    Msg(False, 65536, 1, 1, False),
    Msg(True, 100_000, 2, 3, False),
    Msg(False, 150_000, 3, 1, False),
    Msg(False, 300_000, 4, 1, True),
]

read_sizes = st.lists(
    st.one_of(st.integers(1, 20), st.integers(1, 70 * KiB), st.just(SHARED_SIZE)),
    min_size=1,
    max_size=8,
)


# ------------------------------------------------------------------------------- properties


@SETTINGS
@given(st.lists(msgs(), max_size=4), st.booleans(), read_sizes)
@example(LARGE, False, [7, 70_000, SHARED_SIZE, 1000])
@example(LARGE, True, [SHARED_SIZE])
def test_any_reads_give_the_events_of_one_receive_data(
    messages: list[Msg], deflate: bool, sizes: list[int]
) -> None:
    wire, expected, conn = wire_of(messages, deflate)
    _, _, at_once = wire_of(messages, deflate)
    at_once.receive_data(wire)
    assert drain(at_once) == expected
    assert feed_reads(conn, wire, sizes) == expected
    assert conn.failure is None
    assert conn.buffered_in == 0  # every frame parsed: no own buffer kept


@SETTINGS
@given(
    st.lists(msgs(), max_size=3),
    st.lists(msgs(), max_size=3),
    read_sizes,
    st.lists(st.booleans(), min_size=1, max_size=16),
)
@example(LARGE[:2], LARGE[2:], [SHARED_SIZE, 5000], [True, False])
def test_connections_sharing_a_buffer_keep_their_own_bytes(
    first: list[Msg], second: list[Msg], sizes: list[int], turns: list[bool]
) -> None:
    # Two connections read in turns: what one leaves unparsed must be out of the shared
    # buffer before the other's read overwrites it.
    (wire_a, expected_a, a), (wire_b, expected_b, b) = wire_of(first, False), wire_of(second, True)
    pos = {id(a): 0, id(b): 0}
    events: dict[int, list[object]] = {id(a): [], id(b): []}
    i = 0
    least = (len(wire_a) + len(wire_b)) // 500
    while pos[id(a)] < len(wire_a) or pos[id(b)] < len(wire_b):
        first_turn = turns[i % len(turns)] and pos[id(a)] < len(wire_a)
        conn, wire = (a, wire_a) if first_turn or pos[id(b)] == len(wire_b) else (b, wire_b)
        start = pos[id(conn)]
        if start < len(wire):
            size = max(least, sizes[i % len(sizes)])
            pos[id(conn)] += read_into(conn, wire[start : start + size])
            events[id(conn)] += drain(conn)
        i += 1
    assert events[id(a)] == expected_a
    assert events[id(b)] == expected_b


@SETTINGS
@given(st.lists(msgs(), max_size=4), read_sizes, st.lists(st.booleans(), min_size=1, max_size=16))
def test_reads_and_receive_data_mix(
    messages: list[Msg], sizes: list[int], turns: list[bool]
) -> None:
    wire, expected, conn = wire_of(messages, False)
    events: list[object] = []
    pos = i = 0
    while pos < len(wire):
        size = max(len(wire) // 500, sizes[i % len(sizes)])
        if turns[i % len(turns)]:
            pos += read_into(conn, wire[pos : pos + size])
        else:
            conn.receive_data(wire[pos : pos + size])
            pos += len(wire[pos : pos + size])
        events += drain(conn)
        i += 1
    assert events == expected


# ------------------------------------------------------------------------------- memory


def test_a_frame_is_read_in_behind_its_first_bytes() -> None:
    payload = random.Random(1).randbytes(64 * KiB)
    wire = frame(BINARY, payload)
    conn = server()
    read_into(conn, wire[: 40 * KiB])
    assert conn.events_received() == []
    # Room for the whole frame: the rest lands behind it, in one read.
    assert len(conn.get_buffer(SHARED)) >= len(wire) - 40 * KiB
    read_into(conn, wire[40 * KiB :])
    assert conn.events_received() == [payload]
    assert conn.buffered_in == 0


def test_a_large_frame_announced_costs_what_the_peer_sent() -> None:
    payload = bytes(MiB)
    wire = frame(BINARY, payload)
    conn = server(max_message_size=2 * MiB)
    read_into(conn, wire[:20])  # the header and 6 bytes
    # (A buffer let go by another connection may be reused: up to twice the size wanted.)
    assert conn.buffered_in <= 2 * MIN_OWN
    sent = 20
    while sent < len(wire):
        sent += read_into(conn, wire[sent : sent + 50 * KiB])
        assert conn.buffered_in <= 2 * max(MIN_OWN, GROWTH * sent)
        assert conn.buffered_in <= 2 * len(wire)
    assert conn.events_received() == [payload]
    assert conn.buffered_in == 0


def test_the_own_buffer_shrinks_after_a_large_frame() -> None:
    big = frame(BINARY, bytes(500 * KiB))
    conn = server()
    read_into(conn, big[:100])
    feed_reads(conn, big[100:] + frame(TEXT, b"partial")[:3], [len(big)])
    assert conn.events_received() == []
    assert conn.buffered_in <= 2 * MIN_OWN  # 3 bytes waiting: not 500 KiB


def test_held_back_input_from_a_read_is_kept_and_parsed_later() -> None:
    comp = zlib.compressobj(6, zlib.DEFLATED, -15)
    bomb = comp.compress(bytes(MiB)) + comp.flush(zlib.Z_SYNC_FLUSH)
    wire = b"".join(frame(BINARY, bomb[:-4], rsv1=True) for _ in range(6))
    wire += frame(PING, b"p") + frame(TEXT, b"after")
    conn = server(deflate=PerMessageDeflate(), max_inflated_per_read=MiB)
    read_into(conn, wire)
    events = conn.events_received()
    assert len(events) == 1 and conn.input_held_back
    assert conn.buffered_in > 0  # the rest of the read, out of the shared buffer
    read_into(server(), frame(TEXT, b"x" * 1000) * 50)  # another connection reuses SHARED
    events += drain(conn)
    assert [type(e).__name__ for e in events] == ["bytes"] * 6 + ["Ping", "str"]


def test_failures_are_the_same_as_with_receive_data() -> None:
    conn = server()
    read_into(conn, frame(TEXT, "é".encode()[:1]))
    assert failed_with(conn) == 1007
    conn = server(max_message_size=1000)
    read_into(conn, frame(BINARY, b"x" * 600, fin=False) + frame(CONT, b"x" * 600)[:8])
    assert failed_with(conn) == 1009
    assert conn.buffered_in == 0
    # Reads after a failure are taken and dropped.
    read_into(conn, b"anything")
    assert conn.events_received() == []


def test_reused_buffers_are_never_shared(monkeypatch: pytest.MonkeyPatch) -> None:
    # Buffers let go with equal contents, then taken again by two connections at once: each
    # must get its own (bytearrays compare by content, not identity).
    monkeypatch.setattr(receiving, "_spare", [])
    monkeypatch.setattr(receiving, "_spare_bytes", 0)
    same = frame(BINARY, bytes(40 * KiB))
    first, second = server(), server()
    for conn in (first, second):
        read_into(conn, same[: 30 * KiB])
    for conn in (first, second):
        read_into(conn, same[30 * KiB :])
        assert conn.events_received() == [bytes(40 * KiB)]
    payloads = [random.Random(i).randbytes(40 * KiB) for i in range(2)]
    wires = [frame(BINARY, p) for p in payloads]
    conns = [server(), server()]
    for conn, wire in zip(conns, wires, strict=True):
        read_into(conn, wire[: 30 * KiB])
    for conn, wire, payload in zip(conns, wires, payloads, strict=True):
        read_into(conn, wire[30 * KiB :])
        assert conn.events_received() == [payload]
