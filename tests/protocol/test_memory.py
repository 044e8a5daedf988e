"""What the protocol core holds, measured: decompression bombs, failed messages, input held
back after much inflation, and :attr:`Connection.buffered_in`.

Peaks are measured with ``tracemalloc`` (every Python and zlib allocation, deterministic
whatever the machine's load), on both receive paths (the ``parser`` fixture).
"""

from __future__ import annotations

import gc
import tracemalloc
import weakref
import zlib
from collections.abc import Iterator

import pytest

from pulsewire.protocol import Connection, PerMessageDeflate, Side
from pulsewire.protocol.deflate import INFLATE_STEP

from .helpers import BINARY, CONT, TEXT, failed_with, frame, server

KiB = 1024
MiB = 1024 * KiB
READ = 256 * KiB  # what one read of an asyncio or uvloop transport brings at most


def zeros_stream(mib: int) -> bytes:
    """A raw deflate stream (sync-flushed, RFC 7692 tail removed) of ``mib`` MiB of zeros:
    about 1 KB per MiB, built by repeating the steady-state block."""
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    zeros = bytes(MiB)
    first = comp.compress(zeros) + comp.flush(zlib.Z_SYNC_FLUSH)
    steady = comp.compress(zeros) + comp.flush(zlib.Z_SYNC_FLUSH)
    return (first + steady * (mib - 1))[:-4]


def compressed(data: bytes) -> bytes:
    """``data`` as one permessage-deflate message payload (fresh context)."""
    comp = zlib.compressobj(6, zlib.DEFLATED, -15)
    return (comp.compress(data) + comp.flush(zlib.Z_SYNC_FLUSH))[:-4]


def feed(conn: Connection, data: bytes, size: int = READ) -> None:
    """As a socket delivers it, until the connection fails."""
    for i in range(0, len(data), size):
        conn.receive_data(data[i : i + size])
        if conn.failure is not None:
            return


@pytest.fixture
def traced() -> Iterator[None]:
    tracemalloc.start()
    try:
        yield
    finally:
        tracemalloc.stop()


def grown() -> tuple[int, int]:
    """(now, peak) bytes allocated since the last reset."""
    return tracemalloc.get_traced_memory()


# ========================================================================== decompression bombs


@pytest.mark.parametrize("limit", [1 * MiB, 16 * MiB], ids=["1MiB", "16MiB"])
@pytest.mark.parametrize("opcode", [TEXT, BINARY], ids=["text", "binary"])
def test_a_gigabyte_bomb_costs_at_most_the_limit_plus_a_constant(
    parser: str, traced: None, limit: int, opcode: int
) -> None:
    data = frame(opcode, zeros_stream(1024), rsv1=True)  # 1 MB on the wire, 1 GiB inflated
    conn = server(deflate=PerMessageDeflate(), max_message_size=limit)
    tracemalloc.reset_peak()
    base = grown()[0]
    feed(conn, data)
    now, peak = grown()
    assert failed_with(conn) == 1009
    # The message's pieces (at most the limit) plus one read, its unmasked copy and a few
    # zlib steps; before, zlib's output buffer held the limit twice.
    assert peak - base <= limit + 1 * MiB, (peak - base - limit) / MiB
    # And the failed message is dropped at once, not kept until the connection goes.
    assert now - base < 64 * KiB
    assert conn.buffered_in == 0
    assert conn.events_received() == []


def test_a_bomb_in_fragments_is_bounded_too(parser: str, traced: None) -> None:
    stream = zeros_stream(256)
    third = len(stream) // 3
    data = (
        frame(BINARY, stream[:third], fin=False, rsv1=True)
        + frame(CONT, stream[third : 2 * third], fin=False)
        + frame(CONT, stream[2 * third :])
    )
    conn = server(deflate=PerMessageDeflate(), max_message_size=4 * MiB)
    tracemalloc.reset_peak()
    base = grown()[0]
    feed(conn, data, 64 * KiB)
    assert failed_with(conn) == 1009
    assert grown()[1] - base <= 5 * MiB


def test_inflation_gives_bounded_pieces_and_every_byte() -> None:
    codec = PerMessageDeflate()
    size = 3 * INFLATE_STEP  # an exact multiple: output left inside zlib must come out too
    pieces = list(codec.inflate_pieces(compressed(bytes(size)), True, None))
    assert all(len(piece) <= INFLATE_STEP for piece in pieces)
    assert sum(map(len, pieces)) == size
    assert b"".join(codec.inflate_pieces(compressed(b"next"), True, 4)) == b"next"
    with pytest.raises(Exception) as raised:
        list(codec.inflate_pieces(compressed(b"12345"), True, 4))
    assert getattr(raised.value, "code", None) == 1009


def test_a_message_at_the_limit_passes(parser: str) -> None:
    payload = bytes(range(256)) * (4 * MiB // 256)
    conn = server(deflate=PerMessageDeflate(), max_message_size=len(payload))
    feed(conn, frame(BINARY, compressed(payload), rsv1=True), 64 * KiB)
    assert conn.failure is None
    assert conn.events_received() == [payload]


def test_text_split_between_inflated_pieces_decodes(parser: str) -> None:
    # A four-byte character straddles a piece boundary; text is decoded once, when complete.
    text = "a" * (INFLATE_STEP - 2) + "\U0001f600" + "é" * INFLATE_STEP + "✓"
    conn = server(deflate=PerMessageDeflate())
    feed(conn, frame(TEXT, compressed(text.encode()), rsv1=True), 1000)
    assert conn.events_received() == [text]


def test_invalid_utf8_in_a_long_text_fails_before_the_end(parser: str) -> None:
    # Validated piece by piece: the bad byte fails the connection before the message ends.
    conn = server()
    conn.receive_data(frame(TEXT, b"ok " * 100 + b"\xff", fin=False))
    assert failed_with(conn) == 1007
    conn = server(deflate=PerMessageDeflate())
    bad = compressed(b"a" * 3 * INFLATE_STEP + b"\xff" + b"b" * 3 * INFLATE_STEP)
    conn.receive_data(frame(TEXT, bad, rsv1=True, fin=False))
    assert failed_with(conn) == 1007


# ======================================================================== input held back


def small_bombs(count: int, mib: int) -> bytes:
    """``count`` compressed binary messages of ``mib`` MiB of zeros each, in one buffer."""
    return b"".join(frame(BINARY, compressed(bytes(mib * MiB)), rsv1=True) for _ in range(count))


def test_one_read_of_small_bombs_is_held_back_after_the_cap(parser: str, traced: None) -> None:
    data = small_bombs(40, 1)  # 40 legal messages, ~40 KB on the wire, 40 MiB inflated
    assert len(data) < READ
    conn = server(deflate=PerMessageDeflate(), max_message_size=MiB, max_inflated_per_read=2 * MiB)
    tracemalloc.reset_peak()
    base = grown()[0]
    conn.receive_data(data)
    delivered = conn.events_received()
    assert conn.input_held_back
    assert [len(m) for m in delivered] == [MiB, MiB]  # the cap, then it stops
    assert conn.buffered_in > 0  # the rest of the read, unparsed
    del delivered
    rounds = 1
    total = 2
    while conn.input_held_back:
        conn.receive_data(b"")
        total += len(conn.events_received())
        rounds += 1
    assert total == 40 and rounds == 20
    assert conn.buffered_in == 0
    # What one call produced (the cap), not the 40 MiB of the whole read.
    assert grown()[1] - base <= 4 * MiB


def test_without_a_cap_a_read_is_parsed_whole(parser: str) -> None:
    conn = server(deflate=PerMessageDeflate(), max_message_size=MiB)
    conn.receive_data(small_bombs(5, 1))
    assert len(conn.events_received()) == 5
    assert not conn.input_held_back


def test_held_back_input_keeps_its_order_with_control_frames(parser: str) -> None:
    conn = server(deflate=PerMessageDeflate(), max_inflated_per_read=MiB)
    data = small_bombs(2, 1) + frame(0x9, b"p") + frame(TEXT, b"after")
    conn.receive_data(data)
    events = conn.events_received()
    assert len(events) == 1 and conn.input_held_back
    while conn.input_held_back:
        conn.receive_data(b"")
        events += conn.events_received()
    assert [type(e).__name__ for e in events] == ["bytes", "bytes", "Ping", "str"]
    assert events[3] == "after"


# ============================================================================ buffered_in


def test_buffered_in_counts_unparsed_input_and_the_partial_message(parser: str) -> None:
    conn = server()
    assert conn.buffered_in == 0
    header_only = frame(BINARY, bytes(100_000), fin=False)[:5]
    conn.receive_data(header_only)  # an incomplete header waits
    assert conn.buffered_in == 5
    conn = server()
    data = frame(BINARY, bytes(100_000), fin=False)  # streamed: bigger than 64 KiB
    conn.receive_data(data[:60_000])
    held = conn.buffered_in
    assert 59_000 < held <= 60_000
    conn.receive_data(data[60_000:])
    assert conn.buffered_in == 100_000  # the first fragment, waiting for the rest
    conn.receive_data(frame(CONT, b"end"))
    assert conn.buffered_in == 0
    assert [len(m) for m in conn.events_received()] == [100_003]


def test_a_failure_drops_the_partial_message(parser: str) -> None:
    conn = server()
    conn.receive_data(frame(BINARY, bytes(100_000), fin=False))
    assert conn.buffered_in == 100_000
    conn.receive_data(frame(TEXT, b"not a continuation"))
    assert failed_with(conn) == 1002
    assert conn.buffered_in == 0


def test_a_failed_connection_is_freed_by_reference_counting(parser: str) -> None:
    conn = Connection(Side.SERVER, deflate=PerMessageDeflate(), max_message_size=MiB)
    conn.receive_data(frame(BINARY, zeros_stream(8), rsv1=True))
    assert failed_with(conn) == 1009
    failure = conn.failure
    assert failure is not None and failure.__traceback__ is None
    assert failure.__context__ is None
    ref = weakref.ref(conn)
    gc.disable()
    try:
        del conn
        assert ref() is None, "the stored failure's traceback kept the connection alive"
    finally:
        gc.enable()
