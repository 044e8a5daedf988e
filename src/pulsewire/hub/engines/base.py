"""The Engine interface: what a hub node needs from whatever connects nodes together.

An engine does four things: fan-out of publications (and join/leave events) to every node
that has subscribers, history streams with offsets and epochs, presence with expiry, and
node-to-node control messages.

Presence entries remember the hub *instance* that wrote them (``node``: a random id per hub
process run, see :mod:`pulsewire.hub.nodes`), so that when an instance is declared dead the
survivors can remove its entries: :meth:`Engine.remove_node_presence` removes each entry for
exactly one caller cluster-wide and leaves a *tombstone* (for ``ttl``) that tells the owner,
should it come back, that a leave was pushed for its client (:attr:`PresenceAdd.RESTORED`),
and tells its own later removal that the leave is not its to push (``remove_presence`` is
False). :meth:`Engine.node_presence_channels` lists the channels an instance wrote presence
in, so no channel is missed. The in-memory engine does them inside one process; Redis and
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
import enum
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from ..types import ClientInfo, HistoryResult, Publication, PublishOptions, StreamPosition

__all__ = [
    "Engine",
    "EngineHandler",
    "EngineOutcomeUnknown",
    "EngineUnavailable",
    "IdempotencyKeysFull",
    "IndexedChannels",
    "PresenceAdd",
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


class PresenceAdd(enum.IntEnum):
    """What :meth:`Engine.add_presence` found in place of the entry it wrote."""

    REFRESHED = 0
    """The client's entry was there (expired or not): it was replaced."""
    CREATED = 1
    """There was no entry: a new client, or one that expired and was swept, or data lost."""
    RESTORED = 2
    """A dead-node cleanup had removed the entry (and pushed a leave for it) less than its
    ttl ago: the caller should push a join for the client again."""


class EngineHandler(Protocol):
    def on_publication(self, channel: str, publication: Publication) -> None: ...

    def on_join(self, channel: str, info: ClientInfo, node: str = "") -> None:
        """``node``: the instance that published the join ("" if it did not say)."""

    def on_leave(self, channel: str, info: ClientInfo) -> None: ...

    def on_control(self, message: dict[str, Any]) -> None: ...

    def on_engine_state(self, available: bool) -> None: ...


class Engine(abc.ABC):
    """Base class of the hub's engines. All methods run on the hub's event loop."""

    name = "engine"

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
    async def publish_join(self, channel: str, info: ClientInfo, node: str = "") -> None:
        """Push ``join`` to the channel's subscribers on every node; ``node`` (the publishing
        instance) reaches their hubs' ``on_join``."""

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
    async def add_presence(
        self, channel: str, info: ClientInfo, ttl: float, node: str = ""
    ) -> PresenceAdd:
        """Add or refresh ``info.client`` in ``channel``'s presence for ``ttl`` seconds, owned
        by instance ``node`` (clients never see it); consumes a tombstone. ``node`` also gets
        ``channel`` in its :meth:`node_presence_channels` for ``ttl``."""

    @abc.abstractmethod
    async def remove_presence(self, channel: str, client_id: str) -> bool:
        """Remove the client's entry (and tombstone). False when a dead-node cleanup had
        removed it already, so the leave was pushed: the caller must not push another."""

    @abc.abstractmethod
    async def remove_node_presence(
        self, channel: str, node: str, ttl: float, *, leave: bool
    ) -> list[ClientInfo]:
        """Remove every entry of ``channel`` owned by ``node`` (expired ones too), leaving a
        tombstone for ``ttl`` seconds; with ``leave``, publish a leave for each (as
        ``publish_leave`` does). Returns the entries this call removed: when several nodes
        call it at once, each entry is removed, and its leave published, by exactly one."""

    @abc.abstractmethod
    async def node_presence_channels(self, node: str) -> list[str]:
        """Channels where ``node`` added presence within the ttl it gave."""

    @abc.abstractmethod
    async def presence(self, channel: str) -> dict[str, ClientInfo]:
        """Unexpired presence entries by client id."""

    async def presence_stats(self, channel: str) -> tuple[int, int]:
        """(number of clients, number of distinct users)."""
        entries = await self.presence(channel)
        return len(entries), len({info.user for info in entries.values()})


class IndexedChannels:
    """Which (node, channel) pairs an engine put in a node's presence index lately.

    Engines keep an index entry for ``INDEX_TTL_FACTOR`` times the presence ttl and rewrite it
    once a third of the ttl has passed (not on every refresh of every entry): an entry lives
    at most ttl after its last write, so the index always covers every live entry. Pairs past
    their expiry are swept once the map has doubled since the last sweep: it holds about the
    channels with presence on this node.
    """

    INDEX_TTL_FACTOR = 2

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._due: dict[tuple[str, str], tuple[float, float]] = {}  # -> (rewrite at, expiry)
        self._sweep_at = 1024

    def due(self, node: str, channel: str) -> bool:
        entry = self._due.get((node, channel))
        return entry is None or self._clock() >= entry[0]

    def written(self, node: str, channel: str, ttl: float) -> None:
        now = self._clock()
        self._due[(node, channel)] = (now + ttl / 3, now + self.INDEX_TTL_FACTOR * ttl)
        if len(self._due) >= self._sweep_at:
            self._due = {k: v for k, v in self._due.items() if v[1] > now}
            self._sweep_at = max(1024, 2 * len(self._due))

    def forget(self, node: str, channel: str) -> None:
        """The index entry may not have been written (an error): write it next time."""
        self._due.pop((node, channel), None)
