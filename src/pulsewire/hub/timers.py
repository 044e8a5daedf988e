"""Many far-off timers on one event-loop timer: the sessions' expiry timers.

A node holds a credentials timer for every session whose token expires, most of them due in
minutes or hours and cancelled first (the session ends or refreshes). One ``call_later`` each
cost about 590 bytes under uvloop (a handle, a libuv timer, their arguments: tracemalloc, 2,000
subscribed hub connections); a :class:`Timer` in a shared heap costs about 130. The heap keeps
one loop timer armed, for its earliest entry.

A cancelled timer drops its callback and arguments at once (what it would have called is
freed by reference counting, not when its time comes), and stays in the heap only until the
heap is mostly cancelled entries: then it is rebuilt without them, as asyncio does with its
own timers. Callbacks run in the loop, one after another; one raising is logged and the others
still run.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
from collections.abc import Callable
from typing import Any

__all__ = ["Timer", "TimerQueue"]

logger = logging.getLogger("pulsewire.hub")

_COMPACT_MIN = 64
"""Cancelled entries tolerated before the heap is rebuilt (when they are also over half)."""

_EARLY = 0.001
"""A loop may run a timer up to its clock's resolution early (uvloop's is a millisecond):
entries due within that run too, or the queue would re-arm for the same instant."""


class Timer:
    """One timer of a :class:`TimerQueue`; :meth:`cancel` it like an ``asyncio.TimerHandle``."""

    __slots__ = ("_args", "_callback", "_queue", "_seq", "when")

    def __init__(
        self,
        queue: TimerQueue,
        when: float,
        seq: int,
        callback: Callable[..., object],
        args: tuple[Any, ...],
    ) -> None:
        self.when = when
        """When it falls due, on the loop's clock."""
        self._seq = seq
        self._queue = queue
        self._callback: Callable[..., object] | None = callback
        self._args = args

    def __lt__(self, other: Timer) -> bool:
        return (self.when, self._seq) < (other.when, other._seq)

    @property
    def cancelled(self) -> bool:
        """True once cancelled, or once it has run."""
        return self._callback is None

    def cancel(self) -> None:
        """It will not run (no effect once it has run or was cancelled)."""
        if self._callback is not None:
            self._callback = None
            self._args = ()
            self._queue.discarded()


class TimerQueue:
    """Timers kept in a heap under a single loop timer (see the module docstring); the queue
    binds to the running loop on its first :meth:`call_later`. A hub has one."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._heap: list[Timer] = []
        self._seq = itertools.count()
        self._cancelled = 0
        self._handle: asyncio.TimerHandle | None = None
        self._armed_for = 0.0

    def __len__(self) -> int:
        """Entries in the heap, cancelled ones not yet dropped included."""
        return len(self._heap)

    def call_later(self, delay: float, callback: Callable[..., object], *args: Any) -> Timer:
        """Run ``callback(*args)`` in ``delay`` seconds (at least the next loop iteration)."""
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        timer = Timer(self, loop.time() + max(delay, 0.0), next(self._seq), callback, args)
        heapq.heappush(self._heap, timer)
        if self._heap[0] is timer:
            self._arm(loop)
        return timer

    def discarded(self) -> None:
        """A timer was cancelled: rebuild the heap once it is mostly cancelled entries."""
        self._cancelled += 1
        cancelled, held = self._cancelled, len(self._heap)
        if cancelled == held or (cancelled > _COMPACT_MIN and cancelled * 2 > held):
            self._heap = [timer for timer in self._heap if not timer.cancelled]
            heapq.heapify(self._heap)
            self._cancelled = 0
            if not self._heap and self._handle is not None:
                self._handle.cancel()
                self._handle = None

    def _arm(self, loop: asyncio.AbstractEventLoop) -> None:
        when = self._heap[0].when
        if self._handle is not None:
            if self._armed_for <= when:
                return  # fires in time: it looks at the heap then
            self._handle.cancel()
        self._armed_for = when
        self._handle = loop.call_at(when, self._fire)

    def _fire(self) -> None:
        self._handle = None
        heap = self._heap
        loop = self._loop
        assert loop is not None  # armed by call_later
        now = loop.time() + _EARLY
        while heap and heap[0].when <= now:
            timer = heapq.heappop(heap)
            callback, args = timer._callback, timer._args
            if callback is None:
                self._cancelled -= 1
                continue
            timer._callback, timer._args = None, ()
            try:
                callback(*args)
            except Exception:
                logger.exception("timer callback %r failed", callback)
        if heap:
            self._arm(loop)
