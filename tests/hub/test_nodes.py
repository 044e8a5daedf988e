"""NodeTracker (hub/nodes.py) on a fake clock: when a silent peer counts as dead, and that a
dead instance stays dead."""

from __future__ import annotations

import pytest

from pulsewire.hub import nodes
from pulsewire.hub.nodes import NodeTracker


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def tracker(clock: Clock) -> NodeTracker:
    return NodeTracker(3.0, clock=clock)


def test_a_peer_is_dead_once_silent_for_the_timeout(tracker: NodeTracker, clock: Clock) -> None:
    assert tracker.next_deadline() is None
    assert tracker.seen("a", "ia", {"sessions": 1})
    assert tracker.next_deadline() == 1003.0
    clock.now = 1002.9
    assert tracker.expire() == []
    clock.now = 1003.0
    (dead,) = tracker.expire()
    assert (dead.name, dead.instance, dead.info) == ("a", "ia", {"sessions": 1})
    assert tracker.ended("ia") and tracker.peers == {}
    assert tracker.expire() == []  # once


def test_each_announcement_moves_the_deadline(tracker: NodeTracker, clock: Clock) -> None:
    tracker.seen("a", "ia")
    tracker.seen("b", "ib")
    for _ in range(10):
        clock.now += 2.9
        tracker.seen("a", "ia")
        assert [p.instance for p in tracker.expire()] in ([], ["ib"])
    assert set(tracker.peers) == {"ia"}
    assert tracker.next_deadline() == pytest.approx(clock.now + 3.0)


def test_a_dead_instance_stays_dead(tracker: NodeTracker, clock: Clock) -> None:
    tracker.seen("a", "ia")
    clock.now += 5
    assert [p.instance for p in tracker.expire()] == ["ia"]
    assert tracker.seen("a", "ia") is False  # late or resumed: not resurrected
    assert "ia" not in tracker.peers
    assert tracker.seen("a", "ia-2") is True  # the same node under a new instance id
    assert set(tracker.peers) == {"ia-2"}


def test_end_reports_news_once(tracker: NodeTracker) -> None:
    tracker.seen("a", "ia", {"k": 1})
    peer = tracker.end("ia")
    assert peer is not None and (peer.name, peer.info) == ("a", {"k": 1})
    assert tracker.end("ia") is None
    unknown = tracker.end("ix", "x")  # declared dead by another node before we heard of it
    assert unknown is not None and (unknown.name, unknown.instance) == ("x", "ix")
    assert tracker.end("ix", "x") is None


def test_the_ended_memory_is_bounded(tracker: NodeTracker, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(nodes, "DEAD_REMEMBERED", 3)
    for i in range(5):
        tracker.end(f"i{i}")
    assert [tracker.ended(f"i{i}") for i in range(5)] == [False, False, True, True, True]


def test_nobody_is_judged_while_paused(tracker: NodeTracker, clock: Clock) -> None:
    tracker.seen("a", "ia")
    tracker.pause()
    clock.now += 100
    assert tracker.expire() == [] and tracker.next_deadline() is None
    tracker.grace()  # heard from as of now
    assert tracker.next_deadline() == clock.now + 3.0
    clock.now += 2.9
    assert tracker.expire() == []
    clock.now += 0.2
    assert [p.instance for p in tracker.expire()] == ["ia"]


def test_timeout_must_be_positive() -> None:
    with pytest.raises(ValueError):
        NodeTracker(0)
