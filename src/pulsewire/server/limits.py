"""Connection admission at the front door: total and per-IP caps, and a rate of new
connections per IP, counted over every hub session whatever its transport.

A TCP connection (plain HTTP, SSE stream, WebSocket) takes a slot when it is accepted; a
long-polling session, which has no connection of its own, takes one when it opens
(:meth:`ConnectionLimiter.admit_session`). Refused connections get an HTTP answer at once (503
over the caps, 429 over the rate) and are closed, before any request byte is read; a refused
long-poll ``open`` gets the same statuses. Behind a reverse proxy every connection comes from
the proxy's address: raise the per-IP limits there (see docs/deployment.md).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..hub.ratelimit import KeyedBuckets

__all__ = ["ConnectionLimiter", "ConnectionLimits"]


@dataclass(frozen=True)
class ConnectionLimits:
    max_connections: int = 100_000
    max_connections_per_ip: int = 1_000
    connections_per_second_per_ip: float = 50.0
    connections_burst_per_ip: float = 200.0


class ConnectionLimiter:
    """Counts open connections and sessions (in total and by IP) and the rate of new ones."""

    def __init__(self, limits: ConnectionLimits | None = None) -> None:
        self.limits = limits or ConnectionLimits()
        self.total = 0
        """Slots taken: TCP connections plus sessions without a connection of their own."""
        self.sessions = 0
        """Slots taken by sessions without a connection of their own (long-polling)."""
        self.by_ip: dict[str, int] = {}
        self._rate = KeyedBuckets(
            self.limits.connections_per_second_per_ip, self.limits.connections_burst_per_ip
        )

    def admit(self, ip: str) -> tuple[int, str] | None:
        """None when the connection may proceed (and is counted), else (status, reason)."""
        limits = self.limits
        if self.total >= limits.max_connections:
            return 503, "server at its connection limit, try again later"
        if self.by_ip.get(ip, 0) >= limits.max_connections_per_ip:
            return 503, "too many connections from your address"
        if not self._rate.take(ip):
            return 429, "too many new connections from your address, slow down"
        self.total += 1
        self.by_ip[ip] = self.by_ip.get(ip, 0) + 1
        return None

    def release(self, ip: str) -> None:
        self.total -= 1
        count = self.by_ip.get(ip, 0) - 1
        if count > 0:
            self.by_ip[ip] = count
        else:
            self.by_ip.pop(ip, None)

    def admit_session(self, ip: str) -> tuple[int, str] | Callable[[], None]:
        """A slot for a session without a connection of its own: (status, reason) when
        refused, else the callable that gives the slot back (only the first call counts).

        This is the ``admit`` callable of the HTTP transports
        (:data:`pulsewire.transports.http_session.Admit`)."""
        refusal = self.admit(ip)
        if refusal is not None:
            return refusal
        self.sessions += 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self.sessions -= 1
                self.release(ip)

        return release
