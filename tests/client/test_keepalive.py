"""Idle pings: a ping after ``ping_interval`` without a message; no reply within
``ping_timeout`` counts as a lost connection (4005) and the client reconnects."""

from __future__ import annotations

import asyncio

import pulsewire.client
import pulsewire.client.client as client_module
from pulsewire.client import ClientError, StateChange

from .conftest import until
from .fakehub import FakeHub

CONNECTED = {"client": "c1", "user": "u", "version": 1, "node": "n1", "transport": "websocket"}


async def test_unanswered_ping_reconnects(fake_hub: FakeHub) -> None:
    changes: list[StateChange] = []
    connecting = asyncio.ensure_future(
        pulsewire.client.connect(
            fake_hub.url,
            token="t",
            ping_interval=0.05,
            ping_timeout=0.1,
            min_reconnect_delay=0.01,
            on_state=changes.append,
        )
    )
    session = await fake_hub.session()
    await session.reply(await session.command("connect"), CONNECTED)
    client = await connecting
    try:
        await session.command("ping")  # not answered
        second = await fake_hub.session()
        await second.reply(await second.command("connect"), CONNECTED)
        await client.ready()
        lost = [c for c in changes if c.state == "disconnected"]
        assert [(c.code, c.reason) for c in lost] == [(4005, "no reply to ping")]
    finally:
        await client.close()


async def test_connect_error_reply_retries(fake_hub: FakeHub) -> None:
    connecting = asyncio.ensure_future(
        pulsewire.client.connect(fake_hub.url, token="t", min_reconnect_delay=0.01)
    )
    session = await fake_hub.session()
    await session.error(await session.command("connect"), 100, "hook failed")
    second = await fake_hub.session()
    await second.reply(await second.command("connect"), CONNECTED)
    client = await connecting
    assert isinstance(client.last_error, ClientError) and client.last_error.code == 100
    await client.close()


async def test_send(fake_hub: FakeHub) -> None:
    connecting = asyncio.ensure_future(pulsewire.client.connect(fake_hub.url, token="t"))
    session = await fake_hub.session()
    await session.reply(await session.command("connect"), CONNECTED)
    client = await connecting
    sending = asyncio.ensure_future(client.send({"to": "app"}))
    command = await session.command("send")
    assert command["params"] == {"data": {"to": "app"}}
    await session.reply(command, {})
    assert await sending is None
    await client.close()


async def test_refresh_after_108_tries_again(fake_hub: FakeHub) -> None:
    tokens = iter(["t0", "t1", "t2"])
    connecting = asyncio.ensure_future(
        pulsewire.client.connect(fake_hub.url, get_token=lambda: next(tokens))
    )
    session = await fake_hub.session()
    connect = await session.command("connect")
    assert connect["params"]["token"] == "t0"
    await session.reply(connect, {**CONNECTED, "expires": True, "ttl": 1})
    client = await connecting
    refresh = await session.command("refresh")
    assert refresh["params"] == {"token": "t1"}
    await session.error(refresh, 108, "token keys unavailable, try again")
    refresh = await session.command("refresh")
    assert refresh["params"] == {"token": "t2"}
    await session.reply(refresh, {"expires": True, "ttl": 600})
    await until(lambda: client.ttl == 600)
    await client.close()


async def test_4008_waits_as_long_as_the_hub_asks(fake_hub: FakeHub, monkeypatch) -> None:
    waits: list[float] = []
    real_sleep = asyncio.sleep

    async def sleep(delay: float) -> None:  # the client's waits, recorded, not waited
        waits.append(delay)
        await real_sleep(0)

    monkeypatch.setattr(client_module.asyncio, "sleep", sleep)
    connecting = asyncio.ensure_future(
        pulsewire.client.connect(fake_hub.url, token="t", random=lambda: 0.0, ping_interval=None)
    )
    session = await fake_hub.session()
    await session.command("connect")
    reason = "too many failed authentications from your address: retry in 7 s"
    await session.close(4008, reason)
    second = await fake_hub.session()
    await second.reply(await second.command("connect"), CONNECTED)
    client = await connecting
    monkeypatch.undo()
    assert waits == [7.0]  # not the backoff's 0
    await client.close()
