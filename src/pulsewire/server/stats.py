"""The front door's numbers, read by the admin page and ``/metrics`` through one interface.

:class:`StatsSource` is what the admin page needs beside the hub's own numbers;
:class:`FrontDoorStats` reads them from the HTTP server and the WebSocket server of a node.
Refusal counts of both are summed status by status (:func:`sum_counts`): a 429 refused by
the front door and a 429 refused at the WebSocket handshake are two refusals.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from ..aio.server import Server as WebSocketServer
from .http import HttpServer

__all__ = ["FrontDoorStats", "StatsSource", "sum_counts"]


class StatsSource(Protocol):
    """The front door's counters, as the admin page and ``/metrics`` show them."""

    @property
    def started_at(self) -> float:
        """Unix time the server was created."""
        ...

    def handshakes(self) -> int:
        """Accepted WebSocket opening handshakes."""
        ...

    def refusals(self) -> dict[int, int]:
        """Connections, handshakes and requests refused, by HTTP status."""
        ...


def sum_counts(*counts: Mapping[int, int]) -> dict[int, int]:
    """Counts by key, summed over ``counts`` (a key in several adds up, none is lost)."""
    total: dict[int, int] = {}
    for mapping in counts:
        for key, count in mapping.items():
            total[key] = total.get(key, 0) + count
    return total


class FrontDoorStats:
    """A :class:`StatsSource` reading a node's HTTP and WebSocket servers."""

    def __init__(self, http: HttpServer, websocket: WebSocketServer, started_at: float) -> None:
        self.http = http
        self.websocket = websocket
        self._started_at = started_at

    @property
    def started_at(self) -> float:
        return self._started_at

    def handshakes(self) -> int:
        return self.websocket.handshakes

    def refusals(self) -> dict[int, int]:
        return sum_counts(self.http.refusals, self.websocket.refusals)
