"""Backpressure across nodes (issue #15), with real ``pulsewire serve`` processes on Redis.

Node B has many local subscribers of one channel (raw WebSocket clients that read and
discard, so the test process stays cheap) and a small ``overload_lag``; the HTTP API on node
A publishes to that channel as fast as a few keep-alive connections can. B runs under a CPU
quota during the storm, as a container with a CPU limit does (the test stops and continues
it, 8 ms of every 10, like the kernel's CFS throttling): unthrottled, B delivered as fast as
this machine's one process could publish and read, and whether it fell behind depended on
what else the machine ran. B's fan-out falls behind the bound, B tells the cluster, and A's
publishes wait and are refused with 115 (HTTP 503 with ``Retry-After``) instead of piling up
on B; with ``overload_lag = 0`` (backpressure off) the same storm is never refused. The
numbers are printed (``-s``).
One layer down: test_backpressure.py, test_overload.py.

Without Redis the test skips (and fails under ``CI=true``).
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import json
import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import API_KEY, WS_PATH, encode_token
from .test_cluster import (
    HOST,
    REDIS_PORT,
    Node,
    engine_url,
    redis_keys_cleanup,
    spawn_nodes,
    stop_nodes,
)
from .test_engine_faults import metric

pytestmark = pytest.mark.timeout(120)

SUBSCRIBERS = 150  # under the per-address burst of new connections (200)
STORM = 4.0  # seconds of publishing
PUBLISHERS = 8  # keep-alive API connections on node A
DATA = "x" * 4000
QUOTA_OFF, QUOTA_ON = 0.008, 0.002  # node B stopped, then running, seconds


@pytest.fixture
def prefix() -> Iterator[str]:
    engine_url("redis")
    name = f"pwbp-{uuid.uuid4().hex[:10]}"
    yield name
    redis_keys_cleanup(REDIS_PORT, name)


def frame(text: str) -> bytes:
    """A masked WebSocket text frame, as a client sends."""
    payload = text.encode()
    mask = os.urandom(4)
    length = len(payload)
    head = bytes([0x81]) + (
        bytes([0x80 | length]) if length < 126 else bytes([0x80 | 126]) + length.to_bytes(2, "big")
    )
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


class Discard(asyncio.Protocol):
    """Reads everything and keeps nothing but a count; ``subscribed`` once the reply to
    the subscribe command (id 2) has come."""

    def __init__(self) -> None:
        self.seen = b""
        self.received = 0
        self.subscribed = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        self.received += len(data)
        if not self.subscribed.done():
            self.seen += data
            if b'"id":2' in self.seen:
                self.subscribed.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.subscribed.done():
            self.subscribed.set_exception(ConnectionError("closed before subscribing"))


async def subscriber(node: Node, channel: str, n: int) -> tuple[asyncio.Transport, Discard]:
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_connection(Discard, HOST, node.port)
    key = base64.b64encode(os.urandom(16)).decode()
    token = encode_token(f"sub{n}")
    transport.write(
        (
            f"GET {WS_PATH} HTTP/1.1\r\nHost: {HOST}:{node.port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: pulsewire.v1.json\r\n\r\n"
        ).encode()
        + frame(json.dumps({"id": 1, "method": "connect", "params": {"token": token}}))
        + frame(json.dumps({"id": 2, "method": "subscribe", "params": {"channel": channel}}))
    )
    await asyncio.wait_for(protocol.subscribed, 20)
    return transport, protocol


async def publisher(
    node: Node, channel: str, until: float, codes: collections.Counter[Any]
) -> None:
    """Publish over one keep-alive connection until ``until``; count the answers."""
    reader, writer = await asyncio.open_connection(HOST, node.port)
    body = json.dumps({"channel": channel, "data": DATA}).encode()
    request = (
        f"POST /api/publish HTTP/1.1\r\nHost: {HOST}\r\nAuthorization: apikey {API_KEY}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    try:
        while time.monotonic() < until:
            writer.write(request)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            lines = head.decode("latin-1").split("\r\n")
            headers = dict(line.lower().split(": ", 1) for line in lines[1:] if line)
            answer = json.loads(await reader.readexactly(int(headers["content-length"])))
            status = int(lines[0].split(" ")[1])
            code = answer["error"]["code"] if "error" in answer else 0
            codes[(status, code, headers.get("retry-after"))] += 1
    finally:
        writer.close()


async def throttle(node: Node, until: float) -> None:
    """A CPU quota for ``node`` until ``until``: stopped 8 ms of every 10 (SIGSTOP/SIGCONT),
    left running afterwards whatever happens."""
    try:
        while time.monotonic() < until and node.alive():
            node.proc.send_signal(signal.SIGSTOP)
            await asyncio.sleep(QUOTA_OFF)
            node.proc.send_signal(signal.SIGCONT)
            await asyncio.sleep(QUOTA_ON)
    finally:
        with contextlib.suppress(ProcessLookupError):
            node.proc.send_signal(signal.SIGCONT)


async def storm(a: Node, b: Node, channel: str) -> collections.Counter[Any]:
    subs = [await subscriber(b, channel, n) for n in range(SUBSCRIBERS)]
    try:
        codes: collections.Counter[Any] = collections.Counter()
        until = time.monotonic() + STORM
        await asyncio.gather(
            throttle(b, until), *(publisher(a, channel, until, codes) for _ in range(PUBLISHERS))
        )
        print(f"\nanswers on A (status, code, Retry-After): {dict(codes)}")
        accepted = sum(n for (_, code, _), n in codes.items() if code == 0)
        read = sum(p.received for _, p in subs)
        # what B had delivered when the storm ended, against what A accepted (~4 KB each)
        print(f"B's subscribers read {read / (accepted * SUBSCRIBERS * len(DATA)):.0%} of it")
        return codes
    finally:
        for transport, _ in subs:
            transport.close()


def start(tmp_path: Path, prefix: str, extra: str) -> list[Node]:
    url = engine_url("redis")
    names = [f"{prefix}-a", f"{prefix}-b"]
    hub_extra = f"{extra}\nclient_queue_max_bytes = 67108864\n"
    return spawn_nodes(
        tmp_path, engines=[url, url], prefix=prefix, names=names, hub_extra=hub_extra
    )


async def test_a_node_behind_on_delivery_holds_publishers_on_the_other_node(
    tmp_path: Path, prefix: str
) -> None:
    a, b = start(tmp_path, prefix, "overload_lag = 0.1\noverload_wait = 0.1")
    try:
        codes = await storm(a, b, f"live:{uuid.uuid4().hex[:8]}")
        refused = sum(n for (status, code, _), n in codes.items() if code == 115)
        assert refused, f"no publish refused: {codes}"
        assert all((status, retry) == (503, "1") for (status, code, retry) in codes if code == 115)
        assert set(code for _, code, _ in codes) <= {0, 115}
        assert await metric(a, "pulsewire_publish_overloaded_total") == refused
        assert "holding publishers" in b.log()
    finally:
        stop_nodes([a, b])


async def test_with_backpressure_off_nothing_is_refused(tmp_path: Path, prefix: str) -> None:
    a, b = start(tmp_path, prefix, "overload_lag = 0")
    try:
        codes = await storm(a, b, f"live:{uuid.uuid4().hex[:8]}")
        assert set(code for _, code, _ in codes) == {0}, codes
        assert await metric(a, "pulsewire_publish_overloaded_total") == 0
        assert await metric(b, "pulsewire_overloaded") == 0
    finally:
        stop_nodes([a, b])
