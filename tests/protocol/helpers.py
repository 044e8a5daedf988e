"""Helpers shared by the protocol-core tests: connections with a fixed mask key, frame
builders, and an independent parser for what a Connection writes."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from pulsewire.protocol import Connection, Side
from pulsewire.protocol.frames import Frame, serialize_frame

MASK = b"\x37\xfa\x21\x3d"  # the mask of RFC 6455 section 5.7's examples

TEXT, BINARY, CONT, CLOSE, PING, PONG = 0x1, 0x2, 0x0, 0x8, 0x9, 0xA


def client(**options: object) -> Connection:
    return Connection(Side.CLIENT, mask_key=lambda: MASK, **options)  # type: ignore[arg-type]


def server(**options: object) -> Connection:
    return Connection(Side.SERVER, **options)  # type: ignore[arg-type]


def frame(
    opcode: int,
    payload: bytes = b"",
    *,
    fin: bool = True,
    rsv1: bool = False,
    rsv2: bool = False,
    rsv3: bool = False,
    mask: bytes | None = MASK,
) -> bytes:
    """A serialised frame, masked by default (as a client sends it)."""
    return serialize_frame(Frame(opcode, payload, fin, rsv1, rsv2, rsv3), mask)


def close_payload(code: int, reason: str | bytes = b"") -> bytes:
    if isinstance(reason, str):
        reason = reason.encode("utf-8")
    return struct.pack("!H", code) + reason


@dataclass(frozen=True)
class Wire:
    """One frame as found on the wire by :func:`parse_frames`."""

    opcode: int
    payload: bytes
    fin: bool
    rsv1: bool
    rsv2: bool
    rsv3: bool
    mask: bytes | None

    @property
    def close(self) -> tuple[int, str]:
        """(code, reason) of a Close frame; (1005, "") for an empty one."""
        assert self.opcode == CLOSE
        if not self.payload:
            return 1005, ""
        return struct.unpack("!H", self.payload[:2])[0], self.payload[2:].decode("utf-8")


def unmask(data: bytes, key: bytes) -> bytes:
    if not data:
        return b""
    full = (key * (len(data) // 4 + 1))[: len(data)]
    return (int.from_bytes(data, "big") ^ int.from_bytes(full, "big")).to_bytes(len(data), "big")


def parse_frames(data: bytes) -> list[Wire]:
    """Split ``data`` into frames (written independently of the code under test)."""
    frames = []
    pos = 0
    while pos < len(data):
        b0, b1 = data[pos], data[pos + 1]
        length = b1 & 0x7F
        pos += 2
        if length == 126:
            (length,) = struct.unpack_from("!H", data, pos)
            pos += 2
        elif length == 127:
            (length,) = struct.unpack_from("!Q", data, pos)
            pos += 8
        key = None
        if b1 & 0x80:
            key = data[pos : pos + 4]
            pos += 4
        payload = data[pos : pos + length]
        assert len(payload) == length, "truncated frame"
        pos += length
        if key is not None:
            payload = unmask(payload, key)
        frames.append(
            Wire(
                b0 & 0x0F,
                payload,
                bool(b0 & 0x80),
                bool(b0 & 0x40),
                bool(b0 & 0x20),
                bool(b0 & 0x10),
                key,
            )
        )
    return frames


def sent(conn: Connection) -> list[Wire]:
    """The frames ``conn`` queued since the last call."""
    return parse_frames(b"".join(conn.data_to_send()))


def failed_with(conn: Connection) -> int | None:
    """The close code ``conn`` failed with and sent, checking the two agree."""
    if conn.failure is None:
        return None
    frames = sent(conn)
    closes = [f for f in frames if f.opcode == CLOSE]
    assert len(closes) == 1, frames
    assert closes[0].close[0] == conn.failure.code
    assert conn.close_transport
    return conn.failure.code


def feed_bytewise(conn: Connection, data: bytes) -> int | None:
    """Feed ``data`` one byte at a time; the index of the byte after which ``conn`` failed."""
    for i in range(len(data)):
        conn.receive_data(data[i : i + 1])
        if conn.failure is not None:
            return i
    return None
