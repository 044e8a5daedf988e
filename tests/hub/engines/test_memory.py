"""MemoryEngine specifics: the bounded map of idempotency keys, on a fake clock."""

from __future__ import annotations

import pytest

from pulsewire.hub.engines.base import IdempotencyKeysFull, PublishOnce
from pulsewire.hub.engines.memory import MemoryEngine
from pulsewire.hub.types import Publication, PublishOptions, StreamPosition

HISTORY = PublishOptions(history_size=10, history_ttl=3600.0)
NO_HISTORY = PublishOptions()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_bound_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_idempotency_keys"):
        MemoryEngine(max_idempotency_keys=0)


async def test_a_full_map_refuses_new_keys_until_old_ones_expire() -> None:
    clock = Clock()
    engine = MemoryEngine(clock, max_idempotency_keys=3)
    for i in range(3):
        outcome = await engine.publish_once("h", Publication(i), HISTORY, f"k{i}", 10.0)
        assert not outcome.duplicate
        clock.now += 1.0
    with pytest.raises(IdempotencyKeysFull):
        await engine.publish_once("h", Publication("refused"), HISTORY, "k3", 10.0)
    with pytest.raises(IdempotencyKeysFull):
        await engine.publish_once("other", Publication("refused"), NO_HISTORY, "k0", 10.0)
    history = await engine.history("h", options=HISTORY)
    assert [p.data for p in history.publications] == [0, 1, 2], "a refusal publishes nothing"
    epoch = history.position.epoch
    # retries of remembered keys are still answered while the map is full
    again = await engine.publish_once("h", Publication("x"), HISTORY, "k1", 10.0)
    assert again == PublishOnce(StreamPosition(2, epoch), duplicate=True)
    clock.now = 1000.0 + 10.0  # k0 expires (published at 1000 with a 10 s window)
    outcome = await engine.publish_once("h", Publication(3), HISTORY, "k3", 10.0)
    assert outcome == PublishOnce(StreamPosition(4, epoch), duplicate=False)
    with pytest.raises(IdempotencyKeysFull):  # k1, k2, k3 are remembered: still full
        await engine.publish_once("h", Publication("k0 again"), HISTORY, "k0", 10.0)
    clock.now += 1.0  # k1 expires
    fresh = await engine.publish_once("h", Publication("k0 again"), HISTORY, "k0", 10.0)
    assert fresh == PublishOnce(StreamPosition(5, epoch), duplicate=False)


async def test_a_remembered_key_expires_after_its_own_window() -> None:
    clock = Clock()
    engine = MemoryEngine(clock)
    await engine.subscribe("live")
    first = await engine.publish_once("live", Publication(1), NO_HISTORY, "k", 5.0)
    assert first == PublishOnce(None, duplicate=False)
    clock.now += 4.9
    assert (await engine.publish_once("live", Publication(2), NO_HISTORY, "k", 5.0)).duplicate
    clock.now += 0.1
    assert not (await engine.publish_once("live", Publication(3), NO_HISTORY, "k", 5.0)).duplicate
    # a window shortened later applies to new keys only; an old key expires at its own time
    await engine.publish_once("live", Publication(4), NO_HISTORY, "long", 100.0)
    await engine.publish_once("live", Publication(5), NO_HISTORY, "short", 1.0)
    clock.now += 1.0
    assert not (
        await engine.publish_once("live", Publication(6), NO_HISTORY, "short", 1.0)
    ).duplicate
    assert (await engine.publish_once("live", Publication(7), NO_HISTORY, "long", 1.0)).duplicate
