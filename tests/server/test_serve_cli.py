"""``pulsewire serve``, the console script, as a subprocess."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import pulsewire
from pulsewire.server.environment import OTHER_VARIABLES, PREFIX

SCRIPT = str(Path(sys.executable).parent / "pulsewire")
START_TIMEOUT = 20.0  # a cold interpreter on a busy machine


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def http_get(port: int, target: str) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        lines = head.decode("latin-1").split("\r\n")
        fields = dict(line.lower().split(": ", 1) for line in lines[1:] if line)
        body = await asyncio.wait_for(reader.readexactly(int(fields["content-length"])), 5)
    finally:
        writer.close()
    return int(lines[0].split()[1]), body


async def api_post(port: int, method: str, params: dict, key: str) -> tuple[int, dict]:
    body = json.dumps(params).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(
            (
                f"POST /api/{method} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                f"Authorization: apikey {key}\r\nContent-Length: {len(body)}\r\n\r\n"
            ).encode()
            + body
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        lines = head.decode("latin-1").split("\r\n")
        fields = dict(line.lower().split(": ", 1) for line in lines[1:] if line)
        payload = await asyncio.wait_for(reader.readexactly(int(fields["content-length"])), 5)
    finally:
        writer.close()
    return int(lines[0].split()[1]), json.loads(payload)


async def start(*args: str, environ: dict[str, str] | None = None) -> asyncio.subprocess.Process:
    """``pulsewire serve ARGS`` with this environment less the ``PULSEWIRE_*`` variables
    that set config keys or that a test run may set (a developer's would change what the
    node does or warns about), plus ``environ``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(PREFIX) or k in OTHER_VARIABLES}
    env.update(environ or {}, PYTHONUNBUFFERED="1")
    return await asyncio.create_subprocess_exec(
        SCRIPT,
        "serve",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )


@pytest.fixture
async def demo_server() -> AsyncIterator[tuple[asyncio.subprocess.Process, int, list[str]]]:
    port = free_port()
    proc = await start("--demo", "--port", str(port))
    lines: list[str] = []
    try:
        while True:
            raw = await asyncio.wait_for(proc.stdout.readline(), START_TIMEOUT)  # type: ignore[union-attr]
            if not raw:
                stderr = await proc.stderr.read()  # type: ignore[union-attr]
                raise AssertionError(f"pulsewire serve exited: {stderr.decode()[-2000:]}")
            lines.append(raw.decode().rstrip("\n"))
            if lines[-1].startswith("listening on"):
                break
        yield proc, port, lines
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_serve_demo_listens_answers_and_stops_on_sigterm(demo_server):
    proc, port, lines = demo_server
    assert lines[-1] == f"listening on http://127.0.0.1:{port}/"
    assert any("demo mode" in line for line in lines)

    status, body = await http_get(port, "/health")
    assert status == 200
    assert json.loads(body)["status"] == "ok"

    # a demo token, a WebSocket session, a publication through the API with the demo key
    status, body = await http_get(port, "/demo/token?user=alice")
    assert status == 200
    token = json.loads(body)["token"]
    url = f"ws://127.0.0.1:{port}/connection/websocket"
    async with pulsewire.connect(url) as ws:
        await ws.send(json.dumps({"id": 1, "method": "connect", "params": {"token": token}}))
        assert json.loads(await ws.recv())["result"]["user"] == "alice"
        await ws.send(json.dumps({"id": 2, "method": "subscribe", "params": {"channel": "chat:t"}}))
        messages = [json.loads(await ws.recv()) for _ in range(2)]  # own join, then the reply
        assert {m.get("push", "reply") for m in messages} == {"join", "reply"}
        status, answer = await api_post(port, "publish", {"channel": "chat:t", "data": 7}, "demo")
        assert status == 200 and answer["result"]["offset"] == 1
        assert json.loads(await ws.recv())["data"] == 7

        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 5) == 0
        await asyncio.wait_for(ws.wait_closed(), 5)
        # shutdown: clients are told to reconnect (elsewhere), never "don't reconnect"
        assert ws.close_code is not None
        assert not 4500 <= ws.close_code <= 4999, ws.close_code


async def test_serve_demo_stops_on_sigint(demo_server):
    proc, _, _ = demo_server
    proc.send_signal(signal.SIGINT)
    assert await asyncio.wait_for(proc.wait(), 5) == 0


async def test_serve_demo_refuses_public_host_without_api_key():
    proc = await start("--demo", "--host", "0.0.0.0", "--port", str(free_port()))
    stdout, stderr = await asyncio.wait_for(proc.communicate(), START_TIMEOUT)
    assert proc.returncode == 2
    assert b"--api-key" in stderr
    assert b"listening" not in stdout


async def test_serve_reports_a_busy_port():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = await start("--port", str(port))
        _, stderr = await asyncio.wait_for(proc.communicate(), START_TIMEOUT)
    assert proc.returncode == 1
    assert b"cannot start" in stderr
