"""The client's exceptions: one family, :class:`ClientError`, carrying the hub's code.

Error replies of the hub (docs/protocol.md, "Error codes") raise :class:`ClientError` with the
reply's ``code`` and ``message``. The client's own failures use codes outside the hub's range,
as the browser client does: ``0`` a connection lost while a call waited for its reply
(:class:`ConnectionLost`), ``-1`` no reply in time (:class:`ClientTimeout`). A client that
stopped for good raises :class:`ClientClosed` with the disconnect code (e.g. 4500 invalid
token), or 1000 when the application closed it.
"""

from __future__ import annotations

__all__ = [
    "CONNECTION_LOST",
    "TIMEOUT",
    "ClientClosed",
    "ClientError",
    "ClientTimeout",
    "ConnectionLost",
]

CONNECTION_LOST = 0
TIMEOUT = -1


class ClientError(Exception):
    """A call failed: ``code`` and ``message`` of the hub's error reply, or the client's own."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class ConnectionLost(ClientError):
    """The connection ended before the reply came (code 0); the call may have been run."""

    def __init__(self, message: str = "connection lost") -> None:
        super().__init__(CONNECTION_LOST, message)


class ClientTimeout(ClientError, TimeoutError):
    """No reply, connection or subscription within the timeout (code -1)."""

    def __init__(self, message: str) -> None:
        super().__init__(TIMEOUT, message)


class ClientClosed(ClientError):
    """The client stopped for good: ``code`` is the disconnect code (1000: closed by the
    application; 4500-4999: the hub said not to reconnect), ``reason`` its reason."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(code, reason)
        self.reason = reason
