"""Hooks (pulsewire.hub.hooks): one helper calls plain and async hooks alike; the Protocols
accept the plain functions and coroutine functions applications write."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from pulsewire.hub import Hub
from pulsewire.hub.auth import Credentials
from pulsewire.hub.contracts import HookSession
from pulsewire.hub.errors import Disconnect, DisconnectCode, HubError
from pulsewire.hub.hooks import (
    Authenticate,
    OnConnect,
    OnDisconnect,
    OnMessage,
    OnPublish,
    OnRpc,
    OnSubscribe,
    call_hook,
    credentials_from,
)
from pulsewire.hub.session import ConnectRequest, Session

from .fakes import FakeClient


async def test_plain_hook_runs_at_the_call() -> None:
    calls: list[tuple[Any, ...]] = []

    def hook(*args: Any) -> str:
        calls.append(args)
        return "outcome"

    pending = call_hook(hook, 1, 2)
    assert calls == [(1, 2)]  # before any await
    assert await pending == "outcome"


async def test_async_hook_is_awaited() -> None:
    calls: list[tuple[Any, ...]] = []

    async def hook(*args: Any) -> str:
        await asyncio.sleep(0)
        calls.append(args)
        return "later"

    assert await call_hook(hook, "a") == "later"
    assert calls == [("a",)]


async def test_hook_returning_an_awaitable_is_awaited() -> None:
    future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    future.set_result(7)
    assert await call_hook(lambda: future) == 7


async def test_none_is_an_outcome() -> None:
    def nothing() -> Any:
        return None

    assert await call_hook(nothing) is None


async def test_errors_come_out_where_the_hook_runs() -> None:
    def refuse() -> None:
        raise HubError(103, "no")

    with pytest.raises(HubError):
        call_hook(refuse)  # a plain hook: at the call

    async def refuse_later() -> None:
        raise Disconnect(4502, "bye")

    pending: Any = call_hook(refuse_later)  # an async hook: when awaited
    with pytest.raises(Disconnect):
        await pending


async def test_a_plain_outcome_can_be_handed_to_a_task() -> None:
    assert await asyncio.ensure_future(call_hook(lambda: 5)) == 5


def test_credentials_from() -> None:
    assert credentials_from(None, allow_anonymous=False) is None
    assert credentials_from("ann", allow_anonymous=False) == Credentials(user="ann")
    assert credentials_from(42, allow_anonymous=False) == Credentials(user="42")
    assert credentials_from("", allow_anonymous=True) == Credentials(user="")
    given = Credentials(user="bob", info={"x": 1})
    assert credentials_from(given, allow_anonymous=False) is given
    with pytest.raises(Disconnect) as refused:
        credentials_from("", allow_anonymous=False)
    assert refused.value.code == DisconnectCode.UNAUTHORIZED
    for wrong in (True, 1.5, ["ann"]):
        with pytest.raises(TypeError):
            credentials_from(wrong, allow_anonymous=True)


# What applications write type-checks against the Protocols (mypy checks this module).


def _authenticate(request: ConnectRequest) -> str | None:
    return request.token


async def _authenticate_async(request: ConnectRequest) -> Credentials:
    return Credentials(user="u")


def _on_connect(session: Session) -> None:
    pass


async def _on_subscribe(session: Session, channel: str, params: dict[str, Any]) -> Any:
    return {"role": "reader"}


def _on_publish(session: Session, channel: str, data: Any) -> Any:
    return data


async def _on_rpc(session: Session, method: str, data: Any) -> Any:
    return data


def _on_disconnect(session: Session, code: int, reason: str) -> None:
    pass


async def _on_message(session: Session, data: Any) -> None:
    pass


HOOKS: tuple[
    Authenticate, Authenticate, OnConnect, OnSubscribe, OnPublish, OnRpc, OnDisconnect, OnMessage
] = (
    _authenticate,
    _authenticate_async,
    _on_connect,
    _on_subscribe,
    _on_publish,
    _on_rpc,
    _on_disconnect,
    _on_message,
)


async def test_typed_hooks_are_called_through_the_helper() -> None:
    request = ConnectRequest("websocket", "/", [], "127.0.0.1", token="t")
    assert await call_hook(HOOKS[0], request) == "t"
    assert await call_hook(HOOKS[1], request) == Credentials(user="u")


def _on_connect_portable(session: HookSession) -> None:
    assert session.id and session.transport.kind and session.request.remote_address
    assert session.credentials is not None and session.user == session.credentials.user


async def test_a_hook_typed_with_hook_session_runs_on_a_session(
    local_hub: Callable[..., Awaitable[Hub]], local_client: Callable[..., Awaitable[FakeClient]]
) -> None:
    """A Session offers HookSession (mypy checks the assignments) and such a hook runs."""
    seen: list[HookSession] = []

    def on_connect(session: HookSession) -> None:
        seen.append(session)
        _on_connect_portable(session)

    hook: OnConnect[HookSession] = on_connect
    hub = await local_hub(on_connect=hook)
    client = await local_client(hub, "alice")
    session: HookSession = client.session
    assert seen == [session] and session.connected and session.id == client.client_id
