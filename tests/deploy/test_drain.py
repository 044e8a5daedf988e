"""SIGTERM drain of a single node: clients are told to reconnect, the process stops in time."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import time

import pytest

from .conftest import API_KEY, HOST, Client, api

pytestmark = pytest.mark.timeout(90)

CONFIG = f"""
[hub]
allow_anonymous = true
api_key = "{API_KEY}"

[channel]
allow_anonymous = true
"""


async def silent_websocket(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A WebSocket that completes the handshake, then never reads nor answers anything."""
    reader, writer = await asyncio.open_connection(HOST, port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        (
            f"GET /connection/websocket HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert head.startswith(b"HTTP/1.1 101"), head
    return reader, writer


async def sse_session(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """An SSE stream with a connected hub session; returns the stream after the reply."""
    reader, writer = await asyncio.open_connection(HOST, port)
    writer.write(f"GET /connection/sse HTTP/1.1\r\nHost: {HOST}:{port}\r\n\r\n".encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert head.startswith(b"HTTP/1.1 200"), head
    event = await asyncio.wait_for(reader.readuntil(b"\n\n"), 10)
    session = json.loads(event.split(b"data: ", 1)[1])["session"]
    body = json.dumps({"id": 1, "method": "connect", "params": {}}).encode()
    send_r, send_w = await asyncio.open_connection(HOST, port)
    send_w.write(
        (
            f"POST /connection/sse/send?session={session} HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
            f"Content-Type: text/plain\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n"
        ).encode()
        + body
    )
    assert (await asyncio.wait_for(send_r.readuntil(b"\r\n\r\n"), 10)).startswith(b"HTTP/1.1 204")
    send_w.close()
    reply = await asyncio.wait_for(reader.readuntil(b"\n\n"), 10)
    assert b'"node"' in reply, reply
    return reader, writer


async def test_sigterm_sends_1012_flushes_and_aborts_silent_clients_at_the_deadline(
    serve, write_config
):
    node = await serve("--config", write_config(CONFIG), "--port", "0", "--drain-timeout", "1.5")
    port = await node.listening()
    url = f"ws://{HOST}:{port}/connection/websocket"
    clients = [await Client.open(url) for _ in range(3)]
    for client in clients:
        await client.subscribe("news")
    silent = await silent_websocket(port)
    sse = await sse_session(port)
    for n in range(3):
        status, _ = await api(port, "publish", {"channel": "news", "data": n})
        assert status == 200

    started = time.monotonic()
    node.signal(signal.SIGTERM)
    for client in clients:  # what was queued comes first, then the close
        assert [await client.publication() for _ in range(3)] == [0, 1, 2]
        assert await client.close_code() == 1012
    told = time.monotonic() - started
    assert told < 1.0, f"clients were told to reconnect after {told:.2f} s"
    node.signal(signal.SIGTERM)  # again (systemd and a supervisor both send one): no effect

    reader, _ = sse[0], sse[1]
    tail = await asyncio.wait_for(reader.read(), 5)  # the stream ends after the push
    disconnect = json.loads(tail.strip().split(b"data: ")[-1])
    assert disconnect["push"] == "disconnect"
    assert (disconnect["code"], disconnect["reconnect"]) == (4000, True)

    assert await node.exit_status(10) == 0
    elapsed = time.monotonic() - started
    # The silent client never answers the close: the node waits for the deadline (1.5 s),
    # not for the WebSocket close timeout (10 s), then aborts it.
    assert 1.3 <= elapsed < 4.5, elapsed
    assert "aborted 1 connection" in node.output
    silent[1].close()


async def test_sigint_drain_ends_as_soon_as_clients_are_gone(serve, write_config):
    node = await serve("--config", write_config(CONFIG), "--port", "0", "--drain-timeout", "20")
    port = await node.listening()
    client = await Client.open(f"ws://{HOST}:{port}/connection/websocket")
    started = time.monotonic()
    node.signal(signal.SIGINT)
    assert await client.close_code() == 1012
    assert await node.exit_status(10) == 0
    assert time.monotonic() - started < 5.0  # well before the 20 s deadline
    assert node.stdout.count(f"listening on http://{HOST}:{port}/") == 1
