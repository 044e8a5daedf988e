"""What :meth:`Connection.events_received` returns.

A complete data message is returned as the ``str`` (text) or ``bytes`` (binary) itself, with no
wrapper object: that is the per-message hot path. Control frames arrive as the small frozen
classes below. Pongs to pings and the answer to a Close are queued by the core itself.
"""

from __future__ import annotations

from dataclasses import dataclass

from .close import Close

__all__ = ["CloseReceived", "Event", "Ping", "Pong"]


@dataclass(frozen=True, slots=True)
class Ping:
    """The peer sent a Ping; the core has already queued the Pong."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Pong:
    """The peer sent a Pong (an answer to our Ping, or unsolicited)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class CloseReceived:
    """The peer sent a Close frame; the core has already answered it when needed."""

    close: Close


Event = str | bytes | Ping | Pong | CloseReceived
