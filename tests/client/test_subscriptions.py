"""Subscriptions against the real hub: tokens for private channels, ``since``, subscribing
while reconnecting, callbacks instead of iteration."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import jwt
import pytest

import pulsewire.client
from pulsewire.client import ClientError, Publication, Subscribed

from .conftest import SECRET, until, ws_url


def sub_token(user: str, channel: str, ttl: float = 600) -> str:
    claims = {"sub": user, "channel": channel, "exp": int(time.time() + ttl)}
    return jwt.encode(claims, SECRET, algorithm="HS256")


async def test_private_channel_with_get_token(hub_server, make_token, uniq, fast):
    server = await hub_server()
    channel = uniq("priv")
    calls: list[int] = []

    async def get_token() -> str:
        calls.append(1)
        # the first token has expired already: the hub answers 109, the client asks again
        return sub_token("p", channel, ttl=-60 if len(calls) == 1 else 600)

    async with pulsewire.client.connect(ws_url(server), token=make_token("p"), **fast) as client:
        with pytest.raises(ClientError) as refused:
            await client.subscribe(channel)
        assert refused.value.code == 103
        sub = await client.subscribe(channel, get_token=get_token)
        assert sub.state == "subscribed" and len(calls) == 2
        other = uniq("priv")
        sub2 = await client.subscribe(other, token=sub_token("p", other))
        assert sub2.state == "subscribed"


async def test_since_recovers_from_a_position(hub_server, make_token, uniq, fast):
    server = await hub_server()
    channel = uniq("hist")
    for n in range(1, 5):
        await server.hub.publish(channel, n)
    epoch = (await server.hub.history(channel, limit=0)).position.epoch
    async with pulsewire.client.connect(ws_url(server), token=make_token("s"), **fast) as client:
        sub = await client.subscribe(channel, since=(2, epoch))
        assert sub.recovered
        events = []
        async for event in sub.events():
            events.append(event)
            if isinstance(event, Publication) and event.offset == 4:
                break
    assert isinstance(events[0], Subscribed) and events[0].recovering and events[0].recovered
    assert [e.data for e in events[1:]] == [3, 4]


async def test_subscribe_while_reconnecting(hub_server, make_token, uniq, fast):
    channel = uniq("pub")
    held = asyncio.Event()
    held.set()

    async def on_connect(session: Any) -> None:
        await held.wait()

    server = await hub_server(on_connect=on_connect)
    async with pulsewire.client.connect(ws_url(server), token=make_token("w"), **fast) as client:
        held.clear()
        await server.hub.disconnect_user("w", code=4000, reason="bye")
        await until(lambda: client.state == "connecting")
        subscribing = asyncio.ensure_future(client.subscribe(channel))
        await until(lambda: channel in client.subscriptions)
        assert client.subscriptions[channel].state == "subscribing"
        held.set()
        sub = await subscribing
        assert sub.state == "subscribed" and client.state == "connected"
        await client.publish(channel, "after")  # the hub knows the subscription


async def test_callbacks_instead_of_iteration(hub_server, make_token, uniq, fast):
    server = await hub_server()
    channel = uniq("chat")
    got: list[Any] = []
    async with pulsewire.client.connect(ws_url(server), token=make_token("cb"), **fast) as client:

        async def on_publication(pub: Publication) -> None:  # async callbacks run as tasks
            got.append(pub.data)

        sub = await client.subscribe(
            channel, on_publication=on_publication, on_subscribed=got.append
        )
        await client.publish(channel, "x")
        await until(lambda: "x" in got)
        with pytest.raises(RuntimeError):
            await sub.events().__anext__()
        await sub.unsubscribe()
    assert isinstance(got[0], Subscribed) and got[1:] == ["x"]


async def test_publish_with_idempotency_key(hub_server, make_token, uniq, fast):
    server = await hub_server()
    channel = uniq("hist")
    async with pulsewire.client.connect(ws_url(server), token=make_token("k"), **fast) as client:
        await client.subscribe(channel)
        first = await client.publish(channel, "once", idempotency_key="k-1")
        again = await client.publish(channel, "once", idempotency_key="k-1")
        assert first == again and first is not None and first.offset == 1
        history = await client.history(channel)
        assert [p.data for p in history.publications] == ["once"]
