"""Errors of the protocol core, each carrying what its peer-facing answer is.

A frame-level violation is a :class:`ProtocolError` with the close code the connection is failed
with; a handshake refusal is a :class:`Refused` with the HTTP status and a plain-text reason.
These are the only exceptions the Sans-I/O core raises on bad input.
"""

from __future__ import annotations

from collections.abc import Sequence

from .close import Close, CloseCode

__all__ = [
    "ConcurrencyError",
    "ConnectionClosed",
    "ConnectionClosedError",
    "ConnectionClosedOK",
    "InvalidHandshake",
    "InvalidStatus",
    "NegotiationError",
    "PayloadTooBig",
    "ProtocolError",
    "PulsewireError",
    "Refused",
]


class PulsewireError(Exception):
    """Base class of every error pulsewire raises on purpose."""


class ProtocolError(PulsewireError):
    """The peer broke RFC 6455/7692; the connection is failed with :attr:`code`."""

    def __init__(self, reason: str, code: int = CloseCode.PROTOCOL_ERROR) -> None:
        super().__init__(reason)
        self.code = int(code)
        self.reason = reason


class PayloadTooBig(ProtocolError):
    """A frame or message (after inflation) is larger than the configured limit (1009)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason, CloseCode.MESSAGE_TOO_BIG)


class InvalidHandshake(PulsewireError):
    """The opening handshake failed (client side: the server's answer was not acceptable)."""


class InvalidStatus(InvalidHandshake):
    """The server answered the upgrade request with something other than 101."""

    def __init__(self, status: int, headers: Sequence[tuple[str, str]], body: bytes) -> None:
        text = body[:200].decode("utf-8", "replace").strip()
        super().__init__(
            f"server rejected WebSocket connection: HTTP {status}" + (f": {text}" if text else "")
        )
        self.status = status
        self.headers = list(headers)
        self.body = body


class NegotiationError(InvalidHandshake):
    """An extension or subprotocol negotiation could not succeed."""


class Refused(PulsewireError):
    """A refused opening handshake: an HTTP ``status`` and a plain-text ``reason``."""

    def __init__(self, status: int, reason: str, headers: Sequence[tuple[str, str]] = ()) -> None:
        super().__init__(f"{status}: {reason}")
        self.status = status
        self.reason = reason
        self.headers = list(headers)


class ConcurrencyError(PulsewireError, RuntimeError):
    """Two callers used a connection in a way that cannot overlap (e.g. two concurrent
    ``recv()`` calls, or two pings with the same payload). Shared by the asyncio and threaded
    bindings."""


class ConnectionClosed(PulsewireError):
    """Raised by send/recv on a connection that is closed or closing.

    ``rcvd`` and ``sent`` are the Close frames received and sent (``None`` when there was none,
    e.g. when TCP broke); :attr:`code` and :attr:`reason` are the peer's, or 1006 (abnormal).
    """

    def __init__(
        self, rcvd: Close | None, sent: Close | None, rcvd_then_sent: bool | None = None
    ) -> None:
        self.rcvd = rcvd
        self.sent = sent
        self.rcvd_then_sent = rcvd_then_sent
        super().__init__(self._describe())

    @property
    def code(self) -> int:
        return self.rcvd.code if self.rcvd is not None else CloseCode.ABNORMAL_CLOSURE

    @property
    def reason(self) -> str:
        return self.rcvd.reason if self.rcvd is not None else ""

    def _describe(self) -> str:
        if self.rcvd is None and self.sent is None:
            return "no close frame received or sent"
        if self.rcvd is None:
            return f"sent {self.sent}; no close frame received"
        if self.sent is None:
            return f"received {self.rcvd}; no close frame sent"
        if self.rcvd_then_sent:
            return f"received {self.rcvd}; then sent {self.sent}"
        return f"sent {self.sent}; then received {self.rcvd}"


class ConnectionClosedOK(ConnectionClosed):
    """The connection closed normally (both sides sent 1000 or 1001)."""


class ConnectionClosedError(ConnectionClosed):
    """The connection closed with an error code, or without a closing handshake."""


_OK_CODES = (CloseCode.NORMAL_CLOSURE, CloseCode.GOING_AWAY, CloseCode.NO_STATUS_RCVD)


def connection_closed(
    rcvd: Close | None, sent: Close | None, rcvd_then_sent: bool | None
) -> ConnectionClosed:
    """The right ConnectionClosed subclass for how the connection ended."""
    ok = rcvd is not None and sent is not None and rcvd.code in _OK_CODES and sent.code in _OK_CODES
    return (ConnectionClosedOK if ok else ConnectionClosedError)(rcvd, sent, rcvd_then_sent)
