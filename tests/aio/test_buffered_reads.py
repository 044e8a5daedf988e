"""The asyncio connection reads into the core's memory (``asyncio.BufferedProtocol``): large
and small messages, whole, fragmented and trickled, on asyncio's loop and on uvloop, over
real loopback sockets, on both receive paths of the core (the ``parser`` fixture)."""

from __future__ import annotations

import asyncio
import os
import random
import socket
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

import pulsewire
from pulsewire.protocol.frames import build_frame

TIMEOUT = 20  # generous: the machine may be loaded; every wait below is bounded by it
KiB = 1024
MiB = 1024 * KiB

pytestmark = pytest.mark.usefixtures("parser")


def loop_runner(name: str) -> Callable[[Coroutine[Any, Any, Any]], Any]:
    if name == "asyncio":
        return asyncio.run
    try:
        import uvloop
    except ImportError:
        if os.environ.get("CI") == "true":
            raise
        pytest.skip("uvloop is not installed")
    return uvloop.run  # type: ignore[no-any-return]


LOOPS = pytest.mark.parametrize("loop", ["asyncio", "uvloop"])


async def echo(ws: Any) -> None:
    async for message in ws:
        await ws.send(message)


def payloads() -> list[str | bytes]:
    rng = random.Random(15)
    sizes = [0, 1, 125, 126, 65535, 65536, 65537, 300 * KiB, MiB - 100]
    binary: list[str | bytes] = [rng.randbytes(n) for n in sizes]
    text: list[str | bytes] = [rng.randbytes(n // 2).hex() for n in sizes]
    return binary + text


@LOOPS
def test_large_and_small_messages_round_trip(loop: str) -> None:
    async def main() -> None:
        async with pulsewire.serve(echo, "127.0.0.1", 0, max_size=2 * MiB) as server:
            url = f"ws://127.0.0.1:{server.port}/"
            async with pulsewire.connect(url, max_size=2 * MiB) as ws:
                assert isinstance(ws, asyncio.BufferedProtocol)
                (peer,) = server.connections
                assert isinstance(peer, asyncio.BufferedProtocol)
                # Pipelined: several frames per read, and frames across reads.
                messages = payloads()
                for message in messages:
                    await ws.send(message)
                for message in messages:
                    assert await asyncio.wait_for(ws.recv(), TIMEOUT) == message
                # Fragmented, large.
                parts = [os.urandom(100 * KiB) for _ in range(5)]
                await ws.send(parts)
                assert await asyncio.wait_for(ws.recv(), TIMEOUT) == b"".join(parts)

    loop_runner(loop)(asyncio.wait_for(main(), 4 * TIMEOUT))


@LOOPS
def test_a_trickled_large_frame_arrives_whole(loop: str) -> None:
    # A raw client writes one masked 64 KiB frame in small pieces with pauses: the server
    # reads it in many reads, behind its first bytes, and echoes it once.
    payload = os.urandom(64 * KiB)
    frame = build_frame(0x82, payload, os.urandom(4))

    async def main() -> bytes:
        async with pulsewire.serve(echo, "127.0.0.1", 0) as server:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            key = "dGhlIHNhbXBsZSBub25jZQ=="
            writer.write(
                (
                    "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                    f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                    "Sec-WebSocket-Version: 13\r\n\r\n"
                ).encode()
            )
            await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
            for i in range(0, len(frame), 5000):
                writer.write(frame[i : i + 5000])
                await writer.drain()
                await asyncio.sleep(0.002)  # separate segments, hence separate reads
            header = await asyncio.wait_for(reader.readexactly(10), TIMEOUT)
            assert header[:2] == b"\x82\x7f"
            echoed = await asyncio.wait_for(reader.readexactly(len(payload)), TIMEOUT)
            writer.close()
            return echoed

    assert loop_runner(loop)(asyncio.wait_for(main(), 3 * TIMEOUT)) == payload
