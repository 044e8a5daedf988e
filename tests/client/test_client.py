"""The client against a real HubServer: connect, commands, subscriptions, pushes."""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

import pytest

import pulsewire.client
from pulsewire.client import (
    ClientClosed,
    ClientError,
    ClientInfo,
    Join,
    Leave,
    Message,
    Position,
    PresenceStats,
    Publication,
    Subscribed,
)
from pulsewire.hub import Hub

from .conftest import hub_config, until, ws_url


async def take(sub: pulsewire.client.Subscription, n: int) -> list[Publication]:
    async def collect() -> list[Publication]:
        pubs = []
        async for pub in sub:
            pubs.append(pub)
            if len(pubs) == n:
                break
        return pubs

    return await asyncio.wait_for(collect(), 5)


async def test_connect_subscribe_publish_iterate(hub_server, make_token, uniq, fast):
    server = await hub_server()
    channel = uniq("chat")
    async with pulsewire.client.connect(ws_url(server), token=make_token("ann"), **fast) as client:
        assert client.state == "connected"
        assert client.user == "ann"
        assert client.id and client.node
        sub = await client.subscribe(channel)
        assert sub.state == "subscribed" and sub.recoverable and not sub.server_side
        assert client.subscriptions == {channel: sub}
        first = await client.publish(channel, {"text": "hi"})
        assert isinstance(first, Position) and first.offset == 1
        await sub.publish("second")
        await server.hub.publish(channel, "third", tags={"kind": "api"})
        pubs = await take(sub, 3)
    assert [p.data for p in pubs] == [{"text": "hi"}, "second", "third"]
    assert [p.offset for p in pubs] == [1, 2, 3]
    assert pubs[0].info == ClientInfo(client.id, "ann")
    assert pubs[2].info is None and pubs[2].tags == {"kind": "api"}
    assert client.state == "closed"
    assert sub.state == "unsubscribed"


async def test_commands(hub_server, make_token, uniq, fast):
    async def on_rpc(session: Any, method: str, data: Any) -> Any:
        return {"method": method, "sum": sum(data)}

    server = await hub_server(on_rpc=on_rpc)
    channel = uniq("chat")
    async with pulsewire.client.connect(
        ws_url(server), token=make_token("bob", info={"name": "Bob"}), **fast
    ) as client:
        sub = await client.subscribe(channel)
        for n in range(3):
            await client.publish(channel, n)
        history = await client.history(channel, limit=2, reverse=True)
        assert [p.data for p in history.publications] == [2, 1]
        assert history.position == Position(3, sub.epoch)
        since = await sub.history(since=(1, sub.epoch))
        assert [p.offset for p in since.publications] == [2, 3]
        presence = await client.presence(channel)
        assert presence == {client.id: ClientInfo(client.id, "bob", {"name": "Bob"})}
        assert await sub.presence_stats() == PresenceStats(1, 1)
        assert await client.rpc("add", [1, 2, 3]) == {"method": "add", "sum": 6}
        await client.ping()
        with pytest.raises(ClientError) as failed:
            await client.publish(uniq("hist") + "x", "not subscribed")
        assert failed.value.code == 103
        with pytest.raises(ClientError) as unknown:
            await client.subscribe("nope:x")
        assert unknown.value.code == 102
        assert "nope:x" not in client.subscriptions
        with pytest.raises(ClientError) as twice:
            await client.subscribe(channel)
        assert twice.value.code == 105


async def test_events_join_leave_and_unsubscribe(hub_server, make_token, uniq, fast):
    server = await hub_server()
    channel = uniq("chat")
    url = ws_url(server)
    async with pulsewire.client.connect(url, token=make_token("a"), **fast) as a:
        sub = await a.subscribe(channel)
        async with pulsewire.client.connect(url, token=make_token("b"), **fast) as b:
            other = await b.subscribe(channel)
            await other.unsubscribe()
            assert other.state == "unsubscribed" and channel not in b.subscriptions
        events = []
        async for event in sub.events():
            events.append(event)
            if isinstance(event, Leave) and event.info and event.info.user == "b":
                break
    kinds = [(type(e).__name__, getattr(getattr(e, "info", None), "user", None)) for e in events]
    assert kinds == [
        ("Join", "a"),  # its own join: with the in-memory engine, just before the reply
        ("Subscribed", None),
        ("Join", "b"),
        ("Leave", "b"),
    ]
    assert isinstance(events[1], Subscribed) and not events[1].recovering
    assert isinstance(events[0], Join)


async def test_server_unsubscribe_ends_iteration(hub_server, make_token, uniq, fast):
    server = await hub_server()
    channel = uniq("pub")
    async with pulsewire.client.connect(ws_url(server), token=make_token("u"), **fast) as client:
        sub = await client.subscribe(channel)
        await server.hub.unsubscribe_user("u", channel)
        assert [p async for p in sub] == []
        assert sub.ended is not None and sub.ended.code == 2000
        assert channel not in client.subscriptions


async def test_messages_and_callbacks(hub_server, make_token, uniq, fast):
    server = await hub_server()
    seen: list[Message] = []
    async with pulsewire.client.connect(
        ws_url(server), token=make_token("m"), on_message=seen.append, **fast
    ) as client:
        await server.hub.send({"n": 1}, user="m")
        await server.hub.send("just you", client=client.id)
        await client.ping()  # the pushes came before this reply
    assert seen == [Message({"n": 1}), Message("just you")]


async def test_messages_iterator_keeps_early_ones(hub_server, make_token, fast):
    server = await hub_server()
    async with pulsewire.client.connect(ws_url(server), token=make_token("m"), **fast) as client:
        await server.hub.send(1, user="m")
        await server.hub.send(2, user="m")
        await client.ping()
        got = []
        async for message in client.messages():
            got.append(message.data)
            if len(got) == 2:
                break
    assert got == [1, 2]


async def test_invalid_token_fails_for_good(hub_server, fast):
    server = await hub_server()
    states: list[str] = []
    with pytest.raises(ClientClosed) as refused:
        await pulsewire.client.connect(
            ws_url(server), token="not-a-jwt", on_state=lambda c: states.append(c.state), **fast
        )
    assert refused.value.code == 4500
    assert states == ["connecting", "closed"]


async def test_no_token_fails_for_good(hub_server, fast):
    server = await hub_server()
    with pytest.raises(ClientClosed) as refused:
        await pulsewire.client.connect(ws_url(server), **fast)
    assert refused.value.code == 4503


async def test_anonymous(hub_server, uniq, fast):
    server = await hub_server(hub_config(allow_anonymous=True))
    async with pulsewire.client.connect(ws_url(server), **fast) as client:
        assert client.user == ""


async def test_msgpack(hub_server, make_token, uniq):
    server = await hub_server()
    channel = uniq("chat")
    async with pulsewire.client.connect(
        ws_url(server), token=make_token("mp"), codec="msgpack"
    ) as client:
        assert client.codec == "msgpack"
        sub = await client.subscribe(channel)
        await client.publish(channel, {"text": "packed", "n": [1, 2.5, None]})
        (pub,) = await take(sub, 1)
    assert pub.data == {"text": "packed", "n": [1, 2.5, None]}
    assert pub.info is not None and pub.info.user == "mp"


async def test_bad_data_fails_the_call_not_the_connection(hub_server, make_token, uniq, fast):
    server = await hub_server()
    channel = uniq("pub")
    async with pulsewire.client.connect(ws_url(server), token=make_token("x"), **fast) as client:
        await client.subscribe(channel)
        with pytest.raises(ClientError) as bad:
            await client.publish(channel, float("nan"))
        assert bad.value.code == 107
        with pytest.raises(ClientError):
            await client.publish(channel, {1, 2})
        assert client.state == "connected"
        await client.ping()


async def test_send_without_an_on_message_hook(hub_server, make_token, fast):
    server = await hub_server()
    async with pulsewire.client.connect(ws_url(server), token=make_token("s"), **fast) as client:
        with pytest.raises(ClientError) as failed:
            await client.send({"hello": "app"})
        assert failed.value.code == 104
        assert client.state == "connected"


@pytest.mark.skipif(
    "on_message" not in inspect.signature(Hub).parameters,
    reason="the hub has no send command yet (branch jwks)",
)
async def test_send_to_the_on_message_hook(hub_server, make_token, fast):
    got: list[tuple[str, Any]] = []

    def on_message(session: Any, data: Any) -> None:
        got.append((session.user, data))

    server = await hub_server(on_message=on_message)
    async with pulsewire.client.connect(ws_url(server), token=make_token("s"), **fast) as client:
        assert await client.send({"hello": "app"}) is None
    assert got == [("s", {"hello": "app"})]


async def test_close_ends_the_session_normally(hub_server, make_token, uniq, fast):
    ended: list[tuple[int, str]] = []

    def on_disconnect(session: Any, code: int, reason: str) -> None:
        ended.append((code, reason))

    server = await hub_server(on_disconnect=on_disconnect)
    client = await pulsewire.client.connect(ws_url(server), token=make_token("c"), **fast)
    sub = await client.subscribe(uniq("pub"))
    assert len(server.hub.sessions) == 1
    await client.close()
    await until(lambda: not server.hub.sessions)
    assert ended == [(1000, "client closed")]
    assert sub.ended is not None and sub.ended.code == 0
    await client.close()  # twice is fine
    with pytest.raises(ClientClosed):
        await client.subscribe("pub:again")


@pytest.mark.parametrize(
    ("urls", "options", "message"),
    [
        ("http://127.0.0.1:8000/connection/websocket", {}, "not a ws:// or wss:// URI"),
        ([], {}, "at least one URL"),
        ("ws://127.0.0.1:8000/", {"codec": "xml"}, "codec must be one of"),
        ("ws://127.0.0.1:8000/", {"min_reconnect_delay": 5, "max_reconnect_delay": 1}, "min_"),
    ],
)
def test_bad_options_fail_at_once(urls: Any, options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        pulsewire.client.connect(urls, **options)
