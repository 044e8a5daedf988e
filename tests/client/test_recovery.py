"""Reconnecting and recovering: publications missed while disconnected arrive once, in
order, with ``recovered`` true; ``recovered`` false when history cannot give them; the
hub's ``resubscribe`` (2500); tokens on 4002; no reconnect after 4500-4999; several URLs.

The hub's ``on_connect`` hook holds reconnecting clients at a gate while the test publishes,
so that what they miss is decided by the test, not by timing.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest

import pulsewire.client
from pulsewire.client import ClientClosed, Publication, StateChange, Subscribed
from pulsewire.hub.engines.memory import MemoryEngine

from .conftest import HOST, hub_config, until, ws_url


class Gate:
    """An ``on_connect`` hook that holds connections while closed."""

    def __init__(self) -> None:
        self.open = asyncio.Event()
        self.open.set()
        self.waiting = 0

    async def __call__(self, session: Any) -> None:
        self.waiting += 1
        await self.open.wait()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def events_until(sub: pulsewire.client.Subscription, offset: int) -> list[Any]:
    """The subscription's events up to the publication with ``offset`` (within 5 s)."""
    events: list[Any] = []

    async def collect() -> list[Any]:
        async for event in sub.events():
            events.append(event)
            if isinstance(event, Publication) and event.offset == offset:
                return events
        raise AssertionError(f"the subscription ended before offset {offset}: {events}")

    try:
        return await asyncio.wait_for(collect(), 5)
    except asyncio.TimeoutError:
        raise AssertionError(f"no offset {offset} in 5 s: {events}") from None


def publications(events: list[Any]) -> list[tuple[int | None, Any]]:
    return [(e.offset, e.data) for e in events if isinstance(e, Publication)]


@pytest.mark.parametrize("codec", ["json", "msgpack"])
async def test_recovery_after_disconnect(hub_server, make_token, uniq, fast, codec):
    gate = Gate()
    server = await hub_server(on_connect=gate)
    channel = uniq("hist")
    changes: list[StateChange] = []
    async with pulsewire.client.connect(
        ws_url(server), token=make_token("rec"), on_state=changes.append, codec=codec, **fast
    ) as client:
        sub = await client.subscribe(channel)
        await server.hub.publish(channel, "a")
        assert publications(await events_until(sub, 1)) == [(1, "a")]
        gate.open.clear()
        await server.hub.disconnect_user("rec", code=4000, reason="server shutting down")
        await until(lambda: gate.waiting == 2)  # reconnected, held in on_connect
        assert sub.state == "subscribing"
        for data in "bcd":
            await server.hub.publish(channel, data)
        gate.open.set()
        events = await events_until(sub, 4)
        await server.hub.publish(channel, "e")
        events += await events_until(sub, 5)
    assert publications(events) == [(2, "b"), (3, "c"), (4, "d"), (5, "e")]
    subscribed = [e for e in events if isinstance(e, Subscribed)]
    assert len(subscribed) == 1
    assert subscribed[0].recovering and subscribed[0].recovered
    assert events.index(subscribed[0]) == 0  # before the recovered publications
    assert [(c.state, c.code) for c in changes] == [
        ("connecting", None),
        ("connected", None),
        ("disconnected", 4000),
        ("connecting", None),
        ("connected", None),
        ("closed", 1000),
    ]


async def test_recovery_fails_when_history_is_gone(hub_server, make_token, uniq, fast):
    gate = Gate()
    server = await hub_server(on_connect=gate)
    channel = uniq("small")  # keeps 2 publications
    async with pulsewire.client.connect(ws_url(server), token=make_token("lost"), **fast) as client:
        sub = await client.subscribe(channel)
        gate.open.clear()
        await server.hub.disconnect_user("lost", code=4000, reason="bye")
        await until(lambda: gate.waiting == 2)
        for n in range(1, 5):
            await server.hub.publish(channel, n)
        gate.open.set()
        await until(lambda: sub.state == "subscribed")
        assert sub.last_subscribed is not None
        assert sub.last_subscribed.recovering and not sub.last_subscribed.recovered
        assert not sub.recovered
        assert sub.position == (4, sub.epoch)  # the new starting point
        await server.hub.publish(channel, 5)
        events = await events_until(sub, 5)
    # nothing from before the new starting point, then live ones
    assert publications(events) == [(5, 5)]


async def test_resubscribe_push_recovers(hub_server, make_token, uniq, fast):
    clock = Clock()
    server = await hub_server(hub_config(history_meta_ttl=600), engine=MemoryEngine(clock=clock))
    channel = uniq("hist")
    async with pulsewire.client.connect(ws_url(server), token=make_token("rs"), **fast) as client:
        sub = await client.subscribe(channel)
        old_epoch = sub.epoch
        await server.hub.publish(channel, "old")
        events = await events_until(sub, 1)
        clock.now += 601  # the stream expires: the next publication starts a new epoch
        await server.hub.publish(channel, "new")  # -> unsubscribe push, 2500, resubscribe
        await until(lambda: sub.last_subscribed is not None and sub.last_subscribed.recovering)
        await server.hub.publish(channel, "newer")
        events += await events_until(sub, 2)
    assert sub.epoch != old_epoch
    subscribed = [e for e in events if isinstance(e, Subscribed)]
    assert [(e.recovering, e.recovered) for e in subscribed] == [(False, False), (True, False)]
    assert publications(events)[-1] == (2, "newer")


async def test_get_token_on_expiry(hub_server, make_token, uniq, fast):
    server = await hub_server()
    calls: list[str] = []

    async def get_token() -> str:
        calls.append("token")
        return make_token("exp")

    async with pulsewire.client.connect(ws_url(server), get_token=get_token, **fast) as client:
        assert calls == ["token"]
        first_id = client.id
        await server.hub.disconnect_user("exp", code=4002, reason="token expired")
        await until(lambda: client.state == "connected" and client.id != first_id)
    assert calls == ["token", "token"]


async def test_refresh(hub_server, make_token, fast):
    server = await hub_server()
    tokens = iter([make_token("r", ttl=3), make_token("r", ttl=600)])
    changes: list[StateChange] = []
    async with pulsewire.client.connect(
        ws_url(server), get_token=lambda: next(tokens), on_state=changes.append, **fast
    ) as client:
        assert client.ttl is not None and client.ttl <= 3
        first_id = client.id
        # refreshed at 90% of the ttl, before the hub would end the session (4002)
        await until(lambda: client.ttl is not None and client.ttl > 500, timeout=10)
        await client.ping()
        assert client.id == first_id and client.state == "connected"
        assert [c.state for c in changes] == ["connecting", "connected"]  # no reconnect
        assert await client.refresh(make_token("r", ttl=None)) is None


async def test_disconnect_without_reconnect_closes(hub_server, make_token, uniq, fast):
    server = await hub_server()
    channel = uniq("pub")
    async with pulsewire.client.connect(ws_url(server), token=make_token("ban"), **fast) as client:
        sub = await client.subscribe(channel)
        await server.hub.disconnect_user("ban", code=4502, reason="banned")
        with pytest.raises(ClientClosed) as closed:
            async for _ in sub:
                pass
        assert (closed.value.code, closed.value.reason) == (4502, "banned")
        assert client.state == "closed"
        with pytest.raises(ClientClosed):
            await client.publish(channel, "x")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


async def test_rotates_through_urls(hub_server, make_token, fast):
    server = await hub_server()
    dead = f"ws://{HOST}:{free_port()}/connection/websocket"
    changes: list[StateChange] = []
    async with pulsewire.client.connect(
        [dead, ws_url(server)], token=make_token("rot"), on_state=changes.append, **fast
    ) as client:
        assert client.url == ws_url(server)
    assert [c.state for c in changes][:4] == [
        "connecting",
        "disconnected",
        "connecting",
        "connected",
    ]


async def test_first_connection_times_out_with_the_last_error(make_token):
    dead = f"ws://{HOST}:{free_port()}/connection/websocket"
    with pytest.raises(pulsewire.client.ClientTimeout) as timed_out:
        await pulsewire.client.connect(
            dead, token=make_token("x"), timeout=0.3, min_reconnect_delay=0.01
        )
    assert "last error" in str(timed_out.value)


async def test_a_recovery_larger_than_a_mebibyte(hub_server, make_token, uniq, fast):
    gate = Gate()
    server = await hub_server(on_connect=gate)
    channel = uniq("hist")
    big = "x" * 60_000
    async with pulsewire.client.connect(ws_url(server), token=make_token("big"), **fast) as client:
        sub = await client.subscribe(channel)
        gate.open.clear()
        await server.hub.disconnect_user("big", code=4000, reason="bye")
        await until(lambda: gate.waiting == 2)
        for n in range(1, 26):  # 1.5 MB in the one connect reply
            await server.hub.publish(channel, f"{n}{big}")
        gate.open.set()
        events = await events_until(sub, 25)
    assert [e.offset for e in events if isinstance(e, Publication)] == list(range(1, 26))
    assert sub.recovered


async def test_expired_token_replaced_by_the_application(hub_server, make_token, fast):
    server = await hub_server()
    changes: list[StateChange] = []
    client = await pulsewire.client.connect(
        ws_url(server), token=make_token("e"), on_state=changes.append, **fast
    )
    try:
        first_id = client.id
        client.token = make_token("e", ttl=-60)  # what the next connects send: refused, 4002
        await server.hub.disconnect_user("e", code=4002, reason="token expired")
        await until(lambda: sum(c.code == 4002 for c in changes) >= 2)
        assert client.state != "closed"
        client.token = make_token("e")
        await until(lambda: client.state == "connected" and client.id != first_id)
    finally:
        await client.close()
