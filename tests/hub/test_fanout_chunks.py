"""Chunked delivery (hub/delivery.py) one layer down: fake subscribers whose fake transport
writes at the end of the loop iteration, like aio's, so that the tests can see *when* bytes
would leave. No sockets, no timings: the order of events in one log.

The first chunk is handed over before the loop runs anything else, and written before the
next chunk is handed over; a publication (or a join) arriving while an earlier one is still
being delivered waits for it, per channel; subscribers removed or added mid-delivery;
recovery buffers; a gap filled from history behind a delivery in progress; the chunk
boundary; one encode per codec across chunks; a failing subscriber does not stall the channel.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest

from pulsewire.hub.delivery import GROWTH
from pulsewire.hub.errors import UnsubscribeCode
from pulsewire.hub.fanout import Subscription
from pulsewire.hub.types import HistoryResult, PreparedMessage, Publication, StreamPosition
from pulsewire.hub.wire import JSON, MsgpackCodec

from .test_fanout import CHANNEL, EPOCH, CountingCodec, FakeSubscriber, Harness, pub

OTHER = "sports"
Log = list[tuple[Any, ...]]


class Peer(FakeSubscriber):
    """A subscriber over a fake transport: what it is handed is written in one write at the
    end of the loop iteration (aio's flush queue), and every step is logged in ``log``."""

    def __init__(self, name: str, log: Log, codec: Any = JSON) -> None:
        super().__init__(codec)
        self.name = name
        self.log = log
        self.got: list[tuple[str, str, int]] = []  # (push kind, channel, offset) in order
        self.unwritten = 0

    def _queue(self, prepared: PreparedMessage) -> None:
        data = prepared.data
        decoded = json.loads(data) if isinstance(data, str) else {"push": "binary"}
        item = (decoded["push"], decoded.get("channel", ""), decoded.get("offset", 0))
        self.got.append(item)
        self.log.append(("send", self.name, *item))
        if not self.unwritten:
            asyncio.get_running_loop().call_soon(self._write)
        self.unwritten += 1

    def _write(self) -> None:
        self.log.append(("write", self.name, self.unwritten))
        self.unwritten = 0

    def send_publication(self, prepared: PreparedMessage, sub: Subscription) -> None:
        super().send_publication(prepared, sub)
        self._queue(prepared)

    def send_prepared(self, prepared: PreparedMessage) -> None:
        super().send_prepared(prepared)
        self._queue(prepared)

    def offsets_of(self, channel: str) -> list[int]:
        return [
            offset for kind, name, offset in self.got if kind == "publication" and name == channel
        ]


async def subscribe_all(h: Harness, peers: list[Peer], channel: str = CHANNEL) -> None:
    for peer in peers:
        await h.subscribe(peer, channel)
    h.fanout.start_position(channel, StreamPosition(0, EPOCH))


def peers(count: int, log: Log, prefix: str = "s") -> list[Peer]:
    return [Peer(f"{prefix}{i}", log) for i in range(count)]


async def drain(h: Harness, *channels: str) -> int:
    """Let the loop run until no channel is being delivered; returns how many yields it took."""
    for yields in range(1000):
        await h.settle()
        if not any(h.fanout.delivering(c) for c in channels or (CHANNEL,)):
            await asyncio.sleep(0)  # the last chunk's writes
            return yields
        await asyncio.sleep(0)
    raise AssertionError("delivery did not end")


def sent_to(log: Log) -> list[str]:
    return [entry[1] for entry in log if entry[0] == "send"]


async def test_the_first_chunk_goes_before_the_loop_yields_and_is_written_before_the_next() -> None:
    log: Log = []
    h = Harness(chunk=4)
    subscribers = peers(10, log)
    await subscribe_all(h, subscribers)
    asyncio.get_running_loop().call_soon(log.append, ("loop",))  # what the loop runs next
    h.fanout.on_publication(CHANNEL, pub(1))
    # Handed over synchronously, in the publication's own callback: before anything else runs.
    assert sent_to(log) == ["s0", "s1", "s2", "s3"] and h.fanout.delivering(CHANNEL)
    await drain(h)
    order = [entry[:2] for entry in log]
    assert order.index(("send", "s3")) < order.index(("loop",))
    # The first chunk's bytes leave before the next chunk is even handed over: the first
    # subscriber's latency does not depend on how many subscribers come after it.
    assert order.index(("write", "s0")) < order.index(("send", "s4"))
    assert order.index(("write", "s7")) < order.index(("send", "s8"))
    assert all(s.offsets_of(CHANNEL) == [1] for s in subscribers)
    assert [e for e in log if e[0] == "write"] == [("write", f"s{i}", 1) for i in range(10)]
    assert h.metrics.registry.get_sample_value("pulsewire_deliveries_total") == 10


@pytest.mark.parametrize("count", [1, 3, 4, 5, 8, 9])
async def test_the_chunk_boundary(count: int) -> None:
    """``chunk`` subscribers or fewer: all at once, nothing left for the loop; then one more
    chunk per loop iteration."""
    chunk = 4
    log: Log = []
    h = Harness(chunk=chunk)
    await subscribe_all(h, peers(count, log))
    h.fanout.on_publication(CHANNEL, pub(1))
    assert len(sent_to(log)) == min(count, chunk)
    assert h.fanout.delivering(CHANNEL) == (count > chunk)
    for handed in range(2 * chunk, count + chunk, chunk):
        await asyncio.sleep(0)
        assert len(sent_to(log)) == min(count, handed)
    assert not h.fanout.delivering(CHANNEL)
    assert sent_to(log) == [f"s{i}" for i in range(count)]


async def test_chunks_start_small_and_grow_up_to_the_largest() -> None:
    log: Log = []
    h = Harness(chunk=32, first_chunk=1)
    await subscribe_all(h, peers(100, log))
    h.fanout.on_publication(CHANNEL, pub(1))
    handed = [len(sent_to(log))]
    while h.fanout.delivering(CHANNEL):
        await asyncio.sleep(0)
        handed.append(len(sent_to(log)))
    assert handed == [1, 1 + GROWTH, 41, 73, 100]  # chunks of 1, 8, 32, 32, 27
    h.fanout.on_publication(CHANNEL, pub(2))  # a new pass starts small again
    assert len(sent_to(log)) == 101


async def test_a_publication_arriving_mid_delivery_waits_for_the_earlier_one() -> None:
    log: Log = []
    h = Harness(chunk=2)
    subscribers = peers(5, log)
    await subscribe_all(h, subscribers)
    h.fanout.on_publication(CHANNEL, pub(1))
    h.fanout.on_publication(CHANNEL, pub(2))  # s0 and s1 had 1, s2..s4 not yet
    assert subscribers[0].offsets_of(CHANNEL) == [1]  # 2 waits: it would overtake 1 for s2
    await asyncio.sleep(0)
    h.fanout.on_publication(CHANNEL, pub(3))
    h.fanout.push_event(CHANNEL, {"push": "join", "channel": CHANNEL, "info": {}})
    await drain(h)
    for s in subscribers:
        assert s.got == [
            ("publication", CHANNEL, 1),
            ("publication", CHANNEL, 2),
            ("publication", CHANNEL, 3),
            ("join", CHANNEL, 0),
        ]
    # What waited together is handed over together: one write per subscriber for 2, 3, join.
    assert [e for e in log if e[:2] == ("write", "s4")] == [("write", "s4", 1), ("write", "s4", 3)]


async def test_interleaved_publications_on_several_channels_keep_each_channels_order() -> None:
    log: Log = []
    h = Harness(chunk=2)
    news, sports = peers(5, log, "n"), peers(3, log, "p")
    both = peers(2, log, "b")
    await subscribe_all(h, [*both, *news])
    await subscribe_all(h, [*sports, *both], OTHER)
    h.fanout.on_publication(CHANNEL, pub(1))
    h.fanout.on_publication(OTHER, pub(1))  # not held back by the other channel's delivery
    assert sent_to(log) == ["b0", "b1", "p0", "p1"]
    h.fanout.on_publication(CHANNEL, pub(2))
    await asyncio.sleep(0)
    h.fanout.on_publication(OTHER, pub(2))
    h.fanout.on_publication(CHANNEL, pub(3))
    await asyncio.sleep(0)
    h.fanout.on_publication(OTHER, pub(3))
    await drain(h, CHANNEL, OTHER)
    for s in (*news, *both):
        assert s.offsets_of(CHANNEL) == [1, 2, 3], s.name
    for s in (*sports, *both):
        assert s.offsets_of(OTHER) == [1, 2, 3], s.name
    assert h.metrics.registry.get_sample_value("pulsewire_deliveries_total") == 3 * 7 + 3 * 5


async def test_subscribers_removed_mid_delivery_get_nothing_more() -> None:
    log: Log = []
    h = Harness(chunk=2)
    subscribers = peers(6, log)
    await subscribe_all(h, subscribers)
    h.fanout.on_publication(CHANNEL, pub(1))
    h.fanout.remove(subscribers[0], CHANNEL)  # had it already
    h.fanout.remove(subscribers[3], CHANNEL)  # its turn had not come
    h.fanout.on_publication(CHANNEL, pub(2))
    await drain(h)
    assert [s.offsets_of(CHANNEL) for s in subscribers] == [[1], [1, 2], [1, 2], [], [1, 2], [1, 2]]


async def test_a_subscriber_removed_while_being_handed_one_does_not_stop_the_others() -> None:
    """The slow-consumer case: handing a publication to a subscriber disconnects it (and, in
    this test, one after it); the pass goes on with the rest."""
    log: Log = []
    h = Harness(chunk=2)
    subscribers = peers(6, log)
    await subscribe_all(h, subscribers)
    slow = subscribers[2]

    def disconnect(prepared: PreparedMessage, sub: Subscription) -> None:
        h.fanout.remove_all(slow)
        h.fanout.remove_all(subscribers[4])

    slow.send_publication = disconnect  # type: ignore[method-assign]
    h.fanout.on_publication(CHANNEL, pub(1))
    h.fanout.on_publication(CHANNEL, pub(2))
    await drain(h)
    assert [s.offsets_of(CHANNEL) for s in subscribers] == [[1, 2], [1, 2], [], [1, 2], [], [1, 2]]


async def test_a_channel_emptied_mid_delivery_starts_afresh() -> None:
    log: Log = []
    h = Harness(chunk=2)
    first = peers(5, log)
    await subscribe_all(h, first)
    h.fanout.on_publication(CHANNEL, pub(1))
    h.fanout.on_publication(CHANNEL, pub(2))  # waiting: dropped with the channel
    for s in first:
        h.fanout.remove(s, CHANNEL)
    assert not h.fanout.delivering(CHANNEL)
    again = Peer("again", log)
    await h.subscribe(again)
    h.fanout.start_position(CHANNEL, StreamPosition(2, EPOCH))  # its history read
    h.fanout.on_publication(CHANNEL, pub(3))  # not stuck behind the old delivery
    assert again.offsets_of(CHANNEL) == [3]
    await drain(h)
    assert [s.offsets_of(CHANNEL) for s in first] == [[1], [1], [], [], []]
    assert again.offsets_of(CHANNEL) == [3]


async def test_a_subscriber_added_mid_delivery_gets_it_if_added_before_the_rest_is_listed() -> None:
    log: Log = []
    h = Harness(chunk=2)
    subscribers = peers(6, log)
    await subscribe_all(h, subscribers)
    h.fanout.on_publication(CHANNEL, pub(1))  # s0 and s1 now, the rest listed next iteration
    early = Peer("early", log)
    await h.subscribe(early)
    await asyncio.sleep(0)  # listed (early too), s2 and s3 handed
    late = Peer("late", log)
    await h.subscribe(late)
    h.fanout.on_publication(CHANNEL, pub(2))
    await drain(h)
    assert early.offsets_of(CHANNEL) == [1, 2]
    assert late.offsets_of(CHANNEL) == [2]
    assert all(s.offsets_of(CHANNEL) == [1, 2] for s in subscribers)


async def test_a_first_chunk_subscriber_back_before_the_listing_gets_it_once() -> None:
    log: Log = []
    h = Harness(chunk=2)
    subscribers = peers(6, log)
    await subscribe_all(h, subscribers)
    s0, s1 = subscribers[:2]
    h.fanout.on_publication(CHANNEL, pub(1))  # s0 and s1 have it
    h.fanout.remove(s0, CHANNEL)
    await h.subscribe(s0)  # back, last in the index, with a new subscription
    h.fanout.remove(s1, CHANNEL)  # gone
    await drain(h)
    assert [s.offsets_of(CHANNEL) for s in subscribers] == [[1]] * 6
    h.fanout.on_publication(CHANNEL, pub(2))
    await drain(h)
    assert s0.offsets_of(CHANNEL) == [1, 2] and s1.offsets_of(CHANNEL) == [1]


@pytest.mark.parametrize("recovered_to", [0, 1])
async def test_a_recovering_subscriber_reached_mid_delivery_holds_then_gets_it(
    recovered_to: int,
) -> None:
    log: Log = []
    h = Harness(chunk=2)
    subscribers = peers(5, log)
    await subscribe_all(h, subscribers)
    recovering = subscribers[3]
    sub = h.fanout.subscription(recovering, CHANNEL)
    assert sub is not None
    sub.recovering = True
    h.fanout.on_publication(CHANNEL, pub(1))
    await drain(h)
    assert recovering.offsets_of(CHANNEL) == [] and sub.buffer == [pub(1)]
    h.fanout.on_publication(CHANNEL, pub(2))  # handed to s0 and s1; s3 is in the next chunk
    sub.offset = recovered_to  # its history read went up to here
    h.fanout.flush_recovery(recovering)
    await drain(h)
    assert recovering.offsets_of(CHANNEL) == [1, 2][recovered_to:]
    assert all(s.offsets_of(CHANNEL) == [1, 2] for s in subscribers if s is not recovering)


async def test_a_recovery_ending_before_its_turn_gets_the_publication_from_the_pass() -> None:
    log: Log = []
    h = Harness(chunk=2)
    subscribers = peers(5, log)
    await subscribe_all(h, subscribers)
    recovering = subscribers[4]
    sub = h.fanout.subscription(recovering, CHANNEL)
    assert sub is not None
    sub.recovering = True
    h.fanout.on_publication(CHANNEL, pub(1))
    h.fanout.flush_recovery(recovering)  # nothing held yet: 1 comes with its pass
    await drain(h)
    assert recovering.offsets_of(CHANNEL) == [1]


async def test_a_gap_filled_from_history_is_delivered_behind_a_delivery_in_progress() -> None:
    log: Log = []
    h = Harness(chunk=2)
    subscribers = peers(5, log)
    await subscribe_all(h, subscribers)
    h.fanout.on_publication(CHANNEL, pub(1))
    h.engine.history_result = HistoryResult([pub(2), pub(3), pub(4)], StreamPosition(4, EPOCH))
    h.fanout.on_publication(CHANNEL, pub(4))  # prev 3: 2 and 3 were missed
    h.fanout.on_publication(CHANNEL, pub(5))  # held while the gap is filled
    await drain(h)
    assert all(s.offsets_of(CHANNEL) == [1, 2, 3, 4, 5] for s in subscribers)


async def test_one_encode_per_codec_across_chunks() -> None:
    log: Log = []
    json_codec, msgpack_codec = CountingCodec(JSON), CountingCodec(MsgpackCodec())
    h = Harness(chunk=3)
    subscribers = [Peer(f"s{i}", log, json_codec if i % 2 else msgpack_codec) for i in range(10)]
    await subscribe_all(h, subscribers)
    h.fanout.on_publication(CHANNEL, pub(1))
    h.fanout.on_publication(CHANNEL, pub(2))
    h.fanout.push_event(CHANNEL, {"push": "leave", "channel": CHANNEL, "info": {}})
    await drain(h)
    assert (json_codec.encodes, msgpack_codec.encodes) == (3, 3)
    assert len({id(s.prepared[0]) for s in subscribers}) == 2
    assert all(len(s.prepared) == 2 and len(s.events) == 1 for s in subscribers)


async def test_a_failing_subscriber_in_a_later_chunk_is_logged_and_the_channel_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log: Log = []
    h = Harness(chunk=2)
    subscribers = peers(5, log)
    await subscribe_all(h, subscribers)

    flaky = subscribers[2]

    def broken_once(prepared: PreparedMessage, sub: Subscription) -> None:
        del flaky.send_publication  # the class's method again
        raise RuntimeError("broken transport")

    flaky.send_publication = broken_once  # type: ignore[method-assign]
    with caplog.at_level(logging.ERROR, "pulsewire.hub"):
        h.fanout.on_publication(CHANNEL, pub(1))
        h.fanout.on_publication(CHANNEL, pub(2))
        await drain(h)
    assert "error while delivering to the subscribers of news" in caplog.text
    h.fanout.on_publication(CHANNEL, pub(3))
    await drain(h)
    # 1 stopped at the failure; 2 (waiting) and 3 went to everyone
    assert [s.offsets_of(CHANNEL) for s in subscribers] == [
        [1, 2, 3],
        [1, 2, 3],
        [2, 3],
        [2, 3],
        [2, 3],
    ]


async def test_publications_without_history_keep_arrival_order_across_chunks() -> None:
    log: Log = []
    h = Harness(chunk=2)
    subscribers = peers(5, log)
    for s in subscribers:
        await h.subscribe(s)
    for n in range(3):
        h.fanout.on_publication(CHANNEL, Publication({"n": n}))
        await asyncio.sleep(0)
    await drain(h)
    for s in subscribers:
        assert [json.loads(p.data)["data"]["n"] for p in s.prepared] == [0, 1, 2]


async def test_a_failure_in_the_first_chunk_reaches_the_caller_and_the_channel_goes_on() -> None:
    log: Log = []
    h = Harness(chunk=2)
    subscribers = peers(5, log)
    await subscribe_all(h, subscribers)
    flaky = subscribers[1]

    def broken_once(prepared: PreparedMessage, sub: Subscription) -> None:
        del flaky.send_publication  # the class's method again
        raise RuntimeError("broken transport")

    flaky.send_publication = broken_once  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="broken transport"):  # as it did without chunks
        h.fanout.on_publication(CHANNEL, pub(1))
    assert not h.fanout.delivering(CHANNEL)
    h.fanout.on_publication(CHANNEL, pub(2))
    await drain(h)
    assert [s.offsets_of(CHANNEL) for s in subscribers] == [[1, 2], [2], [2], [2], [2]]


async def test_a_channel_too_far_behind_is_given_up_and_its_subscribers_resubscribe() -> None:
    """Past ``max_queued`` items waiting behind the pass in progress, the channel's queue is
    dropped (memory does not grow) and its subscribers are told insufficient state: they
    resubscribe and recover from history; a server-side subscription is made again."""
    h = Harness(max_queued=3)
    log: Log = []
    clients = peers(40, log)  # more than the first chunk: the first pass stays in progress
    await subscribe_all(h, clients)
    server = Peer("server", log)
    server_sub = await h.subscribe(server, server=True)
    for offset in range(1, 5):  # 1 is being delivered, 2-4 wait
        h.fanout.on_publication(CHANNEL, pub(offset))
    assert h.metrics.registry.get_sample_value("pulsewire_delivery_overflows_total") == 0
    h.fanout.on_publication(CHANNEL, pub(5))  # one too many
    assert h.metrics.registry.get_sample_value("pulsewire_delivery_overflows_total") == 1
    assert not h.fanout.has_subscribers(CHANNEL)
    assert not h.fanout.delivering(CHANNEL)
    for client in clients:
        assert [(p["push"], p["code"], p["resubscribe"]) for p in client.pushes] == [
            ("unsubscribe", UnsubscribeCode.INSUFFICIENT_STATE, True)
        ]
    assert server.resubscribed == [server_sub] and server.pushes == []
    await drain(h)
    # nothing of what waited was delivered; at most the first publication, to the first chunk
    assert all(peer.offsets_of(CHANNEL) in ([], [1]) for peer in [*clients, server])
