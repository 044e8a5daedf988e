"""The threaded wrapper: the asyncio client on a background loop, driven from a plain thread
(here a worker thread, while the test's own loop serves the hub)."""

from __future__ import annotations

import asyncio
import threading

import pytest

import pulsewire.client.sync
from pulsewire.client import ClientClosed

from .conftest import FAST, ws_url


async def test_sync_client(hub_server, make_token, uniq):
    server = await hub_server()
    channel = uniq("chat")
    url = ws_url(server)

    def script() -> tuple[list[object], list[object], str, str]:
        with pulsewire.client.sync.connect(url, token=make_token("s"), **FAST) as client:
            sub = client.subscribe(channel)
            client.publish(channel, "one")
            assert sub.publish("two") == (2, sub.position.epoch)
            got = []
            for pub in sub:
                got.append(pub.data)
                if len(got) == 2:
                    break
            history = client.history(channel, limit=10)
            assert sub.presence_stats() == (1, 1)
            assert set(client.subscriptions) == {channel}
            state = client.state
        return got, [p.data for p in history.publications], state, client.state

    got, history, state, after = await asyncio.to_thread(script)
    assert got == ["one", "two"]
    assert history == ["one", "two"]
    assert (state, after) == ("connected", "closed")


async def test_sync_refused_stops_its_thread(hub_server):
    server = await hub_server()
    before = threading.active_count()

    def script() -> None:
        pulsewire.client.sync.connect(ws_url(server), token="bad", **FAST)

    with pytest.raises(ClientClosed) as refused:
        await asyncio.to_thread(script)
    assert refused.value.code == 4500
    assert threading.active_count() <= before + 1  # the to_thread worker may stay


async def test_sync_iteration_ends_when_the_server_unsubscribes(hub_server, make_token, uniq):
    server = await hub_server()
    channel = uniq("pub")
    subscribed = threading.Event()
    loop = asyncio.get_running_loop()

    def script() -> list[object]:
        with pulsewire.client.sync.connect(ws_url(server), token=make_token("it"), **FAST) as c:
            sub = c.subscribe(channel)
            subscribed.set()
            return [pub.data for pub in sub]

    task = loop.run_in_executor(None, script)
    await asyncio.to_thread(subscribed.wait, 5)
    await server.hub.publish(channel, "last")
    await server.hub.unsubscribe_user("it", channel)
    assert await asyncio.wait_for(task, 5) == ["last"]
