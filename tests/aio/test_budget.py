"""Memory budgets: pause over the high-water marks, resume under half of them, refuse over the
hard limits, per connection and per address."""

from __future__ import annotations

import gc
import weakref

import pytest

from pulsewire.aio.budget import Account, BudgetLimits, Budgets

LIMITS = BudgetLimits(connection_high=100, connection_hard=400, address_high=300, address_hard=600)


class Owner:
    """Records what its account told it."""

    def __init__(self, budgets: Budgets, address: str = "10.0.0.1", **kw: int) -> None:
        self.reading = True
        self.events: list[str] = []
        self.account: Account = budgets.open(address, self.pause, self.resume, **kw)

    def pause(self) -> None:
        assert self.reading, "paused twice"
        self.reading = False
        self.events.append("pause")

    def resume(self) -> None:
        assert not self.reading, "resumed while reading"
        self.reading = True
        self.events.append("resume")


def test_a_connection_pauses_over_its_high_mark_and_resumes_under_half() -> None:
    budgets = Budgets(LIMITS)
    owner = Owner(budgets)
    assert owner.account.hold(100)
    assert owner.reading
    assert owner.account.hold(101)
    assert not owner.reading and owner.account.paused
    assert owner.account.hold(60)  # under the mark, above half: still paused (hysteresis)
    assert not owner.reading
    assert owner.account.hold(50)
    assert owner.reading and owner.events == ["pause", "resume"]
    assert budgets.pauses == 1


def test_an_address_over_its_high_mark_pauses_each_connection_that_reports() -> None:
    budgets = Budgets(LIMITS)
    a, b, c = Owner(budgets), Owner(budgets), Owner(budgets)
    assert a.account.hold(100) and b.account.hold(100) and c.account.hold(100)
    assert a.reading and b.reading and c.reading  # 300: at the marks, not over
    assert c.account.hold(95)
    assert c.account.hold(100) and c.reading
    assert a.account.hold(5)  # 205
    assert b.account.hold(196)  # 301: b is under its own mark but its address is over
    assert not b.reading and a.reading and c.reading
    assert a.account.hold(6)  # a reports while the address is still over: paused too
    assert not a.reading
    assert budgets.held("10.0.0.1") == 302 and budgets.pauses == 2


def test_a_connection_paused_for_its_address_is_resumed_by_another_one_releasing() -> None:
    budgets = Budgets(LIMITS)
    a, b, c, d = (Owner(budgets) for _ in range(4))
    for owner in (a, b, c):
        assert owner.account.hold(100)
    assert d.account.hold(10)  # 310 > 300: d is paused, though d itself holds little
    assert not d.reading and a.reading and b.reading and c.reading
    assert a.account.hold(0)  # 210: under the mark but above half (150): d stays paused
    assert not d.reading
    a.account.close()
    b.account.close()  # 110: under half the address's mark
    assert d.reading and d.events == ["pause", "resume"]


def test_a_paused_connection_over_its_own_low_mark_stays_paused_when_the_address_recovers() -> None:
    budgets = Budgets(LIMITS)
    a, b = Owner(budgets), Owner(budgets)
    assert a.account.hold(250)  # over its own mark: paused
    assert b.account.hold(100)  # 350 > 300: b paused as well
    assert not a.reading and not b.reading
    assert b.account.hold(0)  # 250: above the address's low mark (150): nobody resumes
    assert not a.reading and not b.reading
    assert a.account.hold(60)  # 60: a is above its own low mark (50); the address is under its
    assert b.reading and not a.reading
    assert a.account.hold(40)
    assert a.reading


def test_hard_limits_refuse_and_are_counted_by_scope() -> None:
    budgets = Budgets(LIMITS)
    a = Owner(budgets)
    assert not a.account.hold(401)
    assert budgets.exceeded == {"connection": 1, "address": 0}
    a.account.close()
    owners = [Owner(budgets) for _ in range(3)]
    assert owners[0].account.hold(300) and owners[1].account.hold(300)
    assert not owners[2].account.hold(1)  # 601 > 600 for the address
    assert budgets.exceeded == {"connection": 1, "address": 1}


def test_addresses_are_independent_and_forgotten_when_their_last_account_closes() -> None:
    budgets = Budgets(LIMITS)
    a = Owner(budgets, "10.0.0.1")
    b = Owner(budgets, "10.0.0.2")
    assert a.account.hold(250) and b.account.hold(250)
    assert b.reading is False and a.reading is False  # each over its own mark only
    assert budgets.held("10.0.0.1") == 250 and budgets.total == 500 and budgets.addresses == 2
    a.account.close()
    a.account.close()  # idempotent
    assert budgets.addresses == 1 and budgets.held("10.0.0.1") == 0
    assert a.account.hold(1000)  # a closed account ignores reports
    assert budgets.total == 250


def test_an_owner_may_ask_for_a_lower_high_mark_never_a_higher_one() -> None:
    budgets = Budgets(LIMITS)
    low = Owner(budgets, high=10)
    high = Owner(budgets, "10.0.0.2", high=10_000)
    assert low.account.hold(11) and not low.reading
    assert high.account.hold(100) and high.reading
    assert high.account.hold(101) and not high.reading


@pytest.mark.parametrize(
    "changes",
    [{"connection_high": 0}, {"connection_high": 500}, {"address_high": 700}, {"address_hard": -1}],
)
def test_limits_must_be_ordered(changes: dict[str, int]) -> None:
    values = {
        "connection_high": 100,
        "connection_hard": 400,
        "address_high": 300,
        "address_hard": 600,
        **changes,
    }
    with pytest.raises(ValueError):
        BudgetLimits(**values)


def test_a_refused_account_is_counted_once_however_often_it_reports() -> None:
    budgets = Budgets(LIMITS)
    a = Owner(budgets)
    assert not a.account.hold(401)
    assert not a.account.hold(500)
    assert a.account.refused
    assert budgets.exceeded == {"connection": 1, "address": 0}


def test_an_owner_may_reserve_room_above_the_connection_hard_limit() -> None:
    budgets = Budgets(LIMITS)
    a = Owner(budgets)
    a.account.reserve(150)  # e.g. a hub session's outgoing queue, bounded by the hub itself
    assert a.account.hold(550)  # over 400, under 400 + 150: paused, not refused
    assert not a.reading
    assert not a.account.hold(551)
    assert budgets.exceeded == {"connection": 1, "address": 0}
    b = Owner(budgets)
    b.account.reserve(1000)
    assert not b.account.hold(100)  # the address's limits are unchanged: 551 + 100 > 600
    assert budgets.exceeded == {"connection": 1, "address": 1}


def test_a_closed_account_does_not_keep_its_owner_alive() -> None:
    budgets = Budgets(LIMITS)
    owner = Owner(budgets)  # owner -> account -> owner's bound methods: a cycle while open
    account = owner.account
    account.close()
    ref = weakref.ref(owner)
    gc.disable()
    try:
        del owner
        assert ref() is None, "the closed account kept its owner (a cycle for the GC)"
    finally:
        gc.enable()
    assert account.hold(10)  # and reports after close are ignored, as before
