#!/usr/bin/env python3
"""Hub benchmarks: fan-out of one publication on one node, and cross-node throughput on Redis.

**Fan-out.** One ``pulsewire serve`` (memory engine, pinned to core 0 with ``taskset``) and
10,000 WebSocket subscribers that completed ``connect`` + ``subscribe`` (one ``connect`` with
``subs``), held by 4 client processes pinned to core 1. Each round publishes one publication
through the HTTP API with its send time in the data; every subscriber records when it got it.
Per round: the time until the first and until the last subscriber had it (and the median
subscriber); over 20 rounds (after one warm-up round): p50 and p99 of those.

**Cross-node throughput.** Nodes A and B (pinned to core 0 with their own ``redis-server``,
unless ``--redis-url`` names one), N publisher connections on A each keeping ``--window``
``publish`` commands in flight on its own channel, one subscriber per channel on B:
publications per second delivered end to end on B over ``--duration`` seconds (after
``--warmup``), with the end-to-end latency, for a channel without history and one with.
(A client may only publish to a channel it is subscribed to, so A also delivers each
publication once, to its publisher.)

The load generator is Python (the C load generator does not speak the hub protocol): a
minimal WebSocket client on raw asyncio protocols over uvloop, masking its frames.
Connections come from many loopback source addresses (127.0.x.y): ``pulsewire serve``
admits at most 1,000 connections and 200 at once (then 50/s) per client address.

Honesty: every result records the 1-minute load average before and after, each process's
CPU use over the measured window (from /proc), the time the server was runnable but waiting
for a CPU (``server_wait_percent``, from /proc/PID/schedstat), and ``other_cpu_percent``:
CPU used by everything else on the machine meanwhile. Busy-machine numbers are flagged.

    .venv/bin/python benchmarks/fanout_hub.py            # ~1-2 minutes
    .venv/bin/python benchmarks/fanout_hub.py --smoke    # 100 subscribers, 2 rounds, 1 s

Prints the results as JSON and writes ``benchmarks/results/hub_fanout.json`` (the smoke run:
``hub_fanout_smoke.json``), which benchmarks/hub_report.py puts in docs/benchmarks-hub.md.
``run_smoke() -> dict`` runs the smoke configuration for tests (this file has no
``from __future__ import annotations``, so that it can be loaded with
``importlib.util.spec_from_file_location`` without being put in ``sys.modules``).
"""

import argparse
import asyncio
import base64
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Collection, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"
HOST = "127.0.0.1"
SERVER_CORE, CLIENT_CORE = 0, 1
SECRET = "bench-secret-0123456789abcdef0123456789"
API_KEY = "bench-api-key"
PER_IP = 100  # connections per loopback source address (the server admits 200 at once)
BUSY_PERCENT = 25.0  # other_cpu_percent above this: the numbers are flagged as disturbed
IDLE_SETTLE = 1.0  # seconds before reading the server's resident memory
WS_PATH = "/connection/websocket"
LISTENING = re.compile(r"listening on http://127\.0\.0\.1:(\d+)/")


@dataclass(frozen=True)
class Settings:
    subscribers: int = 10_000
    client_procs: int = 4
    rounds: int = 20
    warmup_rounds: int = 1
    round_pause: float = 0.2
    publishers: int = 8
    window: int = 32
    duration: float = 5.0
    warmup: float = 1.0
    pin: bool = True
    redis_url: str | None = None
    smoke: bool = False
    # the command that runs ``pulsewire`` (``serve ...`` is appended); default: this venv's
    server_command: tuple[str, ...] = ()


SMOKE = Settings(subscribers=100, rounds=2, duration=1.0, warmup=0.3, publishers=4, smoke=True)


# ------------------------------------------------------------------------------ /proc


def loadavg() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (its threads included)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_seconds(pid: int) -> float:
    """Time the process's main thread spent runnable but waiting for a CPU."""
    try:
        return int(Path(f"/proc/{pid}/schedstat").read_text().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return float("nan")


def rss_bytes(pid: int) -> int:
    """Resident memory of a process (VmRSS), 0 if it cannot be read."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


def machine_cpu_seconds() -> float:
    """CPU time used by all processes (user, nice, system, steal) since boot."""
    first = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    values = [int(x) for x in first]
    return (values[0] + values[1] + values[2] + values[7]) / os.sysconf("SC_CLK_TCK")


class CpuWindow:
    """CPU use of named processes, of the machine, and wall time between start and stop."""

    def __init__(self, pids: dict[str, list[int]], server: int) -> None:
        self.pids = pids
        self.server = server
        self.start()

    def _sample(self) -> tuple[float, dict[str, float], float, float]:
        per = {name: sum(cpu_seconds(p) for p in pids) for name, pids in self.pids.items()}
        own = cpu_seconds(os.getpid())
        return time.monotonic(), per, machine_cpu_seconds() - own, wait_seconds(self.server)

    def start(self) -> None:
        self._t0, self._per0, self._machine0, self._wait0 = self._sample()

    def stop(self) -> dict[str, Any]:
        t1, per1, machine1, wait1 = self._sample()
        wall = t1 - self._t0
        out: dict[str, Any] = {"window_seconds": round(wall, 3)}
        ours = 0.0
        for name, value in per1.items():
            used = value - self._per0[name]
            ours += used
            out[f"{name}_cpu_percent"] = round(100 * used / wall, 1)
        other = (machine1 - self._machine0) - ours
        out["other_cpu_percent"] = round(max(0.0, 100 * other / wall), 1)
        out["server_wait_percent"] = round(100 * (wait1 - self._wait0) / wall, 1)
        return out


# ----------------------------------------------------------------------------- processes


def pinned(command: list[str], core: int, settings: Settings) -> list[str]:
    if settings.pin and shutil.which("taskset") and len(os.sched_getaffinity(0)) >= 2:
        return ["taskset", "-c", str(core), *command]
    return command


def pulsewire_command() -> list[str]:
    script = Path(sys.executable).with_name("pulsewire")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from pulsewire.cli import main; sys.exit(main())"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def make_token(user: str) -> str:
    import jwt

    claims = {"sub": user, "exp": int(time.time()) + 3600}
    return str(jwt.encode(claims, SECRET, algorithm="HS256"))


def node_config(path: Path, *, name: str, engine: str, prefix: str) -> Path:
    path.write_text(
        f"""
[server]
host = "{HOST}"
drain_timeout = 1.0

[hub]
node_name = "{name}"
engine = "{engine}"
engine_prefix = "{prefix}"
token_hmac_secret = "{SECRET}"
api_key = "{API_KEY}"
connect_timeout = 60.0
client_messages_per_second = 1e9
client_messages_burst = 1e9
client_bytes_per_second = 1e12
client_bytes_burst = 1e12

[namespaces.fan]

[namespaces.plain]
allow_publish = true

[namespaces.hist]
allow_publish = true
history_size = 100
history_ttl = 60
"""
    )
    return path


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[Any]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-2000:]
        except OSError:
            return ""


def start_node(
    directory: Path,
    name: str,
    engine: str,
    prefix: str,
    settings: Settings,
    extra_args: tuple[str, ...] = (),
) -> tuple[Proc, int]:
    """A ``pulsewire serve`` node (``extra_args``: more ``serve`` flags) and its port."""
    config = node_config(directory / f"{name}.toml", name=name, engine=engine, prefix=prefix)
    out, log = directory / f"{name}.out", directory / f"{name}.log"
    with open(out, "wb") as stdout, open(log, "wb") as stderr:
        popen = subprocess.Popen(
            pinned(
                [
                    *(settings.server_command or pulsewire_command()),
                    *("serve", "--config", str(config), "--port", "0"),
                    *extra_args,
                ],
                SERVER_CORE,
                settings,
            ),
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
        )
    proc = Proc(name, popen, log)
    deadline = time.monotonic() + 60
    while True:
        match = LISTENING.search(out.read_text(errors="replace"))
        if match:
            return proc, int(match.group(1))
        if popen.poll() is not None or time.monotonic() > deadline:
            stop(proc)
            raise RuntimeError(f"{name} did not start:\n{proc.tail()}")
        time.sleep(0.02)


def start_redis(directory: Path, settings: Settings, port: int | None = None) -> tuple[Proc, str]:
    """A private ``redis-server`` (on ``port``, default any free one) and its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed: give --redis-url")
    port = port or free_port()
    log = directory / "redis.log"
    args = [binary, "--port", str(port), "--bind", HOST, "--save", "", "--appendonly", "no"]
    with open(log, "wb") as out:
        popen = subprocess.Popen(
            pinned([*args, "--dir", str(directory)], SERVER_CORE, settings),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    proc = Proc("redis", popen, log)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), 0.5) as sock:
            sock.sendall(b"PING\r\n")
            if sock.recv(16).startswith(b"+PONG"):
                return proc, f"redis://{HOST}:{port}/0"
        time.sleep(0.02)
    stop(proc)
    raise RuntimeError(f"redis-server did not start:\n{proc.tail()}")


def stop(proc: Proc, timeout: float = 5.0) -> None:
    popen = proc.popen
    if popen.poll() is None:
        popen.send_signal(signal.SIGTERM)
        try:
            popen.wait(timeout)
        except subprocess.TimeoutExpired:
            popen.kill()
            popen.wait(5)


@contextlib.contextmanager
def stopping(procs: list[Proc]) -> Iterator[list[Proc]]:
    try:
        yield procs
    finally:
        for proc in reversed(procs):
            stop(proc)


def spawn_client(
    mode: str, args: list[str], settings: Settings, log: Path, script: Path | None = None
) -> Proc:
    """A client process on the client core: ``script`` (default this file) ``--client MODE``."""
    command = [sys.executable, str((script or Path(__file__)).resolve()), "--client", mode, *args]
    with open(log, "wb") as stderr:
        popen = subprocess.Popen(
            pinned(command, CLIENT_CORE, settings),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            bufsize=1,
        )
    return Proc(f"client-{mode}", popen, log)


class LineReader:
    """Lines from several child processes' stdout, read by threads, awaited with timeouts."""

    def __init__(self, procs: list[Proc]) -> None:
        self.lines: dict[int, list[str]] = {i: [] for i in range(len(procs))}
        self._cond = threading.Condition()
        for i, proc in enumerate(procs):
            threading.Thread(target=self._pump, args=(i, proc), daemon=True).start()

    def _pump(self, index: int, proc: Proc) -> None:
        assert proc.popen.stdout is not None
        for line in proc.popen.stdout:
            with self._cond:
                self.lines[index].append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self.lines[index].append("EOF")
            self._cond.notify_all()

    def take(self, index: int, prefix: str, timeout: float) -> str:
        """The first line of process ``index`` starting with ``prefix`` (earlier ones dropped)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                lines = self.lines[index]
                while lines:
                    line = lines.pop(0)
                    if line.startswith(prefix):
                        return line
                    if line == "EOF":
                        raise RuntimeError(f"client {index} exited before {prefix!r}")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"client {index}: no {prefix!r} in {timeout} s")
                self._cond.wait(remaining)


def source_addresses(first: int, count: int) -> list[str]:
    """Loopback source addresses for ``count`` connections, PER_IP each."""
    needed = max(1, -(-count // PER_IP))
    return [f"127.{(first + i) // 250 + 1}.{(first + i) % 250 + 1}.1" for i in range(needed)]


def client_shares(total: int, procs: int) -> list[tuple[int, list[str]]]:
    """``total`` connections over at most ``procs`` client processes, as evenly as possible:
    per process its count and its own loopback source addresses."""
    procs = min(procs, total)
    shares: list[tuple[int, list[str]]] = []
    first_ip = 0
    for i in range(procs):
        count = total // procs + (i < total % procs)
        addresses = source_addresses(first_ip, count)
        first_ip += len(addresses)
        shares.append((count, addresses))
    return shares


def run_loop(coroutine: Any) -> None:
    """Run a client's main coroutine on uvloop where it is installed."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(coroutine)
    else:
        uvloop.run(coroutine)


# ----------------------------------------------------------------- the client protocol


def mask(payload: bytes) -> bytes:
    """A client text frame with a fresh masking key."""
    key = os.urandom(4)
    length = len(payload)
    if length < 126:
        head = bytes((0x81, 0x80 | length))
    elif length < 65536:
        head = bytes((0x81, 0xFE)) + length.to_bytes(2, "big")
    else:
        head = bytes((0x81, 0xFF)) + length.to_bytes(8, "big")
    repeated = (key * (length // 4 + 1))[:length]
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")).to_bytes(
        length, "big"
    )
    return head + key + masked


def control_frame(opcode: int, payload: bytes) -> bytes:
    key = os.urandom(4)
    masked = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return bytes((0x80 | opcode, 0x80 | len(payload))) + key + masked


def handshake(port: int) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET {WS_PATH} HTTP/1.1\r\nHost: {HOST}:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        "Sec-WebSocket-Protocol: pulsewire.v1.json\r\n\r\n"
    ).encode()


def frame_at(buf: bytes, pos: int, size: int) -> tuple[int, int] | None:
    """The header size and payload length of the server frame (unmasked) at ``pos`` in
    ``buf[:size]``, or None when the frame is not whole there yet."""
    if size - pos < 2:
        return None
    length = buf[pos + 1] & 0x7F
    head = 2
    if length == 126:
        if size - pos < 4:
            return None
        length, head = (buf[pos + 2] << 8) | buf[pos + 3], 4
    elif length == 127:
        if size - pos < 10:
            return None
        length, head = int.from_bytes(buf[pos + 2 : pos + 10], "big"), 10
    return None if size - pos < head + length else (head, length)


class HubConn(asyncio.Protocol):
    """A hub client: handshake, one connect command (with ``subs``), then text frames.

    A *draining* connection (``draining = True``), once ready, does not decode what it gets:
    it walks the frame headers of each read, counts the text frames in ``count`` and tells
    its owner how many arrived (``owner.drained(conn, frames, now)``); it still answers
    WebSocket pings, and text pings (``TEXT_PING``, e.g. Engine.IO's ``2``) with
    ``TEXT_PONG``, which are not counted."""

    TEXT_PING: bytes | None = None
    TEXT_PONG = b""

    def __init__(self, owner: Any, port: int, hello: bytes, tag: int = 0) -> None:
        self.owner = owner
        self.port = port
        self.hello = hello
        self.tag = tag
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.open = False
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.count = 0
        self.draining = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.transport.write(self.request())  # type: ignore[union-attr]

    def request(self) -> bytes:
        """The WebSocket upgrade request (subclasses speaking another protocol override it)."""
        return handshake(self.port)

    def text(self, payload: bytes, now: float) -> None:
        """A text frame: the reply to the connect command, then publications."""
        if self.ready.done():
            self.owner.message(self, payload, now)
        elif b'"error"' in payload:
            self.ready.set_exception(RuntimeError(payload.decode()))
        else:
            self.ready.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"connection lost: {exc}"))
        self.owner.lost(self)

    def send(self, payload: bytes) -> None:
        assert self.transport is not None
        self.transport.write(mask(payload))

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()
        if self.draining and self.ready.done():
            self.drain(data, now)
            return
        buf = self.buf + data if self.buf else data
        if not self.open:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                self.buf = buf
                return
            if not buf.startswith(b"HTTP/1.1 101"):
                self.ready.set_exception(ConnectionError(buf[:200].decode("latin-1")))
                assert self.transport is not None
                self.transport.close()
                return
            self.open = True
            buf = buf[end + 4 :]
            self.send(self.hello)
        pos, size = 0, len(buf)
        while (frame := frame_at(buf, pos, size)) is not None:
            head, length = frame
            opcode = buf[pos] & 0x0F
            payload = buf[pos + head : pos + head + length]
            pos += head + length
            if opcode == 1:
                self.text(payload, now)
            elif opcode == 9:
                assert self.transport is not None
                self.transport.write(control_frame(0xA, payload))
            elif opcode == 8:
                assert self.transport is not None
                self.transport.close()
                return
        self.buf = buf[pos:]

    def drain(self, data: bytes, now: float) -> None:
        """A draining connection's read: count the text frames, answer pings, decode nothing
        (server frames are not masked; one message per frame, no extensions negotiated)."""
        buf = self.buf + data if self.buf else data
        pos, size, frames = 0, len(buf), 0
        ping = self.TEXT_PING
        while (frame := frame_at(buf, pos, size)) is not None:
            head, length = frame
            end = pos + head + length
            opcode = buf[pos] & 0x0F
            if opcode == 1:
                if ping is not None and buf[pos + head : end] == ping:
                    self.send(self.TEXT_PONG)
                else:
                    frames += 1
            elif opcode == 9:
                assert self.transport is not None
                self.transport.write(control_frame(0xA, buf[pos + head : end]))
            elif opcode == 8:
                assert self.transport is not None
                self.transport.close()
                return
            pos = end
        self.buf = buf[pos:] if pos < size else b""
        if frames:
            self.count += frames
            self.owner.drained(self, frames, now)


async def open_conns(
    owner: Any,
    port: int,
    hellos: list[bytes],
    addresses: list[str],
    tags: list[int] | None = None,
    parallel: int = 100,
    conn_class: type[HubConn] = HubConn,
    draining: Collection[int] = (),
) -> list[HubConn]:
    """Open one connection per hello (``PER_IP`` per source address), ``parallel`` at once;
    returns them once every one is connected and subscribed (``conn_class``: the protocol;
    the connections of the hello indexes in ``draining`` only drain, see ``HubConn``)."""
    loop = asyncio.get_running_loop()
    limit = asyncio.Semaphore(parallel)
    conns: list[HubConn] = []

    def make(i: int, tag: int) -> HubConn:
        conn = conn_class(owner, port, hellos[i], tag)
        conn.draining = i in draining
        return conn

    async def one(i: int) -> None:
        async with limit:
            tag = tags[i] if tags else i
            _, conn = await loop.create_connection(
                lambda: make(i, tag),
                HOST,
                port,
                local_addr=(addresses[i // PER_IP], 0),
            )
            conns.append(conn)
            await asyncio.wait_for(conn.ready, 60)

    await asyncio.gather(*(one(i) for i in range(len(hellos))))
    return conns


def connect_command(token: str, channel: str) -> bytes:
    params = {"token": token, "subs": {channel: {}}}
    return json.dumps({"id": 1, "method": "connect", "params": params}).encode()


def watch_stdin(loop: asyncio.AbstractEventLoop, done: asyncio.Event) -> None:
    """Set ``done`` when the coordinator closes our stdin (or dies)."""

    def pump() -> None:
        sys.stdin.read()
        loop.call_soon_threadsafe(done.set)

    threading.Thread(target=pump, daemon=True).start()


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


# ------------------------------------------------------------------ fan-out client swarm


class FanoutSwarm:
    """Holds the subscribers of one process and reports each round once all have it."""

    def __init__(self, count: int, decode: Any = None) -> None:
        self.count = count
        # a publication's payload -> its data (``{"round", "t0"}``); default: a hub push
        self.decode = decode or (lambda payload: json.loads(payload)["data"])
        self.receipts: dict[int, list[float]] = {}
        self.sent_at: dict[int, float] = {}
        self.closed = 0

    def lost(self, conn: HubConn) -> None:
        self.closed += 1

    def message(self, conn: HubConn, payload: bytes, now: float) -> None:
        conn.count += 1
        number = conn.count
        receipts = self.receipts.get(number)
        if receipts is None:
            receipts = self.receipts[number] = []
            data = self.decode(payload)  # once per round and process
            self.sent_at[number] = data["t0"]
            if data["round"] != number:
                say(f"ERROR round {data['round']} arrived as publication {number}")
        receipts.append(now)
        if len(receipts) == self.count:
            t0 = self.sent_at.pop(number)
            deltas = [round((t - t0) * 1000, 3) for t in self.receipts.pop(number)]
            say(f"ROUND {number} {json.dumps(deltas)}")


async def fanout_client(args: argparse.Namespace) -> None:
    swarm = FanoutSwarm(args.count)
    hello = connect_command(args.token, args.channel)
    addresses = args.addresses.split(",")
    started = time.monotonic()
    conns = await open_conns(swarm, args.port, [hello] * args.count, addresses)
    say(f"READY {len(conns)} {time.monotonic() - started:.3f}")
    done = asyncio.Event()
    watch_stdin(asyncio.get_running_loop(), done)
    await done.wait()
    for conn in conns:
        if conn.transport is not None:
            conn.transport.abort()


# ---------------------------------------------------------------- throughput client


class ThroughputClient:
    """Publishers on A (``window`` publish commands in flight each) and subscribers on B."""

    def __init__(self, window: int) -> None:
        self.window = window
        self.acks = 0
        self.errors = 0
        self.delivered = 0
        self.latencies: list[float] = []
        self.measuring = False
        self.running = True
        self.publishers: dict[int, HubConn] = {}
        self.next_id: dict[int, int] = {}
        self.channels: dict[int, str] = {}
        self.closed = 0

    def lost(self, conn: HubConn) -> None:
        self.closed += 1

    def publish(self, conn: HubConn) -> None:
        cid = self.next_id[conn.tag] = self.next_id[conn.tag] + 1
        params = {"channel": self.channels[conn.tag], "data": time.monotonic()}
        conn.send(json.dumps({"id": cid, "method": "publish", "params": params}).encode())

    def message(self, conn: HubConn, payload: bytes, now: float) -> None:
        if conn.tag >= 0:  # a subscriber on B
            if self.measuring:
                self.delivered += 1
                self.latencies.append(now - json.loads(payload)["data"])
            return
        # a publisher on A: a reply to one of its commands, or its own publication
        if payload.startswith(b'{"id"'):
            if b'"error"' in payload:
                self.errors += 1
            elif self.measuring:
                self.acks += 1
            if self.running:
                self.publish(conn)


async def throughput_client(args: argparse.Namespace) -> None:
    client = ThroughputClient(args.window)
    n = args.publishers
    channels = [f"{args.namespace}:bench-{uuid.uuid4().hex[:8]}-{i}" for i in range(n)]
    addresses = args.addresses.split(",")
    subscribers = await open_conns(
        client,
        args.port_b,
        [connect_command(args.token, c) for c in channels],
        addresses,
        tags=list(range(n)),
    )
    publishers = await open_conns(
        client,
        args.port_a,
        [connect_command(args.token, c) for c in channels],
        addresses,
        tags=[-1 - i for i in range(n)],
    )
    for conn in publishers:
        client.channels[conn.tag] = channels[-1 - conn.tag]
        client.next_id[conn.tag] = 1
        for _ in range(client.window):
            client.publish(conn)
    await asyncio.sleep(args.warmup)
    say("WINDOW_START")
    client.measuring = True
    started = time.monotonic()
    await asyncio.sleep(args.duration)
    client.measuring = False
    wall = time.monotonic() - started
    say("WINDOW_END")
    client.running = False
    latencies = sorted(client.latencies)
    result = {
        "publishers": n,
        "window": client.window,
        "seconds": round(wall, 3),
        "acked_per_second": round(client.acks / wall),
        "delivered_per_second": round(client.delivered / wall),
        "errors": client.errors,
        "connections_lost": client.closed,
        "latency_ms": summary([x * 1000 for x in latencies]),
    }
    say("RESULT " + json.dumps(result))
    await asyncio.sleep(0.2)
    for conn in (*subscribers, *publishers):
        if conn.transport is not None:
            conn.transport.abort()


# ----------------------------------------------------------------------- statistics


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile of sorted ``values``."""
    if not values:
        return float("nan")
    index = min(len(values) - 1, max(0, round(q / 100 * len(values) + 0.5) - 1))
    return values[index]


def summary(values: list[float]) -> dict[str, Any]:
    values = sorted(values)
    if not values:
        return {"count": 0}
    return {
        "count": len(values),
        "p50": round(percentile(values, 50), 3),
        "p99": round(percentile(values, 99), 3),
        "min": round(values[0], 3),
        "max": round(values[-1], 3),
        "mean": round(statistics.fmean(values), 3),
    }


# ---------------------------------------------------------------------- coordinators


class ApiClient:
    """A keep-alive HTTP/1.1 connection to a node's API."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection((HOST, port), 10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.reader = self.sock.makefile("rb")

    def post(self, method: str, params: dict[str, Any]) -> Any:
        body = json.dumps(params).encode()
        self.sock.sendall(
            (
                f"POST /api/{method} HTTP/1.1\r\nHost: {HOST}\r\nAuthorization: apikey {API_KEY}"
                f"\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
            ).encode()
            + body
        )
        status = self.reader.readline()
        length = 0
        while True:
            line = self.reader.readline()
            if line in (b"\r\n", b""):
                break
            name, _, value = line.decode("latin-1").partition(":")
            if name.lower() == "content-length":
                length = int(value)
        answer = json.loads(self.reader.read(length))
        if b" 200 " not in status:
            raise RuntimeError(f"/api/{method}: {status!r} {answer}")
        return answer["result"]

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


def run_fanout(settings: Settings, directory: Path) -> dict[str, Any]:
    server, port = start_node(directory, "fanout", "memory", "bench", settings)
    shares = client_shares(settings.subscribers, settings.client_procs)
    procs = len(shares)
    clients: list[Proc] = []
    with stopping([server]):
        try:
            time.sleep(IDLE_SETTLE)
            rss_before = rss_bytes(server.pid)
            channel = "fan:bench"
            for i, (count, addresses) in enumerate(shares):
                args = [
                    f"--port={port}",
                    f"--count={count}",
                    f"--addresses={','.join(addresses)}",
                    f"--token={make_token(f'sub-{i}')}",
                    f"--channel={channel}",
                ]
                clients.append(spawn_client("fanout", args, settings, directory / f"fan-{i}.log"))
            lines = LineReader(clients)
            started = time.monotonic()
            ready = [lines.take(i, "READY", 180) for i in range(procs)]
            connect_seconds = time.monotonic() - started
            assert sum(int(r.split()[1]) for r in ready) == settings.subscribers
            time.sleep(IDLE_SETTLE)
            # the server's resident memory grown by the connected, subscribed, idle clients
            rss_subscribed = rss_bytes(server.pid)
            api = ApiClient(port)
            pids = {"server": [server.pid], "clients": [c.pid for c in clients]}
            load_before = loadavg()
            window: CpuWindow | None = None
            rounds: list[dict[str, float]] = []
            total = settings.warmup_rounds + settings.rounds
            for number in range(1, total + 1):
                if number == settings.warmup_rounds + 1:
                    window = CpuWindow(pids, server.pid)
                cpu0, wait0 = cpu_seconds(server.pid), wait_seconds(server.pid)
                t0 = time.monotonic()
                api.post("publish", {"channel": channel, "data": {"round": number, "t0": t0}})
                deltas: list[float] = []
                for i in range(procs):
                    line = lines.take(i, f"ROUND {number} ", 60)
                    deltas.extend(json.loads(line.split(" ", 2)[2]))
                cpu1, wait1 = cpu_seconds(server.pid), wait_seconds(server.pid)
                if number > settings.warmup_rounds:
                    deltas.sort()
                    rounds.append(
                        {
                            "first_ms": deltas[0],
                            "median_ms": percentile(deltas, 50),
                            "last_ms": deltas[-1],
                            # /proc resolution: 10 ms
                            "server_cpu_ms": round((cpu1 - cpu0) * 1000, 1),
                            "server_wait_ms": round((wait1 - wait0) * 1000, 1),
                        }
                    )
                time.sleep(settings.round_pause)
            assert window is not None
            cpu = window.stop()
            api.close()
        finally:
            for client in clients:
                with contextlib.suppress(OSError):
                    if client.popen.stdin is not None:
                        client.popen.stdin.close()
            for client in clients:
                stop(client)
    return {
        "subscribers": settings.subscribers,
        "client_processes": procs,
        "rounds": settings.rounds,
        "warmup_rounds": settings.warmup_rounds,
        "connect_subscribe_seconds": round(connect_seconds, 2),
        "server_rss_mib_before": round(rss_before / 2**20, 1),
        "server_rss_mib_subscribed": round(rss_subscribed / 2**20, 1),
        # what one more subscribed idle connection costs the node
        "memory_per_connection_kib": round(
            (rss_subscribed - rss_before) / 1024 / settings.subscribers, 1
        ),
        # the node's CPU per delivered message (the median round's CPU over its deliveries;
        # CPU time, so it holds on a busy machine where the latencies do not)
        "server_cpu_us_per_delivery": round(
            statistics.median(r["server_cpu_ms"] for r in rounds) * 1000 / settings.subscribers,
            2,
        ),
        "first_subscriber_ms": summary([r["first_ms"] for r in rounds]),
        "median_subscriber_ms": summary([r["median_ms"] for r in rounds]),
        "last_subscriber_ms": summary([r["last_ms"] for r in rounds]),
        # until the last subscriber had it: what the server spent, and how long it was
        # runnable but had no CPU (other processes had it)
        "server_cpu_ms_per_round": summary([r["server_cpu_ms"] for r in rounds]),
        "server_wait_ms_per_round": summary([r["server_wait_ms"] for r in rounds]),
        "per_round": rounds,
        "loadavg_before": load_before,
        "loadavg_after": loadavg(),
        **cpu,
    }


def run_cross_node(settings: Settings, directory: Path, namespace: str) -> dict[str, Any]:
    procs: list[Proc] = []
    with stopping(procs):
        if settings.redis_url:
            url = settings.redis_url
        else:
            redis_proc, url = start_redis(directory, settings)
            procs.append(redis_proc)
        prefix = f"bench-{uuid.uuid4().hex[:8]}"
        node_a, port_a = start_node(directory, f"{namespace}-a", url, prefix, settings)
        procs.append(node_a)
        node_b, port_b = start_node(directory, f"{namespace}-b", url, prefix, settings)
        procs.append(node_b)
        args = [
            f"--port-a={port_a}",
            f"--port-b={port_b}",
            f"--publishers={settings.publishers}",
            f"--window={settings.window}",
            f"--duration={settings.duration}",
            f"--warmup={settings.warmup}",
            f"--namespace={namespace}",
            f"--token={make_token('throughput')}",
            f"--addresses={','.join(source_addresses(0, 2 * settings.publishers))}",
        ]
        client = spawn_client("throughput", args, settings, directory / f"tp-{namespace}.log")
        procs.append(client)
        lines = LineReader([client])
        pids = {"node_a": [node_a.pid], "node_b": [node_b.pid], "client": [client.pid]}
        if not settings.redis_url:
            pids["redis"] = [procs[0].pid]
        load_before = loadavg()
        timeout = settings.warmup + 60
        lines.take(0, "WINDOW_START", timeout)
        window = CpuWindow(pids, node_a.pid)
        lines.take(0, "WINDOW_END", settings.duration + 30)
        cpu = window.stop()
        cpu["node_a_wait_percent"] = cpu.pop("server_wait_percent")
        result: dict[str, Any] = json.loads(lines.take(0, "RESULT", 30).split(" ", 1)[1])
    result.update(
        {
            "history": namespace == "hist",
            "redis": "private redis-server" if not settings.redis_url else settings.redis_url,
            "loadavg_before": load_before,
            "loadavg_after": loadavg(),
            **cpu,
        }
    )
    # CPU per publication (CPU time: it holds on a busy machine where rates do not): node B
    # receives each one from Redis and delivers it to one subscriber; node A also parses the
    # client's publish and answers it; Redis runs the publish (script) and its PUBLISH.
    rate = result.get("delivered_per_second") or 0
    for name in ("node_a", "node_b", "redis"):
        percent = result.get(f"{name}_cpu_percent")
        if rate and percent is not None:
            result[f"{name}_cpu_us_per_publication"] = round(percent / 100 / rate * 1e6, 1)
    return result


def machine() -> dict[str, Any]:
    import platform

    versions: dict[str, str] = {}
    for module in ("pulsewire", "uvloop", "redis"):
        with contextlib.suppress(Exception):
            versions[module] = str(__import__(module).__version__)
    redis_server = shutil.which("redis-server")
    if redis_server:
        with contextlib.suppress(Exception):
            out = subprocess.run([redis_server, "--version"], capture_output=True, text=True)
            versions["redis-server"] = out.stdout.split()[2].removeprefix("v=")
    return {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "cpu_model": next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")
            ),
            "?",
        ),
        "versions": versions,
    }


def run(settings: Settings) -> dict[str, Any]:
    """Run both benchmarks; returns the results (nothing is written)."""
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="pw-hub-bench-") as tmp:
        directory = Path(tmp)
        fanout = run_fanout(settings, directory)
        cross = {ns: run_cross_node(settings, directory, ns) for ns in ("plain", "hist")}
    results: dict[str, Any] = {
        "benchmark": "hub_fanout",
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "seconds": round(time.time() - started, 1),
        "settings": asdict(settings),
        "machine": machine(),
        "fanout": fanout,
        "cross_node_redis": cross,
    }
    disturbed = [
        name
        for name, part in (("fanout", fanout), *((f"cross_node_{k}", v) for k, v in cross.items()))
        if part.get("other_cpu_percent", 0) > BUSY_PERCENT
    ]
    if disturbed:
        results["warning"] = (
            f"the machine was busy with other work during {', '.join(disturbed)} "
            f"(other_cpu_percent > {BUSY_PERCENT}): these numbers are pessimistic"
        )
    return results


def run_smoke(out_path: Path | None = None) -> dict[str, Any]:
    """The smoke configuration (100 subscribers, 2 rounds, 1 s); writes ``out_path`` if given."""
    results = run(SMOKE)
    if out_path is not None:
        out_path.write_text(json.dumps(results, indent=2) + "\n")
    return results


# ------------------------------------------------------------------------------- main


def client_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="fanout_hub.py --client MODE")
    parser.add_argument("--client", choices=["fanout", "throughput"], required=True)
    parser.add_argument("--port", type=int)
    parser.add_argument("--port-a", type=int)
    parser.add_argument("--port-b", type=int)
    parser.add_argument("--count", type=int)
    parser.add_argument("--publishers", type=int)
    parser.add_argument("--window", type=int)
    parser.add_argument("--duration", type=float)
    parser.add_argument("--warmup", type=float)
    parser.add_argument("--namespace")
    parser.add_argument("--channel")
    parser.add_argument("--token", required=True)
    parser.add_argument("--addresses", required=True)
    args = parser.parse_args(argv)
    main = fanout_client if args.client == "fanout" else throughput_client
    run_loop(main(args))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--client" in argv or any(a.startswith("--client=") for a in argv):
        return client_main(argv)
    defaults = Settings()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--smoke", action="store_true", help="100 subscribers, 2 rounds, 1 s")
    parser.add_argument("--subscribers", type=int, default=defaults.subscribers)
    parser.add_argument("--client-procs", type=int, default=defaults.client_procs)
    parser.add_argument("--rounds", type=int, default=defaults.rounds)
    parser.add_argument("--publishers", type=int, default=defaults.publishers)
    parser.add_argument("--window", type=int, default=defaults.window)
    parser.add_argument("--duration", type=float, default=defaults.duration)
    parser.add_argument("--warmup", type=float, default=defaults.warmup)
    parser.add_argument("--no-pin", action="store_true", help="do not pin with taskset")
    parser.add_argument("--redis-url", help="use this Redis instead of a private redis-server")
    parser.add_argument("--out", type=Path, help="results file (default: benchmarks/results/)")
    args = parser.parse_args(argv)
    if args.smoke:
        settings = SMOKE
    else:
        settings = Settings(
            subscribers=args.subscribers,
            client_procs=args.client_procs,
            rounds=args.rounds,
            publishers=args.publishers,
            window=args.window,
            duration=args.duration,
            warmup=args.warmup,
        )
    settings = Settings(**{**asdict(settings), "pin": not args.no_pin, "redis_url": args.redis_url})
    results = run(settings)
    out = args.out or RESULTS / ("hub_fanout_smoke.json" if args.smoke else "hub_fanout.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    print(f"written to {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
