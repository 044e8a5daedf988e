"""Which error a client command with two faults gets (docs/protocol.md): the session parses
each field of a command where it always has, after the state checks that come first."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from pulsewire.hub import Hub, HubError

from .fakes import FakeClient, FakeClosed

LocalHub = Callable[..., Awaitable[Hub]]
LocalClient = Callable[..., Awaitable[FakeClient]]
Uniq = Callable[..., str]

BAD_RECOVER = {"recover": True, "offset": "x", "epoch": 1}


async def test_already_subscribed_comes_before_a_bad_token(
    local_hub: LocalHub, local_client: LocalClient, uniq: Uniq
) -> None:
    hub = await local_hub()
    client = await local_client(hub, "ann")
    channel = uniq("ro")
    await client.subscribe(channel)
    error = await client.fail("subscribe", {"channel": channel, "token": 5})
    assert error["code"] == 105


async def test_too_many_channels_comes_before_a_bad_token(
    local_hub: LocalHub, local_client: LocalClient, uniq: Uniq, hub_config: Callable[..., Any]
) -> None:
    hub = await local_hub(hub_config(max_channels_per_connection=1))
    client = await local_client(hub, "ann")
    await client.subscribe(uniq("ro"))
    error = await client.fail("subscribe", {"channel": uniq("ro"), "token": 5})
    assert error["code"] == 106


async def test_a_bad_channel_comes_before_a_bad_token(
    local_hub: LocalHub, local_client: LocalClient
) -> None:
    hub = await local_hub()
    client = await local_client(hub, "ann")
    assert (await client.fail("subscribe", {"channel": "nope:x", "token": 5}))["code"] == 102
    assert (await client.fail("subscribe", {"token": 5}))["code"] == 107


async def test_permission_comes_before_bad_recover_params(
    local_hub: LocalHub, local_client: LocalClient, uniq: Uniq
) -> None:
    hub = await local_hub()
    client = await local_client(hub, "ann")
    error = await client.fail("subscribe", {"channel": uniq("nosub"), **BAD_RECOVER})
    assert error["code"] == 103
    # In a history channel: anonymous connections may not subscribe (103) either.
    anonymous = await local_client(hub, "")
    error = await anonymous.fail("subscribe", {"channel": uniq("hist"), **BAD_RECOVER})
    assert error["code"] == 103


async def test_the_on_subscribe_hook_runs_before_recover_params_are_checked(
    local_hub: LocalHub, local_client: LocalClient, uniq: Uniq
) -> None:
    calls: list[str] = []

    def on_subscribe(session: Any, channel: str, params: dict[str, Any]) -> None:
        calls.append(channel)
        if params.get("refuse"):
            raise HubError(103, "refused by the application")

    hub = await local_hub(on_subscribe=on_subscribe)
    client = await local_client(hub, "ann")
    refused = uniq("hist")
    error = await client.fail("subscribe", {"channel": refused, "refuse": True, **BAD_RECOVER})
    assert (error["code"], error["message"]) == (103, "refused by the application")
    bad = uniq("hist")
    assert (await client.fail("subscribe", {"channel": bad, **BAD_RECOVER}))["code"] == 107
    assert calls == [refused, bad]
    # Not kept subscribed after the fault, and recover params are ignored without history.
    assert await client.subscribe(bad) != {}
    assert await client.subscribe(uniq("ro"), **BAD_RECOVER) == {}


async def test_history_subscription_and_permission_come_before_bad_params(
    local_hub: LocalHub, local_client: LocalClient, uniq: Uniq
) -> None:
    hub = await local_hub()
    client = await local_client(hub, "ann")
    channel = uniq("hist")
    error = await client.fail("history", {"channel": channel, "limit": -1})
    assert error["code"] == 103  # not subscribed
    locked = uniq("locked")
    await client.subscribe(locked)
    error = await client.fail("history", {"channel": locked, "since": 5})
    assert error["code"] == 103  # history not allowed
    await client.subscribe(channel)
    assert (await client.fail("history", {"channel": channel, "limit": -1}))["code"] == 107
    error = await client.fail("history", {"channel": "nope:x", "limit": -1})
    assert error["code"] == 102


async def test_publish_needs_data_before_permissions(
    local_hub: LocalHub, local_client: LocalClient, uniq: Uniq
) -> None:
    hub = await local_hub()
    client = await local_client(hub, "ann")
    assert (await client.fail("publish", {"channel": uniq("pub")}))["code"] == 107
    assert (await client.fail("publish", {"channel": uniq("ro")}))["code"] == 107
    assert (await client.fail("publish", {"channel": uniq("ro"), "data": 1}))["code"] == 103


async def test_rpc_without_a_hook_or_a_method_is_104(
    local_hub: LocalHub, local_client: LocalClient
) -> None:
    hub = await local_hub()
    client = await local_client(hub, "ann")
    assert (await client.fail("rpc", {"method": 1}))["code"] == 104
    assert (await client.fail("rpc", {"method": "add"}))["code"] == 104
    hooked = await local_client(await local_hub(on_rpc=lambda s, m, d: d), "bob")
    assert (await hooked.fail("rpc", {"method": 1}))["code"] == 104
    assert await hooked.ok("rpc", {"method": "echo", "data": 2}) == {"data": 2}


async def test_refresh_needs_a_token(local_hub: LocalHub, local_client: LocalClient) -> None:
    hub = await local_hub()
    client = await local_client(hub, "ann")
    assert (await client.fail("refresh", {"token": 1}))["code"] == 107


async def test_already_connected_comes_before_a_bad_version(
    local_hub: LocalHub, local_client: LocalClient
) -> None:
    hub = await local_hub()
    client = await local_client(hub, "ann")
    with pytest.raises(FakeClosed) as closed:
        await client.call("connect", {"version": 99, "token": 5})
    assert (closed.value.code, closed.value.reason) == (4501, "already connected")


async def test_connect_version_comes_before_a_bad_token(
    local_hub: LocalHub, local_client: LocalClient
) -> None:
    hub = await local_hub()
    client = await local_client(hub, connect=False)
    with pytest.raises(FakeClosed) as closed:
        await client.call("connect", {"version": 99, "token": 5})
    assert closed.value.code == 4505
    other = await local_client(hub, connect=False)
    with pytest.raises(FakeClosed) as closed:
        await other.call("connect", {"token": 5})
    assert (closed.value.code, closed.value.reason) == (4501, "token must be a string")


async def test_unknown_method_before_connect_is_104_not_a_disconnect(
    local_hub: LocalHub, local_client: LocalClient
) -> None:
    hub = await local_hub()
    client = await local_client(hub, connect=False)
    assert (await client.fail("nope", {"channel": 1}))["code"] == 104
    with pytest.raises(FakeClosed) as closed:
        await client.call("subscribe", {"token": 5})
    assert closed.value.code == 4501


async def test_a_bad_envelope_disconnects(local_hub: LocalHub, local_client: LocalClient) -> None:
    hub = await local_hub()
    client = await local_client(hub, "ann")
    client.expect(7)
    await client.send_raw('{"id": 7, "method": "ping", "params": [1]}')
    with pytest.raises(FakeClosed) as closed:
        await client.reply(7)
    assert closed.value.code == 4501


async def test_connect_subs_report_each_channels_error(
    local_hub: LocalHub, local_client: LocalClient, uniq: Uniq
) -> None:
    hub = await local_hub()
    client = await local_client(hub, "ann", connect=False)
    good, private = uniq("ro"), uniq("priv")
    subs = {good: {}, private: {"recover": True}, "nope:x": 3}
    result = await client.connect(client.token, subs=subs)
    assert result["subs"][good] == {}
    assert result["subs"][private]["error"]["code"] == 103
    assert result["subs"]["nope:x"]["error"]["code"] == 102
