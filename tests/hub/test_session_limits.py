"""Session-level limits, one layer down (a fake transport, no sockets): the command rate
counts commands, not messages; failed tokens count in the hub's per-address guard and an
address over it is refused before its token is read.

Rates are tiny (0.001/s) so that nothing refills during a test, however slow the machine.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import jwt
import pytest

from pulsewire.hub import ChannelOptions, ConnectRequest, DisconnectCode, Hub, HubConfig
from pulsewire.hub.config import config_from_dict
from pulsewire.hub.session import Session
from pulsewire.hub.wire import JSON

from .fakes import FakeTransport

SECRET = "session-limits-secret-0123456789abcdef"
SLOW = 0.001


def token(user: str = "ann", **claims: Any) -> str:
    return jwt.encode({"sub": user, "exp": time.time() + 600, **claims}, SECRET, "HS256")


def batch(*commands: dict[str, Any]) -> str:
    return "\n".join(json.dumps(c) for c in commands)


def pings(first: int, count: int) -> str:
    return batch(*({"id": first + i, "method": "ping"} for i in range(count)))


def config(**changes: Any) -> HubConfig:
    base = HubConfig(
        token_hmac_secret=SECRET,
        client_commands_per_second=SLOW,
        client_commands_burst=10,
        namespaces={"priv": ChannelOptions(private=True)},
    )
    return base.replace(**changes)


@pytest.fixture
async def make_hub() -> AsyncIterator[Any]:
    hubs: list[Hub] = []

    async def make(cfg: HubConfig) -> Hub:
        hub = Hub(cfg)
        await hub.start()
        hubs.append(hub)
        return hub

    yield make
    for hub in hubs:
        await hub.close()


def open_session(hub: Hub, address: str = "127.0.0.1") -> tuple[Session, FakeTransport]:
    transport = FakeTransport(JSON)
    request = ConnectRequest("websocket", "/connection/websocket", [], address)
    return hub.open_session(transport, JSON, request), transport


async def connected(hub: Hub, address: str = "127.0.0.1") -> tuple[Session, FakeTransport]:
    session, transport = open_session(hub, address)
    await session.handle(json.dumps({"id": 1, "method": "connect", "params": {"token": token()}}))
    assert "result" in transport.replies()[1], transport.sent
    return session, transport


def rate_limited(hub: Hub, policy: str) -> float:
    value = hub.metrics.registry.get_sample_value(
        "pulsewire_rate_limited_total", {"policy": policy}
    )
    return value or 0.0


def guard_sample(hub: Hub, name: str, kind: str) -> float:
    return hub.metrics.registry.get_sample_value(name, {"kind": kind}) or 0.0


# ------------------------------------------------------------------------- command rate


async def test_each_command_of_a_batched_message_takes_a_token(make_hub):
    hub = await make_hub(config(rate_limit_policy="drop"))
    session, transport = await connected(hub)  # the connect took 1 token: 9 left
    await session.handle(pings(2, 9))
    assert all("result" in transport.replies()[i] for i in range(2, 11))
    await session.handle(pings(11, 1))  # one message, one command: over
    assert transport.replies()[11]["error"]["code"] == 111
    assert rate_limited(hub, "drop") == 1


async def test_a_message_with_more_commands_than_the_burst_runs_none(make_hub):
    hub = await make_hub(config(rate_limit_policy="drop"))
    session, transport = await connected(hub)
    before = hub.metrics.registry.get_sample_value("pulsewire_commands_total", {"method": "ping"})
    await session.handle(pings(2, 1935))  # the attack of issue #10, in one message
    replies = transport.replies()
    assert [replies[i]["error"]["code"] for i in range(2, 1937)] == [111] * 1935
    after = hub.metrics.registry.get_sample_value("pulsewire_commands_total", {"method": "ping"})
    assert (after or 0) == (before or 0)  # none ran
    assert transport.closed is None
    # All or nothing: the tokens were not spent, a small message still passes.
    await session.handle(pings(5000, 2))
    assert "result" in transport.replies()[5001]


async def test_disconnect_policy_closes_1008_on_a_batch_over_the_limit(make_hub):
    hub = await make_hub(config())
    session, transport = await connected(hub)
    await session.handle(pings(2, 50))
    assert transport.closed == (1008, "rate limit exceeded")
    assert not [m for m in transport.sent if m.get("id", 0) >= 2]
    assert rate_limited(hub, "disconnect") == 1


async def test_bytes_are_still_charged_per_message(make_hub):
    connect_size = len(json.dumps({"id": 1, "method": "connect", "params": {"token": token()}}))
    burst = connect_size + 10
    hub = await make_hub(config(client_bytes_per_second=SLOW, client_bytes_burst=burst))
    session, transport = await connected(hub)  # 10 bytes left: one ping is ~30
    await session.handle(pings(2, 1))
    assert transport.closed == (1008, "rate limit exceeded")


def test_old_setting_names_still_work_and_the_new_ones_win():
    old = config_from_dict({"client_messages_per_second": 5, "client_messages_burst": 7})
    assert old.command_rate == (5, 7)
    new = config_from_dict(
        {
            "client_messages_per_second": 5,
            "client_messages_burst": 7,
            "client_commands_per_second": 50,
            "client_commands_burst": 70,
        }
    )
    assert new.command_rate == (50, 70)
    assert HubConfig().command_rate == (100.0, 200.0)


async def test_the_old_names_limit_commands_too(make_hub):
    cfg = HubConfig(
        token_hmac_secret=SECRET,
        client_messages_per_second=SLOW,
        client_messages_burst=5,
        rate_limit_policy="drop",
    )
    hub = await make_hub(cfg)
    session, transport = await connected(hub)
    await session.handle(pings(2, 5))  # 1 + 5 > 5
    assert {transport.replies()[i]["error"]["code"] for i in range(2, 7)} == {111}


# --------------------------------------------------------------------- failed tokens


async def test_invalid_connection_tokens_count_and_then_block_the_address(make_hub):
    hub = await make_hub(config(auth_failures_burst=3, auth_failures_refill=3600))
    for _ in range(3):
        session, transport = open_session(hub)
        bad = {"id": 1, "method": "connect", "params": {"token": token(x=1)[:-4] + "AAAA"}}
        await session.handle(json.dumps(bad))
        assert transport.closed is not None and transport.closed[0] == 4500
    assert guard_sample(hub, "pulsewire_auth_failures_total", "token") == 3
    # Over: even a valid token is refused, unread, with "reconnect later".
    session, transport = open_session(hub)
    await session.handle(json.dumps({"id": 1, "method": "connect", "params": {"token": token()}}))
    assert transport.closed is not None
    code, reason = transport.closed
    assert code == DisconnectCode.TOO_MANY_REQUESTS == 4008
    assert "retry in 3600 s" in reason
    assert guard_sample(hub, "pulsewire_auth_refused_total", "token") == 1
    # Another address is not concerned.
    session, transport = open_session(hub, "127.0.0.2")
    await session.handle(json.dumps({"id": 1, "method": "connect", "params": {"token": token()}}))
    assert "result" in transport.replies()[1]


async def test_a_subscription_token_cannot_connect(make_hub):
    hub = await make_hub(config())
    session, transport = open_session(hub)
    sub_token = token(channel="priv:room")
    await session.handle(json.dumps({"id": 1, "method": "connect", "params": {"token": sub_token}}))
    assert transport.closed == (4500, "invalid token: a subscription token cannot connect")
    assert guard_sample(hub, "pulsewire_auth_failures_total", "token") == 1


async def test_expired_and_missing_tokens_do_not_count(make_hub):
    hub = await make_hub(config(auth_failures_burst=1))
    expired = jwt.encode({"sub": "ann", "exp": time.time() - 60}, SECRET, "HS256")
    for params in ({"token": expired}, {}):
        session, transport = open_session(hub)
        await session.handle(json.dumps({"id": 1, "method": "connect", "params": params}))
        assert transport.closed is not None and transport.closed[0] in (4002, 4503)
    assert guard_sample(hub, "pulsewire_auth_failures_total", "token") == 0
    await connected(hub)


async def test_bad_subscription_tokens_count_and_then_get_111(make_hub):
    hub = await make_hub(config(auth_failures_burst=2, auth_failures_refill=3600))
    session, transport = await connected(hub)
    wrong = token(channel="priv:other")
    for cid in (2, 3):
        params = {"channel": "priv:room", "token": wrong}
        await session.handle(json.dumps({"id": cid, "method": "subscribe", "params": params}))
        assert transport.replies()[cid]["error"]["code"] == 103
    good = {"channel": "priv:room", "token": token(channel="priv:room")}
    await session.handle(json.dumps({"id": 4, "method": "subscribe", "params": good}))
    error = transport.replies()[4]["error"]
    assert error["code"] == 111 and "failed authentications" in error["message"]
    assert transport.closed is None  # the session itself goes on
    assert guard_sample(hub, "pulsewire_auth_failures_total", "token") == 2


async def test_success_does_not_give_failures_back(make_hub):
    hub = await make_hub(config(auth_failures_burst=2, auth_failures_refill=3600))
    for _ in range(2):
        session, transport = open_session(hub)
        bad = {"id": 1, "method": "connect", "params": {"token": "not.a.token"}}
        await session.handle(json.dumps(bad))
        if _ == 0:  # a success between the failures must not launder them
            await connected(hub)
    session, transport = open_session(hub)
    await session.handle(json.dumps({"id": 1, "method": "connect", "params": {"token": token()}}))
    assert transport.closed is not None and transport.closed[0] == 4008


async def test_refresh_with_a_bad_token_counts(make_hub):
    hub = await make_hub(config(auth_failures_burst=5))
    session, transport = await connected(hub)
    await session.handle(json.dumps({"id": 2, "method": "refresh", "params": {"token": "x.y.z"}}))
    assert transport.closed is not None and transport.closed[0] == 4500
    assert guard_sample(hub, "pulsewire_auth_failures_total", "token") == 1
