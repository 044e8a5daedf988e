"""The Engine interface: what a hub node needs from whatever connects nodes together.

An engine is two parts, as in centrifuge: a :class:`Broker` (fan-out of publications,
join/leave events and control messages to every node that subscribed, and history streams
with offsets and epochs) and a :class:`PresenceManager` (who is in a channel, with expiry,
and cleanup after a dead node). :class:`Engine` is both, plus the life cycle; the in-memory
engine does it all inside one process, Redis and NATS engines let many processes on many
machines act as one hub.

One way for a publication: the hub calls :meth:`Broker.publish` (or
:meth:`Broker.publish_once`) and the engine hands the publication, with the position it
assigned, to :meth:`EngineHandler.on_publication` on every node that subscribed to the
channel, this one included. The engine never changes the :class:`Publication` it is given
(it is frozen): it returns the position and delivers a copy that carries it.

Engines call back into the hub through :class:`EngineHandler`, from the event loop thread.
When the backing service goes away an engine keeps trying to reconnect (with backoff),
reports ``on_engine_state(False)``, fails calls with :class:`EngineUnavailable`, and on
return resubscribes to its channels and reports ``on_engine_state(True)``; the hub then
fills gaps from history.
An engine spread over independent services (shards) reports each one's loss and return
with a ``channels`` predicate (only that shard's channels are concerned, see
:meth:`EngineHandler.on_engine_state`), and is :attr:`Engine.available` while any is up.

A failed call says whether it may have been applied: :class:`EngineUnavailable` means the
command never reached the service or was refused by it (nothing was done, a retry is safe);
:class:`EngineOutcomeUnknown` (a subclass, raised by publishes only) means it was sent and
no answer came (it may have been published: only a retry with the same idempotency key is
safe, see :meth:`Broker.publish_once`).

Presence entries remember the hub *instance* that wrote them (``node``: a random id per hub
process run, see :mod:`pulsewire.hub.nodes`), so that when an instance is declared dead the
survivors can remove its entries: :meth:`PresenceManager.remove_node_presence` removes each
entry for exactly one caller cluster-wide and leaves a *tombstone* (for ``ttl``) that tells
the owner, should it come back, that a leave was pushed for its client
(:attr:`PresenceAdd.RESTORED`), and tells its own later removal that the leave is not its to
push (``remove_presence`` is False). :meth:`PresenceManager.node_presence_channels` lists the
channels an instance wrote presence in, so no channel is missed.
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
    "Broker",
    "ChannelFilter",
    "Engine",
    "EngineHandler",
    "EngineOutcomeUnknown",
    "EngineUnavailable",
    "IdempotencyKeysFull",
    "IndexedChannels",
    "PresenceAdd",
    "PresenceManager",
    "PublishOnce",
]


ChannelFilter = Callable[[str], bool]
"""True for the channels concerned (see :meth:`EngineHandler.on_engine_state`)."""


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
    """What an engine calls back (the hub). Every callback runs on the event loop thread,
    synchronously (it must not block), and only for channels this node subscribed to through
    :meth:`Broker.subscribe` (from the moment ``subscribe`` is called until ``unsubscribe``),
    except :meth:`on_control` and :meth:`on_engine_state`, which concern the whole node."""

    def on_publication(self, channel: str, publication: Publication) -> None:
        """A publication of ``channel``. For history channels it carries its ``offset``,
        ``prev`` and ``epoch``, and a channel's publications arrive in offset order (a
        ``prev`` above the last offset seen means some were missed: fill from history)."""

    def on_join(self, channel: str, info: ClientInfo, node: str = "") -> None:
        """``info`` joined ``channel``; ``node``: the instance that published the join ("" if
        it did not say)."""

    def on_leave(self, channel: str, info: ClientInfo) -> None:
        """``info`` left ``channel`` (or was removed with its dead node)."""

    def on_control(self, message: dict[str, Any]) -> None:
        """A control message from :meth:`Broker.publish_control` on any node."""

    def on_engine_state(self, available: bool, channels: ChannelFilter | None = None) -> None:
        """The service was lost (False) or is back and every channel is subscribed again
        (True): publications may have been missed in between. Not called by ``start`` or
        ``close``.

        ``channels``: None when the whole engine is concerned (control messages included).
        An engine made of independent parts (shards) passes a predicate instead, true for
        the channels of the part that was lost or is back: only those missed publications
        and need their gaps filled; the others, and control messages, still flow while
        :attr:`Engine.available` is True."""


class Broker(abc.ABC):
    """Fan-out and history: the part of an engine that carries publications between nodes.

    Publication ordering: the publications of a history channel reach every node in offset
    order; publications without history published one after the other (each awaited) by
    one node reach every other node in that order, and so do join and leave events sent
    after them by that node.
    """

    @abc.abstractmethod
    async def subscribe(self, channel: str) -> None:
        """Start receiving ``channel``'s publications and join/leave events on this node.

        Returns once the subscription is active: whatever is published after it returns
        reaches this node (a history read made after it misses nothing). Idempotent: a second
        call is the same subscription, one :meth:`unsubscribe` ends it. Raises
        :class:`EngineUnavailable` when the service cannot confirm it; the caller must then
        call :meth:`unsubscribe` if it gives the channel up (an engine may keep it wanted and
        subscribe it on reconnection).
        """

    @abc.abstractmethod
    async def unsubscribe(self, channel: str) -> None:
        """Stop receiving ``channel`` on this node: no callback for it once this is called.
        Never raises (an unsubscribe the service did not get is dropped with the connection)."""

    @abc.abstractmethod
    async def publish(
        self, channel: str, publication: Publication, options: PublishOptions
    ) -> StreamPosition | None:
        """Store (when ``options.history``) and fan out ``publication``; ``publication`` is
        not changed (its ``origin`` should be this node's id: the hub sets it).

        **History channels** (``options.history``): the engine appends it to the channel's
        stream with the next offset (``prev`` the offset before it: offsets are contiguous),
        in the stream's epoch (a new epoch once the stream's meta expired after
        ``history_meta_ttl``), keeps the last ``history_size`` publications for
        ``history_ttl`` after the newest, and returns the new :class:`StreamPosition`. A copy
        of the publication carrying ``offset``/``prev``/``epoch`` reaches
        :meth:`EngineHandler.on_publication` on every subscribed node, this one included,
        through the service, in offset order. Raises :class:`EngineUnavailable`: nothing was
        stored or delivered; :class:`EngineOutcomeUnknown`: it may have been stored (and will
        then be delivered).

        **Channels without history**: returns None. If ``channel`` is subscribed on this node
        the publication is handed to this node's ``on_publication`` before it is sent (local
        delivery goes on while the service is down, and the service's echo is skipped), then
        sent to the other subscribed nodes at most once. Raises :class:`EngineUnavailable`
        when the others may have missed it (this node got it all the same).
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

        Idempotent: a duplicate publishes and delivers nothing and returns the first
        publication's position (``PublishOnce(position, duplicate=True)``; None without
        history, or ``(0, "")`` when an engine no longer knows it). Unlike :meth:`publish`, a
        keyed publication reaches this node's subscribers through the service too, also
        without history: it is delivered on every node if and only if it was published.
        Keys are scoped by channel and by the engine's prefix. ``publication`` is not changed.

        Raises :class:`EngineUnavailable` (not published, nothing delivered: retry with the
        same key), :class:`EngineOutcomeUnknown` (it may have been published: only a retry
        with the same key is safe) and :class:`IdempotencyKeysFull` (an engine that keeps the
        keys in this process holds as many as it may: not published).
        """

    @abc.abstractmethod
    async def publish_join(self, channel: str, info: ClientInfo, node: str = "") -> None:
        """Send a join event to ``channel``'s subscribed nodes, this one included: each gets
        :meth:`EngineHandler.on_join` at most once; ``node`` (the publishing instance) is
        passed along. Raises :class:`EngineUnavailable` when it could not be sent."""

    @abc.abstractmethod
    async def publish_leave(self, channel: str, info: ClientInfo) -> None:
        """Send a leave event, as :meth:`publish_join` does (:meth:`EngineHandler.on_leave`)."""

    @abc.abstractmethod
    async def publish_control(self, message: dict[str, Any]) -> None:
        """Send a control message (JSON-serialisable) to every node, this one included:
        :meth:`EngineHandler.on_control`, at most once each. Raises :class:`EngineUnavailable`
        when it could not be sent."""

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
        position. The caller compares epochs; the engine does not filter on them.

        For a history channel whose stream does not exist yet the read creates it: the epoch
        returned is the one the next publication gets. A channel that never had history has
        no publications and the position ``StreamPosition(0, "")``. Raises
        :class:`EngineUnavailable`."""

    @abc.abstractmethod
    async def remove_history(self, channel: str) -> None:
        """Drop the channel's kept publications; its offset and epoch stay (the next
        publication follows them). Raises :class:`EngineUnavailable`."""


class PresenceManager(abc.ABC):
    """Presence: which clients are in a channel, each entry kept for a ttl the caller
    refreshes. Every method raises :class:`EngineUnavailable` when the service cannot be
    reached; none calls back into the handler except :meth:`remove_node_presence` with
    ``leave`` (through :meth:`Broker.publish_leave`)."""

    @abc.abstractmethod
    async def add_presence(
        self, channel: str, info: ClientInfo, ttl: float, node: str = ""
    ) -> PresenceAdd:
        """Add or refresh ``info.client`` in ``channel``'s presence for ``ttl`` seconds, owned
        by instance ``node`` (clients never see it); consumes a tombstone and says what it
        found (:class:`PresenceAdd`). ``node`` also gets ``channel`` in its
        :meth:`node_presence_channels` for ``ttl``."""

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
        """(number of clients, number of distinct users) of the unexpired entries."""
        entries = await self.presence(channel)
        return len(entries), len({info.user for info in entries.values()})


class Engine(Broker, PresenceManager):
    """Base class of the hub's engines: a :class:`Broker` and a :class:`PresenceManager`
    with a life cycle. All methods run on the hub's event loop.

    Life cycle: :meth:`bind` (the hub and its node id), :meth:`start`, the calls, then
    :meth:`close`. Between ``start`` and ``close`` the engine calls the handler as
    :class:`EngineHandler` says; after ``close`` it calls nothing.
    """

    name = "engine"

    def __init__(self) -> None:
        self.handler: EngineHandler | None = None
        self.node_id = ""

    def bind(self, handler: EngineHandler, node_id: str) -> None:
        """Set the callbacks' receiver and this node's id (the ``origin`` of its
        publications, by which an engine recognises its own echo). Before :meth:`start`."""
        self.handler = handler
        self.node_id = node_id

    @property
    def available(self) -> bool:
        """False while the service is known to be unreachable (calls then fail fast)."""
        return True

    async def start(self) -> None:
        """Connect; raises :class:`EngineUnavailable` if the service cannot be reached at
        start-up (nothing is left running then)."""

    async def close(self) -> None:
        """Disconnect and release everything; pending subscribes fail with
        :class:`EngineUnavailable`. Safe to call more than once."""


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
