"""Expiry (pulsewire.hub.expiry): credentials refreshed by ``on_refresh``, subscriptions given
an expiry by ``on_subscribe`` and extended or ended by ``on_sub_refresh``; the loop's clock
is moved forward (``loop_clock``), nothing waits for real."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from pulsewire.hub import Hub
from pulsewire.hub.auth import Credentials
from pulsewire.hub.errors import Disconnect, DisconnectCode, ErrorCode, HubError, UnsubscribeCode
from pulsewire.hub.hooks import SubscribeOutcome
from pulsewire.hub.session import ConnectRequest

from .fakes import until


def expiring(user: str, seconds: float = 30) -> Any:
    def authenticate(request: ConnectRequest) -> Credentials:
        return Credentials(user=user, expires_at=time.time() + seconds)

    return authenticate


async def test_on_refresh_extends_the_session(local_hub, local_client, loop_clock):
    calls: list[str] = []

    async def on_refresh(session: Any) -> Credentials:
        calls.append(session.user)
        return Credentials(user=session.user, expires_at=time.time() + 30, info={"n": len(calls)})

    hub = await local_hub(authenticate=expiring("ann"), on_refresh=on_refresh)
    client = await local_client(hub)
    result = client.log[0]["result"]
    assert "expires" not in result and "ttl" not in result  # the server refreshes, not the client
    for round_ in (1, 2):
        await loop_clock.advance(31)
        await until(lambda n=round_: len(calls) == n)
        await client.sync()
        assert not client.closed
    session = next(iter(hub.sessions.values()))
    assert session.conn_info == {"n": 2}
    assert session.credentials is not None and session.credentials.expires_at is not None


async def test_on_refresh_none_ends_with_4002(local_hub, local_client, loop_clock):
    hub = await local_hub(authenticate=expiring("bob"), on_refresh=lambda session: None)
    client = await local_client(hub)
    await loop_clock.advance(31)
    assert (await client.wait_closed()) == (4002, "token expired")


async def test_on_refresh_without_expiry_stops_the_timer(local_hub, local_client, loop_clock):
    calls: list[int] = []

    def on_refresh(session: Any) -> Credentials:
        calls.append(1)
        return Credentials(user=session.user)

    hub = await local_hub(authenticate=expiring("cat"), on_refresh=on_refresh)
    client = await local_client(hub)
    await loop_clock.advance(31)
    await until(lambda: calls)
    await loop_clock.advance(3600)
    await client.sync()
    assert calls == [1] and not client.closed


async def test_on_refresh_refusals(local_hub, local_client, loop_clock):
    outcomes: list[Any] = [
        HubError(ErrorCode.NOT_AVAILABLE, "backend down"),
        Disconnect(4599, "banned"),
        Credentials(user="somebody else", expires_at=time.time() + 30),
    ]

    def on_refresh(session: Any) -> Credentials:
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome  # type: ignore[no-any-return]

    hub = await local_hub(authenticate=expiring("dan"), on_refresh=on_refresh)
    expected = [
        (DisconnectCode.UNAVAILABLE, "refresh failed: backend down"),
        (4599, "banned"),
        (DisconnectCode.INVALID_TOKEN, "refreshed for another user"),
    ]
    for code, reason in expected:
        client = await local_client(hub)
        await loop_clock.advance(31)
        assert (await client.wait_closed()) == (code, reason)


async def test_without_on_refresh_the_client_is_told_to_refresh(local_hub, local_client):
    hub = await local_hub(authenticate=expiring("eve"))
    client = await local_client(hub)
    assert client.log[0]["result"]["expires"] is True


# -------------------------------------------------------------------------- subscriptions


async def subscribed(hub: Hub, client: Any, channel: str) -> bool:
    session = hub.sessions[client.client_id]
    return channel in session.subscriptions


async def test_subscription_expiry_without_hook_ends_it(local_hub, local_client, loop_clock):
    def on_subscribe(session: Any, channel: str, params: dict[str, Any]) -> SubscribeOutcome:
        return SubscribeOutcome(info={"role": "guest"}, expires_at=time.time() + 30)

    hub = await local_hub(on_subscribe=on_subscribe)
    client = await local_client(hub, "fay")
    await client.subscribe("chat:x")
    session = hub.sessions[client.client_id]
    assert session.subscriptions["chat:x"].info.chan_info == {"role": "guest"}
    await loop_clock.advance(31)
    push = await client.wait_push("unsubscribe", "chat:x")
    assert push["code"] == UnsubscribeCode.EXPIRED and push["resubscribe"] is True
    assert push["reason"] == "subscription expired"
    assert not await subscribed(hub, client, "chat:x")
    await client.subscribe("chat:x")  # may subscribe again: the hook decides anew


async def test_on_sub_refresh_extends_then_ends(local_hub, local_client, loop_clock):
    answers: list[float | None] = [time.time() + 30, None]
    calls: list[str] = []

    def on_sub_refresh(session: Any, channel: str) -> float | None:
        calls.append(channel)
        return answers.pop(0)

    hub = await local_hub(
        on_subscribe=lambda s, c, p: SubscribeOutcome(expires_at=time.time() + 30),
        on_sub_refresh=on_sub_refresh,
    )
    client = await local_client(hub, "gus")
    await client.subscribe("chat:y")
    await loop_clock.advance(31)
    await until(lambda: calls == ["chat:y"])
    await client.sync()
    assert await subscribed(hub, client, "chat:y")
    assert not client.take("unsubscribe")
    await loop_clock.advance(31)
    push = await client.wait_push("unsubscribe", "chat:y")
    assert calls == ["chat:y", "chat:y"] and push["code"] == 2501


async def test_on_sub_refresh_error_ends_the_subscription(local_hub, local_client, loop_clock):
    def on_sub_refresh(session: Any, channel: str) -> float:
        raise HubError(ErrorCode.NOT_AVAILABLE, "backend down")

    hub = await local_hub(
        on_subscribe=lambda s, c, p: SubscribeOutcome(expires_at=time.time() + 30),
        on_sub_refresh=on_sub_refresh,
    )
    client = await local_client(hub, "hal")
    await client.subscribe("chat:z")
    await loop_clock.advance(31)
    push = await client.wait_push("unsubscribe", "chat:z")
    assert push["reason"] == "subscription expired: backend down"
    assert not client.closed


async def test_old_expiry_spares_a_new_subscription(local_hub, local_client, loop_clock):
    expiries: list[float | None] = [time.time() + 30, None]
    hub = await local_hub(
        on_subscribe=lambda s, c, p: SubscribeOutcome(expires_at=expiries.pop(0)),
    )
    client = await local_client(hub, "ida")
    await client.subscribe("chat:w")
    await client.ok("unsubscribe", {"channel": "chat:w"})
    await client.subscribe("chat:w")  # no expiry this time
    await loop_clock.advance(31)
    await client.sync()
    assert not client.take("unsubscribe")
    assert await subscribed(hub, client, "chat:w")


async def test_plain_chan_info_from_on_subscribe_still_works(local_hub, local_client):
    hub = await local_hub(on_subscribe=lambda s, c, p: {"seat": 3})
    client = await local_client(hub, "jo")
    await client.subscribe("chat:v")
    assert hub.sessions[client.client_id].subscriptions["chat:v"].info.chan_info == {"seat": 3}


async def test_closed_session_refreshes_nothing(local_hub, local_client, loop_clock):
    calls: list[str] = []
    hub = await local_hub(
        authenticate=expiring("kim"),
        on_subscribe=lambda s, c, p: SubscribeOutcome(expires_at=time.time() + 30),
        on_refresh=lambda s: calls.append("refresh"),
        on_sub_refresh=lambda s, c: calls.append("sub"),
    )
    client = await local_client(hub)
    await client.subscribe("chat:u")
    await client.close()
    await until(lambda: not hub.sessions)
    await loop_clock.advance(31)
    assert calls == []


async def test_ended_subscription_is_not_refreshed(local_hub, local_client, loop_clock):
    calls: list[str] = []
    hub = await local_hub(
        on_subscribe=lambda s, c, p: SubscribeOutcome(expires_at=time.time() + 30),
        on_sub_refresh=lambda s, c: calls.append(c),
    )
    client = await local_client(hub, "lou")
    await client.subscribe("chat:t")
    await client.ok("unsubscribe", {"channel": "chat:t"})
    await loop_clock.advance(31)
    await client.sync()
    assert calls == [] and not client.take("unsubscribe")


async def test_the_documented_embedded_hooks_run(local_client):
    """The embedded-hooks example of docs/proxy.md, as written, then one client."""
    text = (Path(__file__).parents[2] / "docs" / "proxy.md").read_text(encoding="utf-8")
    text = text[text.index("## The same hooks in an embedded hub") :]
    namespace: dict[str, Any] = {}
    exec(text.split("```python\n", 1)[1].split("```", 1)[0], namespace)
    hub = namespace["hub"]
    await hub.start()
    try:
        client = await local_client(hub)
        assert client.log[0]["result"]["user"] == "42"
        await client.subscribe("lobby")
        assert client.session.subscriptions["lobby"].info.chan_info == {"role": "member"}
        await client.close()
    finally:
        await hub.close()
