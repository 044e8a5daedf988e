#!/usr/bin/env python3
"""Soak test: 10,000 hub clients subscribing, publishing and reconnecting for minutes, then
leaving; the server's memory and file descriptors must come back.

    .venv/bin/python benchmarks/soak.py                  # 10,000 connections, 3 minutes
    .venv/bin/python benchmarks/soak.py --smoke          # 200 connections, 10 s
    .venv/bin/python benchmarks/soak.py --connections 20000 --duration 600 --workers 6

What it does:

1. writes a config file (``[hub]`` with a token secret and an API key, generous client rate
   limits, a ``soak`` namespace with client publishing, presence and a short history) and starts
   ``pulsewire serve --config FILE --port 0`` pinned to core 0 (``taskset``), output to a log
   file. The node runs ``pulsewire.cli.main`` under ``python -c`` with a probe thread that
   reports ``sys.getallocatedblocks()`` (after a full garbage collection when asked);
2. warms the server up with 40 short sessions (lazy imports, first-use caches), then measures
   its baseline: RSS (``/proc/PID/status``) once settled, open file descriptors
   (``/proc/PID/fd``) and Python's allocated blocks;
3. runs the swarm: ``--workers`` processes (uvloop, pinned to the other cores), each with its
   share of the connections and its own loopback source addresses (127.0.0.10 and up, so that
   no address exceeds the server's per-IP limits, which ``pulsewire serve`` cannot change,
   and no address runs out of ephemeral ports). Each client connects with a token,
   subscribes to one of ``--channels`` channels, publishes now and then (``--publish-rate``
   publications per second over all clients) and, at ``--reconnect-rate`` (a fraction of the
   clients per second), leaves and comes back. One client in ten negotiates
   permessage-deflate. Connections ramp up over ``--ramp`` seconds, churn for ``--duration``
   seconds, then every client closes (1000);
4. samples RSS, fds and allocated blocks every 0.5 s (the peak), then waits until the hub has
   no session and the fd count has stopped moving, and measures again ("after");
5. with ``--cycles 2`` (the default) does it again with a shorter hold (``--second-hold``);
6. prints a JSON report and writes it to ``benchmarks/results/soak.json`` (``--out``).

Verdict ("no_leaks", exit status 0):

* open fds after each cycle equal the baseline, exactly;
* no session, subscribed channel or open connection left (``/health``, ``/metrics``);
* Python's allocated blocks after the last cycle within ``--blocks-tolerance`` (5,000) of
  those after the first: a leak of one object per session would add 10,000+ per cycle. After
  the first cycle the heap is a little above the baseline on purpose (the last publications of
  each channel are kept for ``history_ttl``, rate-limit buckets per address...);
* RSS after the last cycle within ``--rss-tolerance`` MiB (32) of RSS after the first. RSS
  does not go back to the baseline when clients leave: CPython's allocator and glibc keep
  freed memory for reuse (the second cycle runs in it); the allocated blocks show that the
  objects themselves are gone;
* no 429/503 refusals, no crashed worker, the connection count reached.

The machine's load is part of the report: the load average at start and end, the CPU used by
the whole machine, by the server and by the swarm during the run.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import multiprocessing as mp
import os
import random
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / "results"
PULSEWIRE = str(Path(sys.executable).parent / "pulsewire")
HOST = "127.0.0.1"
SECRET = "soak-secret-0123456789abcdef0123456789"
API_KEY = "soak-api-key"
WS_PATH = "/connection/websocket"
MiB = 1 << 20
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Options:
    connections: int = 10_000
    duration: float = 180.0
    ramp: float = 40.0
    workers: int = 4
    sources: int = 50
    channels: int = 100
    publish_rate: float = 40.0
    reconnect_rate: float = 0.005
    deflate_share: float = 0.1
    cycles: int = 2
    second_hold: float = 30.0
    settle_timeout: float = 90.0
    rss_tolerance: float = 32.0
    blocks_tolerance: int = 5_000
    pin: bool = True
    server_env: tuple[str, ...] = ()
    out: str = str(RESULTS / "soak.json")


SMOKE = Options(
    connections=200,
    duration=10.0,
    ramp=2.0,
    workers=2,
    sources=4,
    channels=10,
    publish_rate=20.0,
    reconnect_rate=0.02,
    cycles=1,
    settle_timeout=30.0,
    out=str(RESULTS / "soak_smoke.json"),
)


# ------------------------------------------------------------------------- process probes


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot."""
    with open("/proc/stat", encoding="ascii") as fh:
        values = [int(v) for v in fh.readline().split()[1:]]
    idle = values[3] + values[4]
    total = sum(values[:8])
    return (total - idle) / CLK_TCK, total / CLK_TCK


def loadavg() -> list[float]:
    with open("/proc/loadavg", encoding="ascii") as fh:
        return [float(v) for v in fh.read().split()[:3]]


def raise_fd_limit(wanted: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


class Sampler:
    """RSS, fds and allocated blocks of the server every ``interval`` seconds, in a thread."""

    def __init__(self, server: Server, interval: float = 0.5) -> None:
        self.server = server
        self.pid = server.pid
        self.interval = interval
        self.peak_rss = 0
        self.peak_fds = 0
        self.peak_blocks = 0
        self.series: list[tuple[float, int, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._started = time.monotonic()

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(OSError, RuntimeError):
                r, f = rss(self.pid), fds(self.pid)
                self.peak_rss = max(self.peak_rss, r)
                self.peak_fds = max(self.peak_fds, f)
                self.peak_blocks = max(self.peak_blocks, self.server.blocks())
                self.series.append((round(time.monotonic() - self._started, 1), r, f))
            self._stop.wait(self.interval)

    def start(self) -> Sampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


# ------------------------------------------------------------------------------ the server


PROBE = """\
import gc, os, sys, threading, time
path = os.environ["PULSEWIRE_SOAK_PROBE"]
def probe():
    while True:
        if os.path.exists(path + ".gc"):
            gc.collect()
            os.remove(path + ".gc")
            with open(path + ".tmp", "w") as fh:
                fh.write(str(sys.getallocatedblocks()))
            os.replace(path + ".tmp", path + ".collected")
        with open(path + ".tmp", "w") as fh:
            fh.write(str(sys.getallocatedblocks()))
        os.replace(path + ".tmp", path)
        time.sleep(0.25)
threading.Thread(target=probe, daemon=True).start()
from pulsewire.cli import main
sys.exit(main(sys.argv[1:]))
"""
"""``pulsewire serve`` (``pulsewire.cli.main``) with a thread that writes the number of memory
blocks the Python allocator has handed out (``sys.getallocatedblocks()``: live objects and
buffers, whatever the allocator keeps from the OS) to a file four times a second, and on
request (a ``.gc`` file) runs a full garbage collection first, so that garbage waiting for the
next collection is not taken for a leak."""

CONFIG = """\
[server]
drain_timeout = 5.0

[hub]
token_hmac_secret = "{secret}"
api_key = "{api_key}"
connect_timeout = 30.0
max_channels_per_connection = 8
client_queue_max_bytes = 1048576
client_messages_per_second = 200.0
client_messages_burst = 400.0
client_bytes_per_second = 1048576.0
client_bytes_burst = 4194304.0

[namespaces.soak]
allow_publish = true
presence = true
history_size = 10
history_ttl = 60.0
"""


def http_get(port: int, path: str, timeout: float = 10.0) -> tuple[int, bytes]:
    with socket.create_connection((HOST, port), timeout=timeout) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def scrape(port: int) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    status, body = http_get(port, "/metrics")
    assert status == 200, status
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            if sample.name.endswith("_created") or not sample.name.startswith("pulsewire_"):
                continue
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            out[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return out


def sessions(port: int) -> int:
    status, body = http_get(port, "/health")
    return int(json.loads(body)["connections"]) if status == 200 else -1


class Server:
    def __init__(self, workdir: Path, pin: bool, env: tuple[str, ...] = ()) -> None:
        config = workdir / "pulsewire.toml"
        config.write_text(CONFIG.format(secret=SECRET, api_key=API_KEY))
        self.log = workdir / "server.log"
        self.probe = workdir / "blocks"
        command = [sys.executable, "-c", PROBE, "serve", "--config", str(config), "--port", "0"]
        self.pinned = pin and shutil.which("taskset") is not None and (os.cpu_count() or 1) > 1
        if self.pinned:
            command = ["taskset", "-c", "0", *command]
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=lambda: raise_fd_limit(1 << 20),
                env={
                    **os.environ,
                    "PULSEWIRE_SOAK_PROBE": str(self.probe),
                    **dict(item.split("=", 1) for item in env),
                },
            )
        self.pid = self.proc.pid
        self.port = self._wait_listening()

    def _wait_listening(self, timeout: float = 30.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.log.read_text(errors="replace").splitlines():
                if line.startswith("listening on "):
                    return int(line.rstrip("/").rsplit(":", 1)[1])
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError(f"server did not start:\n{self.log.read_text(errors='replace')}")

    def blocks(self) -> int:
        """Python's allocated memory blocks (0 when unknown, e.g. PYTHONMALLOC=malloc)."""
        with contextlib.suppress(OSError, ValueError):
            return int(self.probe.read_text())
        return 0

    def collected_blocks(self, timeout: float = 10.0) -> int:
        """Allocated blocks right after a full garbage collection in the server."""
        done = self.probe.with_name(self.probe.name + ".collected")
        done.unlink(missing_ok=True)
        self.probe.with_name(self.probe.name + ".gc").touch()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, ValueError):
                return int(done.read_text())
            time.sleep(0.05)
        return 0

    def settled_rss(self, quiet: float = 2.0, timeout: float = 30.0) -> int:
        """RSS once it changed by less than 256 KiB over ``quiet`` seconds."""
        last = rss(self.pid)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            time.sleep(quiet)
            now = rss(self.pid)
            if abs(now - last) < 256 * 1024:
                return now
            last = now
        return last

    def wait_idle(self, timeout: float) -> dict[str, Any]:
        """Until the hub has no session and the fd count stayed put for 3 s."""
        started = time.monotonic()
        deadline = started + timeout
        stable_since, last_fds = time.monotonic(), fds(self.pid)
        while time.monotonic() < deadline:
            time.sleep(0.5)
            now_fds = fds(self.pid)
            if now_fds != last_fds:
                stable_since, last_fds = time.monotonic(), now_fds
            if time.monotonic() - stable_since >= 3.0 and sessions(self.port) == 0:
                break
        return {"seconds": round(time.monotonic() - started, 1), "sessions": sessions(self.port)}

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        return self.proc.returncode


# ------------------------------------------------------------------------------- the swarm


def token(user: str) -> str:
    import jwt

    return jwt.encode({"sub": user, "exp": int(time.time()) + 3600}, SECRET, algorithm="HS256")


def command(cid: int, method: str, params: dict[str, Any]) -> str:
    return json.dumps({"id": cid, "method": method, "params": params})


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return round(values[min(len(values) - 1, int(q * len(values)))] * 1000, 2)


class Swarm:
    """One worker's clients (runs in the worker process)."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.port: int = spec["port"]
        self.end_at = 0.0
        self.stats: collections.Counter[str] = collections.Counter()
        self.close_codes: collections.Counter[str] = collections.Counter()
        self.errors: collections.Counter[str] = collections.Counter()
        self.connect_times: list[float] = []
        self.latencies: list[float] = []
        self.open = 0
        self.peak_open = 0
        self.rng = random.Random(spec["seed"])

    def _sample(self, bucket: list[float], value: float) -> None:
        if len(bucket) < 20_000:
            bucket.append(value)
        else:
            bucket[self.rng.randrange(len(bucket))] = value

    async def run(self) -> dict[str, Any]:
        import pulsewire  # noqa: F401 (imported here: the parent never needs it)

        spec = self.spec
        n = spec["connections"]
        started = time.monotonic()
        self.end_at = started + spec["ramp"] + spec["duration"]
        tasks = []
        for i in range(n):
            delay = spec["ramp"] * i / max(1, n)
            tasks.append(asyncio.ensure_future(self.client(i, started + delay)))
        await asyncio.gather(*tasks, return_exceptions=False)
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return {
            "stats": dict(self.stats),
            "close_codes": dict(self.close_codes),
            "errors": dict(self.errors),
            "connect_ms": self.connect_times,
            "latency_ms": self.latencies,
            "peak_open": self.peak_open,
            "cpu_seconds": usage.ru_utime + usage.ru_stime,
            "max_rss_mib": round(usage.ru_maxrss / 1024, 1),
        }

    async def client(self, i: int, start_at: float) -> None:
        spec = self.spec
        await asyncio.sleep(max(0.0, start_at - time.monotonic()))
        sources = spec["sources"]
        user = f"u{spec['index']}-{i}"
        channel = f"soak:room-{self.rng.randrange(spec['channels'])}"
        deflate = self.rng.random() < spec["deflate_share"]
        per_client_rate = spec["publish_rate"] / spec["total_connections"]
        first = True
        while time.monotonic() < self.end_at:
            if not first:
                self.stats["reconnects"] += 1
            first = False
            lifetime = (
                self.rng.expovariate(spec["reconnect_rate"]) if spec["reconnect_rate"] else 1e9
            )
            leave_at = min(self.end_at, time.monotonic() + lifetime)
            source = sources[i % len(sources)]
            ok = await self.session(source, user, channel, deflate, per_client_rate, leave_at)
            if not ok:
                await asyncio.sleep(1.0 + self.rng.random())

    async def session(
        self,
        source: str,
        user: str,
        channel: str,
        deflate: bool,
        rate: float,
        leave_at: float,
    ) -> bool:
        import pulsewire
        from pulsewire.protocol.errors import ConnectionClosed, InvalidHandshake, InvalidStatus

        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        began = time.monotonic()
        ws = None
        try:
            sock.setblocking(False)
            sock.bind((source, 0))
            await asyncio.wait_for(loop.sock_connect(sock, (HOST, self.port)), 30)
            ws = await pulsewire.connect(
                f"ws://{HOST}:{self.port}{WS_PATH}",
                sock=sock,
                subprotocols=["pulsewire.v1.json"],
                compression="deflate" if deflate else None,
                ping_interval=None,
                open_timeout=30,
                close_timeout=5,
            )
            await ws.send(command(1, "connect", {"token": token(user)}))
            reply = json.loads(await asyncio.wait_for(ws.recv(), 30))
            if "result" not in reply:
                self.errors[f"connect: {reply.get('error')}"] += 1
                return False
            await ws.send(command(2, "subscribe", {"channel": channel}))
            reply = json.loads(await asyncio.wait_for(ws.recv(), 30))
            if "result" not in reply:
                self.errors[f"subscribe: {reply.get('error')}"] += 1
                return False
        except InvalidStatus as exc:
            self.errors[f"handshake refused: {exc.status}"] += 1
            sock.close()
            return False
        except (OSError, InvalidHandshake, ConnectionClosed, asyncio.TimeoutError) as exc:
            self.errors[f"connect failed: {type(exc).__name__}"] += 1
            if ws is not None:
                ws.abort()
            sock.close()
            return False
        self._sample(self.connect_times, time.monotonic() - began)
        self.stats["sessions"] += 1
        self.open += 1
        self.peak_open = max(self.peak_open, self.open)
        reader = asyncio.ensure_future(self.read(ws))
        try:
            next_id = 3
            while True:
                now = time.monotonic()
                wait = self.rng.expovariate(rate) if rate else 1e9
                if now + wait >= leave_at:
                    await asyncio.wait({reader}, timeout=max(0.0, leave_at - now))
                    break
                await asyncio.wait({reader}, timeout=wait)
                if reader.done():
                    break
                data = {"t": time.time(), "from": user}
                await ws.send(command(next_id, "publish", {"channel": channel, "data": data}))
                next_id += 1
                self.stats["published"] += 1
            with contextlib.suppress(ConnectionClosed, asyncio.TimeoutError, OSError):
                await asyncio.wait_for(ws.close(), 10)
        except ConnectionClosed:
            pass
        finally:
            self.open -= 1
            if not reader.done():
                reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
            if ws.close_code is not None:
                self.close_codes[str(ws.close_code)] += 1
        return True

    async def read(self, ws: Any) -> None:
        from pulsewire.protocol.errors import ConnectionClosed

        with contextlib.suppress(ConnectionClosed):
            async for message in ws:
                push = json.loads(message)
                kind = push.get("push")
                if kind == "publication":
                    self.stats["received"] += 1
                    self._sample(self.latencies, time.time() - push["data"]["t"])
                elif "error" in push:
                    self.errors[f"command error {push['error'].get('code')}"] += 1
                else:
                    self.stats["acks"] += 1


def worker(spec: dict[str, Any], results: Any) -> None:
    """Entry point of a swarm process."""
    try:
        raise_fd_limit(spec["connections"] + 1024)
        if spec["cpus"]:
            with contextlib.suppress(OSError):
                os.sched_setaffinity(0, spec["cpus"])
        from pulsewire.aio.loop import run

        results.put((spec["index"], run(Swarm(spec).run())))
    except BaseException as exc:  # report, never hang the parent
        results.put((spec["index"], {"crash": f"{type(exc).__name__}: {exc}"}))


def run_swarm(options: Options, port: int, duration: float, cycle: int) -> dict[str, Any]:
    context = mp.get_context("spawn")
    results = context.Queue()
    cpus = sorted(set(range(os.cpu_count() or 1)) - {0}) if options.pin else []
    addresses = [f"127.0.0.{10 + i}" for i in range(options.sources)]
    procs = []
    for index in range(options.workers):
        share = options.connections // options.workers + (
            1 if index < options.connections % options.workers else 0
        )
        spec = {
            "index": index,
            "port": port,
            "connections": share,
            "total_connections": options.connections,
            "duration": duration,
            "ramp": options.ramp,
            "sources": addresses[index :: options.workers] or addresses,
            "channels": options.channels,
            "publish_rate": options.publish_rate,
            "reconnect_rate": options.reconnect_rate,
            "deflate_share": options.deflate_share,
            "seed": 1000 * cycle + index,
            "cpus": cpus,
        }
        proc = context.Process(target=worker, args=(spec, results), daemon=True)
        proc.start()
        procs.append(proc)
    reports: dict[int, dict[str, Any]] = {}
    deadline = time.monotonic() + options.ramp + duration + 120
    try:
        while len(reports) < len(procs) and time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                index, report = results.get(timeout=1.0)
                reports[index] = report
            if all(not p.is_alive() for p in procs) and results.empty():
                break
    finally:
        for proc in procs:
            proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join(5)
    return merge(reports, len(procs))


def merge(reports: dict[int, dict[str, Any]], expected: int) -> dict[str, Any]:
    stats: collections.Counter[str] = collections.Counter()
    codes: collections.Counter[str] = collections.Counter()
    errors: collections.Counter[str] = collections.Counter()
    connect: list[float] = []
    latency: list[float] = []
    crashes = []
    cpu = peak = 0.0
    for index, report in sorted(reports.items()):
        if "crash" in report:
            crashes.append(f"worker {index}: {report['crash']}")
            continue
        stats.update(report["stats"])
        codes.update(report["close_codes"])
        errors.update(report["errors"])
        connect += report["connect_ms"]
        latency += report["latency_ms"]
        cpu += report["cpu_seconds"]
        peak += report["peak_open"]
    if len(reports) < expected:
        crashes.append(f"{expected - len(reports)} worker(s) did not report")
    return {
        "sessions": stats["sessions"],
        "reconnects": stats["reconnects"],
        "published": stats["published"],
        "publish_acks": stats["acks"],
        "received": stats["received"],
        "peak_open_sum_of_workers": int(peak),
        "close_codes": dict(codes),
        "errors": dict(errors),
        "connect_ms": {"p50": percentile(connect, 0.5), "p99": percentile(connect, 0.99)},
        "publish_to_receive_ms": {
            "p50": percentile(latency, 0.5),
            "p99": percentile(latency, 0.99),
            "max": percentile(latency, 1.0),
        },
        "swarm_cpu_seconds": round(cpu, 1),
        "crashes": crashes,
    }


# ------------------------------------------------------------------------------- the run


def run(options: Options) -> dict[str, Any]:
    raise_fd_limit(1 << 16)
    started_at = time.time()
    load_start = loadavg()
    machine_start = machine_cpu()
    workdir = Path(tempfile.mkdtemp(prefix="pulsewire-soak-"))
    server = Server(workdir, options.pin, options.server_env)
    result: dict[str, Any] = {
        "options": asdict(options),
        "machine": {
            "cpus": os.cpu_count(),
            "server_pinned_to_core_0": server.pinned,
            "loadavg_start": load_start,
            "fd_limit_server": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
        },
    }
    try:
        time.sleep(1.0)
        # Warm up: the first sessions import modules lazily and fill caches (JWT, zlib,
        # codecs); the baseline is taken after a few of them came and went.
        sessions(server.port)
        scrape(server.port)
        warm = replace(options, connections=min(40, options.connections), workers=1, ramp=1.0)
        result["warmup"] = run_swarm(warm, server.port, 3.0, 0)
        server.wait_idle(options.settle_timeout)
        baseline = {
            "rss_mib": mib(server.settled_rss()),
            "fds": fds(server.pid),
            "python_blocks": server.collected_blocks(),
        }
        cpu_start = cpu_seconds(server.pid)
        result["server"] = {"pid": server.pid, "baseline": baseline, "cycles": []}
        for cycle in range(1, options.cycles + 1):
            duration = options.duration if cycle == 1 else options.second_hold
            sampler = Sampler(server).start()
            t0 = time.monotonic()
            swarm = run_swarm(options, server.port, duration, cycle)
            sampler.stop()
            swarm_seconds = time.monotonic() - t0
            idle = server.wait_idle(options.settle_timeout)
            after = {
                "rss_mib": mib(server.settled_rss()),
                "fds": fds(server.pid),
                "python_blocks": server.collected_blocks(),
            }
            result["server"]["cycles"].append(
                {
                    "cycle": cycle,
                    "hold_seconds": duration,
                    "wall_seconds": round(swarm_seconds, 1),
                    "peak": {
                        "rss_mib": mib(sampler.peak_rss),
                        "fds": sampler.peak_fds,
                        "python_blocks": sampler.peak_blocks,
                    },
                    "after": after,
                    "settle": idle,
                    "swarm": swarm,
                    "rss_series_mib": [
                        (t, mib(r), f)
                        for t, r, f in sampler.series[:: max(1, len(sampler.series) // 60)]
                    ],
                }
            )
        cpu_server = cpu_seconds(server.pid) - cpu_start
        metrics = scrape(server.port)
        result["hub_metrics"] = {k: v for k, v in metrics.items() if v}
    finally:
        status = server.stop()
        result.setdefault("server", {})["exit_status"] = status
        result["server"]["log_tail"] = server.log.read_text(errors="replace")[-2000:]
    wall = time.time() - started_at
    machine_end = machine_cpu()
    busy = machine_end[0] - machine_start[0]
    total = machine_end[1] - machine_start[1]
    swarm_cpu = sum(c["swarm"]["swarm_cpu_seconds"] for c in result["server"]["cycles"])
    result["machine"].update(
        {
            "loadavg_end": loadavg(),
            "wall_seconds": round(wall, 1),
            "machine_busy_percent": round(100 * busy / total, 1) if total else None,
            "server_cpu_percent_of_a_core": round(100 * cpu_server / wall, 1),
            "swarm_cpu_percent_of_a_core": round(100 * swarm_cpu / wall, 1),
            "other_cpu_percent_of_a_core": round(100 * (busy - cpu_server - swarm_cpu) / wall, 1),
        }
    )
    result["verdict"] = verdict(result, options)
    out = Path(options.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    shutil.rmtree(workdir, ignore_errors=True)
    return result


def mib(value: int) -> float:
    return round(value / MiB, 1)


def verdict(result: dict[str, Any], options: Options) -> dict[str, Any]:
    """The leak checks (see the module docstring)."""
    server = result["server"]
    base = server["baseline"]
    cycles = server["cycles"]
    first, last = cycles[0], cycles[-1]
    metrics = result.get("hub_metrics", {})
    refusals = {k: v for k, v in metrics.items() if k.startswith("pulsewire_refusals")}
    checks: dict[str, bool] = {
        "fds_back_to_baseline": all(c["after"]["fds"] == base["fds"] for c in cycles),
        "no_sessions_left": all(c["settle"]["sessions"] == 0 for c in cycles)
        and not metrics.get("pulsewire_connections{transport=websocket}")
        and not metrics.get("pulsewire_channels"),
        "rss_stable_across_cycles": (
            last["after"]["rss_mib"] - first["after"]["rss_mib"] <= options.rss_tolerance
        ),
        "no_refusals": not refusals,
        "no_worker_crash": not any(c["swarm"]["crashes"] for c in cycles),
        "reached_connections": first["swarm"]["peak_open_sum_of_workers"]
        >= 0.95 * options.connections,
    }
    if base["python_blocks"]:
        # Live Python memory: after the first cycle the hub holds what it keeps on purpose
        # (the last publications of each channel for history_ttl, per-address rate buckets,
        # metric children); a leak would add to it with every cycle (10,000+ sessions each).
        allowance = options.blocks_tolerance
        if len(cycles) == 1:  # nothing to compare with: the history bound must do
            allowance += options.channels * 10 * 40  # history_size x ~40 blocks per entry
        reference = first["after"]["python_blocks"] if len(cycles) > 1 else base["python_blocks"]
        checks["python_heap_stable"] = all(
            c["after"]["python_blocks"] - reference <= allowance for c in cycles
        )
    return {
        "no_leaks": all(checks.values()),
        "checks": checks,
        "refusals": refusals,
        "rss_after_minus_baseline_mib": [
            round(c["after"]["rss_mib"] - base["rss_mib"], 1) for c in cycles
        ],
        "python_blocks_after_minus_baseline": [
            c["after"]["python_blocks"] - base["python_blocks"] for c in cycles
        ],
    }


def run_smoke() -> dict[str, Any]:
    """200 connections for 10 s (one cycle); the report, also in results/soak_smoke.json."""
    return run(SMOKE)


def main(argv: list[str] | None = None) -> int:
    defaults = Options()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="200 connections for 10 s, one cycle")
    p.add_argument("--connections", type=int, help=f"default {defaults.connections}")
    p.add_argument("--duration", type=float, help=f"seconds of churn (default {defaults.duration})")
    p.add_argument("--ramp", type=float, help=f"seconds to connect everyone ({defaults.ramp})")
    p.add_argument("--workers", type=int, help=f"swarm processes ({defaults.workers})")
    p.add_argument("--sources", type=int, help=f"loopback source addresses ({defaults.sources})")
    p.add_argument("--channels", type=int, help=f"channels ({defaults.channels})")
    p.add_argument(
        "--publish-rate", type=float, help=f"per second, all clients ({defaults.publish_rate})"
    )
    p.add_argument("--reconnect-rate", type=float, help=f"fraction/s ({defaults.reconnect_rate})")
    p.add_argument("--deflate-share", type=float, help=f"({defaults.deflate_share})")
    p.add_argument("--cycles", type=int, help=f"({defaults.cycles})")
    p.add_argument("--second-hold", type=float, help=f"seconds ({defaults.second_hold})")
    p.add_argument("--rss-tolerance", type=float, help=f"MiB ({defaults.rss_tolerance})")
    p.add_argument("--blocks-tolerance", type=int, help=f"({defaults.blocks_tolerance})")
    p.add_argument("--no-pin", action="store_true", help="do not pin the server and swarm")
    p.add_argument(
        "--server-env",
        action="append",
        metavar="NAME=VALUE",
        help="environment of the server (repeatable), e.g. PYTHONMALLOC=malloc",
    )
    p.add_argument("--out", help=f"report file (default {defaults.out})")
    args = p.parse_args(argv)
    options = SMOKE if args.smoke else defaults
    changes = {
        k: v
        for k, v in vars(args).items()
        if v is not None and k not in ("smoke", "no_pin") and k in Options.__dataclass_fields__
    }
    if args.no_pin:
        changes["pin"] = False
    if args.server_env:
        changes["server_env"] = tuple(args.server_env)
    options = replace(options, **changes)
    result = run(options)
    summary = {k: v for k, v in result.items() if k != "server"}
    summary["server"] = {
        "baseline": result["server"]["baseline"],
        "cycles": [
            {k: v for k, v in c.items() if k != "rss_series_mib"}
            for c in result["server"]["cycles"]
        ],
        "exit_status": result["server"]["exit_status"],
    }
    print(json.dumps(summary, indent=2))
    print(f"report: {options.out}", file=sys.stderr)
    return 0 if result["verdict"]["no_leaks"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
