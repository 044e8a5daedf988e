"""Redis Sentinel failover under load (issue #14, "what must show" 1).

A master, a replica and three sentinels (tests/hub/sentinel_topology.py), two
``pulsewire serve`` nodes on ``redis+sentinel://``, one ``pulsewire.client`` subscribed on
each node to a ``room`` channel (history on), publications through the HTTP API every 20 ms
(alternating nodes, each ack recorded). Then acknowledged writes are made to be lost: the
replica is frozen (SIGSTOP, shorter than down-after), a burst of 64 KB publications fills
the replication link's buffers, the master acknowledges them all and is SIGKILLed with the
rest of its replication buffer, the replica resumes and is promoted without them. Asserted:

* publishing succeeds again within :data:`PUBLISH_BACK_WITHIN` seconds of the kill;
* each subscriber gets every acknowledged publication once and in order, or is told
  (``recovered: false``, a new epoch) that it must reload: never a silent gap (within one
  epoch, the offsets it receives are contiguous and every acknowledged one after its
  starting point arrives) and never a reused offset (an offset it receives in an epoch is
  the publication acknowledged with that offset and epoch).

Also measured: the unavailability window (first failed publish to first acknowledged one
after the kill), how long each node was without fan-out (its log), and how many of 20 idle
channels (one publication before the kill, one after) started a new epoch although they lost
nothing (all: the fencing is conservative). Printed, and written to ``sentinel-window.json``
in the test's tmp directory.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import signal
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import pulsewire.client
from pulsewire.client import Event, Publication, Subscribed

from .conftest import encode_token
from .sentinel_topology import (
    DOWN_AFTER_MS,
    SentinelTopology,
    redis_server_missing,
)
from .test_cluster import HOST, Node, eventually, http_json, spawn_nodes, stop_nodes

pytestmark = pytest.mark.timeout(90)

PERIOD = 0.02  # a publication every 20 ms
#: The documented bound: down-after (1 s) + quorum + election + promotion take ~2.5 s here;
#: the rest is slack for a loaded 2-core machine.
PUBLISH_BACK_WITHIN = 15.0


IDLE_CHANNELS = 20
BURST = 80  # 64 KB publications: ~5 MB, more than loopback's socket buffers hold
PAD = "x" * 65536


async def publish(node: Node, channel: str) -> tuple[int, str]:
    """Publish through ``node``'s API; (offset, epoch)."""
    status, body = await http_json(
        node.port, "POST", "/api/publish", {"channel": channel, "data": 0}
    )
    assert status == 200, body
    return body["result"]["offset"], body["result"]["epoch"]


def fanout_down(node: Node) -> float | None:
    """Seconds between the node's "engine unavailable" and "available" log lines."""
    times = {}
    for line in node.log().splitlines():
        for state in ("unavailable", "available"):
            if line.endswith(f"redis engine {state}") and state not in times:
                stamp = datetime.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
                times[state] = stamp.timestamp()
    if len(times) < 2:
        return None
    return round(times["available"] - times["unavailable"], 3)


@pytest.fixture
def topology() -> Iterator[SentinelTopology]:
    redis_server_missing()
    topology = SentinelTopology().start()
    try:
        yield topology
    finally:
        topology.stop()


@pytest.fixture
def nodes(topology: SentinelTopology, tmp_path: Path) -> Iterator[list[Node]]:
    prefix = f"pwsent-{uuid.uuid4().hex[:8]}"
    started = spawn_nodes(
        tmp_path / "nodes",
        engines=[topology.url] * 2,
        prefix=prefix,
        names=[f"{prefix}-a", f"{prefix}-b"],
    )
    try:
        yield started
    finally:
        stop_nodes(started)


@dataclass
class Ack:
    n: int
    offset: int
    epoch: str


@dataclass
class Publisher:
    """Publishes ``{"n": i}`` through the nodes' APIs in turn, one at a time, every 20 ms
    (while not ``paused``); :meth:`publish` records every attempt and acknowledgement."""

    nodes: list[Node]
    channel: str
    acks: list[Ack] = field(default_factory=list)
    #: (monotonic time, succeeded) of every attempt.
    attempts: list[tuple[float, bool]] = field(default_factory=list)
    stopped: bool = False
    paused: bool = False
    n: int = 0

    async def publish(self, extra: dict[str, Any] | None = None) -> None:
        self.n += 1
        n = self.n
        node = self.nodes[n % len(self.nodes)]
        started = time.monotonic()
        data = {"n": n, **(extra or {})}
        try:
            status, body = await http_json(
                node.port, "POST", "/api/publish", {"channel": self.channel, "data": data}
            )
        except (OSError, asyncio.TimeoutError):
            status, body = 0, None
        ok = status == 200 and "result" in body
        self.attempts.append((started, ok))
        if ok:
            self.acks.append(Ack(n, body["result"]["offset"], body["result"]["epoch"]))

    async def run(self) -> None:
        while not self.stopped:
            started = time.monotonic()
            if not self.paused:
                await self.publish()
            await asyncio.sleep(max(0.0, PERIOD - (time.monotonic() - started)))

    def window(self, killed_at: float) -> tuple[float, float]:
        """(first failure after the kill -> first success after it, kill -> that success)."""
        failed = next((t for t, ok in self.attempts if t >= killed_at and not ok), killed_at)
        back = next(t for t, ok in self.attempts if t > failed and ok)
        return back - failed, back - killed_at


@dataclass
class Watcher:
    """Every event of one client's subscription."""

    name: str
    events: list[Event] = field(default_factory=list)

    async def run(self, url: str, channel: str, ready: asyncio.Event) -> None:
        async with pulsewire.client.connect(
            url,
            token=encode_token(f"watcher-{self.name}"),
            min_reconnect_delay=0.05,
            max_reconnect_delay=0.5,
        ) as client:
            sub = await client.subscribe(channel)
            async for event in sub.events():
                if isinstance(event, (Subscribed, Publication)):
                    self.events.append(event)
                    ready.set()

    def count_from(self, n: int) -> int:
        """How many publications numbered ``n`` or more were received."""
        return sum(1 for _, _, m in self.received() if m >= n)

    def received(self) -> list[tuple[str, int, int]]:
        """(epoch, offset, n) of each publication, the epoch from the last Subscribed."""
        out, epoch = [], ""
        for event in self.events:
            if isinstance(event, Subscribed):
                if event.position is not None and not event.recovered:
                    epoch = event.position.epoch
            else:
                assert event.offset is not None
                out.append((epoch, event.offset, event.data["n"]))
        return out

    def check(self, acks: list[Ack]) -> dict[str, int]:
        """Assert the guarantees; returns counts for the report."""
        acked = {(a.epoch, a.offset): a.n for a in acks}
        assert len(acked) == len(acks), "the engine acknowledged one offset twice"
        received = self.received()
        numbers = [n for _, _, n in received]
        assert len(numbers) == len(set(numbers)), f"{self.name}: delivered twice: {numbers}"
        for epoch, offset, n in received:
            if (epoch, offset) in acked:
                assert acked[epoch, offset] == n, f"{self.name}: offset {offset} reused"
        # Segments: a Subscribed without recovery starts a new one (the client was told to
        # reload state); within one, offsets follow each other with no gap.
        starts: list[tuple[str, int]] = []
        last: tuple[str, int] | None = None
        for event in self.events:
            if isinstance(event, Subscribed):
                if event.position is not None and not event.recovered:
                    last = (event.position.epoch, event.position.offset)
                    starts.append(last)
            elif last is not None:
                assert event.offset == last[1] + 1, f"{self.name}: gap after {last}"
                last = (last[0], event.offset)
        # Every acknowledged publication of the last epoch after the last starting point
        # arrived; the others belong to an epoch (or a part of one) the client was told about.
        final_epoch, final_start = starts[-1]
        got = {(e, o) for e, o, _ in received}
        missing = [
            a
            for a in acks
            if a.epoch == final_epoch and a.offset > final_start and (a.epoch, a.offset) not in got
        ]
        assert not missing, f"{self.name}: acknowledged but never delivered: {missing[:5]}"
        told_of = {a.epoch for a in acks} - {final_epoch}
        told = starts[1:]
        assert not told_of or told, f"{self.name}: epochs {told_of} ended silently"
        return {"received": len(received), "told": len(told)}


async def test_master_killed_under_load(
    topology: SentinelTopology, nodes: list[Node], tmp_path: Path
) -> None:
    channel = f"room:{uuid.uuid4().hex[:10]}"
    prefix = nodes[0].name.rsplit("-", 1)[0]
    watchers = [Watcher("a"), Watcher("b")]
    readies = [asyncio.Event(), asyncio.Event()]
    tasks = [
        asyncio.create_task(w.run(f"ws://{HOST}:{n.port}/connection/websocket", channel, r))
        for w, n, r in zip(watchers, nodes, readies, strict=True)
    ]
    publisher = Publisher(nodes, channel)
    publishing = asyncio.create_task(publisher.run())
    try:
        for ready in readies:
            await asyncio.wait_for(ready.wait(), 10)
        await eventually(lambda: len(publisher.acks) >= 30, "30 publications before the kill")

        # Idle channels (one publication each before the kill, one after): how many start a
        # new epoch although none of their writes was lost (the conservative fencing).
        idle = [f"room:idle-{uuid.uuid4().hex[:6]}-{i}" for i in range(IDLE_CHANNELS)]
        before = [await publish(nodes[0], name) for name in idle]

        # Writes the replica will never have: while it is frozen (SIGSTOP, shorter than
        # down-after), a burst of 64 KB publications fills the kernel buffers of the
        # replication link; the master acknowledges them all and dies with the rest of its
        # replication buffer.
        publisher.paused = True
        replica = topology.replica
        assert replica is not None and replica.proc is not None
        replica.proc.send_signal(signal.SIGSTOP)
        try:
            await asyncio.gather(*(publisher.publish({"pad": PAD}) for _ in range(BURST)))
            killed_at = time.monotonic()
            await asyncio.to_thread(topology.kill_master)
        finally:
            replica.proc.send_signal(signal.SIGCONT)
        publisher.paused = False
        # What the replica kept, read before its promotion (its first write then resets it).
        kept = await asyncio.to_thread(topology.replica_offset, f"{prefix}:{{{channel}}}:meta")
        await eventually(
            lambda: any(ok for t, ok in publisher.attempts if t > killed_at + 0.2),
            "publishing to succeed again",
            timeout=PUBLISH_BACK_WITHIN,
        )
        window, since_kill = publisher.window(killed_at)
        # Publishing goes on until each subscriber, told or not, gets live publications
        # again (its node's pub/sub connection is back and the channel resynced).
        first_back = publisher.acks[-1].n
        await eventually(
            lambda: all(w.count_from(first_back) >= 10 for w in watchers),
            lambda: f"10 live publications on each node: {[w.events[-3:] for w in watchers]}",
            timeout=20,
        )
        publisher.stopped = True
        await publishing
        last = publisher.acks[-1]
        for w in watchers:
            await eventually(
                lambda w=w: any(n == last.n for _, _, n in w.received()),
                lambda w=w: (
                    f"watcher {w.name} to get publication {last.n}, got: "
                    f"{w.events[-5:]} (acks: {publisher.acks[-3:]})\n{nodes[1].log()[-4000:]}"
                ),
                timeout=15,
            )
        counts = {w.name: w.check(publisher.acks) for w in watchers}
        after = [await publish(nodes[1], name) for name in idle]
    finally:
        publisher.stopped = True
        for task in [*tasks, publishing]:
            task.cancel()
        await asyncio.gather(*tasks, publishing, return_exceptions=True)

    failed = sum(1 for _, ok in publisher.attempts if not ok)
    epoch0 = publisher.acks[0].epoch
    report = {
        "unavailable_s": round(window, 3),
        "kill_to_first_ack_s": round(since_kill, 3),
        "down_after_ms": DOWN_AFTER_MS,
        "acknowledged": len(publisher.acks),
        "failed_attempts": failed,
        "acknowledged_then_lost": sum(
            a.epoch == epoch0 and a.offset > kept for a in publisher.acks
        ),
        "epochs": len({a.epoch for a in publisher.acks}),
        "idle_channels_new_epoch": sum(b[1] != a[1] for b, a in zip(before, after, strict=True)),
        "idle_channels": IDLE_CHANNELS,
        "fanout_down_s": [fanout_down(node) for node in nodes],
        "watchers": counts,
    }
    (tmp_path / "sentinel-window.json").write_text(json.dumps(report))
    print(f"\nsentinel failover: {json.dumps(report)}")
    assert report["acknowledged_then_lost"] > 0, "the burst was meant to be lost"
    assert report["epochs"] == 2, "a failover starts a new epoch (fencing)"
    assert report["idle_channels_new_epoch"] == IDLE_CHANNELS, "every channel, lost writes or not"
    assert all(offset == 1 for offset, _ in after)
    for node in nodes:
        assert node.alive() and "Traceback" not in node.log(), node.log()[-3000:]
