"""Token buckets: the rate limits of sessions (messages/bytes per second) and of the front
door (handshakes per second per IP).

A bucket holds up to ``burst`` tokens and refills at ``rate`` per second; taking more than
it holds fails. Written here because it is ten lines and every library for it brings a
scheduler or a backend we don't need.
"""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["KeyedBuckets", "TokenBucket"]


class TokenBucket:
    __slots__ = ("rate", "burst", "tokens", "stamp", "_clock")

    def __init__(
        self, rate: float, burst: float | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self.burst = burst if burst is not None else rate
        self.tokens = self.burst
        self._clock = clock
        self.stamp = clock()

    def take(self, amount: float = 1.0) -> bool:
        """Take ``amount`` tokens if they are there; False (and nothing taken) otherwise."""
        now = self._clock()
        tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if tokens < amount:
            self.tokens = tokens
            return False
        self.tokens = tokens - amount
        return True


class KeyedBuckets:
    """One bucket per key (e.g. per client IP), forgetting keys whose bucket is full again."""

    def __init__(self, rate: float, burst: float | None = None, max_keys: int = 100_000) -> None:
        self.rate = rate
        self.burst = burst if burst is not None else rate
        self.max_keys = max_keys
        self._buckets: dict[str, TokenBucket] = {}
        self._last_sweep = time.monotonic()

    def take(self, key: str, amount: float = 1.0) -> bool:
        bucket = self._buckets.get(key)
        if bucket is None:
            self._sweep()
            bucket = self._buckets[key] = TokenBucket(self.rate, self.burst)
        return bucket.take(amount)

    def _sweep(self) -> None:
        now = time.monotonic()
        if len(self._buckets) < self.max_keys and now - self._last_sweep < 60:
            return
        self._last_sweep = now
        refill = self.burst / self.rate if self.rate else 0.0
        self._buckets = {k: b for k, b in self._buckets.items() if now - b.stamp < refill}
