"""Which other hub nodes are alive: their announcements, and a silence long enough to call one
dead.

Every hub *instance* (one process run; a random id, renewed when the hub learns it was
declared dead) announces itself every ``interval`` seconds. :class:`NodeTracker` keeps the
time each peer instance was last heard from, on a monotonic clock, and reports a peer dead
once nothing came from it for ``timeout`` seconds (the hub uses 3 times the interval: two
announcements may be late or lost before a node counts as dead). A dead instance stays dead:
it is remembered (the last :data:`DEAD_REMEMBERED`), and if it speaks again it is told to come
back under a new id rather than resurrected, so a decision taken by one node holds for all.

The tracker only keeps state; the hub decides when to check (at :meth:`NodeTracker.next_deadline`)
and what to do about the dead. While this node cannot hear anybody (its engine is down, or its
own event loop stalled) nobody can be judged: :meth:`pause` and :meth:`grace`.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["DEAD_REMEMBERED", "NodeTracker", "Peer"]

DEAD_REMEMBERED = 4096


@dataclass
class Peer:
    """Another hub instance, as last heard from."""

    name: str
    instance: str
    last_seen: float
    info: dict[str, Any] = field(default_factory=dict)


class NodeTracker:
    """Last-heard times of peer instances; dead after ``timeout`` seconds of silence."""

    def __init__(self, timeout: float, clock: Callable[[], float] = time.monotonic) -> None:
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        self.timeout = timeout
        self._clock = clock
        self._peers: dict[str, Peer] = {}  # by instance
        self._ended: OrderedDict[str, str] = OrderedDict()  # dead or gone: instance -> name
        self._paused = False

    @property
    def peers(self) -> dict[str, Peer]:
        """Live peers by instance id."""
        return dict(self._peers)

    def seen(self, name: str, instance: str, info: dict[str, Any] | None = None) -> bool:
        """Record an announcement. False when ``instance`` was declared dead (or said it was
        leaving): it stays so, and must come back under a new instance id."""
        if instance in self._ended:
            return False
        peer = self._peers.get(instance)
        if peer is None:
            self._peers[instance] = Peer(name, instance, self._clock(), dict(info or {}))
        else:
            peer.name, peer.last_seen = name, self._clock()
            if info is not None:
                peer.info = dict(info)
        return True

    def ended(self, instance: str) -> bool:
        """True when ``instance`` was declared dead or left."""
        return instance in self._ended

    def end(self, instance: str, name: str = "") -> Peer | None:
        """Mark ``instance`` dead (or gone) for good. Returns its peer record when this is new
        (a known peer, or one only named), None when it had ended already."""
        if instance in self._ended:
            return None
        peer = self._peers.pop(instance, None)
        if peer is None:
            peer = Peer(name, instance, self._clock())
        self._ended[instance] = peer.name
        while len(self._ended) > DEAD_REMEMBERED:
            self._ended.popitem(last=False)
        return peer

    def expire(self) -> list[Peer]:
        """End and return the peers silent for ``timeout`` seconds or more (none while
        paused)."""
        if self._paused:
            return []
        limit = self._clock() - self.timeout
        silent = [peer for peer in self._peers.values() if peer.last_seen <= limit]
        for peer in silent:
            self.end(peer.instance)
        return silent

    def next_deadline(self) -> float | None:
        """When the next peer will be due (tracker clock), if there is one and not paused."""
        if self._paused or not self._peers:
            return None
        return min(peer.last_seen for peer in self._peers.values()) + self.timeout

    def pause(self) -> None:
        """This node cannot hear its peers (its engine is down): judge nobody."""
        self._paused = True

    def grace(self) -> None:
        """Resume, and count every peer as heard from now: this node could not hear them
        until now (engine back, or its own event loop was stalled)."""
        self._paused = False
        now = self._clock()
        for peer in self._peers.values():
            peer.last_seen = now
