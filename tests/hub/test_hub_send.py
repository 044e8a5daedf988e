"""The ``send`` command, one layer down (FakeClient): a client's asynchronous message to the
application's ``on_message`` hook, answered ``{}`` once the hook took it."""

from __future__ import annotations

import asyncio
from typing import Any

from pulsewire.hub import Disconnect, HubError
from pulsewire.hub.session import Session


async def test_send_reaches_on_message_before_the_reply(local_hub, local_client):
    taken: list[tuple[str, Any]] = []

    async def on_message(session: Session, data: Any) -> None:
        await asyncio.sleep(0)  # an async hook is awaited before the reply
        taken.append((session.user, data))

    hub = await local_hub(on_message=on_message)
    client = await local_client(hub, "ann")
    assert await client.ok("send", {"data": {"text": "hi"}}) == {}
    assert taken == [("ann", {"text": "hi"})]
    assert await client.ok("send", {"data": None}) == {}  # null is data too
    assert taken[-1] == ("ann", None)


async def test_send_plain_hook_and_msgpack(local_hub, local_client):
    taken: list[Any] = []
    hub = await local_hub(on_message=lambda session, data: taken.append(data))
    client = await local_client(hub, "bob", codec="msgpack")
    assert await client.ok("send", {"data": [1, "two"]}) == {}
    assert taken == [[1, "two"]]


async def test_send_without_a_hook_is_104(local_hub, local_client):
    hub = await local_hub()
    client = await local_client(hub, "ann")
    error = await client.fail("send", {"data": 1})
    assert error["code"] == 104
    assert await client.ok("ping") == {}  # the session goes on


async def test_send_without_data_is_107(local_hub, local_client):
    taken: list[Any] = []
    hub = await local_hub(on_message=lambda session, data: taken.append(data))
    client = await local_client(hub, "ann")
    assert await client.fail("send", {}) == {"code": 107, "message": "send needs data"}
    assert taken == []


async def test_send_hook_refusals(local_hub, local_client):
    def on_message(session: Session, data: Any) -> None:
        if data == "refuse":
            raise HubError(103, "not from you")
        if data == "crash":
            raise RuntimeError("bug")
        if data == "leave":
            raise Disconnect(4502, "bye")

    hub = await local_hub(on_message=on_message)
    client = await local_client(hub, "ann")
    assert await client.fail("send", {"data": "refuse"}) == {"code": 103, "message": "not from you"}
    assert await client.fail("send", {"data": "crash"}) == {
        "code": 100,
        "message": "internal error",
    }
    await client.send("send", {"data": "leave"})
    assert await client.wait_closed() == (4502, "bye")


async def test_send_before_connect_ends_the_session(local_hub, local_client):
    hub = await local_hub(on_message=lambda session, data: None)
    client = await local_client(hub, connect=False)
    await client.send("send", {"data": 1})
    code, _ = await client.wait_closed()
    assert code == 4501


async def test_send_counts_against_the_command_rate(local_hub, local_client, hub_config):
    taken: list[Any] = []
    config = hub_config(
        client_commands_per_second=0.001, client_commands_burst=3, rate_limit_policy="drop"
    )
    hub = await local_hub(config, on_message=lambda session, data: taken.append(data))
    client = await local_client(hub, "ann")  # connect took one token of three
    assert await client.ok("send", {"data": 1}) == {}
    assert await client.ok("send", {"data": 2}) == {}
    assert (await client.fail("send", {"data": 3}))["code"] == 111
    assert taken == [1, 2]
