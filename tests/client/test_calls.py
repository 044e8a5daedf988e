"""Calls and lost connections, against the scripted fake hub: a call in flight when the
connection is lost raises ConnectionLost (code 0), an unanswered one ClientTimeout (code -1);
calls made while reconnecting wait for the connection."""

from __future__ import annotations

import asyncio

import pytest

import pulsewire.client
from pulsewire.client import ClientTimeout, ConnectionLost

from .fakehub import FakeHub, FakeSession

CONNECTED = {"client": "c1", "user": "u", "version": 1, "node": "n1", "transport": "websocket"}


async def connected(
    fake_hub: FakeHub, **options: object
) -> tuple[pulsewire.client.Client, FakeSession]:
    connecting = asyncio.ensure_future(
        pulsewire.client.connect(fake_hub.url, token="t", min_reconnect_delay=0.01, **options)
    )
    session = await fake_hub.session()
    await session.reply(await session.command("connect"), CONNECTED)
    return await connecting, session


async def test_lost_timed_out_and_waiting_calls(fake_hub: FakeHub) -> None:
    client, session = await connected(fake_hub, timeout=0.5)
    try:
        rpc = asyncio.ensure_future(client.rpc("slow"))
        await session.command("rpc")  # never answered
        await session.close(4000, "restart")
        with pytest.raises(ConnectionLost) as lost:
            await rpc
        assert lost.value.code == 0
        # made while reconnecting: sent once connected again
        waiting = asyncio.ensure_future(client.rpc("later", 1))
        session = await fake_hub.session()
        await session.reply(await session.command("connect"), CONNECTED)
        command = await session.command("rpc")
        assert command["params"] == {"method": "later", "data": 1}
        await session.reply(command, {"data": "done"})
        assert await waiting == "done"
        # never answered at all
        with pytest.raises(ClientTimeout) as timed_out:
            await client.rpc("never")
        assert timed_out.value.code == -1 and isinstance(timed_out.value, TimeoutError)
    finally:
        await client.close()
