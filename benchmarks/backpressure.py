#!/usr/bin/env python3
"""Cross-node publishing at a stepped, rate-limited offered rate: where a hub stops keeping up,
and what its latency does past that point, with pulsewire's backpressure off and on, and
python-socketio across two processes with its Redis manager, in one run with one driver.

Per hub: a private ``redis-server`` (a port in 7600-7699, stopped by PID), node A and node B
on it (pinned to core 0 with ``taskset``: ``pulsewire serve``, or
benchmarks/servers/socketio_hub.py ``--redis-url`` under uvicorn), S subscribers on node B in
one channel / room (client processes on core 1, fanout_hub.py's ``HubConn`` or hub_peers.py's
``SocketIOConn``), and a publisher on node A: ``POST /api/publish`` over ``--in-flight``
keep-alive connections (at most that many requests in flight), each publication's send time
in its data, at offered rates stepping up (``--rates``, ``--step-seconds`` each, back to back).
A publication that is due while every connection waits for an answer waits for one; one still
waiting when its step ends is counted as ``skipped`` (the publisher was held back).

The driver is cheap so that it is not the limit: ``--sampled`` of the S subscribers (2 %,
spread over the subscription order: the first, evenly spaced ones, the last of each client
process) decode and timestamp every publication; the others drain (``HubConn.draining``:
large reads, frame headers walked, text frames counted, nothing decoded), and all answer
pings (WebSocket pings; Engine.IO's ``2`` with ``3``).

Per step: offered/s, accepted/s, refused (error code 115, backpressure), other errors,
skipped, the API's answer time, delivered publications/s at B's subscribers (deliveries that
arrived during the step at all S / S) and publish-to-receive latency (until the last sampled
subscriber had it) p50 / p99 / max over the step's accepted publications, and its p99 from
node A's answer on (without the time A held the publish back); those not delivered to every
sampled subscriber by the end of the drain are counted, and after the drain each draining
subscriber's count is checked against the publications accepted. Stepping stops once the
newest delivered publication is older than ``--give-up-ms`` (the backlog grows without
bound; the drain would take minutes). At each step's end the driver's unread bytes from node
B are recorded (/proc/net/tcp), and sampled every 0.25 s over the step, and the subscriber
processes' worst event loop lag: past 1 MiB unread (median over the step) or 100 ms late, the
driver, not only the hub, was behind.
The sustainable rate: the highest step with everything accepted and delivered
and p99 under ``--p99-bound-ms``.

    .venv/bin/python benchmarks/backpressure.py             # ~3 minutes
    .venv/bin/python benchmarks/backpressure.py --smoke     # tiny, seconds

Writes ``benchmarks/results/backpressure.json`` (smoke: ``backpressure_smoke.json``);
``measure(settings, peer, backpressure) -> dict`` is one hub's run, ``run(settings)`` all.
"""

import argparse
import asyncio
import contextlib
import gc
import json
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
if str(BENCH) not in sys.path:  # run as a script or loaded from a file by the tests
    sys.path.insert(0, str(BENCH))

import fanout_hub as hub  # noqa: E402
import hub_peers  # noqa: E402

CHANNEL = "fan:xnode"  # pulsewire's channel; the Socket.IO room has the same name
REDIS_PORTS = range(7600, 7700)
REFUSED = 115  # pulsewire's error code for a publish refused by backpressure
BINS_PER_SECOND = 10  # the subscribers count arrivals in 100 ms bins
DRIVER_BEHIND = 1 << 20  # bytes unread by the driver (median over a step): it was the limit
DRIVER_LAG_MS = 100.0  # the driver's event loop this late: it added as much to latencies
LAG_TICK = 0.02  # seconds between the subscriber processes' loop lag probes
RUNS = ("pulsewire-off", "pulsewire-on", "python-socketio")


@dataclass(frozen=True)
class Settings:
    subscribers: int = 2_000
    sampled: int = 40  # subscribers that decode and timestamp (2 %); the others only drain
    client_procs: int = 2
    rates: tuple[float, ...] = (5, 25, 50, 100, 200, 400, 800)
    step_seconds: float = 3.0
    in_flight: int = 16
    p99_bound_ms: float = 250.0  # a step is sustainable only with p99 under this
    give_up_ms: float = 5_000.0  # stop stepping once the newest delivery is this late
    drain_seconds: float = 20.0  # after the last step, for the backlog to arrive
    overload_lag: float = 0.5  # pulsewire's backpressure settings in the "on" run
    overload_wait: float = 2.0
    runs: tuple[str, ...] = RUNS
    pin: bool = True
    smoke: bool = False
    timeout: float = 120.0  # for the subscribers to be ready


SMOKE = Settings(
    subscribers=40,
    sampled=8,
    client_procs=1,
    rates=(20, 40),
    step_seconds=0.5,
    drain_seconds=5.0,
    smoke=True,
    timeout=15.0,
)


# ------------------------------------------------------------------ subscriber processes


def sample_indexes(count: int, sampled: int) -> list[int]:
    """``sampled`` of ``count`` subscribers spread evenly over their subscription order: the
    first, the last, and evenly spaced ones between."""
    sampled = min(count, sampled)
    if sampled <= 1:
        return [0][:sampled]
    return sorted({round(i * (count - 1) / (sampled - 1)) for i in range(sampled)})


def sample_split(settings: "Settings") -> list[int]:
    """How many sampled subscribers each client process holds (at least one each)."""
    shares = hub.client_shares(settings.subscribers, settings.client_procs)
    want = [max(1, round(settings.sampled * c / settings.subscribers)) for c, _ in shares]
    return [len(sample_indexes(c, k)) for (c, _), k in zip(shares, want, strict=True)]


class Receipts:
    """The subscribers of one process. The sampled ones (``count`` of them) decode every
    publication: per publication its first and last receipt among them and how many had it
    (all get the same bytes for a publication, so a payload is decoded once). The others
    drain (``HubConn.draining``): they only count frames. Arrivals of both per 100 ms."""

    def __init__(self, count: int, decode: Any) -> None:
        self.count = count
        self.decode = decode
        self.by_payload: dict[bytes, list[float]] = {}
        self.records: dict[int, list[float]] = {}  # seq -> [step, t0, first, last, count]
        self.bins: dict[int, int] = {}
        self.complete = 0
        self.newest_ms = 0.0  # latency of the publication completed last
        self.closed = 0
        self.frames = 0  # publications the draining subscribers got, in all
        self.lag_ms = 0.0  # the event loop's worst lateness since the last STATUS

    def lost(self, conn: hub.HubConn) -> None:
        self.closed += 1

    def drained(self, conn: hub.HubConn, frames: int, now: float) -> None:
        self.frames += frames
        slot = int(now * BINS_PER_SECOND)
        self.bins[slot] = self.bins.get(slot, 0) + frames

    def message(self, conn: hub.HubConn, payload: bytes, now: float) -> None:
        if conn.draining:  # came in the read that completed the connect
            conn.count += 1
            self.drained(conn, 1, now)
            return
        record = self.by_payload.get(payload)
        if record is None:
            try:
                data = self.decode(payload)
                seq, step, t0 = int(data["s"]), data["k"], data["t"]
            except (ValueError, KeyError, TypeError, IndexError):
                return  # not one of ours
            record = self.by_payload[payload] = self.records[seq] = [step, t0, now, now, 0]
        record[3] = now
        record[4] += 1
        slot = int(now * BINS_PER_SECOND)
        self.bins[slot] = self.bins.get(slot, 0) + 1
        if record[4] == self.count:
            self.complete += 1
            self.newest_ms = (now - record[1]) * 1000

    def status(self) -> str:
        """The STATUS line; the loop lag starts over."""
        lag, self.lag_ms = self.lag_ms, 0.0
        return f"STATUS {self.complete} {self.newest_ms:.1f} {self.closed} {self.frames} {lag:.1f}"

    async def probe_lag(self, period: float) -> None:
        """Forever: how late the event loop runs a timer of ``period`` seconds (the worst in
        ``lag_ms``): while it is busy with reads, what arrived for the others waits as long."""
        while True:
            due = time.monotonic() + period
            await asyncio.sleep(period)
            self.lag_ms = max(self.lag_ms, (time.monotonic() - due) * 1000)

    def result(self, conns: list[hub.HubConn]) -> dict[str, Any]:
        drained = [conn.count for conn in conns if conn.draining]
        return {
            "records": self.records,
            "bins": self.bins,
            "closed": self.closed,
            "drained": drained,
        }


def hub_data(payload: bytes) -> Any:
    return json.loads(payload)["data"]


def command_lines(loop: asyncio.AbstractEventLoop) -> "asyncio.Queue[str]":
    """Lines from the coordinator on stdin ("" at EOF), read by a thread."""
    queue: asyncio.Queue[str] = asyncio.Queue()

    def pump() -> None:
        for line in sys.stdin:
            loop.call_soon_threadsafe(queue.put_nowait, line.strip())
        loop.call_soon_threadsafe(queue.put_nowait, "")

    threading.Thread(target=pump, daemon=True).start()
    return queue


async def subscribers_client(args: argparse.Namespace) -> None:
    """``--count`` subscribers on node B, ``--sampled`` of them decoding (spread over the
    subscription order), the others draining; answers STATUS, and END with its RESULT."""
    sampled = sample_indexes(args.count, args.sampled)
    draining = set(range(args.count)).difference(sampled)
    conn_class: type[hub.HubConn]
    if args.protocol == "socketio":
        receipts = Receipts(len(sampled), hub_peers.socketio_data)
        hello, conn_class = CHANNEL.encode(), hub_peers.SocketIOConn
    else:
        receipts = Receipts(len(sampled), hub_data)
        hello, conn_class = hub.connect_command(args.token, CHANNEL), hub.HubConn
    commands = command_lines(asyncio.get_running_loop())
    conns = await hub.open_conns(
        receipts,
        args.port,
        [hello] * args.count,
        args.addresses.split(","),
        conn_class=conn_class,
        draining=draining,
    )
    gc.freeze()  # the connections stay: collections need not walk them (shorter pauses)
    probe = asyncio.create_task(receipts.probe_lag(LAG_TICK))
    hub.say(f"READY {len(conns)}")
    while (line := await commands.get()) not in ("", "END"):
        hub.say(receipts.status())
    probe.cancel()
    if line == "END":
        hub.say("RESULT " + json.dumps(receipts.result(conns)))
    for conn in conns:
        if conn.transport is not None:
            conn.transport.abort()


# -------------------------------------------------------------------- the publisher


@dataclass
class Tally:
    """What became of one step's publications (counted by the step that sent them)."""

    rate: float
    offered: int = 0
    sent: int = 0
    accepted: int = 0
    refused: int = 0
    skipped: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    answer_ms: list[float] = field(default_factory=list)
    start: float = 0.0
    end: float = 0.0

    def summary(self) -> dict[str, Any]:
        out = asdict(self)
        out["answer_ms"] = hub.summary(self.answer_ms)
        return out


class Publisher:
    """``POST /api/publish`` at a given rate over ``in_flight`` keep-alive connections."""

    def __init__(self, port: int, in_flight: int) -> None:
        self.port = port
        self.in_flight = in_flight
        self.due: asyncio.Queue[int] = asyncio.Queue()
        self.tallies: dict[int, Tally] = {}
        self.seq = 0
        self.answered: dict[int, float] = {}  # seq -> ms until node A accepted it
        self.busy = 0
        self.workers: list[asyncio.Task[None]] = []

    async def open(self) -> None:
        for _ in range(self.in_flight):
            reader, writer = await asyncio.open_connection(hub.HOST, self.port)
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.workers.append(asyncio.create_task(self.worker(reader, writer)))

    async def worker(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            step = await self.due.get()
            tally = self.tallies[step]
            self.seq += 1
            seq = self.seq
            self.busy += 1
            t0 = time.monotonic()
            data = {"s": seq, "k": step, "t": t0}
            body = json.dumps({"channel": CHANNEL, "data": data}).encode()
            writer.write(
                (
                    f"POST /api/publish HTTP/1.1\r\nHost: {hub.HOST}\r\n"
                    f"Authorization: apikey {hub.API_KEY}\r\nContent-Type: application/json"
                    f"\r\nContent-Length: {len(body)}\r\n\r\n"
                ).encode()
                + body
            )
            tally.sent += 1
            status, answer = await read_response(reader)
            waited = (time.monotonic() - t0) * 1000
            tally.answer_ms.append(waited)
            self.busy -= 1
            code = answer.get("error", {}).get("code") if isinstance(answer, dict) else None
            if status == 200 and code is None:
                tally.accepted += 1
                self.answered[seq] = round(waited, 2)
            elif code == REFUSED:
                tally.refused += 1
            else:
                key = f"{status}/{code}"
                tally.errors[key] = tally.errors.get(key, 0) + 1

    async def step(self, number: int, rate: float, seconds: float) -> Tally:
        """Offer ``rate`` publications/s for ``seconds``; returns the step's tally so far."""
        tally = self.tallies[number] = Tally(rate)
        total = max(1, round(rate * seconds))
        tally.start = start = time.monotonic()
        issued = 0
        while issued < total:
            due = min(total, int((time.monotonic() - start) * rate) + 1)
            for _ in range(due - issued):
                self.due.put_nowait(number)
            issued = due
            await asyncio.sleep(min(0.002, 0.5 / rate))
        await asyncio.sleep(max(0.0, start + seconds - time.monotonic()))
        tally.end = time.monotonic()
        tally.offered = total
        while not self.due.empty():  # still waiting for a connection: held back
            self.due.get_nowait()
            tally.skipped += 1
        return tally

    async def settle(self, timeout: float) -> None:
        """Wait (at most ``timeout``) for the answers still outstanding."""
        deadline = time.monotonic() + timeout
        while self.busy and time.monotonic() < deadline:
            await asyncio.sleep(0.01)


async def read_response(reader: asyncio.StreamReader) -> tuple[int, Any]:
    status_line = await reader.readline()
    length = 0
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        if name.lower() == "content-length":
            length = int(value)
    body = await reader.readexactly(length)
    try:
        status = int(status_line.split()[1])
        return status, json.loads(body) if body else {}
    except (IndexError, ValueError):
        return 0, {}


async def publisher_client(args: argparse.Namespace) -> None:
    """The publisher on node A: ``STEP N RATE SECONDS`` -> STEPDONE; ``END`` -> RESULT."""
    commands = command_lines(asyncio.get_running_loop())
    publisher = Publisher(args.port, args.in_flight)
    await publisher.open()
    hub.say("READY")
    while (line := await commands.get()).startswith("STEP "):
        _, number, rate, seconds = line.split()
        tally = await publisher.step(int(number), float(rate), float(seconds))
        hub.say(f"STEPDONE {number} {json.dumps(tally.summary())}")
    await publisher.settle(args.settle)
    tallies = {n: t.summary() for n, t in publisher.tallies.items()}
    answered = publisher.answered
    hub.say(
        "RESULT "
        + json.dumps({"steps": tallies, "outstanding": publisher.busy, "answered": answered})
    )


# ---------------------------------------------------------------------- the coordinator


def free_redis_port() -> int:
    for port in REDIS_PORTS:
        with socket.socket() as sock:
            try:
                sock.bind((hub.HOST, port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {REDIS_PORTS}")


def hub_settings(settings: Settings) -> "hub.Settings":
    return hub.Settings(pin=settings.pin)


def has_backpressure() -> bool:
    """Whether this pulsewire's ``serve`` takes ``--overload-lag`` (branch ``bp``)."""
    answer = subprocess.run(
        [*hub.pulsewire_command(), "serve", "--help"], capture_output=True, text=True, timeout=60
    )
    return "--overload-lag" in answer.stdout


def start_pair(
    settings: Settings, directory: Path, run: str, url: str
) -> tuple[list[hub.Proc], int, int]:
    """Nodes A and B of one run on Redis ``url``: their processes and ports."""
    if run == "python-socketio":
        command = hub_peers.peer_command("python-socketio", hub_peers.Settings(pin=settings.pin))
        if isinstance(command, str):
            raise RuntimeError(command)
        command = [*command, "--redis-url", url]
        peer = hub_peers.Settings(pin=settings.pin)
        node_a, port_a = hub_peers.start_peer(directory, "sio-a", command, peer)
        try:
            node_b, port_b = hub_peers.start_peer(directory, "sio-b", command, peer)
        except BaseException:
            hub.stop(node_a)
            raise
        return [node_a, node_b], port_a, port_b
    extra: tuple[str, ...] = ()
    if run == "pulsewire-on":
        extra = ("--overload-lag", str(settings.overload_lag))
        extra += ("--overload-wait", str(settings.overload_wait))
    elif has_backpressure():
        extra = ("--overload-lag", "0")
    prefix = f"xnode-{uuid.uuid4().hex[:8]}"
    node_a, port_a = hub.start_node(
        directory, f"{run}-a", url, prefix, hub_settings(settings), extra
    )
    try:
        node_b, port_b = hub.start_node(
            directory, f"{run}-b", url, prefix, hub_settings(settings), extra
        )
    except BaseException:
        hub.stop(node_a)
        raise
    return [node_a, node_b], port_a, port_b


def spawn(mode: str, args: list[str], settings: Settings, log: Path) -> hub.Proc:
    return hub.spawn_client(mode, args, hub_settings(settings), log, script=Path(__file__))


def measure(
    settings: Settings, run: str = "pulsewire-off", directory: Path | None = None
) -> dict[str, Any]:
    """One run of ``RUNS`` (a hub and whether backpressure is on) through every step."""
    if run == "pulsewire-on" and not has_backpressure():
        return {"status": "missing", "reason": "this pulsewire has no --overload-lag"}
    with contextlib.ExitStack() as stack:
        if directory is None:
            directory = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="pw-bp-")))
        procs: list[hub.Proc] = stack.enter_context(hub.stopping([]))
        redis, url = hub.start_redis(directory, hub_settings(settings), free_redis_port())
        procs.append(redis)
        nodes, port_a, port_b = start_pair(settings, directory, run, url)
        procs += nodes
        protocol = "socketio" if run == "python-socketio" else "pulsewire"
        shares = hub.client_shares(settings.subscribers, settings.client_procs)
        samples = sample_split(settings)
        subscribers = [
            spawn(
                "subscribers",
                [
                    f"--protocol={protocol}",
                    f"--port={port_b}",
                    f"--count={count}",
                    f"--sampled={samples[i]}",
                    f"--addresses={','.join(addresses)}",
                    f"--token={hub.make_token(f'sub-{i}')}",
                ],
                settings,
                directory / f"{run}-sub-{i}.log",
            )
            for i, (count, addresses) in enumerate(shares)
        ]
        procs += subscribers
        publisher = spawn(
            "publisher",
            [
                f"--port={port_a}",
                f"--in-flight={settings.in_flight}",
                f"--settle={settings.overload_wait + 5}",
                "--token=-",
                "--addresses=-",
            ],
            settings,
            directory / f"{run}-pub.log",
        )
        procs.append(publisher)
        clients = [*subscribers, publisher]
        lines = hub.LineReader(clients)
        for i in range(len(clients)):
            lines.take(i, "READY", settings.timeout)
        pids = {
            "redis": [redis.pid],
            "node_a": [nodes[0].pid],
            "node_b": [nodes[1].pid],
            "driver": [c.pid for c in clients],
        }
        load_before = hub.loadavg()
        window = hub.CpuWindow(pids, nodes[1].pid)
        watches: dict[str, Poller] = {}
        if run.startswith("pulsewire"):
            watches["gate"] = MetricWatch(port_a, OVERLOADED_NODES)
            watches["b_lag"] = MetricWatch(port_b, REPORTED_LAG)
        unread = BacklogWatch(port_b)
        try:
            progress = drive(settings, clients, lines, pids, port_b, unread)
        finally:
            for poller in (unread, *watches.values()):
                poller.stop()
        cpu = window.stop()
        for key, poller in watches.items():
            progress[key] = poller.samples
        result = collect(settings, clients, lines, progress)
    result.update({"loadavg_before": load_before, "loadavg_after": hub.loadavg(), **cpu})
    result["node_b_wait_percent"] = result.pop("server_wait_percent")
    return result


class Poller:
    """Calls ``sample()`` every ``period`` seconds in a thread and keeps what it returns
    (``None``: nothing this time) as ``(time.monotonic(), value)``."""

    def __init__(self, period: float = 0.25) -> None:
        self.period = period
        self.samples: list[tuple[float, float]] = []
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def sample(self) -> float | None:
        raise NotImplementedError

    def _run(self) -> None:
        while not self._done.wait(self.period):
            value = self.sample()
            if value is not None:
                self.samples.append((time.monotonic(), value))

    def stop(self) -> None:
        self._done.set()
        self._thread.join(5)


class MetricWatch(Poller):
    """Polls a node's ``/metrics`` for gauges: each sample is the largest of ``names``.
    On node A, ``pulsewire_overloaded_nodes``: how many overloaded nodes A knows of (node A
    only forwards publications, so it answers in time while node B is behind). On node B,
    its delivery and loop lag: what it reports to the others, which the gate follows."""

    def __init__(self, port: int, names: tuple[str, ...], period: float = 0.25) -> None:
        self.url = f"http://{hub.HOST}:{port}/metrics"
        alternatives = "|".join(re.escape(name) for name in names)
        self.metric = re.compile(rf"^(?:{alternatives})(?:\{{[^}}]*\}})? (\S+)$", re.MULTILINE)
        super().__init__(period)

    def sample(self) -> float | None:
        with contextlib.suppress(OSError, ValueError):
            with urllib.request.urlopen(self.url, timeout=2) as answer:
                values = [float(v) for v in self.metric.findall(answer.read().decode())]
            if values:
                return max(values)
        return None


OVERLOADED_NODES = ("pulsewire_overloaded_nodes",)
REPORTED_LAG = ("pulsewire_delivery_lag_seconds", "pulsewire_loop_lag_seconds")


def worst_ms(samples: list[tuple[float, float]], start: float, end: float) -> float | None:
    """The largest of ``samples`` (seconds) in [start, end), in ms."""
    inside = [value for t, value in samples if start <= t < end]
    return round(max(inside) * 1000, 1) if inside else None


class BacklogWatch(Poller):
    """Polls the bytes node B (``port``) sent that the driver has not read yet."""

    def __init__(self, port: int, period: float = 0.25) -> None:
        self.port = port
        super().__init__(period)

    def sample(self) -> float | None:
        return receive_backlog(self.port)


def backlog_figures(samples: list[tuple[float, float]], start: float, end: float) -> dict[str, Any]:
    """The driver's unread bytes over [start, end): median and max (KiB) of the samples."""
    inside = sorted(value for t, value in samples if start <= t < end)
    if not inside:
        return {"driver_unread_median_kib": None, "driver_unread_max_kib": None}
    return {
        "driver_unread_median_kib": round(inside[len(inside) // 2] / 1024),
        "driver_unread_max_kib": round(inside[-1] / 1024),
    }


def gate_percent(samples: list[tuple[float, float]], start: float, end: float) -> float | None:
    """The share of ``samples`` in [start, end) in which node A knew of an overloaded node."""
    inside = [value for t, value in samples if start <= t < end]
    return round(100 * sum(v > 0 for v in inside) / len(inside)) if inside else None


def tell(proc: hub.Proc, line: str) -> None:
    assert proc.popen.stdin is not None
    proc.popen.stdin.write(line + "\n")
    proc.popen.stdin.flush()


def status(
    subscribers: list[hub.Proc], lines: hub.LineReader
) -> list[tuple[int, float, int, int, float]]:
    """Per subscriber process: publications complete at its sampled subscribers, the newest
    one's latency, connections closed, publications its draining subscribers got in all,
    and its worst event loop lag (ms) since the previous STATUS."""
    for proc in subscribers:
        tell(proc, "STATUS")
    out = []
    for i in range(len(subscribers)):
        _, complete, newest, closed, frames, lag = lines.take(i, "STATUS", 60).split()
        out.append((int(complete), float(newest), int(closed), int(frames), float(lag)))
    return out


def waited(procs: list[hub.Proc]) -> float:
    """Seconds the processes' main threads were runnable but had no CPU, in all."""
    return sum(hub.wait_seconds(proc.pid) for proc in procs)


def cpu(pids: dict[str, list[int]]) -> dict[str, float]:
    return {name: sum(hub.cpu_seconds(p) for p in group) for name, group in pids.items()}


def receive_backlog(port: int) -> int:
    """Bytes waiting in the receive queues of the TCP sockets connected to ``port`` on this
    machine (/proc/net/tcp): what node B sent that the driver has not read yet."""
    total = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as f:
            next(f)
            for line in f:
                fields = line.split()
                if int(fields[2].rsplit(":", 1)[1], 16) == port:
                    total += int(fields[4].split(":")[1], 16)
    return total


def drive(
    settings: Settings,
    clients: list[hub.Proc],
    lines: hub.LineReader,
    pids: dict[str, list[int]],
    port_b: int,
    unread: Poller,
) -> dict[str, Any]:
    """Step the offered rate up, then drain; returns what the steps saw as they ran: each
    process group's CPU use during the step (% of one core); how much node B had sent that
    the driver had not read yet, at the step's end and over it (``unread``'s samples); and
    the driver's event loop lag (its worst over the step). The driver was *behind* (the
    step's latencies are the driver's as much as the hub's) when the median unread bytes over
    the step were past ``DRIVER_BEHIND`` or its loop was ``DRIVER_LAG_MS`` late."""
    subscribers, publisher = clients[:-1], clients[-1]
    pub = len(clients) - 1
    seen: dict[int, dict[str, Any]] = {}
    stopped = None
    for number, rate in enumerate(settings.rates, 1):
        cpu0, t0, wait0 = cpu(pids), time.monotonic(), waited(subscribers)
        tell(publisher, f"STEP {number} {rate} {settings.step_seconds}")
        lines.take(pub, f"STEPDONE {number} ", settings.step_seconds + 60)
        cpu1, t1, wait1 = cpu(pids), time.monotonic(), waited(subscribers)
        wall = t1 - t0
        backlog = receive_backlog(port_b)
        now = status(subscribers, lines)
        newest, lag = max(s[1] for s in now), max(s[4] for s in now)
        step = seen[number] = {
            f"{k}_cpu_percent": round(100 * (cpu1[k] - cpu0[k]) / wall) for k in pids
        }
        step["driver_backlog_kib"] = round(backlog / 1024)
        step.update(backlog_figures(unread.samples, t0, t1))
        step["driver_loop_lag_ms"] = round(lag, 1)
        # runnable but without a CPU (other processes had core 1), % of the step per process
        step["driver_cpu_wait_percent"] = round(100 * (wait1 - wait0) / wall / len(subscribers))
        median = step["driver_unread_median_kib"]
        step["driver_behind"] = lag >= DRIVER_LAG_MS or (
            median is not None and median * 1024 > DRIVER_BEHIND
        )
        if newest > settings.give_up_ms and number < len(settings.rates):
            stopped = f"the newest delivery was {newest:,.0f} ms late after {rate:g}/s"
            break
    tell(publisher, "END")
    sent = json.loads(lines.take(pub, "RESULT", settings.overload_wait + 60).split(" ", 1)[1])
    accepted = sum(t["accepted"] for t in sent["steps"].values())
    draining = settings.subscribers - sum(sample_split(settings))
    drain_started = time.monotonic()
    deadline = drain_started + settings.drain_seconds
    while True:
        now = status(subscribers, lines)
        complete = min(s[0] for s in now)
        frames = sum(s[3] for s in now)
        if complete >= accepted and frames >= accepted * draining:
            break
        if time.monotonic() > deadline:
            break
        time.sleep(0.2)
    return {
        "publisher": sent,
        "stopped": stopped,
        "progress": seen,
        "drain_seconds": round(time.monotonic() - drain_started, 2),
    }


def collect(
    settings: Settings, clients: list[hub.Proc], lines: hub.LineReader, progress: dict[str, Any]
) -> dict[str, Any]:
    """The per-step table from the publisher's tallies and the subscribers' receipts."""
    subscribers = clients[:-1]
    for proc in subscribers:
        tell(proc, "END")
    parts = [
        json.loads(lines.take(i, "RESULT", 60).split(" ", 1)[1]) for i in range(len(subscribers))
    ]
    # a publication is delivered once every process's sampled subscribers all have it:
    # last = max of lasts
    shares = sample_split(settings)
    answered = progress["publisher"]["answered"]  # seq -> ms node A took to accept it
    done: dict[int, list[float]] = {}  # step -> latencies (ms)
    after: dict[int, list[float]] = {}  # step -> latencies from node A's acceptance (ms)
    for seq in parts[0]["records"]:
        records = [p["records"].get(seq) for p in parts]
        if all(r is not None and r[4] == share for r, share in zip(records, shares, strict=True)):
            step, t0 = records[0][0], records[0][1]
            latency = (max(r[3] for r in records) - t0) * 1000
            done.setdefault(int(step), []).append(latency)
            if seq in answered:
                after.setdefault(int(step), []).append(max(0.0, latency - answered[seq]))
    bins: dict[int, int] = {}
    for part in parts:
        for slot, count in part["bins"].items():
            bins[int(slot)] = bins.get(int(slot), 0) + count
    steps = []
    for key, tally in sorted(progress["publisher"]["steps"].items(), key=lambda kv: int(kv[0])):
        number, seconds = int(key), tally["end"] - tally["start"]
        first, last = (int(tally[k] * BINS_PER_SECOND) for k in ("start", "end"))
        arrived = sum(bins.get(slot, 0) for slot in range(first, last))
        latencies = done.get(number, [])
        steps.append(
            {
                "step": number,
                "offered_per_second": tally["rate"],
                "accepted_per_second": round(tally["accepted"] / settings.step_seconds, 1),
                "delivered_per_second": round(arrived / settings.subscribers / seconds, 1),
                "deliveries_per_second": round(arrived / seconds),
                "latency_ms": hub.summary(latencies),
                # from the answer to the publish on: without the time node A held it back
                "after_accept_ms": hub.summary(after.get(number, [])),
                "undelivered": tally["accepted"] - len(latencies),
                **{k: tally[k] for k in ("offered", "sent", "accepted", "refused", "skipped")},
                "errors": tally["errors"],
                "answer_ms": tally["answer_ms"],
                **progress["progress"].get(number, {}),
                "a_saw_overload_percent": gate_percent(
                    progress.get("gate", []), tally["start"], tally["end"]
                ),
                # the largest lag node B reported (delivery or loop), which the gate follows
                "b_reported_lag_ms": worst_ms(
                    progress.get("b_lag", []), tally["start"], tally["end"]
                ),
            }
        )
    result = {
        "status": "ok",
        "steps": steps,
        "stopped": progress["stopped"],
        "drain_seconds": progress["drain_seconds"],
        "connections_lost": sum(p["closed"] for p in parts),
        "sampled_subscribers": sum(shares),
        **drained_check(progress["publisher"]["steps"], parts),
        **sustainable(settings, steps),
    }
    return result


def drained_check(tallies: dict[str, Any], parts: list[dict[str, Any]]) -> dict[str, Any]:
    """The draining subscribers against the publications accepted: each should have got
    every one of them (it counts frames, so it cannot say which ones it missed)."""
    accepted = sum(t["accepted"] for t in tallies.values())
    counts = [c for part in parts for c in part["drained"]]
    return {
        "draining_subscribers": len(counts),
        "drained_missing": sum(max(0, accepted - c) for c in counts),
        "drained_extra": sum(max(0, c - accepted) for c in counts),
        "drained_fewest": min(counts, default=None),
    }


def sustainable(settings: Settings, steps: list[dict[str, Any]]) -> dict[str, Any]:
    """The highest step kept up with (all accepted and delivered, p99 under the bound), and
    the highest delivered rate of any step (saturation)."""
    best: dict[str, Any] | None = None
    for step in steps:
        kept_up = (
            step["accepted"] >= step["offered"]
            and step["undelivered"] == 0
            and step["latency_ms"].get("p99", float("inf")) <= settings.p99_bound_ms
        )
        if kept_up:
            best = step
    peak = max(steps, key=lambda s: s["delivered_per_second"]) if steps else None
    return {
        "sustainable_per_second": best["offered_per_second"] if best else 0,
        "sustainable_p99_ms": best["latency_ms"]["p99"] if best else None,
        "saturation_delivered_per_second": peak["delivered_per_second"] if peak else 0,
        "saturation_step": peak["step"] if peak else None,
    }


def run(settings: Settings) -> dict[str, Any]:
    """Every run of ``settings.runs`` in turn; returns the results (nothing is written)."""
    started = time.time()
    runs: dict[str, dict[str, Any]] = {}
    for name in settings.runs:
        try:
            runs[name] = measure(settings, name)
        except RuntimeError as exc:
            if name != "python-socketio" or "not installed" not in str(exc):
                raise
            runs[name] = {"status": "missing", "reason": str(exc)}
    results: dict[str, Any] = {
        "benchmark": "backpressure",
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "seconds": round(time.time() - started, 1),
        "settings": asdict(settings),
        "machine": hub.machine(),
        "versions": hub_peers.versions(),
        "runs": runs,
    }
    busy = [n for n, r in runs.items() if r.get("other_cpu_percent", 0) > hub.BUSY_PERCENT]
    if busy:
        results["warnings"] = [
            f"the machine was busy with other work during {', '.join(busy)} "
            f"(other_cpu_percent > {hub.BUSY_PERCENT}): those numbers are pessimistic"
        ]
    return results


def unread(step: dict[str, Any]) -> str:
    """The driver's unread KiB: at the step's end, median / max over it."""
    end = step.get("driver_backlog_kib", "-")
    if step.get("driver_unread_max_kib") is None:
        return f"{end} KiB"
    return f"{end} KiB, {step['driver_unread_median_kib']} / {step['driver_unread_max_kib']} KiB"


def lag(step: dict[str, Any]) -> str:
    """The driver's worst loop lag, and the share of the step it waited for a CPU."""
    value, wait = step.get("driver_loop_lag_ms"), step.get("driver_cpu_wait_percent")
    text = "-" if value is None else milliseconds(value)
    return text if wait is None else f"{text}, {wait} %"


def reported(value: float | None) -> str:
    return "-" if value is None else milliseconds(value)


def percent(value: float | None) -> str:
    return "-" if value is None else f"{value:g} %"


def milliseconds(value: float) -> str:
    return f"{value:,.1f} ms" if value < 100 else f"{value:,.0f} ms"


def markdown(results: dict[str, Any]) -> str:
    """One table per run: the steps side by side."""
    out = []
    labels = {
        "pulsewire-off": "pulsewire, backpressure off",
        "pulsewire-on": "pulsewire, backpressure on",
        "python-socketio": "python-socketio, AsyncRedisManager",
    }
    bound = results["settings"]["p99_bound_ms"]
    for name, r in results["runs"].items():
        out.append(f"**{labels.get(name, name)}**")
        out.append("")
        if r.get("status") != "ok":
            out += [f"not run: {r.get('reason')}", ""]
            continue
        out += [
            "| offered/s | accepted/s | refused | skipped | delivered/s | p50 | p99 | max "
            "| p99 after accepted | undelivered | CPU: node B, driver "
            "| driver unread: end, median / max | driver loop lag, CPU wait | A saw B overloaded "
            "| B reported lag |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for s in r["steps"]:
            lat = s["latency_ms"]
            ms = [milliseconds(lat[k]) if k in lat else "-" for k in ("p50", "p99", "max")]
            after = s["after_accept_ms"]
            ms.append(milliseconds(after["p99"]) if "p99" in after else "-")
            out.append(
                f"| {s['offered_per_second']:g} | {s['accepted_per_second']:g} | {s['refused']} "
                f"| {s['skipped']} | {s['delivered_per_second']:g} | {' | '.join(ms)} "
                f"| {s['undelivered']} | {s.get('node_b_cpu_percent', '-')} %, "
                f"{s.get('driver_cpu_percent', '-')} % | {unread(s)} "
                f"| {lag(s)}{' (behind)' if s.get('driver_behind') else ''} "
                f"| {percent(s.get('a_saw_overload_percent'))} "
                f"| {reported(s.get('b_reported_lag_ms'))} |"
            )
        out.append("")
        p99 = r["sustainable_p99_ms"]
        out.append(
            f"Sustainable (everything accepted and delivered, p99 ≤ {bound:g} ms): "
            f"{r['sustainable_per_second']:g}/s"
            + (f", p99 {milliseconds(p99)}." if p99 is not None else ".")
            + (f" Stopped early: {r['stopped']}." if r.get("stopped") else "")
            + f" Other CPU {r['other_cpu_percent']} %, load {r['loadavg_before']}."
        )
        if "draining_subscribers" in r:
            out.append(
                f"\nThe other {r['draining_subscribers']:,} subscribers only counted frames: "
                + (
                    "each got every accepted publication."
                    if r["drained_missing"] == 0 and r["drained_extra"] == 0
                    else f"{r['drained_missing']:,} deliveries missing, {r['drained_extra']:,} "
                    f"extra (the fewest one got: {r['drained_fewest']})."
                )
            )
        out.append(
            "\nDriver unread: what node B had sent that the driver had not read yet (its "
            "receive queues, /proc/net/tcp) at the step's end, and the median / max of "
            "samples every 0.25 s over the step (node B writes its backlog in bursts: a "
            "large max with a small median is a burst read in time). Driver loop lag: how "
            "late the subscriber processes' event loops ran a 20 ms timer, at worst, over the "
            "step: the most the driver added to a latency; CPU wait: the share of the step "
            "its subscriber processes were runnable but had no CPU (other processes had "
            "core 1; /proc/PID/schedstat)."
            + (
                f" (behind): the median unread was over {DRIVER_BEHIND >> 20} MiB or the loop "
                f"lag {DRIVER_LAG_MS:g} ms or more; that step's latencies include the driver's "
                "own delay (an upper bound for the hub's)."
                if any(s.get("driver_behind") for s in r["steps"])
                else f" The driver was never behind (median unread over "
                f"{DRIVER_BEHIND >> 20} MiB or loop lag {DRIVER_LAG_MS:g} ms or more)."
            )
        )
        out.append(
            f"\np50 / p99 / max: from the publisher's send until the last of "
            f"{r.get('sampled_subscribers', '?')} sampled subscribers had it, "
            "the time node A held the publish back included; after accepted: from node A's "
            "answer on."
        )
        if any(s.get("a_saw_overload_percent") is not None for s in r["steps"]):
            out.append(
                "\nA saw B overloaded: the share of the step in which node A's "
                "`pulsewire_overloaded_nodes` gauge (polled every 0.25 s) was above 0, i.e. A had "
                "an overloaded node in its load table (publishes to what that node is behind on "
                "wait while it stays there, at most overload_wait, then are refused). B "
                "reported lag: the largest of node B's `pulsewire_delivery_lag_seconds` and "
                "`pulsewire_loop_lag_seconds` over the step (polled every 0.25 s): what B "
                "tells the other nodes, which the gate follows (with backpressure off B does "
                "not measure it: 0)."
            )
        out.append("")
    return "\n".join(out)


# ------------------------------------------------------------------------------ main


def client_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="backpressure.py --client MODE")
    parser.add_argument("--client", choices=["subscribers", "publisher"], required=True)
    parser.add_argument("--protocol", choices=["pulsewire", "socketio"], default="pulsewire")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--count", type=int)
    parser.add_argument("--sampled", type=int, default=0)
    parser.add_argument("--in-flight", type=int)
    parser.add_argument("--settle", type=float, default=7.0)
    parser.add_argument("--token", required=True)
    parser.add_argument("--addresses", required=True)
    args = parser.parse_args(argv)
    hub.run_loop((subscribers_client if args.client == "subscribers" else publisher_client)(args))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if any(a == "--client" or a.startswith("--client=") for a in argv):
        return client_main(argv)
    d = Settings()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--smoke", action="store_true", help="40 subscribers, 2 short steps")
    parser.add_argument("--subscribers", type=int, default=d.subscribers)
    parser.add_argument(
        "--sampled", type=int, default=d.sampled, help="subscribers that decode (the rest drain)"
    )
    parser.add_argument("--client-procs", type=int, default=d.client_procs)
    parser.add_argument("--rates", default=",".join(f"{r:g}" for r in d.rates))
    parser.add_argument("--step-seconds", type=float, default=d.step_seconds)
    parser.add_argument("--in-flight", type=int, default=d.in_flight)
    parser.add_argument("--p99-bound-ms", type=float, default=d.p99_bound_ms)
    parser.add_argument("--give-up-ms", type=float, default=d.give_up_ms)
    parser.add_argument("--drain-seconds", type=float, default=d.drain_seconds)
    parser.add_argument("--overload-lag", type=float, default=d.overload_lag)
    parser.add_argument("--overload-wait", type=float, default=d.overload_wait)
    parser.add_argument("--only", choices=RUNS, action="append", help="these runs only")
    parser.add_argument("--no-pin", action="store_true", help="do not pin with taskset")
    parser.add_argument("--out", type=Path, help="results file (default: benchmarks/results/)")
    args = parser.parse_args(argv)
    if args.smoke:
        settings = SMOKE
    else:
        settings = Settings(
            subscribers=args.subscribers,
            sampled=args.sampled,
            client_procs=args.client_procs,
            rates=tuple(float(r) for r in args.rates.split(",")),
            step_seconds=args.step_seconds,
            in_flight=args.in_flight,
            p99_bound_ms=args.p99_bound_ms,
            give_up_ms=args.give_up_ms,
            drain_seconds=args.drain_seconds,
            overload_lag=args.overload_lag,
            overload_wait=args.overload_wait,
        )
    settings = Settings(
        **{**asdict(settings), "pin": not args.no_pin, "runs": tuple(args.only or RUNS)}
    )
    results = run(settings)
    results["command"] = "benchmarks/backpressure.py " + " ".join(argv)
    name = "backpressure_smoke.json" if args.smoke else "backpressure.json"
    out = args.out or hub.RESULTS / name
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(markdown(results))
    print(f"written to {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
