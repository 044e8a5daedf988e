"""Connection admission at the front door: total and per-IP connection caps, and a rate of new
connections per IP (every WebSocket, SSE or long-poll session starts with one).

Refused connections get an HTTP answer at once (503 over the caps, 429 over the rate) and
are closed, before any request byte is read. Behind a reverse proxy every connection comes
from the proxy's address: set the per-IP limits in the proxy instead (see docs/deployment.md).
"""

from __future__ import annotations

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
    """Counts open connections (in total and by IP) and the rate of new ones by IP."""

    def __init__(self, limits: ConnectionLimits | None = None) -> None:
        self.limits = limits or ConnectionLimits()
        self.total = 0
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
