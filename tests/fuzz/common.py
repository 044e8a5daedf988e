"""What the fuzz tests share: the example budget, mutations of valid inputs, chunking.

The budget: each fuzz test runs ``default`` examples (a few hundred: CI stays fast), or
``PULSEWIRE_FUZZ_EXAMPLES`` examples when that is set (e.g. 100000 for a long campaign;
see docs/fuzzing.md).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

ENV = "PULSEWIRE_FUZZ_EXAMPLES"


def fuzz_settings(default: int) -> settings:
    examples = int(os.environ.get(ENV) or default)
    return settings(
        max_examples=examples,
        deadline=None,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.function_scoped_fixture,
            HealthCheck.data_too_large,
            HealthCheck.filter_too_much,
        ],
    )


# --------------------------------------------------------------------------------- mutations


@st.composite
def mutated(draw: st.DrawFn, base: bytes, max_mutations: int = 6) -> bytes:
    """``base`` with a few byte-level mutations: flips, overwrites, inserts, deletions,
    duplicated or swapped ranges, truncation, interesting values (0x00, 0x7e, 0x7f, 0xff)."""
    data = bytearray(base)
    for _ in range(draw(st.integers(0, max_mutations))):
        n = len(data)
        kind = draw(
            st.sampled_from(
                ["flip", "set", "insert", "delete", "duplicate", "truncate", "interesting"]
            )
        )
        if n == 0:
            kind = "insert"
        at = draw(st.integers(0, max(0, n - 1)))
        if kind == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set":
            data[at] = draw(st.integers(0, 255))
        elif kind == "interesting":
            data[at] = draw(st.sampled_from([0x00, 0x01, 0x7E, 0x7F, 0x80, 0x88, 0xFF]))
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "delete":
            del data[at : at + draw(st.integers(1, 16))]
        elif kind == "duplicate":
            end = min(n, at + draw(st.integers(1, 64)))
            data[at:at] = data[at:end]
        else:
            del data[at:]
    return bytes(data)


def chunks(data: bytes, cuts: list[int]) -> Iterator[bytes]:
    """``data`` split at ``cuts`` (indices, any order, duplicates allowed)."""
    start = 0
    for cut in sorted({c % (len(data) + 1) for c in cuts}):
        yield data[start:cut]
        start = cut
    yield data[start:]


cut_points = st.lists(st.integers(0, 1 << 16), max_size=8)


# ---------------------------------------------------------------------------- frame reading


@dataclass(frozen=True)
class WireFrame:
    opcode: int
    payload: bytes
    fin: bool
    rsv: int
    masked: bool


def parse_output(data: bytes) -> list[WireFrame]:
    """Parse what a Connection wrote; asserts that it is a well-formed sequence of frames."""
    frames: list[WireFrame] = []
    pos = 0
    while pos < len(data):
        assert len(data) - pos >= 2, "truncated frame header in the output"
        b0, b1 = data[pos], data[pos + 1]
        length = b1 & 0x7F
        pos += 2
        if length == 126:
            (length,) = struct.unpack_from("!H", data, pos)
            pos += 2
        elif length == 127:
            (length,) = struct.unpack_from("!Q", data, pos)
            pos += 8
        mask = None
        if b1 & 0x80:
            mask = data[pos : pos + 4]
            pos += 4
        payload = data[pos : pos + length]
        assert len(payload) == length, "truncated frame payload in the output"
        pos += length
        if mask is not None:
            payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        frames.append(WireFrame(b0 & 0x0F, payload, bool(b0 & 0x80), b0 & 0x70, mask is not None))
    return frames
