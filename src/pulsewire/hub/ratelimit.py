"""Token buckets: the rate limits of sessions (commands/bytes per second), of the front door
(new connections per second per IP) and of failed authentications per address.

A bucket holds up to ``burst`` tokens and refills at ``rate`` per second; taking more than
it holds fails. Written here because it is ten lines and every library for it brings a
scheduler or a backend we don't need.
"""

from __future__ import annotations

import itertools
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

    def _refill(self) -> float:
        now = self._clock()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        return self.tokens

    def take(self, amount: float = 1.0) -> bool:
        """Take ``amount`` tokens if they are there; False (and nothing taken) otherwise."""
        tokens = self._refill()
        if tokens < amount:
            return False
        self.tokens = tokens - amount
        return True

    def wait_time(self, amount: float = 1.0) -> float:
        """Seconds until ``amount`` tokens are there (0: now; inf: never, e.g. past burst)."""
        missing = amount - self._refill()
        if missing <= 0:
            return 0.0
        if amount > self.burst or self.rate <= 0:
            return float("inf")
        return missing / self.rate


class KeyedBuckets:
    """One bucket per key (e.g. per client IP), forgetting keys whose bucket is full again.

    At most ``max_keys`` buckets are kept: when a sweep of full buckets does not make room,
    the oldest keys are forgotten (a tenth at a time, so the O(n) pass is amortised), which
    gives each of them a fresh burst but keeps memory bounded whatever the number of keys.
    """

    def __init__(
        self,
        rate: float,
        burst: float | None = None,
        max_keys: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate = rate
        self.burst = burst if burst is not None else rate
        self.max_keys = max_keys
        self._clock = clock
        self._buckets: dict[str, TokenBucket] = {}
        self._last_sweep = clock()

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: str, amount: float = 1.0) -> bool:
        bucket = self._buckets.get(key)
        if bucket is None:
            self._sweep()
            bucket = self._buckets[key] = TokenBucket(self.rate, self.burst, self._clock)
        return bucket.take(amount)

    def wait_time(self, key: str, amount: float = 1.0) -> float:
        """Seconds until ``key`` could take ``amount`` (0 for a key not seen: full bucket).

        Looking does not create a bucket, so probing costs no memory."""
        bucket = self._buckets.get(key)
        if bucket is None:
            return 0.0 if amount <= self.burst else float("inf")
        return bucket.wait_time(amount)

    def _sweep(self) -> None:
        now = self._clock()
        if len(self._buckets) < self.max_keys and now - self._last_sweep < 60:
            return
        self._last_sweep = now
        refill = self.burst / self.rate if self.rate else 0.0
        self._buckets = {k: b for k, b in self._buckets.items() if now - b.stamp < refill}
        excess = len(self._buckets) - self.max_keys * 9 // 10
        if len(self._buckets) >= self.max_keys and excess > 0:
            for key in list(itertools.islice(self._buckets, excess)):
                del self._buckets[key]
