"""TimerQueue (pulsewire.hub.timers): many timers under one loop timer; they run in order
when the loop's clock passes them, a cancelled one never runs and lets go of what it would
have called at once, the heap is rebuilt once mostly cancelled, one failing callback does
not stop the others. The loop's clock is moved forward (``loop_clock``): nothing waits."""

from __future__ import annotations

import asyncio
import gc
import logging
import weakref
from typing import Any

import pytest

from pulsewire.hub.timers import Timer, TimerQueue

from .fakes import LoopClock


async def test_timers_run_in_order_once_due_and_a_cancelled_one_never(
    loop_clock: LoopClock,
) -> None:
    queue = TimerQueue()
    ran: list[str] = []
    queue.call_later(10, ran.append, "ten")
    queue.call_later(5, ran.append, "five")
    late = queue.call_later(20, ran.append, "twenty")
    queue.call_later(10, ran.append, "ten again")  # same time: in the order scheduled
    await loop_clock.advance(4)
    assert ran == []
    await loop_clock.advance(2)
    assert ran == ["five"]
    late.cancel()
    assert late.cancelled
    await loop_clock.advance(5)
    assert ran == ["five", "ten", "ten again"]
    await loop_clock.advance(100)
    assert ran == ["five", "ten", "ten again"]
    assert len(queue) == 0


async def test_one_loop_timer_for_many_armed_again_only_for_an_earlier_one(
    loop_clock: LoopClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    loop = asyncio.get_running_loop()
    armed: list[float] = []
    call_at = loop.call_at

    def spy(when: float, *args: Any) -> asyncio.TimerHandle:
        armed.append(when)
        return call_at(when, *args)

    monkeypatch.setattr(loop, "call_at", spy)
    queue = TimerQueue()
    ran: list[int] = []
    for i in range(100):
        queue.call_later(60 + i, ran.append, i)
    assert len(armed) == 1
    queue.call_later(30, ran.append, -1)  # earlier than all: armed for it instead
    assert len(armed) == 2
    await loop_clock.advance(60.5)
    assert ran == [-1, 0]
    await loop_clock.advance(100)
    assert ran == [-1, *range(100)]


async def test_a_callback_may_schedule_another(loop_clock: LoopClock) -> None:
    queue = TimerQueue()
    ran: list[str] = []

    def first() -> None:
        ran.append("first")
        queue.call_later(1, ran.append, "second")

    queue.call_later(1, first)
    await loop_clock.advance(1.5)
    assert ran == ["first"]
    await loop_clock.advance(1)
    assert ran == ["first", "second"]


async def test_a_cancelled_timer_lets_go_of_its_arguments_at_once(loop_clock: LoopClock) -> None:
    class Session:
        def expired(self) -> None:
            raise AssertionError("a cancelled timer ran")

    queue = TimerQueue()
    session = Session()
    gone = weakref.ref(session)
    timer: Timer = queue.call_later(3600, Session.expired, session)
    timer.cancel()
    timer.cancel()  # twice: no effect
    del session
    assert gone() is None  # freed by reference counting, an hour before its time
    gc.collect()
    await loop_clock.advance(3601)


async def test_a_mostly_cancelled_heap_is_rebuilt(loop_clock: LoopClock) -> None:
    queue = TimerQueue()
    ran: list[int] = []
    timers = [queue.call_later(3600 + i, ran.append, i) for i in range(300)]
    for timer in timers[:200]:
        timer.cancel()
    assert len(queue) < 200  # not 300 entries held for an hour
    for timer in timers[200:]:
        timer.cancel()
    assert len(queue) == 0
    queue.call_later(1, ran.append, -1)  # still works after emptying
    await loop_clock.advance(4000)
    assert ran == [-1]


async def test_a_failing_callback_is_logged_and_the_others_still_run(
    loop_clock: LoopClock, caplog: pytest.LogCaptureFixture
) -> None:
    queue = TimerQueue()
    ran: list[str] = []

    def fail() -> None:
        raise RuntimeError("boom")

    queue.call_later(1, fail)
    queue.call_later(1, ran.append, "after")
    with caplog.at_level(logging.ERROR, logger="pulsewire.hub"):
        await loop_clock.advance(2)
    assert ran == ["after"]
    assert "timer callback" in caplog.text and "boom" in caplog.text
