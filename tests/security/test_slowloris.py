"""Slow-loris: 1,000 handshakes trickled one byte at a time.

Each trickling connection holds a socket and a little parser state until the request-head
deadline (``head_timeout``, 2 s here, 10 s by default) answers it with 408 and closes it. While
they trickle, a normal client connects, subscribes and receives a publication promptly.
Spread over 249 loopback addresses, the 1,000 connections are admitted and cut at the
deadline; from one address, all but the per-IP cap are refused at once with 503.
"""

from __future__ import annotations

import asyncio
import json
import socket
import statistics
import time
from dataclasses import dataclass, field

import pytest

from .conftest import (
    HOST,
    WS_PATH,
    WsClient,
    api,
    hub_config,
    make_token,
    raise_fd_limit,
    scrape,
)

CONNECTIONS = 1000
HEAD_TIMEOUT = 2.0
TRICKLE_INTERVAL = 0.2
PROMPT = 2.0
"""A normal client's connect + subscribe + publish-to-receive must take less than this."""


@dataclass
class Trickler:
    sock: socket.socket
    connected_at: float
    sent: int = 0
    answer: bytes = b""
    answered_at: float | None = None
    eof_at: float | None = None

    @property
    def status(self) -> int | None:
        if not self.answer.startswith(b"HTTP/1.1 "):
            return None
        return int(self.answer[9:12])


@dataclass
class Trickle:
    """Opens connections and trickles a WebSocket handshake into them, one byte per tick."""

    port: int
    request: bytes
    conns: list[Trickler] = field(default_factory=list)

    async def open(self, sources: list[str], count: int) -> None:
        loop = asyncio.get_running_loop()

        async def one(source: str) -> None:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setblocking(False)
            try:
                sock.bind((source, 0))
                await asyncio.wait_for(loop.sock_connect(sock, (HOST, self.port)), 10)
            except BaseException:
                sock.close()
                raise
            conn = Trickler(sock, time.monotonic())
            self.conns.append(conn)
            loop.add_reader(sock.fileno(), self._readable, conn)

        for start in range(0, count, 100):
            await asyncio.gather(
                *(one(sources[i % len(sources)]) for i in range(start, start + 100))
            )

    def _readable(self, conn: Trickler) -> None:
        try:
            data = conn.sock.recv(4096)
        except BlockingIOError:
            return
        except ConnectionError:
            data = b""
        if data:
            if conn.answered_at is None:
                conn.answered_at = time.monotonic()
            conn.answer += data
            return
        conn.eof_at = time.monotonic()
        asyncio.get_running_loop().remove_reader(conn.sock.fileno())

    async def run(self, until: asyncio.Event) -> None:
        """Send the next byte of the request on every open connection each tick."""
        while not until.is_set():
            for conn in self.conns:
                if conn.eof_at is None and conn.sent < len(self.request):
                    try:
                        conn.sent += conn.sock.send(self.request[conn.sent : conn.sent + 1])
                    except (BlockingIOError, ConnectionError):
                        pass
            try:
                await asyncio.wait_for(until.wait(), TRICKLE_INTERVAL)
            except asyncio.TimeoutError:
                pass

    def close(self) -> None:
        loop = asyncio.get_running_loop()
        for conn in self.conns:
            if conn.eof_at is None:
                loop.remove_reader(conn.sock.fileno())
            conn.sock.close()

    @property
    def done(self) -> bool:
        return all(c.eof_at is not None for c in self.conns)


async def normal_client(port: int, channel: str) -> float:
    """Seconds for connect + subscribe + a publication published over the API to arrive."""
    started = time.monotonic()
    client = await WsClient.open(port)
    try:
        await client.connect(make_token("normal"))
        await client.ok("subscribe", {"channel": channel})
        await api(port, "publish", {"channel": channel, "data": {"n": 1}})
        while not client.pushes:
            frame = await client.recv_frame()
            assert frame is not None and frame.opcode == 0x1, frame
            client.pushes.append(json.loads(frame.payload))
        assert client.pushes[0]["data"] == {"n": 1}
        return time.monotonic() - started
    finally:
        await client.close()


async def _attack(server, sources: list[str]) -> tuple[Trickle, list[float], float]:  # type: ignore[no-untyped-def]
    """Run the trickle; three normal clients during it. Returns (trickle, latencies, total)."""
    request = (
        f"GET {WS_PATH} HTTP/1.1\r\nHost: {HOST}:{server.port}\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\n\r\n"
    ).encode()
    trickle = Trickle(server.port, request)
    stop = asyncio.Event()
    started = time.monotonic()
    try:
        await trickle.open(sources, CONNECTIONS)
        runner = asyncio.ensure_future(trickle.run(stop))
        latencies = []
        for i in range(3):  # while the trickle is in progress
            await asyncio.sleep(HEAD_TIMEOUT / 4)
            latencies.append(await normal_client(server.port, f"feed:normal-{i}"))
        deadline = time.monotonic() + HEAD_TIMEOUT + 10
        while not trickle.done and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        stop.set()
        await runner
        return trickle, latencies, time.monotonic() - started
    finally:
        trickle.close()


async def _start(server_process, tmp_path, *extra: str):  # type: ignore[no-untyped-def]
    if raise_fd_limit(16384) < 2 * CONNECTIONS + 200:  # the server process inherits it
        pytest.skip("RLIMIT_NOFILE's hard limit is too low for 1,000 connections")
    cfg = hub_config()
    config = tmp_path / "hub.toml"
    config.write_text(
        f'[hub]\ntoken_hmac_secret = "{cfg.token_hmac_secret}"\napi_key = "{cfg.api_key}"\n'
        "[namespaces.feed]\n"
    )
    return await server_process(
        "serve_hub", "--config", str(config), "--head-timeout", str(HEAD_TIMEOUT), *extra
    )


async def test_trickled_handshakes_from_many_addresses_are_cut_at_the_head_deadline(
    server_process, tmp_path
):
    server = await _start(server_process, tmp_path)
    before = await scrape(server.port)
    sources = [f"127.0.0.{i}" for i in range(2, 251)]
    trickle, latencies, total = await _attack(server, sources)
    after = await scrape(server.port)
    waits = [c.answered_at - c.connected_at for c in trickle.conns if c.answered_at is not None]
    print(
        f"\n{CONNECTIONS} trickled handshakes from {len(sources)} addresses: normal client "
        f"{', '.join(f'{t:.3f}' for t in latencies)} s; 408 after "
        f"{min(waits):.2f}-{max(waits):.2f} s (median {statistics.median(waits):.2f}); "
        f"bytes sent per connection {min(c.sent for c in trickle.conns)}-"
        f"{max(c.sent for c in trickle.conns)}; all done in {total:.1f} s"
    )
    assert len(trickle.conns) == CONNECTIONS
    assert max(latencies) < PROMPT, latencies
    assert {c.status for c in trickle.conns} == {408}
    assert all(c.eof_at is not None for c in trickle.conns), "every trickler is disconnected"
    assert min(waits) >= HEAD_TIMEOUT - 0.1
    assert max(waits) < HEAD_TIMEOUT + 3.0
    assert max(c.sent for c in trickle.conns) < 40  # the head never completed
    assert after.delta(before, "pulsewire_refusals_total", status="408") == CONNECTIONS
    assert after.value("pulsewire_tcp_connections") == 1  # the scrape itself


async def test_trickled_handshakes_from_one_address_are_refused_at_once(server_process, tmp_path):
    cap = 20
    server = await _start(server_process, tmp_path, "--max-per-ip", str(cap))
    before = await scrape(server.port)
    trickle, latencies, total = await _attack(server, ["127.0.0.3"])
    after = await scrape(server.port)
    refused = [c for c in trickle.conns if c.status == 503]
    cut = [c for c in trickle.conns if c.status == 408]
    waits = [c.answered_at - c.connected_at for c in refused]  # type: ignore[operator]
    print(
        f"\n{CONNECTIONS} trickled handshakes from one address (cap {cap}): normal client "
        f"{', '.join(f'{t:.3f}' for t in latencies)} s; {len(refused)} refused with 503 after "
        f"median {statistics.median(waits) * 1000:.0f} ms (max {max(waits) * 1000:.0f} ms), "
        f"{len(cut)} cut with 408; all done in {total:.1f} s"
    )
    assert max(latencies) < PROMPT, latencies
    assert len(refused) == CONNECTIONS - cap
    assert len(cut) == cap
    assert statistics.median(waits) < 0.5
    assert max(waits) < HEAD_TIMEOUT  # refused at admission, not at the deadline
    assert all(c.eof_at is not None for c in trickle.conns)
    assert after.delta(before, "pulsewire_refusals_total", status="503") == CONNECTIONS - cap
    assert after.delta(before, "pulsewire_refusals_total", status="408") == cap
