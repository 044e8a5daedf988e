"""Hub errors: a :class:`HubError` answers one command; a :class:`Disconnect` ends a session.

Both carry a numeric code documented in docs/protocol.md. The codes are :class:`enum.IntEnum`
members, so they compare, hash, format and encode (JSON, MessagePack) as the plain integers
that travel on the wire. Disconnect codes travel as WebSocket close codes (and as
``disconnect`` pushes on SSE/long-polling): 4000-4499 mean "reconnect", 4500-4999 mean "do
not reconnect" (:func:`reconnects`, the one place that rule is written in Python;
``web/pulsewire.js`` is checked against it by a test).
"""

from __future__ import annotations

import enum

__all__ = [
    "DISCONNECT_CODES",
    "NO_RECONNECT_CODES",
    "Disconnect",
    "DisconnectCode",
    "ErrorCode",
    "HubError",
    "UnsubscribeCode",
    "reconnects",
]


class _Code(enum.IntEnum):
    """An integer code: ``str()`` and ``format()`` give the number on every Python version
    (3.10's IntEnum would give ``"ErrorCode.INTERNAL"``), as metric labels and logs expect."""

    def __str__(self) -> str:
        return int.__repr__(self)

    def __format__(self, spec: str) -> str:
        return int.__format__(self, spec)


class ErrorCode(_Code):
    """The ``code`` of an error reply (and of an HTTP API error answer)."""

    INTERNAL = 100
    UNAUTHORIZED = 101
    UNKNOWN_CHANNEL = 102
    PERMISSION_DENIED = 103
    METHOD_NOT_FOUND = 104
    ALREADY_SUBSCRIBED = 105
    LIMIT_EXCEEDED = 106
    BAD_REQUEST = 107
    NOT_AVAILABLE = 108
    TOKEN_EXPIRED = 109
    TOO_MANY_REQUESTS = 111
    NOT_SUBSCRIBED = 113
    OUTCOME_UNKNOWN = 114
    """A publish was sent to the engine and no answer came: it may have been published.
    Retry with the same idempotency key (safe within the window); 108 means not published."""
    OVERLOADED = 115
    """A node is behind on delivering the channel's publications (backpressure): not
    published; retry later, with the same idempotency key if one was given."""


class DisconnectCode(_Code):
    """Why a session ended: 4000-4499 reconnect, 4500-4999 do not (see :func:`reconnects`)."""

    # Reconnect: the client should connect again (with backoff).
    SHUTDOWN = 4000
    TOKEN_EXPIRED = 4002
    STALE = 4003
    KEYS_UNAVAILABLE = 4004
    """The token could not be checked: its keys (JWKS) could not be fetched. Reconnect later."""
    NO_PONG = 4005
    TOO_MANY_REQUESTS = 4008
    """Too many failed authentications from the client's address: reconnect later."""
    UNAVAILABLE = 4010
    """The application could not decide (its backend, behind the proxy, is down or answered
    badly; a refresh hook failed): reconnect later."""
    # Do not reconnect.
    INVALID_TOKEN = 4500
    BAD_REQUEST = 4501
    FORCE_NO_RECONNECT = 4502
    UNAUTHORIZED = 4503
    CONNECTION_LIMIT = 4504
    UNSUPPORTED_PROTOCOL = 4505


class UnsubscribeCode(_Code):
    """The ``code`` of an ``unsubscribe`` push."""

    SERVER = 2000
    """Unsubscribed by the server (the HTTP API, ``Hub.unsubscribe_user``)."""
    INSUFFICIENT_STATE = 2500
    """The node could not keep the channel's stream whole: resubscribe with recovery."""
    EXPIRED = 2501
    """The subscription expired and the application did not extend it: subscribe again (the
    application decides anew), with recovery."""


DISCONNECT_CODES = range(4000, 5000)
"""The hub's own disconnect codes (the WebSocket private-use range); below them are
WebSocket close codes."""

NO_RECONNECT_CODES = range(4500, 5000)
"""Disconnect codes after which a client must not reconnect by itself."""


def reconnects(code: int) -> bool:
    """Whether a client should reconnect after a session ended with ``code``: yes, except
    after 4500-4999 (WebSocket codes below 4000 and 4000-4499 mean reconnect)."""
    return code not in NO_RECONNECT_CODES


class HubError(Exception):
    """A command failed; the reply carries ``code`` and ``message``."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message

    def to_dict(self) -> dict[str, object]:
        """The ``error`` object of a reply: ``{"code", "message"}``."""
        return {"code": self.code, "message": self.message}


class Disconnect(Exception):
    """End the session with ``code`` and ``reason``; ``reconnect`` follows from the code."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason

    @property
    def reconnect(self) -> bool:
        """Whether the client should reconnect (see :func:`reconnects`)."""
        return reconnects(self.code)
