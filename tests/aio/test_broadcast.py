"""pulsewire.broadcast: one message to many connections, never blocking on a slow one."""

from __future__ import annotations

import asyncio
from typing import Any

import pulsewire

TIMEOUT = 5


async def recv(ws: Any) -> Any:
    return await asyncio.wait_for(ws.recv(), TIMEOUT)


def holding_server() -> tuple[set[Any], Any]:
    """A handler that keeps every connection in a set until the client leaves."""
    connections: set[Any] = set()

    async def hold(ws: Any) -> None:
        connections.add(ws)
        try:
            await ws.wait_closed()
        finally:
            connections.discard(ws)

    return connections, hold


async def wait_for_count(connections: set[Any], n: int) -> None:
    for _ in range(500):
        if len(connections) >= n:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{len(connections)} connections, expected {n}")


async def test_every_client_gets_it_compressed_or_not(start_server: Any) -> None:
    connections, hold = holding_server()
    _, url = await start_server(hold, compression="deflate")
    plain = [await pulsewire.connect(url, compression=None) for _ in range(3)]
    deflated = [await pulsewire.connect(url, compression="deflate") for _ in range(3)]
    try:
        await wait_for_count(connections, 6)
        text = "score " * 100  # above the compression threshold
        assert pulsewire.broadcast(connections, text) == 6
        assert pulsewire.broadcast(connections, b"\x00bin") == 6
        for ws in plain + deflated:
            assert await recv(ws) == text
            assert await recv(ws) == b"\x00bin"
        assert {ws.extensions for ws in deflated} == {"permessage-deflate"}
    finally:
        for ws in plain + deflated:
            await ws.close()


async def test_closed_connections_are_skipped(start_server: Any) -> None:
    connections, hold = holding_server()
    _, url = await start_server(hold)
    a = await pulsewire.connect(url)
    b = await pulsewire.connect(url)
    await wait_for_count(connections, 2)
    snapshot = set(connections)
    await b.close()
    for _ in range(100):
        if sum(1 for ws in snapshot if ws.open) == 1:
            break
        await asyncio.sleep(0.01)
    assert pulsewire.broadcast(snapshot, "still here?") == 1
    assert await recv(a) == "still here?"
    await a.close()


async def test_from_client_connections_frames_are_masked(echo_server: str) -> None:
    clients = [await pulsewire.connect(echo_server) for _ in range(3)]
    try:
        # The echo server would fail the connection (1002) on an unmasked frame.
        assert pulsewire.broadcast(clients, "to the server") == 3
        for ws in clients:
            assert await recv(ws) == "to the server"
    finally:
        for ws in clients:
            await ws.close()


async def test_a_slow_reader_is_skipped_and_the_others_get_everything(
    start_server: Any, raw_client: Any
) -> None:
    connections, hold = holding_server()
    server, url = await start_server(hold, compression=None, max_size=2**20, close_timeout=1)
    fast = [await pulsewire.connect(url, compression=None, max_size=2**20) for _ in range(2)]
    slow = await raw_client(server.port, rcvbuf=4096)  # handshake done, never reads
    await wait_for_count(connections, 3)
    message = b"m" * 65536
    counts = []
    peak = 0
    received = [0, 0]

    async def read(i: int, ws: Any) -> None:
        async for _ in ws:
            received[i] += 1

    readers = [asyncio.ensure_future(read(i, ws)) for i, ws in enumerate(fast)]
    for _ in range(300):  # 19.7 MB per client
        counts.append(pulsewire.broadcast(connections, message))
        for ws in connections:
            transport = ws._transport
            if transport is not None:
                peak = max(peak, transport.get_write_buffer_size())
        await asyncio.sleep(0.001)  # let the fast clients read
    for _ in range(500):
        if received == [sum(1 for c in counts if c >= 2)] * 2:
            break
        await asyncio.sleep(0.01)
    skipped = 300 * 3 - sum(counts)
    assert skipped > 200, counts  # the slow reader stopped getting messages
    assert min(counts) >= 2, counts  # never at the expense of the fast ones
    assert received == [300, 300]
    # What the server holds for the slow reader: about its high-water mark plus one message.
    assert peak <= 64 * 1024 + 2 * len(message), peak
    for task in readers:
        task.cancel()
    for ws in fast:
        await ws.close()
    slow.writer.transport.abort()
