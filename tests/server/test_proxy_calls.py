"""The proxy one layer down (pulsewire.server.proxy.calls and .hooks): the bodies it POSTs,
how it reads replies, and what each failure becomes, on ``httpx.MockTransport`` (no network).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from pulsewire.hub.auth import Credentials
from pulsewire.hub.contracts import ConnectRequest
from pulsewire.hub.errors import Disconnect, HubError
from pulsewire.hub.hooks import SubscribeOutcome
from pulsewire.server.proxy import ROUTES, proxy_settings
from pulsewire.server.proxy.calls import BackendProxy
from pulsewire.server.proxy.hooks import ProxyHooks

Handler = Callable[[httpx.Request], Any]


@dataclass
class Session:
    """What the proxy's hooks read of a session (HookSession's fields)."""

    user: str = "42"
    id: str = "c1"
    credentials: Credentials | None = None
    conn_info: Any = None
    request: ConnectRequest = field(
        default_factory=lambda: ConnectRequest(
            "websocket",
            "/connection/websocket",
            [
                ("Authorization", "Bearer abc"),
                ("X-Other", "no"),
                ("Cookie", "sessionid=s3cr3t; theme=dark"),
            ],
            "10.0.0.7",
            client="c1",
            encoding="json",
        )
    )


class Backend:
    """Records each request; answers with ``handler(request)`` (a response or a JSON-able)."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.requests: list[httpx.Request] = []

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.handler(request)
        if isinstance(answer, Awaitable):
            answer = await answer
        if isinstance(answer, httpx.Response):
            return answer
        return httpx.Response(200, json=answer)

    def body(self, n: int = -1) -> dict[str, Any]:
        return json.loads(self.requests[n].content)  # type: ignore[no-any-return]


TABLE = {
    "url": "http://backend.test/pw/",
    "timeout": 1.0,
    "include_headers": ["authorization"],
    "include_cookies": ["sessionid"],
    "headers": {"X-Proxy-Secret": "shh"},
    **{route: {} for route in ROUTES},
}


@pytest.fixture
async def proxied() -> Any:
    made: list[BackendProxy] = []

    def make(
        handler: Handler, *, tokens: bool = False, **changes: Any
    ) -> tuple[ProxyHooks, Backend]:
        settings = proxy_settings({**TABLE, **changes})
        assert settings is not None
        backend = Backend(handler)
        proxy = BackendProxy(settings, transport=httpx.MockTransport(backend))
        made.append(proxy)
        return ProxyHooks(proxy, lambda: tokens), backend

    yield make
    for proxy in made:
        await proxy.close()


# ------------------------------------------------------------------------------ connect


async def test_connect_body_and_result(proxied: Any) -> None:
    expire_at = int(time.time()) + 60
    hooks, backend = proxied(
        lambda r: {
            "result": {
                "user": 42,
                "expire_at": expire_at,
                "info": {"name": "Ann"},
                "channels": ["team:*"],
                "subs": ["user:#42"],
            }
        }
    )
    request = Session().request
    request.data = {"hello": 1}
    credentials = await hooks.authenticate(request)
    assert credentials == Credentials(
        user="42",
        expires_at=float(expire_at),
        info={"name": "Ann"},
        channels=("team:*",),
        subs=("user:#42",),
    )
    sent = backend.requests[0]
    assert str(sent.url) == "http://backend.test/pw/connect" and sent.method == "POST"
    assert sent.headers["content-type"] == "application/json"
    assert sent.headers["x-proxy-secret"] == "shh"
    assert backend.body() == {
        "client": "c1",
        "transport": "websocket",
        "encoding": "json",
        "remote_addr": "10.0.0.7",
        "headers": {"authorization": "Bearer abc"},
        "cookies": {"sessionid": "s3cr3t"},
        "data": {"hello": 1},
    }


async def test_a_token_decides_when_the_hub_checks_tokens(proxied: Any) -> None:
    hooks, backend = proxied(lambda r: {"result": {"user": "x"}}, tokens=True)
    request = Session().request
    request.token = "eyJ..."
    assert await hooks.authenticate(request) is None
    assert backend.requests == []
    request.token = None
    assert (await hooks.authenticate(request)) == Credentials(user="x")


def never_answers(request: httpx.Request) -> Awaitable[None]:
    return asyncio.Event().wait()  # the backend hangs: the route's timeout ends the call


def refuses_connections(request: httpx.Request) -> None:
    raise httpx.ConnectError("connection refused", request=request)


FAILURES = [
    (never_answers, "backend unavailable: no answer in 0.05 s", True),
    (refuses_connections, "backend unavailable: cannot reach the backend: ConnectError", True),
    (lambda r: httpx.Response(503), "backend unavailable: the backend answered HTTP 503", True),
    (lambda r: httpx.Response(404), "backend error: the backend answered HTTP 404", False),
    (lambda r: httpx.Response(200, text="<html>"), "backend error: the reply is not JSON", False),
    (lambda r: {"result": {"user": "1"}, "x": 1}, "backend error: the reply is none of", False),
    (lambda r: {"error": {"code": "103"}}, "backend error: the reply is none of", False),
    (lambda r: {"disconnect": {"code": 1000}}, "backend error: the reply is none of", False),
]  # fmt: skip


@pytest.mark.parametrize(("handler", "message", "unavailable"), FAILURES)
async def test_connect_failures_end_with_4010(
    proxied: Any, handler: Handler, message: str, unavailable: bool
) -> None:
    hooks, _ = proxied(handler, connect={"timeout": 0.05})
    with pytest.raises(Disconnect) as info:
        await hooks.authenticate(Session().request)
    assert info.value.code == 4010 and info.value.reconnect
    assert info.value.reason.startswith(message)
    outcome = "unavailable" if unavailable else "malformed"
    assert hooks.proxy.calls["connect", outcome] == 1


async def test_connect_refusals(proxied: Any) -> None:
    answers = [
        {"error": {"code": 103, "message": "who are you?"}},
        {"disconnect": {"code": 4599, "reason": "banned"}},
        {"result": {"info": {}}},  # no user
        {"result": {"user": "1", "subs": "user:#1"}},
        {"result": {"user": "1", "expire_at": "soon"}},
    ]
    hooks, _ = proxied(lambda r: answers.pop(0))
    expected = [
        (4503, "who are you?"),
        (4599, "banned"),
        (4010, 'backend error: the connect result needs a user (a string; "" for anonymous)'),
        (4010, "backend error: subs must be a list of channel names"),
        (4010, "backend error: expire_at must be a Unix time in seconds, not 'soon'"),
    ]
    for code, reason in expected:
        with pytest.raises(Disconnect) as info:
            await hooks.authenticate(Session().request)
        assert (info.value.code, info.value.reason) == (code, reason)


# ----------------------------------------------------------------------------- commands


async def test_subscribe_publish_rpc_bodies_and_results(proxied: Any) -> None:
    expire_at = time.time() + 30

    def answer(request: httpx.Request) -> Any:
        route = request.url.path.rsplit("/", 1)[-1]
        return {
            "subscribe": {"result": {"info": {"seat": 1}, "expire_at": expire_at}},
            "publish": {"result": {"data": {"text": "HI"}}},
            "rpc": {"result": {"data": 3}},
        }[route]

    hooks, backend = proxied(answer)
    session = Session()
    outcome = await hooks.on_subscribe(session, "chat:a", {"channel": "chat:a", "data": [1]})
    assert outcome == SubscribeOutcome(info={"seat": 1}, expires_at=expire_at)
    common = {
        "client": "c1",
        "transport": "websocket",
        "encoding": "json",
        "remote_addr": "10.0.0.7",
        "headers": {"authorization": "Bearer abc"},
        "cookies": {"sessionid": "s3cr3t"},
        "user": "42",
    }
    assert backend.body() == {**common, "channel": "chat:a", "data": [1]}
    assert await hooks.on_publish(session, "chat:a", {"text": "hi"}) == {"text": "HI"}
    assert backend.body() == {**common, "channel": "chat:a", "data": {"text": "hi"}}
    assert await hooks.on_rpc(session, "add", [1, 2]) == 3
    assert backend.body() == {**common, "method": "add", "data": [1, 2]}


async def test_publish_as_sent_when_the_result_has_no_data(proxied: Any) -> None:
    hooks, _ = proxied(lambda r: {"result": {}})
    assert await hooks.on_publish(Session(), "chat:a", "x") is None  # None: as sent


@pytest.mark.parametrize(("handler", "message", "unavailable"), FAILURES)
async def test_command_failures_are_108_or_100(
    proxied: Any, handler: Handler, message: str, unavailable: bool
) -> None:
    hooks, _ = proxied(handler, timeout=0.05)
    calls = [
        hooks.on_subscribe(Session(), "c", {}),
        hooks.on_publish(Session(), "c", 1),
        hooks.on_rpc(Session(), "m", None),
    ]
    for call in calls:
        with pytest.raises(HubError) as info:
            await call
        assert info.value.code == (108 if unavailable else 100)
        assert info.value.message.startswith(message)


async def test_command_errors_and_disconnects_pass_through(proxied: Any) -> None:
    answers = [
        {"error": {"code": 103, "message": "not in this team"}},
        {"error": {"code": 1403, "message": "custom"}},
        {"disconnect": {"code": 4502, "reason": "bye"}},
    ]
    hooks, _ = proxied(lambda r: answers.pop(0))
    for expected in ((103, "not in this team"), (1403, "custom")):
        with pytest.raises(HubError) as info:
            await hooks.on_publish(Session(), "c", 1)
        assert (info.value.code, info.value.message) == expected
    with pytest.raises(Disconnect) as gone:
        await hooks.on_rpc(Session(), "m", None)
    assert (gone.value.code, gone.value.reason) == (4502, "bye")


# ----------------------------------------------------------------------------- refreshes


async def test_refresh(proxied: Any) -> None:
    later = time.time() + 600
    answers = [{"result": {"expire_at": later, "info": {"v": 2}}}, {"result": {"expired": True}}]
    hooks, backend = proxied(lambda r: answers.pop(0))
    session = Session(credentials=Credentials(user="42", channels=("team:*",), subs=("u:#42",)))
    refreshed = await hooks.on_refresh(session)
    assert refreshed == Credentials(
        user="42", expires_at=later, info={"v": 2}, channels=("team:*",), subs=("u:#42",)
    )
    assert backend.body()["user"] == "42" and str(backend.requests[0].url).endswith("/refresh")
    assert await hooks.on_refresh(session) is None


async def test_sub_refresh(proxied: Any) -> None:
    later = time.time() + 600
    answers = [{"result": {"expire_at": later}}, {"result": {"expired": True}}, {"result": {}}]
    hooks, backend = proxied(lambda r: answers.pop(0))
    assert await hooks.on_sub_refresh(Session(), "chat:a") == later
    assert backend.body()["channel"] == "chat:a"
    assert await hooks.on_sub_refresh(Session(), "chat:a") is None
    assert await hooks.on_sub_refresh(Session(), "chat:a") is None  # no expire_at: none


# ------------------------------------------------------------------------------ metrics


async def test_calls_are_counted_by_route_and_outcome(proxied: Any) -> None:
    answers = [{"result": {"data": 1}}, {"error": {"code": 103, "message": "no"}}]
    hooks, _ = proxied(lambda r: answers.pop(0), rpc={})
    await hooks.on_rpc(Session(), "m", None)
    with pytest.raises(HubError):
        await hooks.on_rpc(Session(), "m", None)
    registry = CollectorRegistry()
    registry.register(hooks.proxy.collector())
    text = generate_latest(registry).decode()
    assert 'pulsewire_proxy_calls_total{outcome="result",route="rpc"} 1.0' in text
    assert 'pulsewire_proxy_calls_total{outcome="error",route="rpc"} 1.0' in text
    assert 'pulsewire_proxy_call_duration_seconds_count{route="rpc"} 2.0' in text


async def test_data_json_cannot_carry_is_refused_without_a_call(proxied: Any) -> None:
    hooks, backend = proxied(lambda r: {"result": {}})
    with pytest.raises(HubError) as info:
        await hooks.on_rpc(Session(), "m", b"\x00binary")
    assert info.value.code == 107 and "representable as JSON" in info.value.message
    request = Session().request
    request.data = float("nan")
    with pytest.raises(Disconnect) as gone:
        await hooks.authenticate(request)
    assert gone.value.code == 4501
    assert backend.requests == []
