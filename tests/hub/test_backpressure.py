"""Backpressure (hub/backpressure.py) on a node with the memory engine: a publication to a
channel some node is behind on waits until that node catches up, and is refused with 115
after ``overload_wait``; other channels do not wait; a broadcast waits ``overload_wait`` in
all; a node declared dead or gone releases its channels; a stale entry expires; the node's
own state counts without a round trip and is told to the cluster; a client's publish reply
waits; the HTTP API answers 115 with 503 and Retry-After; ``overload_lag = 0`` is off.

Other nodes are played by handing the hub their control messages (the way the engine does).
Waiting is observed by events (a task not done after the loop ran), never by timings."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from pulsewire.hub import Hub
from pulsewire.hub.backpressure import REFRESH_INTERVAL, Backpressure
from pulsewire.hub.config import HubConfig
from pulsewire.hub.control import NodeDead, NodeGone, NodeLoad
from pulsewire.hub.engines.base import EngineUnavailable
from pulsewire.hub.errors import ErrorCode, HubError

from .conftest import API_KEY, HOST, build_config
from .fakes import FakeClock

Start = Callable[..., Awaitable[Hub]]
FOREVER = 60.0  # an overload_wait no test reaches


def other_node(
    overloaded: bool, channels: tuple[str, ...] | str = (), instance: str = "i2"
) -> dict[str, Any]:
    return NodeLoad("n2", instance, overloaded, 0.9 if overloaded else 0.0, channels).to_dict()


async def loop_runs(times: int = 20) -> None:
    """Let the loop run a while: a publish that is not held back completes meanwhile."""
    for _ in range(times):
        await asyncio.sleep(0)


def metric(hub: Hub, name: str) -> float:
    return hub.metrics.registry.get_sample_value(name) or 0.0


async def test_a_publish_waits_while_a_node_is_behind_on_its_channel_only(
    local_hub: Start, uniq: Any
) -> None:
    hub = await local_hub(build_config(overload_wait=FOREVER))
    behind, other = uniq("chat"), uniq("chat")
    hub.on_control(other_node(True, (behind,)))
    held = asyncio.create_task(hub.publish(behind, {"n": 1}))
    await hub.publish(other, {"n": 2})  # another channel: not held
    await loop_runs()
    assert not held.done()
    assert (await hub.history(behind)).publications == []  # not published meanwhile
    hub.on_control(other_node(False))  # caught up
    position = await asyncio.wait_for(held, 5)
    assert position is not None and position.offset == 1
    assert metric(hub, "pulsewire_publish_wait_seconds_count") == 1
    assert metric(hub, "pulsewire_publish_overloaded_total") == 0


async def test_a_node_behind_on_all_channels_holds_every_publish(
    local_hub: Start, uniq: Any
) -> None:
    hub = await local_hub(build_config(overload_wait=FOREVER))
    hub.on_control(other_node(True, "all"))
    held = [asyncio.create_task(hub.publish(uniq("chat"), i)) for i in range(3)]
    await loop_runs()
    assert not any(task.done() for task in held)
    hub.on_control(other_node(False))
    await asyncio.wait_for(asyncio.gather(*held), 5)


async def test_a_publish_is_refused_with_115_after_overload_wait(
    local_hub: Start, uniq: Any
) -> None:
    hub = await local_hub(build_config(overload_wait=0.05))
    channel = uniq("chat")
    hub.on_control(other_node(True, (channel,)))
    with pytest.raises(HubError) as refused:
        await hub.publish(channel, {"n": 1})
    assert refused.value.code == ErrorCode.OVERLOADED == 115
    assert "behind on delivery" in refused.value.message
    assert (await hub.history(channel)).publications == []  # not published
    assert metric(hub, "pulsewire_publish_overloaded_total") == 1
    # broadcast goes the same way: one error per held channel
    free = uniq("chat")
    results = await hub.broadcast([channel, free], "x")
    assert isinstance(results[0], HubError) and results[0].code == 115
    assert not isinstance(results[1], HubError)


async def test_a_broadcast_waits_overload_wait_in_all_not_per_channel(
    local_hub: Start, uniq: Any
) -> None:
    clock = FakeClock()
    hub = await local_hub(build_config(overload_wait=5.0))
    hub.backpressure.stop()
    hub.backpressure = Backpressure(
        hub.config,
        hub.engine,
        hub.metrics,
        hub.fanout,
        hub.node_id,
        instance=lambda: hub.instance,
        is_own=hub.node_watch.is_own,
        spawn=hub.spawn,
        clock=clock,
    )
    first, second = uniq("chat"), uniq("chat")
    hub.on_control(other_node(True, (first, second)))
    broadcast = asyncio.create_task(hub.broadcast([first, second], 1))
    await loop_runs()
    assert not broadcast.done()
    clock.advance(5.0)  # the broadcast's overload_wait is over
    hub.on_control(other_node(True, (first, second, uniq("chat"))))  # news: waiters look again
    await loop_runs()
    assert broadcast.done()  # the second channel did not wait again
    assert [getattr(r, "code", None) for r in broadcast.result()] == [115, 115]


async def test_overload_wait_zero_refuses_at_once(local_hub: Start, uniq: Any) -> None:
    hub = await local_hub(build_config(overload_wait=0))
    channel = uniq("chat")
    hub.on_control(other_node(True, (channel,)))
    with pytest.raises(HubError) as refused:
        await hub.publish(channel, 1)
    assert refused.value.code == 115


@pytest.mark.parametrize(
    "gone",
    [NodeDead("i2", "n2", sender="n3").to_dict(), NodeGone("i2", True, sender="n2").to_dict()],
    ids=["dead", "gone"],
)
async def test_a_node_declared_dead_or_gone_releases_what_it_held(
    local_hub: Start, uniq: Any, gone: dict[str, Any]
) -> None:
    hub = await local_hub(build_config(overload_wait=FOREVER))
    channel = uniq("chat")
    hub.on_control(other_node(True, (channel,)))
    held = asyncio.create_task(hub.publish(channel, 1))
    await loop_runs()
    assert not held.done()
    hub.on_control(gone)
    await asyncio.wait_for(held, 5)


async def test_the_node_s_own_lag_holds_its_publishers_and_the_cluster_is_told(
    local_hub: Start, local_client: Any, uniq: Any
) -> None:
    hub = await local_hub(build_config(overload_wait=FOREVER))
    sent: list[dict[str, Any]] = []
    publish_control = hub.engine.publish_control

    async def spy(message: dict[str, Any]) -> None:
        if message.get("op") == "load":
            sent.append(message)
        await publish_control(message)  # the memory engine hands it back: our own, ignored

    hub.engine.publish_control = spy  # type: ignore[method-assign]
    hub.backpressure.stop()  # the test measures, with its own times
    channel = uniq("chat")
    client = await local_client(hub, "u1")
    await client.subscribe(channel)
    hub.backpressure.probe(100.0, loop_lag=0.8)  # the loop ran 0.8 s late: behind on all
    assert hub.backpressure.overloaded
    assert metric(hub, "pulsewire_overloaded") == 1
    reply = asyncio.create_task(client.call("publish", {"channel": channel, "data": "hi"}))
    await loop_runs()
    assert not reply.done()  # the client is slowed: its reply waits
    assert len(hub.backpressure.table) == 0  # our own message did not count twice
    hub.backpressure.probe(100.5, loop_lag=0.3)  # under the bound, over half: still behind
    hub.backpressure.probe(100.0 + REFRESH_INTERVAL, loop_lag=0.3)  # a reminder
    await loop_runs()  # (sent: only the latest state of those not sent yet goes)
    hub.backpressure.probe(101.1, loop_lag=0.0)  # caught up
    answer = await asyncio.wait_for(reply, 5)
    assert "result" in answer, answer
    await loop_runs()
    assert [(m["overloaded"], m["channels"]) for m in sent] == [
        (True, "all"),
        (True, "all"),
        (False, []),
    ]
    assert all(m["from"] == hub.node_id and m["instance"] == hub.instance for m in sent)
    assert metric(hub, "pulsewire_overloaded") == 0


async def test_a_clear_the_engine_failed_to_send_is_sent_again_at_the_next_refresh(
    local_hub: Start,
) -> None:
    hub = await local_hub(build_config())
    sent: list[dict[str, Any]] = []
    failing = [True]

    async def flaky(message: dict[str, Any]) -> None:
        if message.get("op") != "load":
            return
        if failing[0]:
            raise EngineUnavailable("the engine is down")
        sent.append(message)

    hub.engine.publish_control = flaky  # type: ignore[method-assign]
    bp = hub.backpressure
    bp.stop()
    bp.probe(100.0, loop_lag=0.8)  # behind: the message is lost
    await loop_runs()
    bp.probe(100.1, loop_lag=0.0)  # caught up: the "clear" is lost too
    await loop_runs()
    failing[0] = False
    bp.probe(100.1 + REFRESH_INTERVAL / 2, loop_lag=0.0)  # not due yet
    await loop_runs()
    assert sent == []
    bp.probe(100.1 + REFRESH_INTERVAL, loop_lag=0.0)  # due: the latest state goes again
    await loop_runs()
    assert [m["overloaded"] for m in sent] == [False]
    bp.probe(100.1 + 3 * REFRESH_INTERVAL, loop_lag=0.0)  # sent: no more reminders
    await loop_runs()
    assert len(sent) == 1


async def test_a_stale_entry_expires(local_hub: Start, uniq: Any) -> None:
    hub = await local_hub(build_config(overload_wait=FOREVER))
    hub.backpressure.stop()
    channel = uniq("chat")
    hub.on_control(other_node(True, (channel,)))
    held = asyncio.create_task(hub.publish(channel, 1))
    await loop_runs()
    (entry,) = hub.backpressure.table.entries().values()
    hub.backpressure.probe(entry.expires, loop_lag=0.0)  # no refresh came: forgotten
    await asyncio.wait_for(held, 5)


async def test_backpressure_off_holds_nobody(local_hub: Start, uniq: Any) -> None:
    hub = await local_hub(build_config(overload_lag=0))
    assert not hub.backpressure.enabled
    channel = uniq("chat")
    hub.on_control(other_node(True, "all"))
    await asyncio.wait_for(hub.publish(channel, 1), 5)
    assert len(hub.backpressure.table) == 0


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf")])
def test_the_settings_are_checked(bad: float) -> None:
    with pytest.raises(ValueError, match="overload_lag"):
        HubConfig(overload_lag=bad)
    with pytest.raises(ValueError, match="overload_wait"):
        HubConfig(overload_wait=bad)
    assert (HubConfig().overload_lag, HubConfig().overload_wait) == (0.5, 2.0)


async def test_the_api_answers_115_with_503_and_retry_after(hub_server: Any, uniq: Any) -> None:
    server = await hub_server(build_config(overload_wait=0))
    channel = uniq("chat")
    server.hub.on_control(other_node(True, (channel,)))
    body = json.dumps({"channel": channel, "data": 1}).encode()
    reader, writer = await asyncio.open_connection(HOST, server.port)
    try:
        writer.write(
            (
                f"POST /api/publish HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n"
                f"Authorization: apikey {API_KEY}\r\nContent-Length: {len(body)}\r\n\r\n"
            ).encode()
            + body
        )
        answer = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
    head, _, payload = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    assert lines[0].split(" ")[1] == "503"
    assert headers["retry-after"] == "1"
    assert json.loads(payload)["error"]["code"] == 115


class QueuedWork:
    """Stands for the fan-out: what the probe reads of it (ages, deliveries made and left)."""

    def __init__(self) -> None:
        self.delivered = 0
        self.backlog: dict[str, int] = {}
        self.ages: dict[str, float] = {}

    def delivery_lags(self, now: float) -> dict[str, float]:
        return dict(self.ages)

    def delivery_backlog(self) -> tuple[int, dict[str, int]]:
        return self.delivered, dict(self.backlog)


async def test_the_probe_counts_the_time_to_deliver_what_is_queued(
    local_hub: Start, uniq: Any
) -> None:
    """A node fed faster than it delivers is behind by what it has queued, at the rate it
    delivers while behind, before its oldest item is ``overload_lag`` old."""
    hub = await local_hub(build_config(overload_lag=0.5))
    hub.backpressure.stop()
    work = QueuedWork()
    backpressure = Backpressure(
        hub.config,
        hub.engine,
        hub.metrics,
        work,  # type: ignore[arg-type]
        hub.node_id,
        instance=lambda: hub.instance,
        is_own=hub.node_watch.is_own,
        spawn=hub.spawn,
    )
    channel = uniq("chat")
    work.backlog, work.ages = {channel: 100}, {channel: 0.01}
    backpressure.probe(10.0, loop_lag=0.0)
    work.delivered = 1_000
    backpressure.probe(11.0, loop_lag=0.0)  # 1,000 deliveries/s while behind
    assert not backpressure.overloaded  # 100 deliveries queued: 0.1 s
    work.delivered, work.backlog = 1_050, {channel: 900}
    backpressure.probe(11.05, loop_lag=0.0)  # 900 queued at 1,000/s: 0.9 s, the oldest 0.01 s
    assert backpressure.overloaded
    assert backpressure.detector.state.channels == (channel,)
    assert metric(hub, "pulsewire_delivery_lag_seconds") == pytest.approx(0.9)
    work.delivered, work.backlog = 1_950, {channel: 100}
    backpressure.probe(11.95, loop_lag=0.0)  # 0.1 s left: under half the bound, caught up
    assert not backpressure.overloaded
