"""A feed of values for async iterators (state changes, messages, server-side subscriptions)."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from typing import Generic, TypeVar

from .errors import ClientError

__all__ = ["Feed"]

T = TypeVar("T")


class Feed(Generic[T]):
    """Every value :meth:`put` goes to every iterator running at the time. Up to ``keep``
    values put while no iterator runs are kept for the next one (older ones dropped), so
    that what arrives between connecting and starting to iterate is not lost."""

    def __init__(self, keep: int = 0) -> None:
        self._kept: deque[T] = deque(maxlen=keep)
        self._sinks: list[tuple[deque[T], list[asyncio.Future[None]]]] = []
        self._ended = False
        self._error: ClientError | None = None

    def put(self, value: T) -> None:
        """Hand ``value`` to the running iterators (or keep it)."""
        if self._ended:
            return
        if not self._sinks:
            self._kept.append(value)
            return
        for queue, wakeup in self._sinks:
            queue.append(value)
            _wake(wakeup)

    def end(self, error: ClientError | None = None) -> None:
        """No more values: iterators end after the queued ones (raising ``error`` if given)."""
        self._ended = True
        self._error = error
        for _, wakeup in self._sinks:
            _wake(wakeup)

    async def __aiter__(self) -> AsyncIterator[T]:
        queue: deque[T] = deque(self._kept)
        self._kept.clear()
        wakeup: list[asyncio.Future[None]] = []
        sink = (queue, wakeup)
        self._sinks.append(sink)
        try:
            while True:
                while queue:
                    yield queue.popleft()
                if self._ended:
                    if self._error is not None:
                        raise self._error
                    return
                future = asyncio.get_running_loop().create_future()
                wakeup[:] = [future]
                await future
        finally:
            self._sinks.remove(sink)


def _wake(wakeup: list[asyncio.Future[None]]) -> None:
    if wakeup and not wakeup[0].done():
        wakeup[0].set_result(None)
