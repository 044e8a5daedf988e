"""Fixtures for production-operation tests: ``pulsewire serve`` as real subprocesses.

* ``serve(*args)``: starts ``pulsewire serve ARGS`` in a new process group (workers included)
  and returns a :class:`Node` (its output lines are collected as they come); every process
  group is killed at teardown.
* ``redis_engine``: a unique ``engine_prefix`` on the local Redis (keys removed afterwards);
  skips, with the reason, while the Redis engine is missing, or the Redis server (a failure
  under CI=true).
* ``write_config(text)``: writes a pulsewire.toml in ``tmp_path`` and returns its path.
* ``Client``: a WebSocket hub client (connect, subscribe, next publication, close code).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

import pulsewire

SCRIPT = str(Path(sys.executable).parent / "pulsewire")
HOST = "127.0.0.1"
START_TIMEOUT = 30.0  # cold interpreters (a supervisor and its workers) on a busy machine
IN_CI = os.environ.get("CI", "").lower() == "true"
API_KEY = "deploy-tests-key"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def skip_or_fail(reason: str) -> None:
    """Skip with ``reason``, except under CI=true where a missing dependency is a failure."""
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: required)")
    pytest.skip(reason)


class Node:
    """A ``pulsewire serve`` subprocess with its stdout and stderr collected line by line."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._changed = asyncio.Event()
        assert proc.stdout is not None and proc.stderr is not None
        self._readers = [
            asyncio.ensure_future(self._collect(proc.stdout, self.stdout)),
            asyncio.ensure_future(self._collect(proc.stderr, self.stderr)),
        ]
        self.port = 0

    async def _collect(self, stream: asyncio.StreamReader, lines: list[str]) -> None:
        async for raw in stream:
            lines.append(raw.decode(errors="replace").rstrip("\n"))
            self._changed.set()
        self._changed.set()

    @property
    def output(self) -> str:
        return "\n".join(self.stdout + self.stderr)

    async def wait_line(
        self, pattern: str, timeout: float = 10.0, *, err: bool = True, nth: int = 1
    ) -> re.Match[str]:
        """The ``nth`` line (of stderr, or stdout with ``err=False``) matching ``pattern``."""
        regex = re.compile(pattern)
        lines = self.stderr if err else self.stdout
        deadline = time.monotonic() + timeout
        while True:
            matches = [m for m in map(regex.search, lines) if m]
            if len(matches) >= nth:
                return matches[nth - 1]
            left = deadline - time.monotonic()
            if left <= 0 or (
                self.proc.returncode is not None and all(r.done() for r in self._readers)
            ):
                raise AssertionError(
                    f"no line matching {pattern!r}; output:\n{self.output[-3000:]}"
                )
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), min(left, 0.5))
            except asyncio.TimeoutError:
                pass

    async def listening(self) -> int:
        """Wait for the ``listening on`` line; returns the port."""
        match = await self.wait_line(
            r"^listening on https?://[^:]+:(\d+)/$", START_TIMEOUT, err=False
        )
        self.port = int(match.group(1))
        return self.port

    async def exit_status(self, timeout: float) -> int:
        status = await asyncio.wait_for(self.proc.wait(), timeout)
        await asyncio.wait_for(asyncio.gather(*self._readers), 5)
        return status

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def kill_group(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture
async def serve() -> AsyncIterator[Callable[..., Awaitable[Node]]]:
    nodes: list[Node] = []

    async def start(*args: str) -> Node:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        proc = await asyncio.create_subprocess_exec(
            SCRIPT,
            "serve",
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
            start_new_session=True,  # its own process group: workers are killed with it
        )
        node = Node(proc)
        nodes.append(node)
        return node

    yield start
    for node in nodes:
        node.kill_group()
        if node.proc.returncode is None:
            await asyncio.wait_for(node.proc.wait(), 10)
        for reader in node._readers:
            reader.cancel()


def redis_available() -> str | None:
    """Why the Redis engine cannot be used here, or None."""
    try:
        import pulsewire.hub.engines.redis  # noqa: F401
    except ImportError as exc:
        return f"the Redis engine (pulsewire/hub/engines/redis.py) is not available yet: {exc}"
    try:
        with socket.create_connection((HOST, 6379), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            if not sock.recv(16).startswith(b"+PONG"):
                return "no Redis answering PING on 127.0.0.1:6379"
    except OSError as exc:
        return f"no Redis server on 127.0.0.1:6379: {exc}"
    return None


@pytest.fixture
def redis_engine() -> Any:
    """``(engine_url, prefix)``: a prefix of its own on Redis DB 0; its keys go afterwards."""
    reason = redis_available()
    if reason is not None and "engine" in reason:
        pytest.skip(reason)  # the engine is not written yet: nothing to test, even in CI
    if reason is not None:
        skip_or_fail(reason)
    prefix = f"pwdeploy-{uuid.uuid4().hex[:10]}"
    yield "redis://127.0.0.1:6379/0", prefix
    import redis

    client = redis.Redis(host=HOST, port=6379, db=0)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@pytest.fixture
def write_config(tmp_path: Path) -> Callable[[str], str]:
    def write(text: str, name: str = "pulsewire.toml") -> str:
        path = tmp_path / name
        path.write_text(text)
        return str(path)

    return write


def redis_config(engine: tuple[str, str], extra: str = "") -> str:
    """A config on the Redis engine: anonymous clients, the API key, a ``news`` namespace."""
    url, prefix = engine
    return (
        f'[hub]\nengine = "{url}"\nengine_prefix = "{prefix}"\nallow_anonymous = true\n'
        f'api_key = "{API_KEY}"\n\n[channel]\nallow_anonymous = true\n\n'
        "[namespaces.news]\nallow_anonymous = true\n" + extra
    )


class Client:
    """A hub client over WebSocket (JSON subprotocol-less frames, one command per message)."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.node = ""
        self._id = 0
        self._pushes: list[dict[str, Any]] = []

    @classmethod
    async def open(cls, url: str, **options: Any) -> Client:
        client = cls(await asyncio.wait_for(pulsewire.connect(url, **options), 10))
        reply = await client.call("connect", {})
        client.node = reply["result"]["node"]
        return client

    async def call(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        self._id += 1
        ident = self._id
        await self.ws.send(json.dumps({"id": ident, "method": method, "params": params}))
        while True:
            message = json.loads(await asyncio.wait_for(self.ws.recv(), 10))
            if message.get("id") == ident:
                return message
            if "push" in message:
                self._pushes.append(message)  # for publication()

    async def subscribe(self, channel: str) -> None:
        reply = await self.call("subscribe", {"channel": channel})
        assert "error" not in reply, reply

    async def publication(self, timeout: float = 10.0) -> Any:
        while True:
            if self._pushes:
                message = self._pushes.pop(0)
            else:
                message = json.loads(await asyncio.wait_for(self.ws.recv(), timeout))
            if message.get("push") == "publication":
                return message["data"]

    async def close_code(self, timeout: float = 10.0) -> int | None:
        """Read until the server closes; returns the close code it sent."""
        try:
            while True:
                await asyncio.wait_for(self.ws.recv(), timeout)
        except pulsewire.ConnectionClosed:
            pass
        return self.ws.close_code  # type: ignore[no-any-return]


async def api(
    port: int, method: str, params: dict[str, Any], key: str = API_KEY
) -> tuple[int, Any]:
    """``POST /api/<method>`` on a fresh connection: (status, JSON body)."""
    body = json.dumps(params).encode()
    reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), 10)
    try:
        writer.write(
            (
                f"POST /api/{method} HTTP/1.1\r\nHost: {HOST}:{port}\r\nConnection: close\r\n"
                f"Authorization: apikey {key}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n"
            ).encode()
            + body
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        lines = head.decode("latin-1").split("\r\n")
        fields = dict(line.lower().split(": ", 1) for line in lines[1:] if line)
        payload = await asyncio.wait_for(reader.readexactly(int(fields["content-length"])), 10)
    finally:
        writer.close()
    return int(lines[0].split()[1]), json.loads(payload)
