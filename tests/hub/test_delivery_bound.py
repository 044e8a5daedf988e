"""Bounded work per loop callback (hub/delivery.py): with a backlog of many items waiting for
a channel, no loop iteration hands more than ``chunk`` deliveries (items times subscribers),
a pass takes at most ``pass_items`` items, and every subscriber still gets every item, in
order, several per write. Fake subscribers over a fake transport (see test_fanout_chunks);
a ticker callback marks each loop iteration in the log. No timings."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from .test_fanout import CHANNEL, Harness, pub
from .test_fanout_chunks import Log, drain, peers, subscribe_all


def ticker(log: Log) -> Callable[[], None]:
    """Log ("tick",) once per loop iteration until the returned function is called."""
    loop = asyncio.get_running_loop()
    running = True

    def tick() -> None:
        if running:
            log.append(("tick",))
            loop.call_soon(tick)

    def stop() -> None:
        nonlocal running
        running = False

    loop.call_soon(tick)
    return stop


def sends_per_iteration(log: Log) -> list[int]:
    counts = [0]
    for entry in log:
        if entry[0] == "tick":
            counts.append(0)
        elif entry[0] == "send":
            counts[-1] += 1
    return counts


@pytest.mark.parametrize(("subscribers", "backlog"), [(100, 200), (5, 500), (40, 7)])
async def test_a_backlog_is_handed_over_in_bounded_callbacks_in_order(
    subscribers: int, backlog: int
) -> None:
    chunk, first_chunk, pass_items = 32, 4, 16
    log: Log = []
    h = Harness(chunk=chunk, first_chunk=first_chunk, pass_items=pass_items)
    subs = peers(subscribers, log)
    await subscribe_all(h, subs)
    stop = ticker(log)  # its first tick runs before any of delivery's callbacks
    h.fanout.on_publication(CHANNEL, pub(1))  # a pass in progress: what follows waits
    for offset in range(2, backlog + 2):
        h.fanout.on_publication(CHANNEL, pub(offset))
    await drain(h)
    stop()
    counts = sends_per_iteration(log)
    assert max(counts) <= chunk
    assert sum(counts) == subscribers * (backlog + 1)  # nothing lost, nothing twice
    assert all(s.offsets_of(CHANNEL) == list(range(1, backlog + 2)) for s in subs)
    writes = [entry[2] for entry in log if entry[0] == "write"]
    # Batching kept: a subscriber's write carries several items (up to a pass's worth).
    assert max(writes) == min(pass_items, backlog)
    assert h.metrics.registry.get_sample_value("pulsewire_deliveries_total") == sum(counts)


async def test_a_pass_takes_at_most_pass_items_and_the_rest_waits() -> None:
    log: Log = []
    h = Harness(chunk=8, first_chunk=2, pass_items=4)
    subs = peers(6, log)
    await subscribe_all(h, subs)
    h.fanout.on_publication(CHANNEL, pub(1))
    for offset in range(2, 12):
        h.fanout.on_publication(CHANNEL, pub(offset))
    await drain(h)
    # The first pass had one item; then 10 waiting go as passes of 4, 4 and 2 items.
    per_write = [entry[2] for entry in log if entry[0] == "write" and entry[1] == "s5"]
    assert per_write == [1, 4, 4, 2]
    assert all(s.offsets_of(CHANNEL) == list(range(1, 12)) for s in subs)


async def test_a_first_chunk_of_many_items_goes_to_one_subscriber_at_once() -> None:
    log: Log = []
    h = Harness(chunk=8, first_chunk=4, pass_items=20)
    subs = peers(5, log)
    await subscribe_all(h, subs)
    stop = ticker(log)
    h.fanout.on_publication(CHANNEL, pub(1))
    for offset in range(2, 22):
        h.fanout.on_publication(CHANNEL, pub(offset))
    await drain(h)
    stop()
    # 20 items: at least one subscriber per callback, whatever the bound.
    assert max(sends_per_iteration(log)) == 20
    assert all(s.offsets_of(CHANNEL) == list(range(1, 22)) for s in subs)


async def test_the_backlog_counts_the_deliveries_left_and_delivered_counts_those_made() -> None:
    log: Log = []
    h = Harness(chunk=8, first_chunk=2, pass_items=4)
    subs = peers(6, log)
    await subscribe_all(h, subs)
    assert h.fanout.delivery_backlog() == (0, {})
    h.fanout.on_publication(CHANNEL, pub(1))  # first chunk (2 subscribers) handed at once
    for offset in range(2, 12):
        h.fanout.on_publication(CHANNEL, pub(offset))
    delivered, backlog = h.fanout.delivery_backlog()
    assert delivered == 2
    # the first pass's item to its 4 other subscribers, and 10 waiting items to all 6
    assert backlog == {CHANNEL: 4 + 10 * 6}
    await drain(h)
    assert h.fanout.delivery_backlog() == (6 * 11, {})
