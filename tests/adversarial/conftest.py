"""The adversarial suite's harness: real server processes attacked from one loopback address.

Every test here starts a real ``pulsewire serve`` or ``pulsewire echo`` process at its default
settings (a hub node gets only what it needs to be usable: a token secret, an API key, an admin
password and a few namespaces, see :data:`HUB_CONFIG`), attacks it from :data:`ATTACKER` (one
address), and checks four things:

1. **Memory**: the server's RSS (``/proc/PID/status``, sampled every 5 ms) grows by less than
   :data:`RSS_LIMIT` over its settled baseline during the attack (:func:`rss_watch`).
2. **Service**: a well-behaved client from another address (:class:`Probe`) keeps being served
   while the attack runs: on a hub it receives publications made through the HTTP API, on an
   echo server it gets its echoes, each within :data:`PROBE_DEADLINE`.
3. **Refusal**: every refusal has the documented code (close code or HTTP status) and moves the
   documented counter in ``/metrics`` (:meth:`Node.metrics`, :class:`Metrics` deltas).
4. **Freed**: with ``gc=False`` the server runs with the garbage collector disabled and
   :meth:`Node.census` reports the live instances of pulsewire's classes (and of asyncio's
   transports, tasks, futures and timer handles): what outlives a closed connection was either
   still referenced or caught in a reference cycle.

Fixtures and helpers:

* ``node``: ``n = await node("serve" | "echo", *extra_args, gc=True, config=HUB_CONFIG)``;
  every process is killed at teardown.
* ``probe``: ``async with probe(n) as p: ...attack...``; leaving the block stops the probe and
  asserts it was served (:meth:`Probe.check`); ``p`` holds its figures.
* :func:`rss_watch`: ``async with rss_watch(n) as rss: ...``; then ``rss.growth`` (peak minus
  baseline), and ``rss.check()`` asserts it is under :data:`RSS_LIMIT`.
* :func:`record`: appends one line of figures to ``test-output/adversarial.jsonl`` (what
  docs/security.md quotes).
* Clients and HTTP helpers come from ``tests/security/conftest.py``: :class:`WsClient` (a raw
  WebSocket client that can bind a source address), :func:`http`, :func:`open_tcp`,
  :func:`make_token`, :func:`scrape`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from security.conftest import (
    API_KEY,
    HOST,
    SECRET,
    WS_PATH,
    HttpAnswer,
    Metrics,
    RssSampler,
    WsClient,
    http,
    make_token,
    open_tcp,
    raise_fd_limit,
    rss_bytes,
    scrape,
)

__all__ = [
    "ADMIN_PASSWORD",
    "API_KEY",
    "ATTACKER",
    "HOST",
    "HUB_CONFIG",
    "PROBE",
    "PUBLISHER",
    "RSS_LIMIT",
    "SECRET",
    "WS_PATH",
    "HttpAnswer",
    "Metrics",
    "Node",
    "Probe",
    "RssWatch",
    "WsClient",
    "http",
    "make_token",
    "open_tcp",
    "raise_fd_limit",
    "record",
    "rss_watch",
    "scrape",
]

MiB = 1 << 20
RSS_LIMIT = 64 * MiB
"""No attack from one address may raise the server's RSS by this much (issue #10)."""
ATTACKER = "127.0.0.2"
PROBE = "127.0.0.3"
PUBLISHER = "127.0.0.4"
PROBE_DEADLINE = 5.0
"""A probe round (publish through the API, receive the push; or an echo) must take less."""
ADMIN_PASSWORD = "adversarial-admin-password-0123456789"
LAUNCH = str(Path(__file__).with_name("launch.py"))
REPORT = Path(__file__).resolve().parents[2] / "test-output" / "adversarial.jsonl"

HUB_CONFIG = f"""
[server]
admin_password = "{ADMIN_PASSWORD}"

[hub]
token_hmac_secret = "{SECRET}"
api_key = "{API_KEY}"

[namespaces.probe]

[namespaces.pub]
allow_publish = true

[namespaces.chat]
presence = true
join_leave = true
history_size = 100
history_ttl = 300
"""
"""The hub's settings: only what makes it usable; every limit is at its default."""


# ------------------------------------------------------------------------------- processes


@dataclass
class Node:
    """A ``pulsewire serve`` or ``pulsewire echo`` process under attack."""

    kind: str
    proc: subprocess.Popen[bytes]
    out: Path
    err: Path
    census_file: Path
    port: int = 0

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def path(self) -> str:
        """The WebSocket path: the hub's client endpoint, or the echo server's root."""
        return WS_PATH if self.kind == "serve" else "/"

    @property
    def subprotocol(self) -> str | None:
        return "pulsewire.v1.json" if self.kind == "serve" else None

    def rss(self) -> int:
        return rss_bytes(self.pid)

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    @property
    def output(self) -> str:
        return self.out.read_text(errors="replace") + self.err.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    async def settle(self, interval: float = 0.3, within: float = 3.0) -> int:
        """RSS once it stopped moving (two samples ``interval`` apart within 256 KiB)."""
        last = self.rss()
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            await asyncio.sleep(interval)
            now = self.rss()
            if abs(now - last) < 256 * 1024:
                return now
            last = now
        return last

    async def metrics(self) -> Metrics:
        """A /metrics scrape (hub nodes only)."""
        assert self.kind == "serve", "only a hub node serves /metrics"
        return await scrape(self.port)

    async def census(self, timeout: float = 10.0) -> dict[str, int]:
        """Live instances by ``module.Class`` (see launch.py), read after SIGUSR1."""
        before = self._census_seq()
        os.kill(self.pid, signal.SIGUSR1)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            if self._census_seq() > before:
                data = json.loads(self.census_file.read_text())
                return dict(data["counts"])
        raise AssertionError(f"no census from {self.kind} within {timeout} s:\n{self.output}")

    def _census_seq(self) -> int:
        try:
            return int(json.loads(self.census_file.read_text())["seq"])
        except (OSError, ValueError, KeyError):
            return 0

    @staticmethod
    def live(counts: dict[str, int], *names: str) -> dict[str, int]:
        """The entries of a census whose class name (without module) is one of ``names``."""
        wanted = set(names)
        return {k: v for k, v in counts.items() if k.rsplit(".", 1)[-1] in wanted and v}

    def kill(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[Node]]]:
    started: list[Node] = []
    raise_fd_limit()

    async def start(kind: str, *extra: str, gc: bool = True, config: str = HUB_CONFIG) -> Node:
        assert kind in ("serve", "echo"), kind
        n = len(started)
        argv = [kind, "--host", HOST, "--port", "0", *extra]
        if kind == "serve":
            config_file = tmp_path / f"hub{n}.toml"
            config_file.write_text(config)
            argv += ["--config", str(config_file)]
        command = [sys.executable, LAUNCH, *([] if gc else ["--nogc"]), "--", *argv]
        out, err = tmp_path / f"{kind}{n}.out", tmp_path / f"{kind}{n}.err"
        census_file = tmp_path / f"{kind}{n}.census.json"
        env = {**os.environ, "PULSEWIRE_CENSUS_FILE": str(census_file)}
        with open(out, "wb") as fo, open(err, "wb") as fe:
            proc = subprocess.Popen(
                command,
                stdout=fo,
                stderr=fe,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env=env,
            )
        server = Node(kind, proc, out, err, census_file)
        started.append(server)
        deadline = time.monotonic() + 30
        while not server.port:
            for line in out.read_text(errors="replace").splitlines():
                if line.startswith("listening on "):
                    server.port = int(line.rstrip("/").rsplit(":", 1)[1])
            if server.port:
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"{command} did not start:\n{server.output[-3000:]}")
            await asyncio.sleep(0.05)
        return server

    yield start
    for server in started:
        server.kill()


# ------------------------------------------------------------------------------------- RSS


@dataclass
class RssWatch:
    """RSS over an attack: the settled baseline before it and every sample during it."""

    node: Node
    baseline: int
    sampler: RssSampler
    after: int = 0

    @property
    def peak(self) -> int:
        return self.sampler.peak

    @property
    def growth(self) -> int:
        """Peak RSS during the attack minus the baseline before it."""
        return self.peak - self.baseline

    def check(self, limit: int = RSS_LIMIT) -> None:
        assert self.growth < limit, (
            f"RSS grew by {self.growth / MiB:.1f} MiB (baseline {self.baseline / MiB:.1f} MiB, "
            f"peak {self.peak / MiB:.1f} MiB); the limit is {limit / MiB:.0f} MiB"
        )

    def figures(self) -> dict[str, float]:
        return {
            "rss_baseline_mib": round(self.baseline / MiB, 1),
            "rss_growth_mib": round(self.growth / MiB, 1),
            "rss_after_mib": round(self.after / MiB, 1),
        }


@contextlib.asynccontextmanager
async def rss_watch(node: Node) -> AsyncIterator[RssWatch]:
    """Sample ``node``'s RSS while the block runs (baseline: settled RSS before it)."""
    baseline = await node.settle()
    with RssSampler(node.pid) as sampler:
        watch = RssWatch(node, baseline, sampler)
        yield watch
    with contextlib.suppress(OSError, AssertionError):
        watch.after = node.rss()


# ----------------------------------------------------------------------------------- probe


@dataclass
class Probe:
    """A well-behaved client from :data:`PROBE`, served during an attack.

    On a hub it is connected over WebSocket and subscribed to ``probe:feed``; each round
    publishes a number through the HTTP API (from :data:`PUBLISHER`) and waits for its push.
    On an echo server each round sends a text message and waits for its echo. A round that
    fails or takes longer than :data:`PROBE_DEADLINE` counts as a failure; after a failure the
    probe reconnects.
    """

    node: Node
    interval: float = 0.1
    rounds: int = 0
    failures: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    _task: asyncio.Task[None] | None = None
    _client: WsClient | None = None
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def start(self) -> None:
        await self._connect()
        await self._round()  # served before the attack, or the probe itself is broken
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task
        if self._client is not None:
            await self._client.close()

    def check(self, min_rounds: int = 3) -> None:
        """The probe was served throughout: no failure and at least ``min_rounds`` rounds."""
        assert not self.failures, f"the probe was not served: {self.failures[:5]}"
        assert self.rounds >= min_rounds, f"only {self.rounds} probe rounds during the attack"

    def figures(self) -> dict[str, Any]:
        ordered = sorted(self.latencies)
        return {
            "probe_rounds": self.rounds,
            "probe_failures": len(self.failures),
            "probe_p50_ms": round(ordered[len(ordered) // 2] * 1000, 1) if ordered else None,
            "probe_max_ms": round(ordered[-1] * 1000, 1) if ordered else None,
        }

    async def _connect(self) -> None:
        node = self.node
        client = await WsClient.open(
            node.port, node.path, source=PROBE, subprotocol=node.subprotocol
        )
        if node.kind == "serve":
            await client.connect(make_token("probe"))
            await client.ok("subscribe", {"channel": "probe:feed"})
        self._client = client

    async def _frame(self, client: WsClient) -> Any:
        """The next frame, answering the server's keepalive pings on the way."""
        while True:
            frame = await client.recv_frame(PROBE_DEADLINE)
            assert frame is not None, "EOF"
            if frame.opcode == 0x9:
                await client.send_frame(0xA, frame.payload)
                continue
            if frame.opcode == 0x8:
                raise AssertionError(f"closed: {frame.close_code} {frame.close_reason}")
            return frame

    async def _round(self) -> None:
        client = self._client
        assert client is not None
        started = time.monotonic()
        self.rounds += 1
        if self.node.kind == "echo":
            text = f"probe {self.rounds}"
            await client.send_text(text)
            while True:
                frame = await self._frame(client)
                if frame.opcode == 0x1:
                    assert frame.payload.decode() == text, frame
                    break
        else:
            answer = await http(
                self.node.port,
                "POST",
                "/api/publish",
                body=json.dumps({"channel": "probe:feed", "data": self.rounds}).encode(),
                headers=[
                    ("Content-Type", "application/json"),
                    ("Authorization", f"apikey {API_KEY}"),
                ],
                source=PUBLISHER,
                timeout=PROBE_DEADLINE,
            )
            assert answer.status == 200, answer
            while True:
                frame = await self._frame(client)
                if frame.opcode != 0x1:
                    continue
                message = json.loads(frame.payload)
                if message.get("push") == "publication" and message.get("data") == self.rounds:
                    break
        elapsed = time.monotonic() - started
        self.latencies.append(elapsed)
        assert elapsed < PROBE_DEADLINE, f"round took {elapsed:.2f} s"

    async def _run(self) -> None:
        while not self._stop.is_set():
            try:
                await asyncio.wait_for(self._round(), PROBE_DEADLINE)
            except (AssertionError, OSError, asyncio.TimeoutError) as exc:
                self.failures.append(f"round {self.rounds}: {type(exc).__name__}: {exc}")
                if self._client is not None:
                    await self._client.close()
                    self._client = None
                with contextlib.suppress(AssertionError, OSError, asyncio.TimeoutError):
                    await self._connect()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.interval)


@pytest.fixture
def probe() -> Callable[..., contextlib.AbstractAsyncContextManager[Probe]]:
    @contextlib.asynccontextmanager
    async def run(node: Node, *, min_rounds: int = 3) -> AsyncIterator[Probe]:
        p = Probe(node)
        await p.start()
        try:
            yield p
        finally:
            await p.stop()
        p.check(min_rounds)

    return run


# ---------------------------------------------------------------------------------- report


def record(test: str, **figures: Any) -> None:
    """Append the figures of one attack to ``test-output/adversarial.jsonl``."""
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    line = {"test": test, "time": round(time.time(), 1), **figures}
    with open(REPORT, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(line) + "\n")
