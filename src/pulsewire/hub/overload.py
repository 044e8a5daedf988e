"""How far behind on delivery a node is, and which nodes of the cluster are: the measures
behind backpressure (:mod:`pulsewire.hub.backpressure` acts on them).

A node is *behind* by the larger of two lags:

* the delivery lag: the age of the oldest publication (or push) that the node's
  :class:`~pulsewire.hub.delivery.Delivery` has not yet handed to every local subscriber of
  its channel or, when longer, the time the node needs for all it has queued
  (:func:`expected_lags`, at the :class:`DrainRate` it delivers at while behind); measured
  per channel: only the channels with a pass in progress count;
* the loop lag: how late a periodic timer of the node's event loop fires (everything the
  node does waits that long, whatever the channel).

:class:`OverloadDetector` turns these into one state: *overloaded* once the lag is over
``bound`` seconds, and again *clear* only once it is under half of it (hysteresis: a node at
the edge does not flap), with the channels it is behind on, or :data:`ALL` when its loop is.
It takes the time as an argument and keeps no clock of its own.

:class:`LoadTable` is what one node knows of the cluster's load: an entry per overloaded node
instance (its own included), each expiring ``ttl`` seconds after its last refresh, plus the
lag that node reported (at most ``ttl`` more), so a lost "clear" or a dead node never holds
publishers back for long. The reported lag is added because a node whose loop runs ``L``
seconds late sends its refreshes up to ``L`` late too: with ``ttl`` alone, a node whose loop
ran 0.7-3.7 s late had its entry on the other node expire between two refreshes, and the
gate there reopened while it was still overloaded (benchmarks/backpressure.py, before
delivery's work per loop callback was bounded: the other node's overloaded-nodes gauge
flapped 1/0 about every second). :meth:`LoadTable.blocks` says whether a publication to a
channel should wait.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

__all__ = [
    "ALL",
    "DrainRate",
    "LoadEntry",
    "LoadState",
    "LoadTable",
    "OverloadDetector",
    "expected_lags",
]

ALL = "all"
"""In place of a list of channels: the node is behind on every channel (its loop is late)."""


@dataclass(frozen=True, slots=True)
class LoadState:
    """A node's state: ``overloaded``, by ``lag`` seconds, on ``channels`` (a sorted tuple of
    names) or on every channel (``ALL``)."""

    overloaded: bool
    lag: float
    channels: tuple[str, ...] | str = ()

    def covers(self, channel: str) -> bool:
        """True if a publication to ``channel`` should wait for this node."""
        return self.overloaded and (self.channels == ALL or channel in self.channels)


CLEAR = LoadState(False, 0.0)


class OverloadDetector:
    """One node's overload state with hysteresis (see the module docstring): overloaded when
    a lag is over ``bound``, clear again when every lag is under ``bound / 2``. While
    overloaded, the channels it is behind on are those whose delivery lag is at least
    ``bound / 2`` (:data:`ALL` when the loop lag is)."""

    def __init__(self, bound: float) -> None:
        if not bound > 0:
            raise ValueError(f"the lag bound must be positive, not {bound}")
        self.bound = bound
        self.state = CLEAR

    def update(self, delivery: dict[str, float], loop_lag: float) -> bool:
        """Feed the current lags: ``delivery`` by channel (the channels with a backlog),
        ``loop_lag`` in seconds. Returns True when the state changed (overloaded or not, or
        the channels it is behind on); the lag alone changing is not a change."""
        worst = max(loop_lag, max(delivery.values(), default=0.0))
        old = self.state
        if not old.overloaded and worst <= self.bound:
            return False
        clear = self.bound / 2
        if worst < clear:
            self.state = CLEAR
            return True
        channels: tuple[str, ...] | str
        if loop_lag >= clear:
            channels = ALL
        else:
            channels = tuple(sorted(name for name, lag in delivery.items() if lag >= clear))
        self.state = LoadState(True, worst, channels)
        return not old.overloaded or old.channels != channels


class DrainRate:
    """The node's delivery rate while it has a backlog (deliveries per second: what it can
    do, not what it was asked), smoothed over the probes.

    Only intervals with a backlog at both ends count: an idle node's rate says nothing of
    its capacity. 0 until the first such interval."""

    def __init__(self, smoothing: float = 0.3) -> None:
        self.smoothing = smoothing
        self.per_second = 0.0
        self._last: tuple[float, int, bool] | None = None

    def update(self, now: float, delivered: int, busy: bool) -> None:
        """Feed a probe: ``delivered`` so far (a counter) at ``now``, ``busy`` if there was
        a backlog."""
        last, self._last = self._last, (now, delivered, busy)
        if last is None or not (busy and last[2]) or now <= last[0]:
            return
        sample = (delivered - last[1]) / (now - last[0])
        if self.per_second == 0.0:
            self.per_second = sample
        else:
            self.per_second += self.smoothing * (sample - self.per_second)


def expected_lags(ages: dict[str, float], backlog: dict[str, int], rate: float) -> dict[str, float]:
    """Each behind channel's lag: the age of its oldest item not yet delivered or, when
    larger, how long the node needs for every delivery queued (``backlog`` over ``rate``;
    the loop serves all channels together): what a publication arriving now would wait.

    The age alone rises only as fast as time: a node taking publications faster than it
    delivers them was found behind only once its oldest item was ``bound`` old, with
    seconds of work queued behind it by then (benchmarks/backpressure.py at 800/s to 2,000
    subscribers: its lag rose to 5 s between two clears, in a saw-tooth)."""
    if rate <= 0:
        return dict(ages)
    drain = sum(backlog.values()) / rate
    out = dict(ages)
    for channel, pending in backlog.items():
        if pending:
            out[channel] = max(out.get(channel, 0.0), drain)
    return out


@dataclass(frozen=True, slots=True)
class LoadEntry:
    """An overloaded node instance as last heard: its ``node`` name, its ``state``, and
    until when (``expires``, on the table's clock) it counts without a refresh."""

    node: str
    state: LoadState
    expires: float


class LoadTable:
    """The overloaded nodes of the cluster, by instance id; times are on the caller's clock
    (``time.monotonic()`` in the hub). Entries last ``ttl`` seconds after their last
    refresh, plus the lag the node reported in it (up to ``ttl``): its next refresh may come
    that late."""

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._entries: dict[str, LoadEntry] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def set(self, instance: str, node: str, state: LoadState, now: float) -> bool:
        """Record what ``instance`` (of the node ``node``) said; a clear state removes it.
        It also replaces what the node's earlier instances said: a node that rejoins (it was
        frozen, declared dead, and thawed) says it was behind as the old instance and that it
        caught up as the new one. Returns True if publishers waiting may now go (an entry went
        or shrank)."""
        old = self._entries.pop(instance, None)
        earlier = [i for i, entry in self._entries.items() if entry.node == node]
        for gone in earlier:
            del self._entries[gone]
        if state.overloaded:
            grace = min(max(state.lag, 0.0), self.ttl)
            self._entries[instance] = LoadEntry(node, state, now + self.ttl + grace)
        if earlier:
            return True
        if old is None:
            return False
        return not state.overloaded or (old.state.channels != state.channels)

    def drop(self, instances: Iterable[str] = (), node: str | None = None) -> bool:
        """Forget ``instances`` and every instance of ``node`` (declared dead, or gone);
        True if an entry went."""
        gone = set(instances)
        if node is not None:
            gone |= {i for i, entry in self._entries.items() if entry.node == node}
        return any([self._entries.pop(instance, None) is not None for instance in gone])

    def expire(self, now: float) -> bool:
        """Forget the entries not refreshed in time; True if one went."""
        old = [i for i, entry in self._entries.items() if entry.expires <= now]
        for instance in old:
            del self._entries[instance]
        return bool(old)

    def blocks(self, channel: str, now: float) -> bool:
        """True if a node (not expired at ``now``) is behind on ``channel`` or on all."""
        return any(e.expires > now and e.state.covers(channel) for e in self._entries.values())

    def next_expiry(self) -> float | None:
        """When the next entry expires (on the table's clock), or None when there is none."""
        return min((entry.expires for entry in self._entries.values()), default=None)

    def entries(self) -> dict[str, LoadEntry]:
        """The entries by instance (a copy)."""
        return dict(self._entries)
