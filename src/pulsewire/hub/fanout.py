"""The fan-out: who is subscribed to what on this node, and delivery in stream order.

One :class:`Fanout` per hub node owns the only subscription index (channel → subscriber →
:class:`Subscription`, and the same records by subscriber) and each channel's stream state:
the last position delivered here, the publications held while a gap is filled, the
subscribe in progress with the engine. Every subscription is added by :meth:`Fanout.add`
and removed by :meth:`Fanout.remove`, nowhere else.

The way of one publication is one way down: the engine hands it to the node
(``Hub.on_publication``), the node to :meth:`Fanout.on_publication`, which checks its order
and hands it to the channel's :class:`~pulsewire.hub.delivery.Delivery`: that encodes the
push once per codec in use (a :class:`~pulsewire.hub.types.PreparedMessage`) and hands it to
each subscriber, which hands it to its transport, in chunks (the first at once, the next
after yielding to the loop so that the transports write the previous one), keeping arrival
order per channel.

Ordering: live publications of history channels carry ``offset`` and ``prev``. One whose
``prev`` is past the last one delivered here means something was missed (e.g. while the engine
was down): the fan-out fills the gap from history before delivering further, so subscribers
see every offset once and in order. When the gap cannot be filled (history trimmed, epoch
changed) subscribers are told to resubscribe (push ``unsubscribe`` with code 2500 and
``resubscribe: true``), and their recovery tells them to reload state; a server-side
subscription is made again by the server itself (:meth:`Subscriber.resubscribe`). Per
subscriber, a subscription being positioned (recovering) buffers what arrives, and
publications at or before the subscription's own offset (or of another epoch) are skipped.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable, Mapping
from types import MappingProxyType
from typing import Any

from .channels import ChannelName
from .delivery import CHUNK, FIRST_CHUNK, MAX_QUEUED, PASS_ITEMS, Delivery
from .engines.base import ChannelFilter, Engine, EngineUnavailable
from .errors import ErrorCode, HubError, UnsubscribeCode
from .messages import unsubscribe_push
from .metrics import HubMetrics
from .subscription import Subscriber, Subscription
from .types import Publication, PublishOptions, StreamPosition

# Subscriber and Subscription are defined in .subscription (shared with .delivery).
__all__ = ["Fanout", "Subscriber", "Subscription", "first_follows"]

_EMPTY: Mapping[str, Any] = MappingProxyType({})


def first_follows(publication: Publication, offset: int) -> bool:
    """True when ``publication`` comes right after ``offset`` in its stream."""
    if publication.prev is not None:
        return publication.prev == offset
    return publication.offset == offset + 1


class Fanout:
    """The node's subscription index and per-channel stream state (see the module docstring).

    ``spawn`` runs a background coroutine for the node; ``publish_options`` gives a channel's
    history options (raising :class:`HubError` for an unknown namespace); ``ended`` is called
    with each subscription the fan-out itself ends (the node forgets its presence);
    ``channel_closed`` when a channel loses its last local subscriber; ``first_chunk`` and
    ``chunk``: how many deliveries (items times subscribers) delivery makes before it first
    yields to the loop, and at most between two yields; ``pass_items``: the most items one
    pass hands over; ``max_queued``: items a channel may have waiting behind its delivery in
    progress, past which its subscribers are told to resubscribe (:mod:`.delivery`).
    """

    def __init__(
        self,
        engine: Engine,
        metrics: HubMetrics,
        *,
        spawn: Callable[[Awaitable[Any]], None],
        publish_options: Callable[[str], PublishOptions],
        ended: Callable[[Subscription], None],
        channel_closed: Callable[[str], None],
        chunk: int = CHUNK,
        first_chunk: int = FIRST_CHUNK,
        max_queued: int = MAX_QUEUED,
        pass_items: int = PASS_ITEMS,
    ) -> None:
        self._engine = engine
        self._metrics = metrics
        self._spawn = spawn
        self._publish_options = publish_options
        self._ended = ended
        self._channel_closed = channel_closed
        self._channels: dict[str, dict[Subscriber, Subscription]] = {}
        self._by_subscriber: dict[Subscriber, dict[str, Subscription]] = {}
        self._positions: dict[str, StreamPosition] = {}
        self._syncing: dict[str, list[Publication]] = {}
        self._subscribing: dict[str, asyncio.Future[None]] = {}
        self._delivery = Delivery(
            self._channels,
            metrics,
            chunk=chunk,
            first_chunk=first_chunk,
            max_queued=max_queued,
            pass_items=pass_items,
            overflow=self.insufficient_state,
        )
        self._closing = False

    def close(self) -> None:
        """The node is closing: channels that empty are not unsubscribed from the engine."""
        self._closing = True

    # ---------------------------------------------------------------------------- index

    def subscription(self, subscriber: Subscriber, channel: str) -> Subscription | None:
        """``subscriber``'s subscription to ``channel``, if it has one."""
        subs = self._by_subscriber.get(subscriber)
        return None if subs is None else subs.get(channel)

    def subscriptions(self, subscriber: Subscriber) -> Mapping[str, Subscription]:
        """``subscriber``'s subscriptions by channel (a read-only view)."""
        subs = self._by_subscriber.get(subscriber)
        return _EMPTY if subs is None else MappingProxyType(subs)

    def is_current(self, subscriber: Subscriber, sub: Subscription) -> bool:
        """True while ``sub`` is still ``subscriber``'s subscription to its channel."""
        return self.subscription(subscriber, sub.channel.name) is sub

    def all(self) -> list[tuple[Subscriber, Subscription]]:
        """Every local subscription (a snapshot), channel by channel."""
        return [(s, sub) for subs in self._channels.values() for s, sub in subs.items()]

    def channel_of(self, channel: str) -> ChannelName | None:
        """The parsed channel of a channel with local subscribers, else None."""
        subs = self._channels.get(channel)
        return next(iter(subs.values())).channel if subs else None

    def has_subscribers(self, channel: str) -> bool:
        return channel in self._channels

    @property
    def counts(self) -> dict[str, int]:
        """Channels with local subscribers, and how many."""
        return {name: len(subs) for name, subs in self._channels.items()}

    def __len__(self) -> int:
        """Channels with local subscribers."""
        return len(self._channels)

    def delivering(self, channel: str) -> bool:
        """True while items for ``channel`` are being delivered (more chunks to come)."""
        return self._delivery.busy(channel)

    def delivery_lags(self, now: float) -> dict[str, float]:
        """Channels whose delivery is behind, and by how many seconds at ``now`` (a
        ``time.monotonic()`` value): see :meth:`Delivery.lags`."""
        return self._delivery.lags(now)

    def delivery_backlog(self) -> tuple[int, dict[str, int]]:
        """Deliveries made so far, and those still to make by channel (channels with a pass
        in progress): see :meth:`Delivery.backlog`."""
        return self._delivery.delivered, self._delivery.backlog()

    async def add(self, subscriber: Subscriber, sub: Subscription) -> None:
        """Register ``sub`` for live publications; returns once this node receives the channel
        from the engine (so a history read after it misses nothing). On failure (108 when the
        engine is unavailable) the subscription is removed again."""
        name = sub.channel.name
        self._by_subscriber.setdefault(subscriber, {})[name] = sub
        subs = self._channels.get(name)
        if subs is not None:
            subs[subscriber] = sub
            pending = self._subscribing.get(name)
            if pending is not None:  # the node's first subscriber is still subscribing
                try:
                    await asyncio.shield(pending)
                except BaseException:
                    self.remove(subscriber, name)
                    raise
            return
        self._channels[name] = {subscriber: sub}
        self._metrics.channels.set(len(self._channels))
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._subscribing[name] = done
        try:
            await self._engine.subscribe(name)
        except EngineUnavailable:
            error = HubError(ErrorCode.NOT_AVAILABLE, "engine unavailable, try again")
            done.set_exception(error)
            done.exception()  # retrieved: nobody else may be waiting
            self.remove(subscriber, name)
            raise error from None
        except BaseException:
            self.remove(subscriber, name)
            raise
        else:
            done.set_result(None)
        finally:
            self._subscribing.pop(name, None)

    def remove(self, subscriber: Subscriber, channel: str) -> Subscription | None:
        """The one way a subscription ends: from both indexes; the last subscriber of a
        channel unsubscribes the node from the engine. Returns the subscription removed."""
        mine = self._by_subscriber.get(subscriber)
        sub = None if mine is None else mine.pop(channel, None)
        if mine is not None and not mine:
            del self._by_subscriber[subscriber]
        subs = self._channels.get(channel)
        if subs is None:
            return sub
        subs.pop(subscriber, None)
        if not subs:
            del self._channels[channel]
            self._positions.pop(channel, None)
            self._delivery.drop(channel)
            self._metrics.channels.set(len(self._channels))
            self._channel_closed(channel)
            if not self._closing:
                self._spawn(self._engine_unsubscribe(channel))
        return sub

    def remove_all(self, subscriber: Subscriber) -> list[Subscription]:
        """End every subscription of ``subscriber`` (it is gone); returns them."""
        return [
            sub
            for name in list(self._by_subscriber.get(subscriber, ()))
            if (sub := self.remove(subscriber, name)) is not None
        ]

    def unsubscribe(
        self, subscriber: Subscriber, channel: str, code: int, reason: str, resubscribe: bool
    ) -> bool:
        """End a subscription from the server side: tell the subscriber (push
        ``unsubscribe``), remove it, and let the node forget its presence."""
        sub = self.remove(subscriber, channel)
        if sub is None:
            return False
        subscriber.push(unsubscribe_push(channel, code, reason, resubscribe=resubscribe))
        self._ended(sub)
        return True

    async def _engine_unsubscribe(self, name: str) -> None:
        if name not in self._channels:  # nobody came back meanwhile
            await self._engine.unsubscribe(name)

    # ---------------------------------------------------------------------- stream state

    def start_position(self, channel: str, position: StreamPosition) -> None:
        """Where live delivery stands, from a subscriber's history read: only the node's first
        one sets it (moving it later would make publications on their way look like
        duplicates)."""
        if channel not in self._positions and channel not in self._syncing:
            self._positions[channel] = position

    def on_publication(self, channel: str, publication: Publication) -> None:
        """Deliver a live publication to local subscribers, in stream order, once."""
        subs = self._channels.get(channel)
        if not subs:
            return
        if publication.offset:
            syncing = self._syncing.get(channel)
            if syncing is not None:
                syncing.append(publication)
                return
            position = self._positions.get(channel)
            if position is not None:
                if publication.epoch and position.epoch and publication.epoch != position.epoch:
                    self.insufficient_state(channel)
                    if channel in self._channels:
                        self._positions[channel] = StreamPosition(
                            publication.offset, publication.epoch
                        )
                    return
                if publication.offset <= position.offset:
                    return
                if publication.prev is not None and publication.prev > position.offset:
                    self._syncing[channel] = [publication]
                    self._spawn(self._fill_gap(channel, position))
                    return
            self._positions[channel] = StreamPosition(
                publication.offset, publication.epoch or (position.epoch if position else "")
            )
        self._delivery.publication(channel, publication)

    def resync(self, channels: ChannelFilter | None = None) -> int:
        """The engine (or the part of it holding the channels ``channels`` accepts) is back:
        fill the gaps of every such channel with a known position from history (what was
        published meanwhile). Returns how many channels."""
        count = 0
        for channel, position in list(self._positions.items()):
            if channels is not None and not channels(channel):
                continue
            if channel in self._channels and channel not in self._syncing:
                self._syncing[channel] = []
                self._spawn(self._fill_gap(channel, position))
                count += 1
        return count

    def flush_recovery(self, subscriber: Subscriber) -> None:
        """After a subscribe reply: deliver to ``subscriber`` what arrived live while its
        history was read."""
        subs = self._by_subscriber.get(subscriber)
        if subs is None:
            return
        for sub in list(subs.values()):
            if sub.recovering:
                sub.recovering = False
                buffered, sub.buffer = sub.buffer, []
                name = sub.channel.name
                for publication in buffered:  # only what passes brought it: overtakes nothing
                    if self.subscription(subscriber, name) is not sub:
                        break
                    self._delivery.to_one(subscriber, sub, publication)

    def push_event(self, channel: str, message: dict[str, Any]) -> None:
        """Push ``message`` (join, leave) to every local subscriber of ``channel``, encoded
        once per codec in use, in order with the channel's publications."""
        if channel in self._channels:
            self._delivery.push(channel, message)

    async def _fill_gap(self, channel: str, since: StreamPosition) -> None:
        """Deliver what was missed after ``since`` from history, then what arrived meanwhile."""
        try:
            try:
                options = self._publish_options(channel)
                result = await self._engine.history(channel, since=since, options=options)
            except (EngineUnavailable, HubError):
                self.insufficient_state(channel)
                return
            publications = result.publications
            complete = result.position.epoch == since.epoch and (
                (not publications and result.position.offset == since.offset)
                or (bool(publications) and first_follows(publications[0], since.offset))
            )
            if not complete:
                self.insufficient_state(channel)
                if channel in self._channels:
                    self._positions[channel] = result.position
                return
            self._metrics.gap_fills.inc()
            buffered = self._syncing.get(channel, [])
            last = since.offset
            for publication in sorted([*publications, *buffered], key=lambda p: p.offset):
                if publication.offset <= last or (
                    publication.epoch and publication.epoch != since.epoch
                ):
                    continue
                last = publication.offset
                if not publication.epoch:
                    publication = dataclasses.replace(publication, epoch=since.epoch)
                self._positions[channel] = StreamPosition(last, since.epoch)
                if channel in self._channels:
                    self._delivery.publication(channel, publication)
        finally:
            self._syncing.pop(channel, None)

    def insufficient_state(self, channel: str) -> None:
        """Local subscribers can't be brought up to date: ask them to resubscribe (and
        recover); server-side subscriptions are removed and made again by their subscriber
        (no ``unsubscribe`` push: the client could not resubscribe them)."""
        subs = self._channels.get(channel)
        if not subs:
            return
        for subscriber, sub in list(subs.items()):
            if sub.server:
                if self.remove(subscriber, channel) is sub:
                    subscriber.resubscribe(sub)
                continue
            self.unsubscribe(
                subscriber, channel, UnsubscribeCode.INSUFFICIENT_STATE, "insufficient state", True
            )
