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

A failed publish says whether it may have been applied: :class:`EngineUnavailable` means the
command never reached the service (nothing was published, a retry is safe);
:class:`EngineOutcomeUnknown` means it was sent and no answer came (it may have been
published: only a retry with the same idempotency key is safe, see :meth:`Engine.publish_once`).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any, Protocol

from ..types import ClientInfo, HistoryResult, Publication, PublishOptions, StreamPosition

__all__ = [
    "Engine",
    "EngineHandler",
    "EngineOutcomeUnknown",
    "EngineUnavailable",
    "IdempotencyKeysFull",
    "PublishOnce",
]


class EngineUnavailable(Exception):
    """The engine's service cannot be reached right now.

    Raised by a publish, it means the command was not sent (no connection, connection refused,
    pool exhausted, service known down) or was refused by the service: nothing was published.
    """


class EngineOutcomeUnknown(EngineUnavailable):
    """A publish was sent but no answer came (timeout, connection lost after sending).

    The service may have applied it (e.g. a stopped Redis runs the commands queued on its
    sockets once it resumes). Retrying without an idempotency key may publish twice; retrying
    with the same key within the window is safe and returns the first result.
    """


class IdempotencyKeysFull(Exception):
    """An engine that keeps idempotency keys in this process holds as many as it may:
    the keyed publish was refused, nothing was published (retry later)."""


@dataclass(frozen=True, slots=True)
class PublishOnce:
    """What :meth:`Engine.publish_once` did."""

    position: StreamPosition | None
    """The publication's position (history channels), the first one's for a duplicate."""
    duplicate: bool
    """True when the key was used for the channel within the window: nothing was published."""


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
    #: hub delivers publications without an idempotency key to its own subscribers itself (so
    #: local delivery goes on while the service is down), and the engine carries the
    #: publication to the other nodes only, skipping the echo whose ``origin`` is this node.
    #: Publications of history channels always come back through the engine, to every node,
    #: so that all nodes see them in offset order.
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
    async def publish_once(
        self,
        channel: str,
        publication: Publication,
        options: PublishOptions,
        key: str,
        window: float,
    ) -> PublishOnce:
        """Publish unless ``key`` was used for ``channel`` in the last ``window`` seconds, on
        any node sharing the engine; the check is atomic with the write.

        A duplicate publishes nothing and returns the first publication's position. Unlike
        :meth:`publish`, a keyed publication reaches this node's subscribers through the
        engine too (``local_fanout`` does not apply): it is delivered on every node if and
        only if it was published. Keys are scoped by channel and by the engine's prefix.
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
