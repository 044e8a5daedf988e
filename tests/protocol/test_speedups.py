"""The C accelerator agrees with the pure-Python path, byte for byte and event for event."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pulsewire.protocol import frames
from pulsewire.protocol.connection import Connection, Side

try:
    from pulsewire.protocol import _speedups  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - exercised on machines without a compiler
    _speedups = None

needs_speedups = pytest.mark.skipif(_speedups is None, reason="C accelerator not built")


def test_accelerator_is_used_when_built() -> None:
    disabled = bool(os.environ.get("PULSEWIRE_NO_EXTENSIONS"))
    if os.environ.get("CI") == "true" and not disabled:
        # CI has a compiler: a silent fallback to pure Python would hide a broken build.
        assert _speedups is not None, "the C accelerator was not built"
    assert (_speedups is not None and not disabled) == frames.SPEEDUPS
    assert (frames.scan_messages is None) == (not frames.SPEEDUPS)


@needs_speedups
@given(st.binary(max_size=300), st.binary(min_size=4, max_size=4))
@settings(max_examples=300, deadline=None)
def test_apply_mask_matches_python(data: bytes, mask: bytes) -> None:
    assert _speedups.apply_mask(data, mask) == frames._py_apply_mask(data, mask)


@needs_speedups
@given(
    st.integers(0, 255),
    st.one_of(
        st.binary(max_size=200),
        st.integers(65530, 65540).map(lambda n: (bytes(range(256)) * 257)[:n]),
    ),
    st.one_of(st.none(), st.binary(min_size=4, max_size=4)),
)
@settings(max_examples=200, deadline=None)
def test_build_frame_matches_python(first: int, payload: bytes, mask: bytes | None) -> None:
    assert _speedups.build_frame(first, payload, mask) == frames._py_build_frame(
        first, payload, mask
    )


@needs_speedups
@pytest.mark.parametrize("avx2", [True, False])
def test_every_vector_width_masks_like_python(avx2: bool) -> None:
    # Lengths around the 16- and 32-byte vectors and the 8-byte tail; AVX2 off: SSE2.
    assert _speedups._use_avx2(avx2) in (avx2, False)  # False: no AVX2 on this CPU
    try:
        for n in (*range(60, 140), 65536 + 37):
            data = bytes((i * 7 + n) & 0xFF for i in range(n))
            assert _speedups.apply_mask(data, b"\x9a\x01\xfe\x42") == frames._py_apply_mask(
                data, b"\x9a\x01\xfe\x42"
            )
    finally:
        _speedups._use_avx2(True)  # back to what the CPU has


@needs_speedups
def test_mask_must_be_four_bytes() -> None:
    with pytest.raises(ValueError):
        _speedups.apply_mask(b"abc", b"xyz")
    with pytest.raises(ValueError):
        _speedups.build_frame(0x81, b"abc", b"xyzzy")


message = st.one_of(st.text(max_size=300), st.binary(max_size=300))


@needs_speedups
@given(st.lists(message, max_size=8), st.data())
@settings(max_examples=200, deadline=None)
def test_scan_messages_equals_the_python_parser(
    messages: list[str | bytes], data: st.DataObject
) -> None:
    """Feed the same masked stream with and without the fast path, in the same chunks."""
    mask = b"\x01\x02\x03\x04"
    stream = b"".join(
        frames._py_build_frame(
            0x81 if isinstance(m, str) else 0x82, m.encode() if isinstance(m, str) else m, mask
        )
        for m in messages
    )
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=4)))
    chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]

    def run(fast: bool) -> list[object]:
        saved = frames.scan_messages
        import pulsewire.protocol.connection as module

        module.scan_messages = saved if fast else None
        try:
            conn = Connection(Side.SERVER)
            for chunk in chunks:
                conn.receive_data(chunk)
            assert conn.failure is None
            return list(conn.events_received())
        finally:
            module.scan_messages = saved

    assert run(True) == run(False) == messages


def scan(data: bytes | bytearray, end: int | None = None, limit: int = 2**20) -> tuple[int, list]:
    """The fast path on a server's input, as the Python parser calls it on its own memory."""
    events: list[object] = []
    n = len(data) if end is None else end
    return _speedups.scan_messages(data, 0, n, False, limit, events, False), events


@needs_speedups
def test_scan_stops_without_raising_at_what_it_does_not_handle() -> None:
    mask = b"abcd"
    ok = frames._py_build_frame(0x81, b"hi", mask)
    invalid_utf8 = frames._py_build_frame(0x81, b"\xff", mask)
    assert scan(ok + invalid_utf8) == (len(ok), ["hi"])
    unmasked = frames._py_build_frame(0x81, b"hi", None)
    assert scan(unmasked) == (0, [])  # a server needs masks
    big = frames._py_build_frame(0x82, b"x" * 100, mask)
    assert scan(big, limit=99) == (0, [])  # over the limit
    assert scan(ok[:5]) == (0, [])  # incomplete
    assert scan(ok + ok, end=len(ok) + 5) == (len(ok), ["hi"])  # nothing read past ``end``
    with pytest.raises(ValueError):
        _speedups.scan_messages(ok, 0, len(ok) + 1, False, None, [], False)


@needs_speedups
def test_text_is_unmasked_in_place_only_in_the_connections_memory() -> None:
    text = "héllo wörld " * 100  # longer than the C path's stack scratch buffer
    wire = frames._py_build_frame(0x81, text.encode(), b"abcd")
    mine = bytearray(wire)
    events: list[object] = []
    assert _speedups.scan_messages(mine, 0, len(mine), False, None, events, True) == len(wire)
    assert events == [text]
    assert mine[8:] == text.encode()  # unmasked where it lay, decoded from there
    theirs = bytearray(wire)
    assert _speedups.scan_messages(theirs, 0, len(wire), False, None, [], False) == len(wire)
    assert theirs == wire  # not in_place: the caller's bytes are left alone


@needs_speedups
def test_text_that_is_not_utf8_is_left_masked_for_the_python_path() -> None:
    # Unmasked in place, found invalid, handed back: the bytes must be as they arrived, or
    # the Python parser would unmask them a second time.
    wire = frames._py_build_frame(0x81, b"ok" * 300 + b"\xc3(", b"wxyz")
    buf = bytearray(wire)
    assert _speedups.scan_messages(buf, 0, len(buf), False, None, [], True) == 0
    assert buf == wire
