"""An idle connection holds no message queue: the queue is made for messages that arrive while
no ``recv()`` waits, and let go when one waits again (an empty deque is 624 bytes; on a hub,
most connections are idle). Neither the connection nor the frame of ``async for`` / ``recv()``
keeps it while waiting."""

from __future__ import annotations

import asyncio
import collections
import gc
import os
import struct
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from pulsewire.protocol.frames import build_frame

CONNECTIONS = 20
BURST = 5


def deques() -> set[int]:
    return {id(o) for o in gc.get_objects() if type(o) is collections.deque}


def burst() -> bytes:
    """BURST text frames in one write: one read delivers them while the handler is busy."""
    return b"".join(build_frame(0x81, f"m{i}".encode(), os.urandom(4)) for i in range(BURST))


@pytest.mark.parametrize("reading", ["async for", "recv"])
async def test_an_idle_connection_lets_its_message_queue_go(
    reading: str,
    start_server: Callable[..., Awaitable[tuple[Any, str]]],
    raw_client: Callable[..., Awaitable[Any]],
) -> None:
    async def handler(ws: Any) -> None:
        if reading == "async for":
            async for message in ws:
                await ws.send(message)
        else:
            while True:
                await ws.send(await ws.recv())

    server, _ = await start_server(handler)
    clients = [await raw_client(server.port) for _ in range(CONNECTIONS)]
    before = deques()
    for client in clients:
        await client.send_raw(burst())
    for client in clients:
        for i in range(BURST):
            frame = await client.recv_frame()
            assert frame is not None and frame.payload == f"m{i}".encode()
    for _ in range(5):  # the handlers are back in recv(), waiting
        await asyncio.sleep(0)
    kept = deques() - before
    assert len(kept) < CONNECTIONS // 2, (
        f"{len(kept)} queues kept by {CONNECTIONS} idle connections"
    )
    for client in clients:
        await client.send_frame(0x8, struct.pack("!H", 1000))
