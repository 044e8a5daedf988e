"""Fixtures for the security proofs: real servers, hand-driven clients, /metrics scrapes.

* ``hub(config=None, *, limits=None, head_timeout=None, **options)``: an in-process
  :class:`HubServer` on 127.0.0.1:0 (``limits``: :class:`ConnectionLimits`; ``head_timeout``:
  the front door's request-head deadline); closed at teardown.
* ``server_process(*argv, env=None)``: ``pulsewire ARGV`` (``serve`` or ``echo``) or
  ``python serve_hub.py ARGV`` as a subprocess (output to files, never to a pipe that could
  fill), waits for its ``listening on`` line and returns a :class:`ServerProcess` (port, RSS,
  open fds); every process is killed at teardown.
* :class:`WsClient`: a raw WebSocket client over a real socket, optionally bound to another
  loopback source address (127.0.0.2 ...), that sends any frame and reads frames one by one,
  with hub command helpers (``connect``, ``command``, ``reply``).
* :func:`scrape`: ``/metrics`` over HTTP, parsed with prometheus_client's parser.
* :func:`http`: one plain HTTP request on a fresh connection.
* :class:`RssSampler`: samples a process's VmRSS from ``/proc/PID/status`` in a thread.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import resource
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
import pytest
from prometheus_client.parser import text_string_to_metric_families

from pulsewire.hub import ChannelOptions, Hub, HubConfig
from pulsewire.protocol.frames import build_frame
from pulsewire.protocol.handshake import accept_key
from pulsewire.server.app import HubServer
from pulsewire.server.limits import ConnectionLimits

HOST = "127.0.0.1"
SECRET = "security-tests-secret-0123456789abcdef"
API_KEY = "security-tests-key"
WS_PATH = "/connection/websocket"
JSON_PROTOCOL = "pulsewire.v1.json"
TIMEOUT = 5.0
BIN = Path(sys.executable).parent
PULSEWIRE = str(BIN / "pulsewire")
SERVE_HUB = str(Path(__file__).with_name("serve_hub.py"))
MiB = 1 << 20

NAMESPACES = {
    "pub": ChannelOptions(allow_publish=True),
    "feed": ChannelOptions(),
    "lossy": ChannelOptions(slow_consumer="drop"),
}


def hub_config(**changes: Any) -> HubConfig:
    """A config with the tests' secret, API key and namespaces (``changes`` replace fields)."""
    namespaces = {**NAMESPACES, **changes.pop("namespaces", {})}
    base = HubConfig(
        token_hmac_secret=SECRET, api_key=API_KEY, connect_timeout=5.0, namespaces=namespaces
    )
    return base.replace(**changes)


def make_token(
    user: str = "alice", *, ttl: float | None = 600, secret: str = SECRET, **claims: Any
) -> str:
    payload: dict[str, Any] = {"sub": user, **claims}
    if ttl is not None and "exp" not in claims:
        payload["exp"] = int(time.time() + ttl)
    return jwt.encode(payload, secret, algorithm="HS256")


def raise_fd_limit(wanted: int = 16384) -> int:
    """Raise RLIMIT_NOFILE's soft limit towards ``wanted`` (up to the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


# --------------------------------------------------------------------------------- metrics


class Metrics:
    """One /metrics scrape: sample values by (name, labels)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                self.samples[key] = sample.value

    def value(self, name: str, **labels: str) -> float:
        """The sample's value, 0 when absent (a labelled counter not yet touched)."""
        return self.samples.get((name, tuple(sorted(labels.items()))), 0.0)

    def delta(self, before: Metrics, name: str, **labels: str) -> float:
        return self.value(name, **labels) - before.value(name, **labels)


@dataclass
class HttpAnswer:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)


async def read_response(reader: asyncio.StreamReader, timeout: float = TIMEOUT) -> HttpAnswer:
    """A complete HTTP response read by Content-Length (or to EOF without one)."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = [tuple(line.split(": ", 1)) for line in lines[1:] if line]
    answer = HttpAnswer(status, headers, b"")  # type: ignore[arg-type]
    length = answer.header("Content-Length")
    if status == 101:
        pass  # frames follow
    elif length is not None:
        answer.body = await asyncio.wait_for(reader.readexactly(int(length)), timeout)
    elif (answer.header("Content-Type") or "").startswith("text/event-stream"):
        pass  # a stream: the caller reads it
    else:
        answer.body = await asyncio.wait_for(reader.read(), timeout)
    return answer


async def http(
    port: int,
    method: str,
    target: str,
    *,
    body: bytes = b"",
    headers: Sequence[tuple[str, str]] = (),
    host: str | None = None,
    source: str | None = None,
    timeout: float = TIMEOUT,
) -> HttpAnswer:
    """One request on a fresh connection (closed afterwards)."""
    reader, writer = await open_tcp(port, source)
    try:
        lines = [f"{method} {target} HTTP/1.1", f"Host: {host or f'{HOST}:{port}'}"]
        lines += [f"{k}: {v}" for k, v in headers]
        if body or method == "POST":
            lines.append(f"Content-Length: {len(body)}")
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        await writer.drain()
        return await read_response(reader, timeout)
    finally:
        writer.close()


async def scrape(port: int) -> Metrics:
    answer = await http(port, "GET", "/metrics")
    assert answer.status == 200, answer
    return Metrics(answer.body.decode("utf-8"))


async def api(port: int, method: str, params: dict[str, Any], key: str = API_KEY) -> Any:
    answer = await http(
        port,
        "POST",
        f"/api/{method}",
        body=json.dumps(params).encode(),
        headers=[("Content-Type", "application/json"), ("Authorization", f"apikey {key}")],
    )
    assert answer.status == 200, answer
    return json.loads(answer.body)["result"]


async def open_tcp(
    port: int, source: str | None = None, *, rcvbuf: int | None = None, limit: int = 1 << 22
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A TCP connection to HOST:port, from ``source`` (another loopback address) if given."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        if rcvbuf is not None:  # before connect(): the TCP window starts small
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        if source is not None:
            sock.bind((source, 0))
        sock.setblocking(False)
        await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, (HOST, port)), TIMEOUT)
    except BaseException:
        sock.close()
        raise
    return await asyncio.open_connection(sock=sock, limit=limit)


# ------------------------------------------------------------------------------- raw client


@dataclass(frozen=True)
class Frame:
    opcode: int
    payload: bytes
    fin: bool = True
    rsv1: bool = False

    @property
    def close_code(self) -> int | None:
        assert self.opcode == 0x8, self
        return struct.unpack("!H", self.payload[:2])[0] if len(self.payload) >= 2 else None

    @property
    def close_reason(self) -> str:
        return self.payload[2:].decode("utf-8")


class WsClient:
    """A hand-driven WebSocket client (hub commands are JSON text frames)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.status: int | None = None
        self.headers: list[tuple[str, str]] = []
        self.body = b""
        self.ids = 0
        self.pushes: list[dict[str, Any]] = []
        self._inflater: Any = None
        self.sent = [0, 0]
        """Data frames sent and their payload bytes (for traffic metrics)."""
        self.received = [0, 0]
        """Data frames received and their payload bytes (after inflation)."""

    @classmethod
    async def open(
        cls,
        port: int,
        path: str = WS_PATH,
        *,
        source: str | None = None,
        origin: str | None = None,
        host: str | None = None,
        deflate: bool = False,
        subprotocol: str | None = JSON_PROTOCOL,
        headers: Sequence[tuple[str, str]] = (),
        rcvbuf: int | None = None,
        expect: int | None = 101,
    ) -> WsClient:
        """Connect and run the opening handshake; ``expect`` asserts the status (None: any)."""
        reader, writer = await open_tcp(port, source, rcvbuf=rcvbuf)
        client = cls(reader, writer)
        extra = list(headers)
        if origin is not None:
            extra.append(("Origin", origin))
        if subprotocol is not None:
            extra.append(("Sec-WebSocket-Protocol", subprotocol))
        if deflate:
            extra.append(("Sec-WebSocket-Extensions", "permessage-deflate"))
        await client.handshake(path, extra, host or f"{HOST}:{port}")
        if expect is not None:
            assert client.status == expect, (client.status, client.body)
        return client

    async def handshake(self, path: str, headers: Sequence[tuple[str, str]], host: str) -> None:
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [
            f"GET {path} HTTP/1.1",
            f"Host: {host}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}",
            "Sec-WebSocket-Version: 13",
            *(f"{k}: {v}" for k, v in headers),
        ]
        await self.send_raw(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        answer = await read_response(self.reader)
        self.status, self.headers, self.body = answer.status, answer.headers, answer.body
        if self.status == 101:
            assert answer.header("Sec-WebSocket-Accept") == accept_key(key)

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)

    # -- frames ------------------------------------------------------------------------------

    async def send_raw(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def send_frame(
        self, opcode: int, payload: bytes = b"", *, fin: bool = True, rsv1: bool = False
    ) -> None:
        first = (0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode
        if opcode in (0x1, 0x2):
            self.sent[0] += 1
            self.sent[1] += len(payload)
        await self.send_raw(build_frame(first, payload, os.urandom(4)))

    async def send_text(self, text: str) -> None:
        await self.send_frame(0x1, text.encode("utf-8"))

    async def recv_frame(self, timeout: float = TIMEOUT) -> Frame | None:
        """The next frame, or None at EOF (or reset)."""
        try:
            return await asyncio.wait_for(self._recv_frame(), timeout)
        except (asyncio.IncompleteReadError, ConnectionError):
            return None

    async def _recv_frame(self) -> Frame:
        b0, b1 = await self.reader.readexactly(2)
        length = b1 & 0x7F
        if length == 126:
            (length,) = struct.unpack("!H", await self.reader.readexactly(2))
        elif length == 127:
            (length,) = struct.unpack("!Q", await self.reader.readexactly(8))
        assert not b1 & 0x80, "a server never masks"
        payload = await self.reader.readexactly(length)
        if b0 & 0x40:  # permessage-deflate (our messages from the server are one frame each)
            if self._inflater is None:
                self._inflater = zlib.decompressobj(-15)
            payload = self._inflater.decompress(payload + b"\x00\x00\xff\xff")
        if b0 & 0x0F in (0x1, 0x2):
            self.received[0] += 1
            self.received[1] += len(payload)
        return Frame(b0 & 0x0F, payload, bool(b0 & 0x80), bool(b0 & 0x40))

    async def close_frame(self, timeout: float = TIMEOUT) -> Frame:
        """Read (and keep pushes) until the server's Close frame; fails at EOF without one."""
        deadline = time.monotonic() + timeout
        while True:
            frame = await self.recv_frame(max(0.01, deadline - time.monotonic()))
            assert frame is not None, "connection closed without a Close frame"
            if frame.opcode == 0x8:
                return frame
            if frame.opcode == 0x1:
                self.pushes.append(json.loads(frame.payload))

    async def at_eof(self, timeout: float = TIMEOUT) -> bool:
        """Whether the server closes TCP in time (discarding anything before)."""

        async def drain() -> None:
            while await self.reader.read(65536):
                pass

        try:
            await asyncio.wait_for(drain(), timeout)
        except asyncio.TimeoutError:
            return False
        except ConnectionError:
            pass
        return True

    # -- hub commands --------------------------------------------------------------------------

    async def command(self, method: str, params: dict[str, Any] | None = None) -> int:
        self.ids += 1
        message: dict[str, Any] = {"id": self.ids, "method": method}
        if params is not None:
            message["params"] = params
        await self.send_text(json.dumps(message))
        return self.ids

    async def reply(self, cid: int, timeout: float = TIMEOUT) -> dict[str, Any]:
        """The reply to command ``cid`` (pushes before it are kept in :attr:`pushes`)."""
        deadline = time.monotonic() + timeout
        while True:
            frame = await self.recv_frame(max(0.01, deadline - time.monotonic()))
            assert frame is not None, f"EOF while waiting for the reply to {cid}"
            if frame.opcode == 0x8:
                raise AssertionError(
                    f"closed while waiting for {cid}: {frame.close_code} {frame.close_reason}"
                )
            if frame.opcode != 0x1:
                continue
            message = json.loads(frame.payload)
            if message.get("id") == cid:
                return message  # type: ignore[no-any-return]
            self.pushes.append(message)

    async def call(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        return await self.reply(await self.command(method, params))

    async def ok(self, method: str, params: dict[str, Any] | None = None) -> Any:
        answer = await self.call(method, params)
        assert "result" in answer, (method, params, answer)
        return answer["result"]

    async def connect(self, token: str | None = None) -> Any:
        return await self.ok("connect", {"token": token if token is not None else make_token()})

    async def close(self) -> None:
        if not self.writer.is_closing():
            self.writer.close()
        with contextlib.suppress(OSError, asyncio.TimeoutError):
            await asyncio.wait_for(self.writer.wait_closed(), 2)


# ----------------------------------------------------------------------- in-process hub


@pytest.fixture
def hub(
    start_hub_server: Callable[[HubServer], Awaitable[HubServer]],
) -> Callable[..., Awaitable[HubServer]]:
    async def start(
        config: HubConfig | None = None,
        *,
        limits: ConnectionLimits | None = None,
        head_timeout: float | None = None,
        **options: Any,
    ) -> HubServer:
        config = config or hub_config()
        options.setdefault("api_key", config.api_key)
        server = HubServer(Hub(config), HOST, 0, limits=limits, **options)
        if head_timeout is not None:
            server.http.limits.head_timeout = head_timeout
        return await start_hub_server(server)

    return start


@pytest.fixture
async def clients() -> AsyncIterator[list[WsClient]]:
    """A list to put WsClients in: all are closed at teardown."""
    opened: list[WsClient] = []
    yield opened
    await asyncio.gather(*(c.close() for c in opened), return_exceptions=True)


# ---------------------------------------------------------------------- server processes


def rss_bytes(pid: int) -> int:
    """Resident set size of ``pid`` from /proc/PID/status (VmRSS)."""
    with open(f"/proc/{pid}/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


class RssSampler:
    """Samples a process's RSS every ``interval`` seconds in a thread; ``peak`` is the max."""

    def __init__(self, pid: int, interval: float = 0.005) -> None:
        self.pid = pid
        self.interval = interval
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append(rss_bytes(self.pid))
            except (OSError, AssertionError):
                return
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self.samples.append(rss_bytes(self.pid))  # never empty
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    @property
    def peak(self) -> int:
        return max(self.samples)


@dataclass
class ServerProcess:
    proc: subprocess.Popen[bytes]
    out: Path
    err: Path
    port: int = 0
    argv: list[str] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def rss(self) -> int:
        return rss_bytes(self.pid)

    def fds(self) -> int:
        return open_fds(self.pid)

    @property
    def output(self) -> str:
        return self.out.read_text(errors="replace") + self.err.read_text(errors="replace")

    async def settle(self, seconds: float = 0.3) -> int:
        """RSS once it stopped moving (two equal samples ``seconds`` apart, at most 3 s)."""
        last = self.rss()
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            await asyncio.sleep(seconds)
            now = self.rss()
            if abs(now - last) < 256 * 1024:
                return now
            last = now
        return last

    def kill(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)


@pytest.fixture
async def server_process(tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[ServerProcess]]]:
    started: list[ServerProcess] = []

    async def start(*argv: str, env: dict[str, str] | None = None) -> ServerProcess:
        if argv and argv[0] == "serve_hub":
            command = [sys.executable, SERVE_HUB, *argv[1:]]
        else:
            command = [PULSEWIRE, *argv]
        n = len(started)
        out, err = tmp_path / f"server{n}.out", tmp_path / f"server{n}.err"
        with open(out, "wb") as fo, open(err, "wb") as fe:
            proc = subprocess.Popen(
                command,
                stdout=fo,
                stderr=fe,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env={**os.environ, **(env or {})},
            )
        server = ServerProcess(proc, out, err, argv=command)
        started.append(server)
        deadline = time.monotonic() + 30
        while True:
            text = out.read_text(errors="replace")
            for line in text.splitlines():
                if line.startswith("listening on "):
                    server.port = int(line.rstrip("/").rsplit(":", 1)[1])
                    return server
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"{command} did not start:\n{server.output[-3000:]}")
            await asyncio.sleep(0.05)

    yield start
    for server in started:
        server.kill()
