"""Reconnect delays: exponential backoff with full jitter, as the browser client does.

The delay before attempt ``n`` (0 after a connection was lost or the first one failed) is a
random number in ``[0, min(max_delay, min_delay * 2**n)]``: growing ceilings keep a cluster
that lost a node from being hammered, and the jitter spreads the clients that lost it at
the same moment ("full jitter", see the AWS Architecture Blog's "Exponential Backoff And
Jitter").
"""

from __future__ import annotations

import random
from collections.abc import Callable

__all__ = ["Backoff"]


class Backoff:
    """Counts failed attempts; :meth:`next_delay` gives the delay before the next one."""

    def __init__(
        self,
        min_delay: float = 0.5,
        max_delay: float = 20.0,
        *,
        random: Callable[[], float] = random.random,
    ) -> None:
        if min_delay < 0 or max_delay < min_delay:
            raise ValueError("need 0 <= min_delay <= max_delay")
        self.min_delay = min_delay
        self.max_delay = max_delay
        self.attempt = 0
        """Failed attempts since the last success."""
        self._random = random

    def ceiling(self, attempt: int) -> float:
        """The largest delay before attempt ``attempt``: ``min(max, min * 2**attempt)``."""
        if attempt >= 64:  # 2**64 * min_delay is past any max_delay; avoid huge floats
            return self.max_delay
        return float(min(self.max_delay, self.min_delay * 2**attempt))

    def next_delay(self) -> float:
        """A random delay in ``[0, ceiling(attempt)]``; counts the attempt."""
        delay = self._random() * self.ceiling(self.attempt)
        self.attempt += 1
        return delay

    def reset(self) -> None:
        """A connection succeeded: the next failure starts from the smallest ceiling."""
        self.attempt = 0
