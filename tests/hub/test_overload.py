"""Measuring backpressure (hub/overload.py, and the delivery lag of hub/delivery.py): the
detector's hysteresis, the cluster's load table (expiry, nodes gone), the age of a channel's
oldest undelivered item. Fake clocks only: times are given, never waited for."""

from __future__ import annotations

import asyncio

import pytest

from pulsewire.hub.channels import parse_channel
from pulsewire.hub.delivery import Delivery
from pulsewire.hub.metrics import HubMetrics
from pulsewire.hub.overload import (
    ALL,
    DrainRate,
    LoadState,
    LoadTable,
    OverloadDetector,
    expected_lags,
)
from pulsewire.hub.subscription import Subscription
from pulsewire.hub.types import ClientInfo

from .fakes import FakeClock
from .test_fanout import CONFIG, FakeSubscriber, pub

# ------------------------------------------------------------------------ the detector


def test_a_node_is_overloaded_past_the_bound_and_clear_only_under_half_of_it() -> None:
    detector = OverloadDetector(0.5)
    assert not detector.update({"a": 0.4}, 0.01)  # under the bound: nothing
    assert not detector.state.overloaded
    assert detector.update({"a": 0.6, "b": 0.1}, 0.01)  # past it
    assert detector.state == LoadState(True, 0.6, ("a",))
    # between half and the bound: still overloaded (hysteresis), not a change
    assert not detector.update({"a": 0.3}, 0.01)
    assert detector.state.overloaded and detector.state.lag == 0.3
    assert detector.update({"a": 0.24}, 0.2)  # under half: clear
    assert not detector.state.overloaded
    assert not detector.update({}, 0.0)


def test_the_channels_behind_are_those_at_half_the_bound_and_a_late_loop_means_all() -> None:
    detector = OverloadDetector(1.0)
    assert detector.update({"a": 1.2, "b": 0.5, "c": 0.4}, 0.0)
    assert detector.state.channels == ("a", "b")
    assert detector.update({"a": 1.2, "c": 0.6}, 0.0)  # b caught up, c fell behind: a change
    assert detector.state.channels == ("a", "c")
    assert detector.update({"a": 0.6}, 0.7)  # the loop itself is late
    assert detector.state.channels == ALL
    assert detector.state.covers("anything")
    assert not LoadState(False, 0.0, ALL).covers("anything")


def test_a_late_loop_alone_overloads_the_node() -> None:
    detector = OverloadDetector(0.5)
    assert detector.update({}, 0.8)
    assert detector.state == LoadState(True, 0.8, ALL)


@pytest.mark.parametrize("bound", [0.0, -1.0, float("nan")])
def test_the_bound_must_be_positive(bound: float) -> None:
    with pytest.raises(ValueError):
        OverloadDetector(bound)


# ----------------------------------------------------------------------- the load table

BEHIND_A = LoadState(True, 0.7, ("a",))


def test_an_entry_blocks_its_channels_until_it_expires_unless_refreshed() -> None:
    clock = FakeClock()
    table = LoadTable(ttl=3.0)
    table.set("i1", "n1", BEHIND_A, clock())
    assert table.blocks("a", clock()) and not table.blocks("b", clock())
    assert table.next_expiry() == clock() + 3.0 + 0.7  # the ttl and the lag reported
    clock.advance(2.0)
    table.set("i1", "n1", BEHIND_A, clock())  # a refresh
    clock.advance(3.5)
    assert table.blocks("a", clock())
    assert not table.expire(clock())
    clock.advance(0.2)  # 3.7 s after the refresh: a lost "clear" holds nobody longer
    assert not table.blocks("a", clock())
    assert table.expire(clock())
    assert len(table) == 0 and table.next_expiry() is None


def test_a_node_late_by_its_lag_refreshes_its_entry_in_time_and_the_extra_is_capped() -> None:
    clock = FakeClock()
    table = LoadTable(ttl=3.0)
    behind = LoadState(True, 2.5, ALL)  # its loop is 2.5 s late: so are its refreshes
    table.set("i1", "n1", behind, clock())
    clock.advance(3.25)  # past the ttl alone: its next refresh (due after 1 s) is not late yet
    assert table.blocks("x", clock()) and not table.expire(clock())
    table.set("i1", "n1", behind, clock())
    clock.advance(5.25)
    assert table.blocks("x", clock())
    clock.advance(0.5)  # 3 + 2.5 s without a word: gone
    assert not table.blocks("x", clock()) and table.expire(clock())
    # A huge lag adds at most the ttl: a lost "clear" holds publishers back 6 s, no more.
    table.set("i2", "n2", LoadState(True, 60.0, ALL), clock())
    assert table.next_expiry() == clock() + 6.0


def test_a_clear_state_removes_the_entry_and_says_waiting_publishers_may_go() -> None:
    table = LoadTable(ttl=3.0)
    assert not table.set("i1", "n1", BEHIND_A, 0.0)  # nothing was released
    assert not table.set("i1", "n1", BEHIND_A, 0.5)  # same channels: nothing released
    assert table.set("i1", "n1", LoadState(True, 0.9, ("b",)), 1.0)  # a no longer behind
    assert table.set("i1", "n1", LoadState(False, 0.0), 1.0)
    assert len(table) == 0 and not table.blocks("b", 1.0)
    assert not table.set("i2", "n2", LoadState(False, 0.0), 1.0)  # not there: no change


def test_a_node_declared_dead_or_gone_releases_its_channels_at_once() -> None:
    table = LoadTable(ttl=3.0)
    table.set("i1", "n1", LoadState(True, 1.0, ALL), 0.0)
    table.set("i2", "n2", BEHIND_A, 0.0)
    table.set("i3", "n3", LoadState(True, 1.0, ("c",)), 0.0)
    assert table.blocks("z", 0.1)  # n1 is behind on all
    assert table.drop(["i1"])
    assert not table.blocks("z", 0.1) and table.blocks("a", 0.1)
    assert not table.drop(["i1"])  # gone already
    assert table.drop(node="n2")
    assert not table.blocks("a", 0.1) and table.blocks("c", 0.1)
    assert len(table) == 1


def test_a_nodes_new_instance_replaces_what_its_earlier_one_said() -> None:
    # A node frozen past dead_after, thawing: its first probe finds the loop seconds late and
    # says so as the instance the others declared dead; it rejoins as a new instance, and
    # says it caught up as that one. The old word must not hold publishers for seconds more.
    table = LoadTable(ttl=3.0)
    table.set("old", "n1", LoadState(True, 12.0, ALL), 0.0)
    table.set("other", "n2", BEHIND_A, 0.0)
    assert table.set("new", "n1", LoadState(False, 0.0), 0.1)  # publishers may go
    assert not table.blocks("z", 0.1) and table.blocks("a", 0.1)
    assert list(table.entries()) == ["other"]
    table.set("old", "n1", LoadState(True, 1.0, ("b",)), 0.2)
    assert table.set("new", "n1", LoadState(True, 1.0, ("c",)), 0.3)  # b released
    assert not table.blocks("b", 0.3) and table.blocks("c", 0.3)
    assert sorted(table.entries()) == ["new", "other"]


# --------------------------------------------------------------------- the delivery lag


async def test_the_delivery_lag_is_the_age_of_the_oldest_item_not_handed_to_everyone() -> None:
    clock = FakeClock()
    channel = parse_channel("news", CONFIG)
    subs = {FakeSubscriber(): Subscription(channel, ClientInfo(f"c{i}", "u")) for i in range(40)}
    index = {"news": subs}
    delivery = Delivery(
        index, HubMetrics(), first_chunk=4, chunk=8, clock=clock, overflow=pytest.fail
    )
    assert delivery.lags(clock()) == {} and delivery.lag(clock()) == 0.0
    delivery.publication("news", pub(1))  # a pass starts: 4 subscribers served, 36 to go
    clock.advance(0.25)
    delivery.publication("news", pub(2))  # waits behind the first
    clock.advance(0.5)
    assert delivery.lags(clock()) == {"news": 0.75}  # the oldest, not the newest
    while delivery.busy("news"):  # the pass goes on chunk by chunk, loop iteration by iteration
        await asyncio.sleep(0)
        clock.advance(0.01)
    assert delivery.lags(clock()) == {}  # both passes ended: nothing is behind
    assert all(len(s.prepared) == 2 for s in subs)


def test_the_drain_rate_counts_only_intervals_with_a_backlog_at_both_ends() -> None:
    rate = DrainRate(smoothing=0.5)
    rate.update(0.0, 0, busy=False)
    rate.update(1.0, 100, busy=True)  # idle at the start: not a measure of capacity
    assert rate.per_second == 0.0
    rate.update(2.0, 1_100, busy=True)
    assert rate.per_second == 1_000.0  # the first measure is taken as it is
    rate.update(3.0, 1_600, busy=True)
    assert rate.per_second == 750.0  # then smoothed: 1000 + 0.5 * (500 - 1000)
    rate.update(4.0, 1_600, busy=False)  # caught up: the interval does not count
    rate.update(5.0, 1_600, busy=False)
    assert rate.per_second == 750.0


def test_the_lag_of_a_backlog_is_the_time_to_deliver_it_when_that_is_longer() -> None:
    ages = {"a": 0.1, "b": 2.0}
    # 1,500 deliveries queued at 1,000/s: a publication arriving now waits 1.5 s
    assert expected_lags(ages, {"a": 1_000, "b": 500}, 1_000.0) == {"a": 1.5, "b": 2.0}
    assert expected_lags(ages, {"a": 1_000, "b": 500}, 0.0) == ages  # rate not known yet
    assert expected_lags({}, {"c": 0}, 1_000.0) == {}


def test_a_node_taking_publications_faster_than_it_delivers_is_overloaded_at_once() -> None:
    detector = OverloadDetector(0.5)
    # its oldest item is only 0.1 s old, but 0.9 s of work is queued behind it
    assert detector.update(expected_lags({"a": 0.1}, {"a": 900}, 1_000.0), 0.0)
    assert detector.state == LoadState(True, 0.9, ("a",))
