"""Backoff with full jitter: delays in [0, min(max, min * 2**attempt)], reset on success."""

from __future__ import annotations

import pytest

from pulsewire.client import Backoff


def test_ceilings_grow_then_cap() -> None:
    backoff = Backoff(0.5, 20.0, random=lambda: 1.0)
    assert [backoff.next_delay() for _ in range(8)] == [0.5, 1, 2, 4, 8, 16, 20, 20]
    assert backoff.attempt == 8
    backoff.reset()
    assert backoff.next_delay() == 0.5


def test_full_jitter_scales_the_ceiling() -> None:
    draws = iter([0.0, 0.25, 0.5])
    backoff = Backoff(1.0, 10.0, random=lambda: next(draws))
    assert [backoff.next_delay() for _ in range(3)] == [0.0, 0.5, 2.0]


def test_huge_attempt_counts_stay_finite() -> None:
    backoff = Backoff(0.5, 20.0, random=lambda: 1.0)
    assert backoff.ceiling(10_000) == 20.0


@pytest.mark.parametrize(("low", "high"), [(-1, 1), (2, 1)])
def test_bad_bounds(low: float, high: float) -> None:
    with pytest.raises(ValueError):
        Backoff(low, high)
