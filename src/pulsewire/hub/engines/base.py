"""The Engine interface: what a hub node needs from whatever connects nodes together.

An engine does four things: fan-out of publications (and join/leave events) to every node
that has subscribers, history streams with offsets and epochs, presence with expiry, and
node-to-node control messages. The in-memory engine does them inside one process; Redis and
NATS engines let many processes on many machines act as one hub.

Engines call back into the hub through :class:`EngineHandler`, from the event loop thread.
When the backing service goes away an engine keeps trying to reconnect (with backoff),
reports ``on_engine_state(False)``, fails calls with :class:`EngineUnavailable`, and on
return resubscribes to its channels and reports ``on_engine_state(True)``; the hub then
fills gaps from history.
"""

from __future__ import annotations

import abc
from typing import Any, Protocol

from ..types import ClientInfo, HistoryResult, Publication, PublishOptions, StreamPosition

__all__ = ["Engine", "EngineHandler", "EngineUnavailable"]


class EngineUnavailable(Exception):
    """The engine's service cannot be reached right now."""


class EngineHandler(Protocol):
    def on_publication(self, channel: str, publication: Publication) -> None: ...

    def on_join(self, channel: str, info: ClientInfo) -> None: ...

    def on_leave(self, channel: str, info: ClientInfo) -> None: ...

    def on_control(self, message: dict[str, Any]) -> None: ...

    def on_engine_state(self, available: bool) -> None: ...


class Engine(abc.ABC):
    """Base class of the hub's engines. All methods run on the hub's event loop."""

    name = "engine"
    #: True for engines that connect nodes (Redis, NATS): for channels without history the
    #: hub delivers to its own subscribers itself (so local delivery goes on while the service
    #: is down), and the engine carries the publication to the other nodes only, skipping the
    #: echo whose ``origin`` is this node. Publications of history channels always come back
    #: through the engine, to every node, so that all nodes see them in offset order.
    local_fanout = False

    def __init__(self) -> None:
        self.handler: EngineHandler | None = None
        self.node_id = ""

    def bind(self, handler: EngineHandler, node_id: str) -> None:
        self.handler = handler
        self.node_id = node_id

    @property
    def available(self) -> bool:
        return True

    async def start(self) -> None:
        """Connect; raises if the service cannot be reached at start-up."""

    async def close(self) -> None:
        """Disconnect and release everything."""

    # -- fan-out ---------------------------------------------------------------------------

    @abc.abstractmethod
    async def subscribe(self, channel: str) -> None:
        """Start receiving ``channel``'s publications and join/leave events on this node."""

    @abc.abstractmethod
    async def unsubscribe(self, channel: str) -> None:
        """Stop receiving ``channel`` on this node."""

    @abc.abstractmethod
    async def publish(
        self, channel: str, publication: Publication, options: PublishOptions
    ) -> StreamPosition | None:
        """Store (when ``options.history``) and fan out; returns the new position or None.

        For history channels the engine assigns ``offset``/``prev`` and delivers the
        publication to every subscribed node, this one included, in offset order.
        """

    @abc.abstractmethod
    async def publish_join(self, channel: str, info: ClientInfo) -> None: ...

    @abc.abstractmethod
    async def publish_leave(self, channel: str, info: ClientInfo) -> None: ...

    @abc.abstractmethod
    async def publish_control(self, message: dict[str, Any]) -> None:
        """Send a control message to every node (this one included)."""

    # -- history ---------------------------------------------------------------------------

    @abc.abstractmethod
    async def history(
        self,
        channel: str,
        *,
        since: StreamPosition | None = None,
        limit: int | None = None,
        reverse: bool = False,
        options: PublishOptions,
    ) -> HistoryResult:
        """Publications after ``since.offset`` (all kept ones without ``since``), oldest
        first (newest first with ``reverse``), at most ``limit``, and the stream's current
        position. The caller compares epochs; the engine does not filter on them."""

    @abc.abstractmethod
    async def remove_history(self, channel: str) -> None: ...

    # -- presence --------------------------------------------------------------------------

    @abc.abstractmethod
    async def add_presence(self, channel: str, info: ClientInfo, ttl: float) -> None:
        """Add or refresh ``info.client`` in ``channel``'s presence for ``ttl`` seconds."""

    @abc.abstractmethod
    async def remove_presence(self, channel: str, client_id: str) -> None: ...

    @abc.abstractmethod
    async def presence(self, channel: str) -> dict[str, ClientInfo]:
        """Unexpired presence entries by client id."""

    async def presence_stats(self, channel: str) -> tuple[int, int]:
        """(number of clients, number of distinct users)."""
        entries = await self.presence(channel)
        return len(entries), len({info.user for info in entries.values()})
