"""The front door's server: routes (:class:`~.routing.Router`), limits, admission and memory
accounts, and the set of open connections (:class:`~.connection.HttpProtocol`)."""

from __future__ import annotations

from ...aio.budget import Budgets
from ..limits import ConnectionLimiter
from .connection import HttpProtocol
from .limits import HttpLimits
from .routing import Router

__all__ = ["HttpServer"]


class HttpServer(Router):
    """Routes by exact path or prefix; WebSocket routes hand the connection over.

    ``budgets``: the memory accounts its connections charge (shared with the WebSocket
    server and the HTTP transports of a hub); ``limiter``: connection admission.
    """

    def __init__(
        self,
        *,
        max_body: int | None = None,
        head_timeout: float | None = None,
        idle_timeout: float | None = None,
        limits: HttpLimits | None = None,
        limiter: ConnectionLimiter | None = None,
        budgets: Budgets | None = None,
    ) -> None:
        super().__init__()
        self.limiter = limiter
        self.budgets = budgets
        self.timeouts = {"head": 0, "body": 0, "send": 0, "idle": 0}
        """Deadlines that ended a connection, by what was awaited (head and body ones are
        also counted as 408 refusals)."""
        self.limits = limits if limits is not None else HttpLimits()
        if max_body is not None:
            self.limits.max_body = max_body
        if head_timeout is not None:
            self.limits.head_timeout = head_timeout
        if idle_timeout is not None:
            self.limits.idle_timeout = idle_timeout
        self.connections: set[HttpProtocol] = set()
        self.closing = False

    def protocol_factory(self) -> HttpProtocol:
        return HttpProtocol(self)

    def close_idle(self) -> None:
        """Stop keep-alive: close connections that are between requests."""
        self.closing = True
        for conn in list(self.connections):
            conn.close_if_idle()
