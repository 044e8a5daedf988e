"""Frame layout (RFC 6455 section 5.2): opcodes, masking and serialisation.

Parsing lives in :mod:`pulsewire.protocol.connection`, which needs the connection's state to
validate a header as soon as it arrives. This module holds the stateless pieces, and is where
the optional C accelerator plugs in: :func:`apply_mask` and :func:`build_frame` are replaced by
``pulsewire.protocol._speedups`` when it is built, unless ``PULSEWIRE_NO_EXTENSIONS=1``, and
``scan_messages`` (the receive fast path of :class:`~pulsewire.protocol.Connection`) is set.
"""

from __future__ import annotations

import enum
import os
import struct
from dataclasses import dataclass

from .close import Close, CloseCode, is_valid_close_code
from .errors import ProtocolError

__all__ = [
    "MAX_CONTROL_PAYLOAD",
    "SPEEDUPS",
    "Frame",
    "Opcode",
    "PreparedFrame",
    "apply_mask",
    "build_frame",
    "frame_header",
    "parse_close",
    "serialize_frame",
]

MAX_CONTROL_PAYLOAD = 125


class Opcode(enum.IntEnum):
    CONT = 0x0
    TEXT = 0x1
    BINARY = 0x2
    CLOSE = 0x8
    PING = 0x9
    PONG = 0xA


FIN = 0x80
RSV1 = 0x40
MASK_BIT = 0x80

_pack_16 = struct.Struct("!BBH").pack
_pack_64 = struct.Struct("!BBQ").pack


def _py_apply_mask(data: bytes | bytearray | memoryview, mask: bytes) -> bytes:
    """XOR ``data`` with the 4-byte ``mask`` repeated (masking and unmasking are the same)."""
    n = len(data)
    if n == 0:
        return b""
    # One big-integer XOR runs in C and beats a Python loop by two orders of magnitude.
    key = int.from_bytes(mask * (n // 4) + mask[: n % 4], "big")
    return (int.from_bytes(data, "big") ^ key).to_bytes(n, "big")


def _py_build_frame(first_byte: int, payload: bytes, mask: bytes | None) -> bytes:
    """Serialise one frame: ``first_byte`` holds FIN, RSV1-3 and the opcode."""
    n = len(payload)
    mask_bit = MASK_BIT if mask is not None else 0
    if n < 126:
        header = bytes((first_byte, n | mask_bit))
    elif n < 65536:
        header = _pack_16(first_byte, 126 | mask_bit, n)
    else:
        header = _pack_64(first_byte, 127 | mask_bit, n)
    if mask is not None:
        return header + mask + _py_apply_mask(payload, mask)
    return header + payload


apply_mask = _py_apply_mask
build_frame = _py_build_frame
scan_messages = None
SPEEDUPS = False
SPEEDUPS_ABSENT = (
    "the C accelerator is disabled (PULSEWIRE_NO_EXTENSIONS=1)"
    if os.environ.get("PULSEWIRE_NO_EXTENSIONS")
    else "the C accelerator is not built"
)
"""Why the accelerator is not in use (for tests and diagnostics)."""

if not os.environ.get("PULSEWIRE_NO_EXTENSIONS"):
    try:
        from . import _speedups  # type: ignore[attr-defined]
    except ImportError:  # no compiler at install time: the pure-Python path is complete
        pass
    else:
        apply_mask = _speedups.apply_mask
        build_frame = _speedups.build_frame
        scan_messages = _speedups.scan_messages
        SPEEDUPS = True


def frame_header(first: int, n: int) -> bytes:
    """The header of an unmasked frame: ``first`` holds FIN, RSV1-3 and the opcode; ``n`` is
    the payload length."""
    if n < 126:
        return bytes((first, n))
    if n < 65536:
        return bytes((first, 126)) + n.to_bytes(2, "big")
    return bytes((first, 127)) + n.to_bytes(8, "big")


class PreparedFrame:
    """A data message serialised once, to be sent to many connections (a broadcast, a hub
    publication): :meth:`Connection.send_prepared` queues the shared :attr:`data` where it
    fits the connection as it is (server side, message not compressed), and frames
    :attr:`payload` for that connection alone otherwise (masked, or compressed).

    ``str`` is sent as text and bytes as binary, unless ``binary`` says otherwise (bytes sent
    as text must be UTF-8).
    """

    __slots__ = ("data", "opcode", "payload")

    def __init__(self, message: str | bytes, *, binary: bool | None = None) -> None:
        if isinstance(message, str):
            payload = message.encode("utf-8")
            text = not binary
        else:
            payload = message if type(message) is bytes else bytes(message)
            text = binary is False
        self.opcode = 1 if text else 2
        """The message's opcode (text or binary)."""
        self.payload = payload
        """The message, as bytes."""
        self.data = frame_header(FIN | self.opcode, len(payload)) + payload
        """The whole frame: unmasked, uncompressed, not fragmented."""

    def __repr__(self) -> str:
        return f"PreparedFrame({Opcode(self.opcode).name}, {len(self.payload)} bytes)"


@dataclass(frozen=True, slots=True)
class Frame:
    """One frame, for tests and tools; the connection's hot path does not build these."""

    opcode: int
    payload: bytes = b""
    fin: bool = True
    rsv1: bool = False
    rsv2: bool = False
    rsv3: bool = False


def serialize_frame(frame: Frame, mask: bytes | None = None) -> bytes:
    """Serialise a :class:`Frame`, masked with ``mask`` (or a random key when ``mask=True``)."""
    first = (
        (FIN if frame.fin else 0)
        | (RSV1 if frame.rsv1 else 0)
        | (0x20 if frame.rsv2 else 0)
        | (0x10 if frame.rsv3 else 0)
        | frame.opcode
    )
    return build_frame(first, frame.payload, mask)


def parse_close(payload: bytes) -> Close:
    """Decode a Close frame payload; raises ProtocolError (1002/1007) when it is invalid."""
    if not payload:
        return Close(CloseCode.NO_STATUS_RCVD, "")
    if len(payload) == 1:
        raise ProtocolError("close frame with a 1-byte payload")
    (code,) = struct.unpack_from("!H", payload)
    if not is_valid_close_code(code):
        raise ProtocolError(f"invalid close code {code}")
    try:
        reason = payload[2:].decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError("close reason is not valid UTF-8", CloseCode.INVALID_DATA) from None
    return Close(code, reason)
