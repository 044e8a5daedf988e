"""Handing a channel's publications and pushes to its local subscribers: in chunks, the
first chunk at once, and in arrival order.

Why chunks: a transport writes what it was given at the end of the loop iteration (one write
per connection for everything queued meanwhile, see :mod:`pulsewire.aio.sending`). Handing a
publication to 10,000 subscribers in one go therefore wrote nothing until the last of them had
it: the first subscriber waited for O(N) work (34 ms at 10,000). A *pass* hands the items to
a chunk of subscribers, then yields to the loop once (their bytes are written meanwhile) before
the next chunk: the same work, plus one loop iteration per chunk. The first chunk is small
(``first_chunk``: the first bytes leave after a few deliveries' work) and each next one
:data:`GROWTH` times the one before, up to ``chunk``: few chunks per pass, because each costs
more than its loop iteration (measured over loopback with the benchmark's client processes:
about 0.1 ms of the node's CPU per chunk, most likely from waking the readers again; chunks
of at most 128 cost 10 % more CPU per delivery to 10,000 subscribers than one chunk).

Bounded work per loop callback: a chunk hands every item of its pass to each of its
subscribers, so its work is items times subscribers. A pass takes at most ``pass_items``
(:data:`PASS_ITEMS`) of the items waiting, and its chunks have as many subscribers as keep a
chunk to about ``chunk`` deliveries (the first to about ``first_chunk``; at least one
subscriber). A pass that starts in the callback that finished the one before waits for the
next callback if its first chunk would take that callback past ``chunk`` deliveries. Before,
a pass took everything waiting: with 400 publications waiting for 2,000 subscribers, one
callback made 1024 x 400 = 409,600 deliveries (85 ms of CPU with the tests' do-nothing
subscribers; with real ones node B's loop lag read 0.7-3.7 s in benchmarks/backpressure.py),
so the lag probe and backpressure's "still overloaded" refreshes ran late and publications
waited 4-28 s (p99) with backpressure on. Several items per subscriber per pass remain: one
write for all of them is what drains a backlog fast.

The first chunk is taken from the channel's index as it is; the rest of the subscribers are
listed only when the second chunk starts, after the first chunk's bytes were written: listing
10,000 subscribers (two lists, touching every session and subscription object) took 1 ms of
the node's time, the largest part of what was left before the first write.

Order: a channel has at most one pass in progress. Whatever arrives for the channel meanwhile
(publications, join/leave pushes) waits in the channel's queue; the next pass hands the first
``pass_items`` of it to each subscriber in arrival order (written together), the pass after
that the next ones, so nothing overtakes anything for any subscriber. A pass goes to the
first chunk, then to the channel's other subscriptions as
listed for the second chunk (one loop iteration later: one added in between gets it too, a
subscriber of the first chunk never twice) that it still has when their turn comes: one
removed mid-pass (unsubscribed, disconnected as a slow consumer) gets nothing more; one added
after the listing starts with the next pass.

Per subscriber: a publication at or before the subscription's offset (or of another epoch) is
skipped, one arriving while the subscription is recovering is held in its buffer
(:meth:`Delivery.to_one` delivers the buffer afterwards). Each item is encoded once per codec
in use, the first time a subscriber with that codec comes up.

How far behind: each item is dated when queued; :meth:`Delivery.lags` gives, per channel with
a pass in progress, the age of the pass's first item (the oldest not yet handed to every
subscriber), which backpressure (:mod:`pulsewire.hub.backpressure`) measures. A channel with
more than :data:`MAX_QUEUED` items waiting is given up (its subscribers told insufficient
state) rather than let memory grow.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from itertools import islice
from typing import Any

from .messages import publication_push
from .metrics import HubMetrics
from .subscription import Subscriber, Subscription
from .types import PreparedMessage, Publication

__all__ = ["CHUNK", "FIRST_CHUNK", "GROWTH", "MAX_QUEUED", "PASS_ITEMS", "Delivery"]

logger = logging.getLogger("pulsewire.hub")

FIRST_CHUNK = 16
"""Deliveries (items times subscribers) before the first yield to the loop (tens of µs of
work): 16 subscribers for one item, one subscriber for 16 items or more."""
GROWTH = 8
"""Each chunk of a pass is this many times the one before (16, 128, 1024, 1024... subscribers
for one item)."""
CHUNK = 1024
"""The most deliveries in one loop callback, a few ms of work: what comes in meanwhile (other
channels' publications, commands, the loop lag probe) waits no longer than that."""
PASS_ITEMS = 64
"""The most items one pass takes from the channel's queue; the rest wait for the next pass.
Several items per subscriber per pass is what drains a backlog fast (one write for all)."""
MAX_QUEUED = 10_000
"""Items a channel may have waiting behind its pass in progress. One more and the node gives
up on the channel's stream rather than grow its memory: what was waiting is dropped, and the
channel's subscribers are told insufficient state (they resubscribe and recover from
history). Backpressure (:mod:`.backpressure`) should hold publishers back long before."""


class _Item:
    """One publication, or one push to every subscriber, with its encodings by codec name
    and when it was queued (``time.monotonic()``)."""

    __slots__ = ("message", "prepared", "publication", "queued")

    def __init__(
        self, publication: Publication | None, message: dict[str, Any] | None, queued: float
    ) -> None:
        self.publication = publication
        self.message = message  # a publication's push: built when first needed
        self.prepared: dict[str, PreparedMessage] = {}
        self.queued = queued


class _Pass:
    """One delivery of ``items`` to the subscriptions of ``channel``: at first only the
    first ``size`` of them, all of them once :meth:`list_rest` has run (``listed``); chunks
    of at most ``largest`` subscribers."""

    __slots__ = (
        "channel",
        "done",
        "items",
        "largest",
        "listed",
        "size",
        "subscribers",
        "subscriptions",
    )

    def __init__(
        self,
        channel: str,
        items: list[_Item],
        subs: Mapping[Subscriber, Subscription],
        size: int,
        largest: int,
    ) -> None:
        self.channel = channel
        self.largest = largest  # subscribers of the largest chunk
        self.items = items
        self.listed = len(subs) <= size
        # Keys and values as two lists rather than list(subs.items()): with 10,000
        # subscribers, 10,000 tuples per publication were enough short-lived survivors to
        # trigger a full garbage collection every few publications.
        if self.listed:
            self.subscribers = list(subs)
            self.subscriptions = list(subs.values())
        else:
            self.subscribers = list(islice(subs, size))
            self.subscriptions = list(islice(subs.values(), size))
        self.done = 0  # subscribers handed every item so far
        self.size = size  # of the next chunk

    def list_rest(self, subs: Mapping[Subscriber, Subscription]) -> None:
        """After the first chunk: list every subscription of the channel now, except those
        of the first chunk's subscribers (``done`` moves past them)."""
        served = set(self.subscribers)
        keys = list(subs)
        values = list(subs.values())
        # Insertion order: the first chunk's subscribers still there are still the first.
        skip = 0
        while skip < len(keys) and keys[skip] in served:
            skip += 1
        if skip < len(served):  # some left (and may be back, further on): filter them out
            kept = [i for i in range(skip, len(keys)) if keys[i] not in served]
            keys = keys[:skip] + [keys[i] for i in kept]
            values = values[:skip] + [values[i] for i in kept]
        self.subscribers = keys
        self.subscriptions = values
        self.done = skip
        self.listed = True


class Delivery:
    """Delivery to local subscribers (see the module docstring).

    ``channels`` is the fan-out's index (channel → subscriber → subscription), read when a
    pass starts and at each chunk; ``first_chunk`` and ``chunk`` the deliveries (items times
    subscribers) of a pass's first chunk and of its largest; ``pass_items`` the most items
    one pass takes; ``clock`` (``time.monotonic`` but in tests) dates each
    item as it is queued, for :meth:`lags`. ``overflow(channel)`` is called when a channel has
    more than ``max_queued`` items waiting: they are dropped, and it tells the subscribers.
    """

    def __init__(
        self,
        channels: Mapping[str, Mapping[Subscriber, Subscription]],
        metrics: HubMetrics,
        *,
        chunk: int = CHUNK,
        first_chunk: int = FIRST_CHUNK,
        clock: Callable[[], float] = time.monotonic,
        max_queued: int = MAX_QUEUED,
        pass_items: int = PASS_ITEMS,
        overflow: Callable[[str], None],
    ) -> None:
        smallest = min(chunk, first_chunk, pass_items)
        if smallest < 1:
            raise ValueError(f"chunks and pass_items must be at least 1, not {smallest}")
        if max_queued < 1:
            raise ValueError(f"max_queued must be at least 1, not {max_queued}")
        self._max_queued = max_queued
        self._overflow = overflow
        self._channels = channels
        self._metrics = metrics
        self._chunk = chunk
        self._first_chunk = min(first_chunk, chunk)
        self._pass_items = pass_items
        self.delivered = 0
        """Deliveries handed so far (an item to a subscriber; a pass's subscribers removed
        meanwhile included): the probe's measure of the node's delivery rate."""
        self._clock = clock
        self._passes: dict[str, _Pass] = {}
        self._waiting: dict[str, list[_Item]] = {}

    def publication(self, channel: str, publication: Publication) -> None:
        """Deliver ``publication`` to the channel's subscribers, after what came before it."""
        self._add(channel, _Item(publication, None, self._clock()))

    def push(self, channel: str, message: dict[str, Any]) -> None:
        """Push ``message`` (join, leave) to every subscriber, after what came before it."""
        self._add(channel, _Item(None, message, self._clock()))

    def to_one(self, subscriber: Subscriber, sub: Subscription, publication: Publication) -> None:
        """Deliver ``publication`` to one subscriber now, uncounted (a recovering subscriber's
        buffer: only items that passes already brought to it, so nothing is overtaken)."""
        one = {subscriber: sub}
        item = _Item(publication, None, 0.0)
        self._hand(_Pass(sub.channel.name, [item], one, 1, 1), one, 0, 1)

    def busy(self, channel: str) -> bool:
        """True while a pass for ``channel`` is in progress."""
        return channel in self._passes

    def lags(self, now: float) -> dict[str, float]:
        """The channels with a pass in progress, and the age (seconds at ``now``, a
        ``time.monotonic()`` value) of the oldest item not yet handed to every subscriber:
        the pass's first (what waits behind the pass is younger)."""
        return {channel: now - current.items[0].queued for channel, current in self._passes.items()}

    def backlog(self) -> dict[str, int]:
        """The channels with a pass in progress, and the deliveries still to make for them:
        the pass's items to its subscribers not served yet, and each waiting item to every
        subscriber (what a publication arriving now waits behind)."""
        out: dict[str, int] = {}
        for channel, current in self._passes.items():
            subscribers = len(self._channels.get(channel, ()))
            if current.listed:
                left = len(current.subscribers) - current.done
            else:  # only the first chunk is listed yet
                left = subscribers - current.done
            waiting = self._waiting.get(channel)
            out[channel] = max(0, left) * len(current.items) + (
                len(waiting) * subscribers if waiting else 0
            )
        return out

    def lag(self, now: float) -> float:
        """The age of the oldest item not yet handed to every subscriber (0 when none)."""
        return max(self.lags(now).values(), default=0.0)

    def drop(self, channel: str) -> None:
        """Forget the channel's pass and queue (it has no local subscriber left, or its
        queue overflowed)."""
        self._passes.pop(channel, None)
        self._waiting.pop(channel, None)

    def _add(self, channel: str, item: _Item) -> None:
        queue = self._waiting.setdefault(channel, [])  # left by a failed pass too: keep order
        if channel in self._passes:
            if len(queue) >= self._max_queued:
                self._overflowed(channel)
                return
            queue.append(item)
            return
        queue.append(item)
        self._start(channel, 0)

    def _overflowed(self, channel: str) -> None:
        """Too much waiting for ``channel``: drop it (and the pass in progress), and have the
        subscribers told (they recover what they missed from history)."""
        self._metrics.delivery_overflows.inc()
        logger.warning(
            "delivery to %s is %d items behind: its subscribers are told to resubscribe",
            channel,
            self._max_queued,
        )
        self.drop(channel)
        self._overflow(channel)

    def _start(self, channel: str, spent: int) -> None:
        """Start a pass for the first (at most ``pass_items``) items waiting for ``channel``,
        and the next ones as long as passes finish at once; ``spent``: the deliveries this
        loop callback made already. A first chunk that would take the callback past ``chunk``
        deliveries waits for the next callback (the pass is in progress meanwhile)."""
        while True:
            waiting = self._waiting.get(channel)
            subs = self._channels.get(channel)
            if not waiting or not subs:
                self._waiting.pop(channel, None)  # nobody to hand them to
                return
            if len(waiting) > self._pass_items:
                items = waiting[: self._pass_items]
                del waiting[: self._pass_items]
            else:
                items = self._waiting.pop(channel)
            # A chunk hands every item of the pass to each of its subscribers: as many
            # subscribers as keep it to about ``chunk`` deliveries (``first_chunk`` at first).
            count = len(items)
            first = max(1, self._first_chunk // count)
            largest = max(1, self._chunk // count)
            current = self._passes[channel] = _Pass(channel, items, subs, first, largest)
            if spent and spent + first * count > self._chunk:
                asyncio.get_running_loop().call_soon(self._resume, current)
                return
            if not self._run(current):
                return  # the rest of it comes from the loop
            spent += len(current.subscribers) * count

    def _run(self, current: _Pass) -> bool:
        """Hand the pass's next chunk; True if that finished it (it is no longer in
        progress), False if the rest is scheduled or the channel was dropped meanwhile."""
        channel = current.channel
        subs = self._channels.get(channel)
        if not current.listed and current.done:  # the second chunk: list the rest now
            current.list_rest(subs or {})
        total = len(current.subscribers)
        start = current.done
        stop = min(start + current.size, total)
        current.size = min(GROWTH * current.size, current.largest)
        try:
            if subs:
                self._hand(current, subs, start, stop)
        except BaseException:
            if self._passes.get(channel) is current:  # not stuck: later items may go
                del self._passes[channel]
            raise
        current.done = stop
        self.delivered += (stop - start) * len(current.items)
        if self._passes.get(channel) is not current:
            return False
        if stop < total or not current.listed:
            asyncio.get_running_loop().call_soon(self._resume, current)
            return False
        del self._passes[channel]
        self._count(current)
        return True

    def _resume(self, current: _Pass) -> None:
        """The loop callback of a pass's later chunks."""
        channel = current.channel
        if self._passes.get(channel) is not current:
            return  # dropped meanwhile
        done = current.done
        try:
            finished = self._run(current)
        except Exception:
            logger.exception("error while delivering to the subscribers of %s", channel)
            finished = True
        if finished:
            self._start(channel, max(1, (current.done - done) * len(current.items)))

    def _hand(
        self,
        current: _Pass,
        subs: Mapping[Subscriber, Subscription],
        start: int,
        stop: int,
    ) -> None:
        """Hand every item of the pass to its subscribers ``start:stop`` that ``subs`` (the
        channel's subscriptions now) still has; item by item, so each subscriber gets them
        in order."""
        # zip over slices: faster per subscriber than indexing both lists (the slices are
        # C copies of at most one chunk; zip reuses its tuple)
        subscribers = current.subscribers[start:stop]
        subscriptions = current.subscriptions[start:stop]
        for item in current.items:
            prepared = item.prepared
            publication = item.publication
            if publication is None:  # a push to every subscriber
                message = item.message
                assert message is not None
                for subscriber, sub in zip(subscribers, subscriptions, strict=True):
                    if subs.get(subscriber) is not sub:
                        continue
                    codec = subscriber.codec
                    encoded = prepared.get(codec.name)
                    if encoded is None:
                        encoded = prepared[codec.name] = PreparedMessage(codec.encode(message))
                    subscriber.send_prepared(encoded)
                continue
            offset = publication.offset
            epoch = publication.epoch
            for subscriber, sub in zip(subscribers, subscriptions, strict=True):
                if subs.get(subscriber) is not sub:
                    continue  # removed since the pass listed it
                if sub.recovering:
                    sub.buffer.append(publication)
                    continue
                if offset:
                    if epoch and sub.epoch and epoch != sub.epoch:
                        continue  # the subscriber is told to resubscribe on epoch changes
                    if offset <= sub.offset:
                        continue  # delivered already (recovered, or a duplicate)
                    sub.offset = offset
                codec = subscriber.codec
                encoded = prepared.get(codec.name)
                if encoded is None:
                    body = item.message
                    if body is None:
                        body = item.message = publication_push(current.channel, publication)
                    encoded = prepared[codec.name] = PreparedMessage(codec.encode(body))
                subscriber.send_publication(encoded, sub)

    def _count(self, current: _Pass) -> None:
        """Metrics of a finished pass: deliveries, and publish-to-deliver latency."""
        now = 0.0
        for item in current.items:
            publication = item.publication
            if publication is None:
                continue
            self._metrics.deliveries.inc(len(current.subscribers))
            if publication.published_at:
                now = now or time.time()
                self._metrics.latency.observe(max(0.0, now - publication.published_at))
