"""The Sans-I/O WebSocket protocol: no sockets, no event loop, no clocks.

:class:`ServerHandshake` / :class:`ClientHandshake` turn the opening handshake's bytes into a
decision, and :class:`Connection` turns frames into events and send calls into bytes.
"""

from .close import Close, CloseCode, is_valid_close_code
from .connection import Connection, InvalidState, Side, State
from .deflate import DeflateOptions, PerMessageDeflate
from .errors import (
    ConcurrencyError,
    ConnectionClosed,
    ConnectionClosedError,
    ConnectionClosedOK,
    InvalidHandshake,
    InvalidStatus,
    NegotiationError,
    PayloadTooBig,
    ProtocolError,
    PulsewireError,
    Refused,
)
from .events import CloseReceived, Event, Ping, Pong
from .frames import Frame, Opcode, serialize_frame

__all__ = [
    "Close",
    "CloseCode",
    "CloseReceived",
    "ConcurrencyError",
    "Connection",
    "ConnectionClosed",
    "ConnectionClosedError",
    "ConnectionClosedOK",
    "DeflateOptions",
    "Event",
    "Frame",
    "InvalidHandshake",
    "InvalidState",
    "InvalidStatus",
    "NegotiationError",
    "Opcode",
    "PayloadTooBig",
    "PerMessageDeflate",
    "Ping",
    "Pong",
    "ProtocolError",
    "PulsewireError",
    "Refused",
    "Side",
    "State",
    "is_valid_close_code",
    "serialize_frame",
]
