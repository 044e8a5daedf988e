"""Server-side subscriptions (docs: serversubs wire format), against a scripted fake hub:
``server_subs`` in the connect result, ``subscribe`` pushes, positions sent back in
``connect``'s ``server_subs`` on reconnect, recovery and its failure, the end of one."""

from __future__ import annotations

import asyncio

import pytest

import pulsewire.client
from pulsewire.client import ClientError, Publication, Subscribed, Unsubscribed
from pulsewire.hub import Hub

from .conftest import until, ws_url
from .fakehub import FakeHub

FAST = {"min_reconnect_delay": 0.01, "max_reconnect_delay": 0.02, "timeout": 5.0}
CONNECTED = {"client": "c1", "user": "u", "version": 1, "node": "n1", "transport": "websocket"}


async def next_events(sub: pulsewire.client.Subscription, n: int) -> list[object]:
    async def collect() -> list[object]:
        events: list[object] = []
        async for event in sub.events():
            events.append(event)
            if len(events) == n:
                break
        return events

    return await asyncio.wait_for(collect(), 5)


async def test_server_side_subscriptions(fake_hub: FakeHub) -> None:
    connecting = asyncio.ensure_future(pulsewire.client.connect(fake_hub.url, token="t", **FAST))
    session = await fake_hub.session()
    connect = await session.command("connect")
    assert "server_subs" not in connect["params"]  # nothing to recover yet
    await session.reply(
        connect,
        {
            **CONNECTED,
            "server_subs": {
                "personal:#u": {"recoverable": True, "epoch": "E", "offset": 5},
                "broken:x": {"error": {"code": 102, "message": "unknown namespace 'broken'"}},
            },
        },
    )
    client = await connecting
    try:
        personal = client.subscriptions["personal:#u"]
        assert personal.server_side and personal.state == "subscribed"
        assert personal.position == (5, "E")
        assert "broken:x" not in client.subscriptions

        # publications, and one made after connect by a push
        await session.push("publication", channel="personal:#u", data="p6", offset=6)
        await session.push("subscribe", channel="team:1", recoverable=True, epoch="T", offset=0)
        await session.push("publication", channel="team:1", data="t1", offset=1)
        await session.push("publication", channel="personal:#u", data="p7", offset=7)
        subs = client.server_subscriptions()
        assert await asyncio.wait_for(subs.__anext__(), 5) is personal
        team = await asyncio.wait_for(subs.__anext__(), 5)
        assert team.channel == "team:1" and team.server_side
        assert [e.data for e in await next_events(team, 2) if isinstance(e, Publication)] == ["t1"]
        events = await next_events(personal, 3)
        assert [e.data for e in events if isinstance(e, Publication)] == ["p6", "p7"]
        with pytest.raises(ClientError) as refused:
            await personal.unsubscribe()
        assert refused.value.code == 103

        # reconnect: the positions go back in server_subs; team:1 is not subscribed again
        await session.close(4000, "restart")
        session = await fake_hub.session()
        connect = await session.command("connect")
        assert connect["params"]["server_subs"] == {
            "personal:#u": {"recover": True, "offset": 7, "epoch": "E"},
            "team:1": {"recover": True, "offset": 1, "epoch": "T"},
        }
        await session.reply(
            connect,
            {
                **CONNECTED,
                "server_subs": {
                    "personal:#u": {
                        "recoverable": True,
                        "epoch": "E",
                        "offset": 9,
                        "recovered": True,
                        "publications": [
                            {"data": "p7", "offset": 7},
                            {"data": "p8", "offset": 8},
                            {"data": "p9", "offset": 9},
                        ],
                    }
                },
            },
        )
        events = await next_events(personal, 3)
        assert isinstance(events[0], Subscribed) and events[0].recovered and events[0].server_side
        assert [(e.offset, e.data) for e in events[1:]] == [(8, "p8"), (9, "p9")]  # 7: once
        ended = await next_events(team, 2)
        assert isinstance(ended[-1], Unsubscribed) and "team:1" not in client.subscriptions

        # insufficient state: the server resubscribes it itself, recovery failed
        await session.push(
            "subscribe",
            channel="personal:#u",
            recoverable=True,
            epoch="E2",
            offset=3,
            recovered=False,
            publications=[],
        )
        await session.push("publication", channel="personal:#u", data="q4", offset=4)
        events = await next_events(personal, 2)
        assert isinstance(events[0], Subscribed)
        assert (events[0].recovering, events[0].recovered) == (True, False)
        assert (events[1].offset, events[1].data) == (4, "q4")
        assert personal.position == (4, "E2")

        # the server ends it
        await session.push(
            "unsubscribe", channel="personal:#u", code=2000, reason="gone", resubscribe=False
        )
        assert [e async for e in personal.events()][-1] == Unsubscribed("personal:#u", 2000, "gone")
    finally:
        await client.close()


async def test_on_server_subscription_callback(fake_hub: FakeHub) -> None:
    announced: list[pulsewire.client.Subscription] = []
    connecting = asyncio.ensure_future(
        pulsewire.client.connect(
            fake_hub.url, token="t", on_server_subscription=announced.append, **FAST
        )
    )
    session = await fake_hub.session()
    await session.reply(await session.command("connect"), {**CONNECTED, "server_subs": {"a:1": {}}})
    client = await connecting
    await session.push("subscribe", channel="b:2")
    await session.push("publication", channel="b:2", data="hello")
    await session.push("unsubscribe", channel="b:2", code=2000, reason="gone", resubscribe=False)
    await until(lambda: len(announced) == 2)
    assert [sub.channel for sub in announced] == ["a:1", "b:2"]
    events = await next_events(announced[1], 3)  # queued, also after it ended
    assert "b:2" not in client.subscriptions
    assert [type(e).__name__ for e in events] == ["Subscribed", "Publication", "Unsubscribed"]
    assert announced[0].position is None and announced[0].state == "subscribed"
    await client.close()


@pytest.mark.skipif(
    not hasattr(Hub, "subscribe_user"),
    reason="the hub has no server-side subscriptions yet (branch serversubs)",
)
async def test_against_the_hub(hub_server, make_token, uniq) -> None:
    gate = asyncio.Event()
    gate.set()

    async def on_connect(session: object) -> None:
        await gate.wait()

    server = await hub_server(on_connect=on_connect)
    personal, team = "hist:#srv", uniq("hist")
    token = make_token("srv", subs=[personal])
    async with pulsewire.client.connect(ws_url(server), token=token, **FAST) as client:
        sub = client.subscriptions[personal]
        assert sub.server_side and sub.state == "subscribed" and sub.recoverable
        await server.hub.publish(personal, "p1")
        await server.hub.subscribe_user("srv", team)
        subs = client.server_subscriptions()
        assert await asyncio.wait_for(subs.__anext__(), 5) is sub
        team_sub = await asyncio.wait_for(subs.__anext__(), 5)
        assert team_sub.channel == team and team_sub.server_side
        await server.hub.publish(team, "t1")
        assert [e.data for e in await next_events(team_sub, 2) if isinstance(e, Publication)] == [
            "t1"
        ]
        # reconnect: what was missed while away is recovered; the token's subs come back,
        # the one made by subscribe_user is not made again (the client drops it)
        gate.clear()
        await server.hub.disconnect_user("srv", code=4000, reason="restart")
        await until(lambda: client.state == "connecting")
        await server.hub.publish(personal, "p2")
        gate.set()
        events = await next_events(sub, 4)
        assert isinstance(events[-2], Subscribed) and events[-2].recovered
        assert [(e.offset, e.data) for e in events if isinstance(e, Publication)] == [
            (1, "p1"),
            (2, "p2"),
        ]
        with pytest.raises(ClientError) as refused:
            await sub.unsubscribe()
        assert refused.value.code == 103
        assert team not in client.subscriptions
        assert isinstance((await next_events(team_sub, 1))[0], Unsubscribed)
