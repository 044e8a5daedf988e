"""Hub errors: a :class:`HubError` answers one command; a :class:`Disconnect` ends a session.

Both carry a numeric code documented in docs/protocol.md. Disconnect codes travel as
WebSocket close codes (and as ``disconnect`` pushes on SSE/long-polling): 4000-4499 mean
"reconnect", 4500-4999 mean "do not reconnect".
"""

from __future__ import annotations

__all__ = ["Disconnect", "DisconnectCode", "ErrorCode", "HubError"]


class ErrorCode:
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


class DisconnectCode:
    # Reconnect: the client should connect again (with backoff).
    SHUTDOWN = 4000
    TOKEN_EXPIRED = 4002
    STALE = 4003
    NO_PONG = 4005
    TOO_MANY_REQUESTS = 4008
    """Too many failed authentications from the client's address: reconnect later."""
    # Do not reconnect.
    INVALID_TOKEN = 4500
    BAD_REQUEST = 4501
    FORCE_NO_RECONNECT = 4502
    UNAUTHORIZED = 4503
    CONNECTION_LIMIT = 4504
    UNSUPPORTED_PROTOCOL = 4505


class HubError(Exception):
    """A command failed; the reply carries ``code`` and ``message``."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message

    def to_dict(self) -> dict[str, object]:
        return {"code": self.code, "message": self.message}


class Disconnect(Exception):
    """End the session with ``code`` and ``reason``; ``reconnect`` follows from the code."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason

    @property
    def reconnect(self) -> bool:
        return not 4500 <= self.code <= 4999
