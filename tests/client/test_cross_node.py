"""``pulsewire.client`` and ``pulsewire subscribe`` across real nodes (issue #12, "what must
show" 1 and 2).

Nodes are ``pulsewire serve`` subprocesses (``spawn_nodes`` of tests/hub/test_cluster.py: its
config, with the ``room`` namespace keeping history, written per node) on Redis
(127.0.0.1:6379) or NATS (127.0.0.1:4222), with an engine prefix of their own per test.
Without the service the test skips, saying why; under ``CI=true`` it fails instead.

1. The client, given both nodes' URLs, is subscribed on A; publications made through B's API
   arrive; A is killed (SIGKILL); publications are made through B's API while A is dead;
   the client reconnects to B by itself and gets every one of them exactly once, in order,
   with ``recovered`` true; live ones follow. The same through ``pulsewire.client.sync``.
   The client reaches B through a :class:`Gate`, a port forward that refuses connections
   until the test opens it: the publications made while A is dead are then certainly made
   before the client is back, so they can only arrive through recovery (without the gate
   the client may be back on B before they are made, and recovery would not be tested).
2. ``pulsewire subscribe`` (a subprocess, given A's URL only) prints the publications made
   through B's API; A is killed and started again on the same port while publications go
   on through B: the output has every offset once, contiguous, in order; SIGINT exits 0.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import pulsewire.client
import pulsewire.client.sync
from deploy.conftest import Node as Process
from hub.conftest import encode_token
from hub.test_cluster import (
    HOST,
    REDIS_PORT,
    Node,
    api,
    engine_url,
    eventually,
    nats_streams_cleanup,
    redis_keys_cleanup,
    spawn_nodes,
    stop_nodes,
)
from pulsewire.client import Event, Join, Leave, Publication, StateChange, Subscribed

pytestmark = pytest.mark.timeout(60)

SCRIPT = str(Path(sys.executable).with_name("pulsewire"))
TIMEOUT = 10.0


def ws_url(port: int) -> str:
    return f"ws://{HOST}:{port}/connection/websocket"


@dataclass
class Cluster:
    """Nodes of one hub on one engine (``kind``, ``url``), under ``prefix``; all are stopped
    at teardown."""

    kind: str
    url: str
    prefix: str
    directory: Path
    nodes: list[Node] = field(default_factory=list)

    async def start(self, *names: str, ports: list[int] | None = None) -> list[Node]:
        """Start nodes named ``PREFIX-NAME`` (on ``ports``, or free ones) at once."""
        started = await asyncio.to_thread(
            spawn_nodes,
            self.directory,
            engines=[self.url] * len(names),
            prefix=self.prefix,
            names=[f"{self.prefix}-{name}" for name in names],
            ports=ports,
        )
        self.nodes += started
        return started

    def channel(self) -> str:
        return f"room:{uuid.uuid4().hex[:12]}"


@pytest.fixture(params=["redis", "nats"])
def cluster(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Cluster]:
    kind = request.param
    url = engine_url(kind)  # skips, or fails under CI=true, without the service
    prefix = f"pwcli-{uuid.uuid4().hex[:10]}"
    hub = Cluster(kind, url, prefix, tmp_path / "nodes")
    try:
        yield hub
        for node in hub.nodes:
            assert "Traceback" not in node.log(), f"node {node.name} logged:\n{node.log()}"
    finally:
        stop_nodes(hub.nodes)
        if kind == "redis":
            redis_keys_cleanup(REDIS_PORT, prefix)
        else:
            nats_streams_cleanup(prefix)


def kill(node: Node) -> None:
    """SIGKILL: no drain, no close handshake; the kernel closes its sockets."""
    node.proc.send_signal(signal.SIGKILL)
    node.proc.wait(10)


# ------------------------------------------------------------------------------------ gate


class Gate:
    """A loopback port forwarding to ``target``. Closed, connections to it are refused (its
    socket is bound but not listening); :meth:`open` starts forwarding."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.sock = socket.socket()
        self.sock.bind((HOST, 0))
        self.port: int = self.sock.getsockname()[1]
        self.server: asyncio.Server | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    async def open(self) -> None:
        self.sock.listen(16)
        self.server = await asyncio.start_server(self._forward, sock=self.sock)

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(HOST, self.target)
        pumps = [
            asyncio.ensure_future(self._pump(reader, up_writer)),
            asyncio.ensure_future(self._pump(up_reader, writer)),
        ]
        self.tasks.update(pumps)
        await asyncio.gather(*pumps, return_exceptions=True)

    @staticmethod
    async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        if self.server is not None:
            self.server.close()
        self.sock.close()


@pytest.fixture
async def gate() -> AsyncIterator[Callable[[int], Gate]]:
    """``gate(port)``: a closed :class:`Gate` to ``port``; closed at teardown."""
    gates: list[Gate] = []

    def make(target: int) -> Gate:
        gates.append(Gate(target))
        return gates[-1]

    yield make
    for one in gates:
        await one.close()


# ---------------------------------------------------------------------- pulsewire.client


async def publish(node: Node, channel: str, data: Any) -> int:
    """Publish through ``node``'s HTTP API; returns the offset."""
    return int((await api(node, "publish", {"channel": channel, "data": data}))["offset"])


async def test_client_moves_to_the_other_node_and_recovers(cluster: Cluster, gate: Any) -> None:
    a, b = await cluster.start("a", "b")
    to_b = gate(b.port)  # closed until the publications made while A is dead are made
    channel = cluster.channel()
    states: list[StateChange] = []
    async with pulsewire.client.connect(
        [ws_url(a.port), ws_url(to_b.port)],
        token=encode_token("mover"),
        on_state=states.append,
        min_reconnect_delay=0.05,
        max_reconnect_delay=0.2,
    ) as client:
        assert client.node == a.name
        sub = await client.subscribe(channel)
        events = sub.events()
        first = await next_event(events)
        assert isinstance(first, Subscribed) and not first.recovering
        assert first.position is not None and first.position.offset == 0
        sent = [f"before-{i}" for i in range(3)]
        for data in sent:
            await publish(b, channel, data)
        got = [await next_publication(events) for _ in sent]

        kill(a)
        await eventually(lambda: client.state != "connected", "the client to see A die")
        for i in range(5):
            sent.append(f"while-dead-{i}")
            await publish(b, channel, sent[-1])
        await to_b.open()
        again = await next_event(events)
        assert isinstance(again, Subscribed), again
        assert again.recovering and again.recovered
        assert client.node == b.name and client.url == ws_url(to_b.port)
        got += [await next_publication(events) for _ in range(5)]
        assert sub.recovered is True
        for i in range(2):
            sent.append(f"after-{i}")
            await publish(b, channel, sent[-1])
        got += [await next_publication(events) for _ in range(2)]

    assert [p.data for p in got] == sent  # each once, in order
    assert [p.offset for p in got] == list(range(1, len(sent) + 1))
    assert states[-1].state == "closed"
    assert [s.state for s in states].count("connected") == 2, states


@pytest.mark.parametrize("cluster", ["redis"], indirect=True)
async def test_the_sync_client_moves_to_the_other_node_and_recovers(
    cluster: Cluster, gate: Any
) -> None:
    """The same through ``pulsewire.client.sync`` (its blocking calls run in threads here,
    so that this test's loop goes on forwarding through the gate)."""
    a, b = await cluster.start("a", "b")
    to_b = gate(b.port)
    channel = cluster.channel()
    client = await asyncio.to_thread(
        pulsewire.client.sync.connect,
        [ws_url(a.port), ws_url(to_b.port)],
        token=encode_token("sync-mover"),
        min_reconnect_delay=0.05,
        max_reconnect_delay=0.2,
    )
    try:
        assert client.node == a.name
        sub = await asyncio.to_thread(client.subscribe, channel)
        events = sub.events()

        async def next_sync_event() -> Event:
            while True:
                event = await asyncio.wait_for(asyncio.to_thread(next, events), TIMEOUT)
                if not isinstance(event, (Join, Leave)):
                    return event

        first = await next_sync_event()
        assert isinstance(first, Subscribed) and not first.recovering
        sent = ["before-0", "before-1"]
        for data in sent:
            await publish(b, channel, data)
        got = [await next_sync_event() for _ in sent]

        kill(a)
        await eventually(lambda: client.state != "connected", "the client to see A die")
        for i in range(4):
            sent.append(f"while-dead-{i}")
            await publish(b, channel, sent[-1])
        await to_b.open()
        again = await next_sync_event()
        assert isinstance(again, Subscribed) and again.recovering and again.recovered, again
        assert client.node == b.name and sub.recovered
        sent.append("after")
        await publish(b, channel, "after")
        got += [await next_sync_event() for _ in range(5)]
    finally:
        await asyncio.to_thread(client.close)

    pubs = [p for p in got if isinstance(p, Publication)]
    assert pubs == got, got
    assert [p.data for p in pubs] == sent  # each once, in order
    assert [p.offset for p in pubs] == list(range(1, len(sent) + 1))


async def next_event(events: AsyncIterator[Event]) -> Event:
    """The next event but joins and leaves (the ``room`` namespace has join/leave)."""
    while True:
        event = await asyncio.wait_for(anext(events), TIMEOUT)
        if not isinstance(event, (Join, Leave)):
            return event


async def next_publication(events: AsyncIterator[Event]) -> Publication:
    """The next event, which must be a publication (a second Subscribed would be a bug)."""
    event = await next_event(events)
    assert isinstance(event, Publication), event
    return event


# ------------------------------------------------------------------- pulsewire subscribe


async def subscribe_cli(*args: str) -> Process:
    """``pulsewire subscribe ARGS`` with its stdout and stderr collected line by line."""
    proc = await asyncio.create_subprocess_exec(
        SCRIPT,
        "subscribe",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    return Process(proc)


@pytest.fixture
async def cli() -> AsyncIterator[Callable[..., Awaitable[Process]]]:
    started: list[Process] = []

    async def start(*args: str) -> Process:
        started.append(await subscribe_cli(*args))
        return started[-1]

    yield start
    for process in started:
        if process.proc.returncode is None:
            process.proc.kill()
        await process.exit_status(10)


def printed(process: Process) -> list[dict[str, Any]]:
    return [json.loads(line) for line in process.stdout]


async def lines(process: Process, count: int) -> list[dict[str, Any]]:
    """The first ``count`` publications printed (waits for them)."""
    await process.wait_line(r".", TIMEOUT, err=False, nth=count)
    return printed(process)[:count]


@pytest.mark.parametrize("cluster", ["redis"], indirect=True)
async def test_subscribe_cli_survives_a_node_restart(cluster: Cluster, cli: Any) -> None:
    a, b = await cluster.start("a", "b")
    channel = cluster.channel()
    token = encode_token("cli-user")
    process = await cli(ws_url(a.port), channel, "--token", token)
    await process.wait_line(rf"subscribed to {channel} at 0:\w+$", TIMEOUT)
    for i in range(3):
        await api(b, "publish", {"channel": channel, "data": {"n": i}})
    await lines(process, 3)

    kill(a)
    await process.wait_line("connection lost .*retrying", TIMEOUT)
    for i in range(3, 6):  # while A is dead: only recovery can bring these
        await api(b, "publish", {"channel": channel, "data": {"n": i}, "tags": {"k": "v"}})
    (a2,) = await cluster.start("a2", ports=[a.port])
    await process.wait_line(rf"subscribed to {channel} at \d+:\w+, recovered true$", TIMEOUT)
    for i in range(6, 8):
        await api(a2, "publish", {"channel": channel, "data": {"n": i}})
    got = await lines(process, 8)

    assert [line["offset"] for line in got] == list(range(1, 9))
    assert [line["data"] for line in got] == [{"n": i} for i in range(8)]
    assert all(line["channel"] == channel for line in got)
    assert [line.get("tags") for line in got] == [None] * 3 + [{"k": "v"}] * 3 + [None] * 2
    assert [list(line) for line in got[:3]] == [["channel", "offset", "data"]] * 3
    process.signal(signal.SIGINT)
    assert await process.exit_status(TIMEOUT) == 0
    assert len(process.stdout) == 8, process.stdout  # nothing duplicated later either
    assert not [line for line in process.stderr if "Traceback" in line], process.output
