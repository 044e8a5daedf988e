"""The fan-out one layer down: fake subscribers and a fake engine, no sockets, no sleeps.

Order and deduplication, a gap filled from history, insufficient state (push ``unsubscribe``
2500 with ``resubscribe``; a server-side subscription made again by its subscriber), one
encode per codec in use, and one index that a removal empties.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import msgpack
import pytest

from pulsewire.hub.channels import parse_channel
from pulsewire.hub.config import HubConfig
from pulsewire.hub.delivery import CHUNK, FIRST_CHUNK, MAX_QUEUED, PASS_ITEMS
from pulsewire.hub.errors import UnsubscribeCode
from pulsewire.hub.fanout import Fanout, Subscription
from pulsewire.hub.metrics import HubMetrics
from pulsewire.hub.types import (
    ClientInfo,
    HistoryResult,
    PreparedMessage,
    Publication,
    PublishOptions,
    StreamPosition,
)
from pulsewire.hub.wire import JSON, MsgpackCodec

CONFIG = HubConfig()
CHANNEL = "news"
EPOCH = "e1"


class CountingCodec:
    """A codec that counts its encodes (``decode_commands`` is not needed here)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.name = inner.name
        self.binary = inner.binary
        self.encodes = 0

    def decode_commands(self, data: str | bytes) -> list[dict[str, Any]]:
        raise NotImplementedError

    def encode(self, message: dict[str, Any]) -> str | bytes:
        self.encodes += 1
        return self.inner.encode(message)  # type: ignore[no-any-return]


class FakeSubscriber:
    def __init__(self, codec: Any = JSON) -> None:
        self.codec = codec
        self.prepared: list[PreparedMessage] = []
        self.pushes: list[dict[str, Any]] = []
        self.events: list[PreparedMessage] = []
        self.resubscribed: list[Subscription] = []

    def send_publication(self, prepared: PreparedMessage, sub: Subscription) -> None:
        self.prepared.append(prepared)

    def push(self, message: dict[str, Any]) -> None:
        self.pushes.append(message)

    def send_prepared(self, prepared: PreparedMessage) -> None:
        self.events.append(prepared)

    def resubscribe(self, sub: Subscription) -> None:
        self.resubscribed.append(sub)

    @property
    def offsets(self) -> list[int]:
        decoded = [
            msgpack.unpackb(p.data) if isinstance(p.data, bytes) else json.loads(p.data)
            for p in self.prepared
        ]
        assert all(d["push"] == "publication" and d["channel"] == CHANNEL for d in decoded)
        return [d.get("offset", 0) for d in decoded]


class FakeEngine:
    """What the fan-out calls: subscribe, unsubscribe, history (from a list it is given)."""

    def __init__(self) -> None:
        self.subscribed: list[str] = []
        self.unsubscribed: list[str] = []
        self.history_result = HistoryResult([], StreamPosition(0, EPOCH))
        self.history_calls: list[StreamPosition | None] = []

    async def subscribe(self, channel: str) -> None:
        self.subscribed.append(channel)

    async def unsubscribe(self, channel: str) -> None:
        self.unsubscribed.append(channel)

    async def history(
        self, channel: str, *, since: StreamPosition | None = None, **kw: Any
    ) -> HistoryResult:
        self.history_calls.append(since)
        return self.history_result


class Harness:
    def __init__(
        self,
        chunk: int = CHUNK,
        first_chunk: int = FIRST_CHUNK,
        max_queued: int = MAX_QUEUED,
        pass_items: int = PASS_ITEMS,
    ) -> None:
        self.engine = FakeEngine()
        self.metrics = HubMetrics()
        self.tasks: list[asyncio.Future[Any]] = []
        self.ended: list[Subscription] = []
        self.closed: list[str] = []
        self.fanout = Fanout(
            self.engine,  # type: ignore[arg-type]
            self.metrics,
            spawn=lambda coro: self.tasks.append(asyncio.ensure_future(coro)),
            publish_options=lambda name: PublishOptions(100, 60.0),
            ended=self.ended.append,
            channel_closed=self.closed.append,
            chunk=chunk,
            first_chunk=first_chunk,
            max_queued=max_queued,
            pass_items=pass_items,
        )

    async def subscribe(
        self, subscriber: FakeSubscriber, channel: str = CHANNEL, *, server: bool = False
    ) -> Subscription:
        sub = Subscription(parse_channel(channel, CONFIG), ClientInfo("c", "u"), server=server)
        sub.epoch = EPOCH
        await self.fanout.add(subscriber, sub)
        return sub

    async def settle(self) -> None:
        """Run what the fan-out spawned (gap fills, engine unsubscribes) to its end."""
        while self.tasks:
            task = self.tasks.pop(0)
            await task


def pub(offset: int, prev: int | None = None, epoch: str = EPOCH, data: Any = None) -> Publication:
    return Publication(
        data if data is not None else {"n": offset},
        offset=offset,
        prev=offset - 1 if prev is None else prev,
        epoch=epoch,
    )


@pytest.fixture
def h() -> Harness:
    return Harness()


async def test_publications_are_delivered_in_order_once(h: Harness) -> None:
    a, b = FakeSubscriber(), FakeSubscriber()
    await h.subscribe(a)
    await h.subscribe(b)
    h.fanout.start_position(CHANNEL, StreamPosition(0, EPOCH))
    for offset in (1, 2, 2, 1, 3):  # duplicates and late copies are dropped
        h.fanout.on_publication(CHANNEL, pub(offset))
    assert a.offsets == b.offsets == [1, 2, 3]
    assert h.engine.history_calls == []


async def test_a_subscription_skips_what_it_was_given_already(h: Harness) -> None:
    early, late = FakeSubscriber(), FakeSubscriber()
    await h.subscribe(early)
    h.fanout.start_position(CHANNEL, StreamPosition(0, EPOCH))
    sub = await h.subscribe(late)
    sub.offset = 2  # its history read went up to 2 (recovered, or its subscribe reply)
    for offset in (1, 2, 3):
        h.fanout.on_publication(CHANNEL, pub(offset))
    assert early.offsets == [1, 2, 3]
    assert late.offsets == [3]


async def test_publications_during_recovery_are_held_then_delivered_after_it(
    h: Harness,
) -> None:
    s = FakeSubscriber()
    sub = await h.subscribe(s)
    sub.recovering = True
    h.fanout.start_position(CHANNEL, StreamPosition(0, EPOCH))
    for offset in (1, 2, 3):
        h.fanout.on_publication(CHANNEL, pub(offset))
    assert s.offsets == []
    sub.offset = 2  # recovery returned up to 2
    h.fanout.flush_recovery(s)
    assert s.offsets == [3]
    h.fanout.on_publication(CHANNEL, pub(4))
    assert s.offsets == [3, 4]


async def test_a_gap_is_filled_from_history_before_delivering_further(h: Harness) -> None:
    s = FakeSubscriber()
    await h.subscribe(s)
    h.fanout.start_position(CHANNEL, StreamPosition(1, EPOCH))
    h.fanout.on_publication(CHANNEL, pub(2))
    h.engine.history_result = HistoryResult([pub(3), pub(4), pub(5)], StreamPosition(5, EPOCH))
    h.fanout.on_publication(CHANNEL, pub(5))  # prev 4: 3 and 4 were missed
    h.fanout.on_publication(CHANNEL, pub(6))  # arrives while the gap is filled: held
    assert s.offsets == [2]
    await h.settle()
    assert h.engine.history_calls == [StreamPosition(2, EPOCH)]
    assert s.offsets == [2, 3, 4, 5, 6]
    assert h.metrics.registry.get_sample_value("pulsewire_history_gap_fills_total") == 1
    h.fanout.on_publication(CHANNEL, pub(7))
    assert s.offsets == [2, 3, 4, 5, 6, 7]


@pytest.mark.parametrize("why", ["history trimmed", "epoch changed in history", "live epoch"])
async def test_insufficient_state_tells_subscribers_to_resubscribe(h: Harness, why: str) -> None:
    a, b = FakeSubscriber(), FakeSubscriber()
    sub_a = await h.subscribe(a)
    await h.subscribe(b)
    h.fanout.start_position(CHANNEL, StreamPosition(1, EPOCH))
    if why == "live epoch":
        h.fanout.on_publication(CHANNEL, pub(2, epoch="e2"))
    else:
        if why == "history trimmed":  # 3 is gone: history starts at 4
            h.engine.history_result = HistoryResult([pub(4), pub(5)], StreamPosition(5, EPOCH))
        else:
            h.engine.history_result = HistoryResult([], StreamPosition(5, "e2"))
        h.fanout.on_publication(CHANNEL, pub(5))
        await h.settle()
    for s in (a, b):
        assert s.offsets == []
        assert s.pushes == [
            {
                "push": "unsubscribe",
                "channel": CHANNEL,
                "code": UnsubscribeCode.INSUFFICIENT_STATE,
                "reason": "insufficient state",
                "resubscribe": True,
            }
        ]
        assert h.fanout.subscription(s, CHANNEL) is None
    assert h.ended[0] is sub_a and len(h.ended) == 2  # the node forgets their presence
    assert h.closed == [CHANNEL]
    await h.settle()
    assert h.engine.unsubscribed == [CHANNEL]


async def test_insufficient_state_has_the_subscriber_make_a_server_side_subscription_again(
    h: Harness,
) -> None:
    """No ``unsubscribe`` push for a server-side subscription (the client could not
    resubscribe it): it is removed and its subscriber makes it again from where it was."""
    client, server = FakeSubscriber(), FakeSubscriber()
    await h.subscribe(client)
    sub = await h.subscribe(server, server=True)
    h.fanout.start_position(CHANNEL, StreamPosition(1, EPOCH))
    h.fanout.on_publication(CHANNEL, pub(2))
    h.fanout.on_publication(CHANNEL, pub(3, epoch="e2"))
    assert [p["code"] for p in client.pushes] == [UnsubscribeCode.INSUFFICIENT_STATE]
    assert server.pushes == [] and server.offsets == [2]
    assert server.resubscribed == [sub] and (sub.offset, sub.epoch) == (2, EPOCH)
    assert h.fanout.subscription(server, CHANNEL) is None
    assert len(h.ended) == 1 and h.ended[0] is not sub  # its presence: the subscriber's


async def test_each_publication_is_encoded_once_per_codec_in_use(h: Harness) -> None:
    json_codec, msgpack_codec = CountingCodec(JSON), CountingCodec(MsgpackCodec())
    jsons = [FakeSubscriber(json_codec) for _ in range(3)]
    packs = [FakeSubscriber(msgpack_codec) for _ in range(2)]
    for s in (*jsons, *packs):
        await h.subscribe(s)
    h.fanout.start_position(CHANNEL, StreamPosition(0, EPOCH))
    h.fanout.on_publication(CHANNEL, pub(1))
    h.fanout.on_publication(CHANNEL, pub(2))
    assert (json_codec.encodes, msgpack_codec.encodes) == (2, 2)
    for group in (jsons, packs):
        assert all(s.offsets == [1, 2] for s in group)
        for i in range(2):  # one prepared message shared by the codec's subscribers
            assert len({id(s.prepared[i]) for s in group}) == 1
    assert jsons[0].prepared[0] is not packs[0].prepared[0]
    assert isinstance(packs[0].prepared[0].data, bytes)
    assert h.metrics.registry.get_sample_value("pulsewire_deliveries_total") == 10


async def test_join_and_leave_are_encoded_once_per_codec(h: Harness) -> None:
    json_codec, msgpack_codec = CountingCodec(JSON), CountingCodec(MsgpackCodec())
    subscribers = [FakeSubscriber(json_codec if i % 2 else msgpack_codec) for i in range(6)]
    for s in subscribers:
        await h.subscribe(s)
    message = {"push": "join", "channel": CHANNEL, "info": {"client": "c", "user": "u"}}
    h.fanout.push_event(CHANNEL, message)
    h.fanout.push_event("elsewhere", message)  # nobody here: nothing encoded
    assert (json_codec.encodes, msgpack_codec.encodes) == (1, 1)
    assert json.loads(subscribers[1].events[0].data) == message
    assert msgpack.unpackb(subscribers[0].events[0].data) == message
    assert len({id(s.events[0]) for s in subscribers}) == 2


async def test_publications_without_history_are_delivered_without_ordering(h: Harness) -> None:
    s = FakeSubscriber()
    await h.subscribe(s)
    for n in range(3):
        h.fanout.on_publication(CHANNEL, Publication({"n": n}))
    assert s.offsets == [0, 0, 0]
    assert [json.loads(p.data)["data"] for p in s.prepared] == [{"n": 0}, {"n": 1}, {"n": 2}]


async def test_a_removal_empties_the_one_index(h: Harness) -> None:
    a, b = FakeSubscriber(), FakeSubscriber()
    sub_a = await h.subscribe(a)
    await h.subscribe(b)
    await h.subscribe(a, "other")
    assert h.engine.subscribed == [CHANNEL, "other"]
    assert h.fanout.counts == {CHANNEL: 2, "other": 1}
    assert dict(h.fanout.subscriptions(a)) == {
        CHANNEL: sub_a,
        "other": h.fanout.subscription(a, "other"),
    }

    assert h.fanout.remove(a, CHANNEL) is sub_a
    assert h.fanout.remove(a, CHANNEL) is None  # once
    assert h.fanout.subscription(a, CHANNEL) is None
    assert list(h.fanout.subscriptions(a)) == ["other"]
    assert h.fanout.counts == {CHANNEL: 1, "other": 1}
    h.fanout.on_publication(CHANNEL, Publication("x"))
    assert a.prepared == [] and len(b.prepared) == 1
    assert h.closed == []

    assert [sub.channel.name for sub in h.fanout.remove_all(a)] == ["other"]
    assert h.fanout.remove_all(b)[0].channel.name == CHANNEL
    assert h.fanout.counts == {} and len(h.fanout) == 0 and h.fanout.all() == []
    assert sorted(h.closed) == [CHANNEL, "other"]
    await h.settle()
    assert sorted(h.engine.unsubscribed) == [CHANNEL, "other"]
    assert h.ended == []  # removals asked for by the node: it forgets presence itself


async def test_a_failed_engine_subscribe_leaves_nothing_indexed(h: Harness) -> None:
    from pulsewire.hub.engines.base import EngineUnavailable
    from pulsewire.hub.errors import HubError

    async def down(channel: str) -> None:
        raise EngineUnavailable("down")

    h.engine.subscribe = down  # type: ignore[method-assign]
    s = FakeSubscriber()
    with pytest.raises(HubError) as caught:
        await h.subscribe(s)
    assert caught.value.code == 108
    assert h.fanout.subscription(s, CHANNEL) is None and h.fanout.counts == {}
