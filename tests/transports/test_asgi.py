"""The hub mounted into ASGI apps (Starlette, FastAPI) and served by uvicorn in-process.

Real clients only: pulsewire's WebSocket client, httpx for SSE, long-polling and the API, a
raw socket for the slow consumer, and a standalone ``pulsewire serve`` subprocess sharing a
Redis engine prefix with the mounted hub.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import pytest

import pulsewire
from pulsewire.aio.budget import BudgetLimits
from pulsewire.demos import demo_config
from pulsewire.hub import ChannelOptions, Hub, HubConfig
from pulsewire.hub.wire import JSON_SUBPROTOCOL, MSGPACK_SUBPROTOCOL
from pulsewire.protocol.errors import ConnectionClosed, InvalidStatus
from pulsewire.server.asgi import HubASGI

from .conftest import API_KEY, SECRET, TEXT, command_lines, make_token, wait_until

httpx = pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")
starlette_applications = pytest.importorskip("starlette.applications")
starlette_routing = pytest.importorskip("starlette.routing")
fastapi = pytest.importorskip("fastapi")

pytestmark = pytest.mark.timeout(60)

HOST = "127.0.0.1"
MOUNT = "/realtime"
WS_PATH = f"{MOUNT}/connection/websocket"
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379


# ------------------------------------------------------------------------------ apps


def starlette_app(rt: HubASGI, *, lifespan: bool = True) -> Any:
    async def hello(request: Any) -> Any:
        from starlette.responses import PlainTextResponse

        return PlainTextResponse("hello from the app")

    routes = [starlette_routing.Route("/hello", hello), starlette_routing.Mount(MOUNT, app=rt)]
    return starlette_applications.Starlette(
        routes=routes, lifespan=rt.lifespan if lifespan else None
    )


def fastapi_app(rt: HubASGI) -> Any:
    app = fastapi.FastAPI(lifespan=rt.lifespan)

    @app.get("/hello")
    async def hello() -> dict[str, str]:
        return {"hello": "from the app"}

    app.mount(MOUNT, rt)
    return app


FRAMEWORKS: dict[str, Callable[[HubASGI], Any]] = {
    "starlette": starlette_app,
    "fastapi": fastapi_app,
}


def hub_config(**changes: Any) -> HubConfig:
    config = demo_config(HubConfig(token_hmac_secret=SECRET, api_key=API_KEY))
    return config.replace(**changes)


@dataclass
class Served:
    rt: HubASGI
    port: int

    @property
    def hub(self) -> Hub:
        return self.rt.hub

    @property
    def http(self) -> str:
        return f"http://{HOST}:{self.port}{MOUNT}"

    @property
    def ws(self) -> str:
        return f"ws://{HOST}:{self.port}{WS_PATH}"


@pytest.fixture
async def uvicorn_serve() -> AsyncIterator[Callable[..., Awaitable[int]]]:
    """``port = await uvicorn_serve(app, **config)``: uvicorn in this loop, stopped at teardown."""
    running: list[tuple[Any, asyncio.Task[None]]] = []

    async def start(app: Any, **options: Any) -> int:
        options.setdefault("lifespan", "on")
        config = uvicorn.Config(
            app, host=HOST, port=0, log_level="warning", timeout_graceful_shutdown=3, **options
        )
        server = uvicorn.Server(config)
        task = asyncio.ensure_future(server.serve())
        running.append((server, task))
        for _ in range(500):
            if server.started or task.done():
                break
            await asyncio.sleep(0.01)
        if task.done():
            task.result()
        assert server.started, "uvicorn did not start"
        return int(server.servers[0].sockets[0].getsockname()[1])

    yield start
    for server, _ in running:
        server.should_exit = True
    for _, task in running:
        await asyncio.wait_for(task, 10)


@pytest.fixture(params=list(FRAMEWORKS))
def framework(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def mounted(
    framework: str, uvicorn_serve: Callable[..., Awaitable[int]]
) -> Callable[..., Awaitable[Served]]:
    """``served = await mounted(config=None, **HubASGI options)`` with the test's framework."""

    async def start(config: HubConfig | None = None, **options: Any) -> Served:
        rt = HubASGI(Hub(config or hub_config()), **options)
        port = await uvicorn_serve(FRAMEWORKS[framework](rt))
        return Served(rt, port)

    return start


# ------------------------------------------------------------------------------ clients


class Client:
    """A hub client on pulsewire's WebSocket client (JSON or msgpack)."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.binary = ws.subprotocol == MSGPACK_SUBPROTOCOL
        self.next_id = 0
        self.seen: list[dict[str, Any]] = []

    async def send(self, method: str, **params: Any) -> int:
        self.next_id += 1
        command = {"id": self.next_id, "method": method, "params": params}
        await self.ws.send(msgpack.packb(command) if self.binary else json.dumps(command))
        return self.next_id

    async def recv(self, timeout: float = 5) -> dict[str, Any]:
        data = await asyncio.wait_for(self.ws.recv(), timeout)
        assert isinstance(data, bytes) == self.binary, data
        message: dict[str, Any] = msgpack.unpackb(data) if self.binary else json.loads(data)
        return message

    async def until(self, predicate: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        """The first message (seen before, or next) that ``predicate`` accepts."""
        for index, message in enumerate(self.seen):
            if predicate(message):
                return self.seen.pop(index)
        while True:
            message = await self.recv()
            if predicate(message):
                return message
            self.seen.append(message)

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        cid = await self.send(method, **params)
        reply = await self.until(lambda m: m.get("id") == cid)
        assert "result" in reply, reply
        result: dict[str, Any] = reply["result"]
        return result

    async def publication(self, channel: str) -> dict[str, Any]:
        return await self.until(
            lambda m: m.get("push") == "publication" and m.get("channel") == channel
        )


async def hub_client(url: str, user: str, **options: Any) -> tuple[Client, dict[str, Any]]:
    options.setdefault("subprotocols", [JSON_SUBPROTOCOL])
    ws = await pulsewire.connect(url, **options)
    client = Client(ws)
    return client, await client.call("connect", token=make_token(user))


async def api(http: Any, base: str, method: str, params: dict[str, Any]) -> Any:
    response = await http.post(
        f"{base}/api/{method}", json=params, headers={"Authorization": f"apikey {API_KEY}"}
    )
    assert response.status_code == 200, response.text
    return response.json()["result"]


class EventStream:
    """Events (name, JSON data) of an httpx streaming response; comments are skipped."""

    def __init__(self, response: Any) -> None:
        self.lines = response.aiter_lines()

    async def next(self, timeout: float = 5) -> tuple[str, Any]:
        return await asyncio.wait_for(self._next(), timeout)

    async def _next(self) -> tuple[str, Any]:
        name, data = "message", []
        async for line in self.lines:
            if not line:
                if data:
                    return name, json.loads("\n".join(data))
                continue
            field, _, value = line.partition(":")
            if field == "event":
                name = value.strip()
            elif field == "data":
                data.append(value[1:] if value.startswith(" ") else value)
        raise EOFError("the event stream ended")

    async def until(self, predicate: Callable[[Any], bool]) -> Any:
        while True:
            _, data = await self.next()
            if predicate(data):
                return data


# ------------------------------------------------------------------------------ WebSocket


async def test_websocket_json_subscribe_publish(mounted, framework, http):
    served = await mounted()
    assert served.hub._started  # by the framework's lifespan
    alice, connected = await hub_client(served.ws, "alice")
    assert alice.ws.subprotocol == JSON_SUBPROTOCOL
    assert connected["user"] == "alice"
    assert connected["transport"] == "websocket"
    bob, _ = await hub_client(served.ws, "bob")
    for client in (alice, bob):
        subscribed = await client.call("subscribe", channel="chat:lobby")
        assert subscribed["recoverable"] is True

    await alice.call("publish", channel="chat:lobby", data={"text": "hi"})
    for client in (alice, bob):
        push = await client.publication("chat:lobby")
        assert push["data"] == {"text": "hi"}
        assert push["info"]["user"] == "alice"

    # The server API through the same mount, and the framework's own routes beside it.
    result = await api(http, served.http, "publish", {"channel": "chat:lobby", "data": "from api"})
    assert result["offset"] == 2
    assert (await bob.publication("chat:lobby"))["data"] == "from api"
    hello = await http.get(f"http://{HOST}:{served.port}/hello")
    assert hello.status_code == 200 and "from the app" in hello.text

    # A server-side disconnect reaches the client as a close code and reason.
    await api(http, served.http, "disconnect", {"user": "bob", "reason": "bye bob"})
    with pytest.raises(ConnectionClosed):
        while True:
            await bob.recv()
    assert bob.ws.close_code == 4502
    assert bob.ws.close_reason == "bye bob"
    await alice.ws.close()
    await wait_until(lambda: not served.hub.sessions)


async def test_websocket_msgpack(mounted):
    served = await mounted()
    client, connected = await hub_client(
        served.ws, "carol", subprotocols=[MSGPACK_SUBPROTOCOL, JSON_SUBPROTOCOL]
    )
    assert client.ws.subprotocol == JSON_SUBPROTOCOL  # the server's preference, as natively
    await client.ws.close()

    client, connected = await hub_client(served.ws, "carol", subprotocols=[MSGPACK_SUBPROTOCOL])
    assert client.ws.subprotocol == MSGPACK_SUBPROTOCOL and client.binary
    assert connected["user"] == "carol"
    await client.call("subscribe", channel="chat:bin")
    await client.call("publish", channel="chat:bin", data={"n": [1, 2.5, "é"]})
    assert (await client.publication("chat:bin"))["data"] == {"n": [1, 2.5, "é"]}
    await client.ws.close()


async def test_websocket_without_subprotocol_speaks_json(mounted):
    served = await mounted()
    client, connected = await hub_client(served.ws, "dave", subprotocols=[])
    assert client.ws.subprotocol is None
    assert connected["user"] == "dave"
    await client.ws.close()


async def test_cross_origin_websocket_refused(mounted):
    served = await mounted(allowed_origins=["https://app.example"])
    with pytest.raises(InvalidStatus) as refused:
        await pulsewire.connect(served.ws, origin="https://evil.example")
    assert refused.value.status == 403
    assert not served.hub.sessions
    for origin in (f"http://{HOST}:{served.port}", "https://app.example"):
        client, _ = await hub_client(served.ws, "erin", origin=origin)
        await client.ws.close()
    # Other paths under the mount are no WebSocket endpoints.
    with pytest.raises(InvalidStatus):
        await pulsewire.connect(f"ws://{HOST}:{served.port}{MOUNT}/health")


async def test_origin_check_off(mounted):
    served = await mounted(check_origin=False)
    client, _ = await hub_client(served.ws, "frank", origin="https://anywhere.example")
    await client.ws.close()


async def test_oversized_message_closes_1009(mounted):
    served = await mounted(max_message_size=1024)
    client, _ = await hub_client(served.ws, "gina")
    await client.ws.send(json.dumps({"id": 9, "method": "ping", "params": {"x": "y" * 2000}}))
    with pytest.raises(ConnectionClosed):
        while True:
            await client.recv()
    assert client.ws.close_code == 1009


async def flood_until_disconnected(served: Served, raw: Any) -> Any:
    """Connect and subscribe a raw client that then reads nothing; publish until the hub
    drops it. Returns its transport after checking the queue stayed bounded."""
    connect = {"id": 1, "method": "connect", "params": {"token": make_token("slow")}}
    subscribe = {"id": 2, "method": "subscribe", "params": {"channel": "typing:flood"}}
    for command in (connect, subscribe):
        await raw.send_frame(0x1, json.dumps(command).encode())
        reply = json.loads((await raw.recv_frame()).payload)
        assert reply["id"] == command["id"] and "result" in reply, reply
    (session,) = served.hub.sessions.values()
    transport = session.transport
    payload = "x" * 8192
    peak = published = 0
    while session.id in served.hub.sessions:
        assert published < 5000, "never disconnected"
        await served.hub.publish("typing:flood", payload)
        published += 1
        peak = max(peak, transport.buffered())
        await asyncio.sleep(0)
    assert peak <= served.rt.max_buffered
    assert transport.buffered() == 0  # dropped: a reconnecting client recovers from history
    assert served.hub.metrics.slow_consumers._value.get() == 1
    return transport


async def test_slow_consumer_is_disconnected_with_bounded_queue(mounted, raw_client):
    served = await mounted(hub_config(client_queue_max_bytes=64 * 1024))
    raw = await raw_client(served.port, WS_PATH, rcvbuf=4096)
    await flood_until_disconnected(served, raw)
    # Once the client reads again, it gets what was in flight, then the close frame.
    frames = await raw.recv_until_close(timeout=10)
    assert frames and frames[-1].opcode == 0x8
    assert frames[-1].close_code == 1013
    assert "slow consumer" in frames[-1].close_reason


async def test_a_websocket_session_queue_over_the_address_budget_ends_it(mounted, raw_client):
    limits = BudgetLimits(
        connection_high=8192, connection_hard=1 << 20, address_high=8192, address_hard=32768
    )
    served = await mounted(budget_limits=limits)
    raw = await raw_client(served.port, WS_PATH, rcvbuf=4096)
    connect = {"id": 1, "method": "connect", "params": {"token": make_token("held")}}
    subscribe = {"id": 2, "method": "subscribe", "params": {"channel": "typing:held"}}
    for command in (connect, subscribe):
        await raw.send_frame(0x1, json.dumps(command).encode())
        assert json.loads((await raw.recv_frame()).payload)["id"] == command["id"]
    (session,) = served.hub.sessions.values()
    published = 0
    while session.id in served.hub.sessions:
        assert published < 5000, "never disconnected"
        await served.hub.publish("typing:held", "x" * 8192)
        published += 1
        assert served.rt.budgets.held(HOST) <= 32768 + 8192 + 200
        await asyncio.sleep(0)
    assert served.rt.budgets.exceeded == {"connection": 0, "address": 1}
    frames = await raw.recv_until_close(timeout=10)
    assert (frames[-1].close_code, frames[-1].close_reason) == (
        1013,
        "server memory budget exceeded",
    )
    await wait_until(lambda: served.rt.budgets.addresses == 0)


async def test_longpoll_queues_are_charged_to_the_address_through_asgi(mounted, http):
    served = await mounted()
    base = f"{served.http}/connection/longpoll"
    session = (await http.post(f"{base}/open")).json()["session"]
    commands = command_lines(
        {"id": 1, "method": "connect", "params": {"token": make_token("jane")}},
        {"id": 2, "method": "subscribe", "params": {"channel": "chat:held"}},
    )
    assert await http.post(f"{base}/send?session={session}", content=commands, headers=TEXT)
    await http.get(f"{base}/poll?session={session}")  # the replies
    for n in range(5):
        await served.hub.publish("chat:held", {"n": n, "pad": "x" * 1000})
    assert served.rt.budgets.held(HOST) > 5000
    assert len((await http.get(f"{base}/poll?session={session}")).json()) == 5
    assert served.rt.budgets.held(HOST) == 0
    await http.post(f"{base}/close?session={session}")
    assert served.rt.budgets.addresses == 0


async def test_slow_consumer_that_never_reads_is_abandoned(mounted, raw_client):
    served = await mounted(hub_config(client_queue_max_bytes=64 * 1024), close_timeout=0.3)
    raw = await raw_client(served.port, WS_PATH, rcvbuf=4096)
    transport = await flood_until_disconnected(served, raw)
    # The close frame cannot be written: after close_timeout the writer gives up.
    await wait_until(lambda: transport._writer.done(), timeout=3)
    assert transport._writer.cancelled()


# ------------------------------------------------------------------------------ HTTP


async def test_sse_through_asgi(mounted, http):
    served = await mounted()
    url = f"{served.http}/connection/sse"
    async with http.stream("GET", url) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = EventStream(response)
        name, hello = await events.next()
        assert name == "session"
        send = f"{url}/send?session={hello['session']}"
        commands = command_lines(
            {"id": 1, "method": "connect", "params": {"token": make_token("hana")}},
            {"id": 2, "method": "subscribe", "params": {"channel": "chat:sse"}},
        )
        posted = await http.post(send, content=commands, headers=TEXT)
        assert posted.status_code == 204, posted.text
        connected = await events.until(lambda m: m.get("id") == 1)
        assert connected["result"]["transport"] == "sse"
        assert "result" in await events.until(lambda m: m.get("id") == 2)
        await api(http, served.http, "publish", {"channel": "chat:sse", "data": {"n": 1}})
        push = await events.until(lambda m: m.get("push") == "publication")
        assert push["data"] == {"n": 1}
        assert len(served.hub.sessions) == 1
    # The client closed the stream: the session ends.
    await wait_until(lambda: not served.hub.sessions)


async def test_longpoll_through_asgi(mounted, http):
    served = await mounted()
    base = f"{served.http}/connection/longpoll"
    opened = await http.post(f"{base}/open")
    assert opened.status_code == 200, opened.text
    session = opened.json()["session"]
    commands = command_lines(
        {"id": 1, "method": "connect", "params": {"token": make_token("ivan")}},
        {"id": 2, "method": "subscribe", "params": {"channel": "chat:poll"}},
    )
    sent = await http.post(f"{base}/send?session={session}", content=commands, headers=TEXT)
    assert sent.status_code == 204
    replies = (await http.get(f"{base}/poll?session={session}")).json()
    assert [m["id"] for m in replies if "id" in m] == [1, 2], replies
    # A waiting poll answers as soon as a publication arrives.
    poll = asyncio.ensure_future(http.get(f"{base}/poll?session={session}"))
    await asyncio.sleep(0.1)
    await api(http, served.http, "publish", {"channel": "chat:poll", "data": "wake"})
    (push,) = (await poll).json()
    assert push["push"] == "publication" and push["data"] == "wake"
    closed = await http.post(f"{base}/close?session={session}")
    assert closed.status_code == 204
    assert not served.hub.sessions


async def test_http_routes_and_limits(mounted, http):
    served = await mounted(max_body=2048)
    base = served.http
    health = await http.get(f"{base}/health")
    assert health.status_code == 200
    assert health.json()["status"] == "ok" and health.json()["node"] == served.hub.node_id
    assert (await http.head(f"{base}/health")).status_code == 200
    metrics = await http.get(f"{base}/metrics")
    assert metrics.status_code == 200 and "pulsewire_publications_total" in metrics.text

    url = f"{base}/api/publish"
    params = {"channel": "chat:x", "data": 1}
    assert (await http.post(url, json=params)).status_code == 401
    wrong = {"Authorization": "apikey nope"}
    assert (await http.post(url, json=params, headers=wrong)).status_code == 403
    key = {"Authorization": f"apikey {API_KEY}"}
    published = await http.post(url, json=params, headers=key)
    assert published.status_code == 200 and published.json()["result"]["offset"] == 1
    big = {"channel": "chat:x", "data": "z" * 4096}
    assert (await http.post(url, json=big, headers=key)).status_code == 413

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: read up to the limit
        for _ in range(4):
            yield b"z" * 1024

    assert (await http.post(url, content=chunks(), headers=key)).status_code == 413

    assert (await http.get(url)).status_code == 405
    assert (await http.get(f"{base}/nope")).status_code == 404
    upgrade = await http.get(f"{base}/connection/websocket")
    assert upgrade.status_code == 426 and upgrade.headers["upgrade"] == "websocket"
    refused = await http.get(f"{base}/connection/sse", headers={"Origin": "https://evil.example"})
    assert refused.status_code == 403


async def test_api_disabled_without_key(mounted, http):
    served = await mounted(hub_config(api_key=None))
    response = await http.post(
        f"{served.http}/api/publish",
        json={"channel": "chat:x", "data": 1},
        headers={"Authorization": f"apikey {API_KEY}"},
    )
    assert response.status_code == 403


# ------------------------------------------------------------------------------ lifecycle


async def test_lazy_start_without_lifespan(uvicorn_serve, http):
    hub = Hub(hub_config())
    starts = 0
    real_start = hub.start

    async def counting_start() -> None:
        nonlocal starts
        starts += 1
        await asyncio.sleep(0.05)  # let concurrent first requests pile up on the lock
        await real_start()

    hub.start = counting_start  # type: ignore[method-assign]
    rt = HubASGI(hub)
    port = await uvicorn_serve(starlette_app(rt, lifespan=False))
    assert not hub._started
    base = f"http://{HOST}:{port}{MOUNT}"
    responses = await asyncio.gather(*(http.get(f"{base}/health") for _ in range(5)))
    assert [r.status_code for r in responses] == [200] * 5
    assert starts == 1 and hub._started
    client, _ = await hub_client(f"ws://{HOST}:{port}{WS_PATH}", "lazy")
    assert starts == 1
    # Closing the hub tells its clients to reconnect elsewhere (4000), then refuses them.
    await rt.close()
    assert hub.closing
    with pytest.raises(ConnectionClosed):
        while True:
            await client.recv()
    assert client.ws.close_code == 4000
    ws = await pulsewire.connect(f"ws://{HOST}:{port}{WS_PATH}")
    with pytest.raises(ConnectionClosed):
        await asyncio.wait_for(ws.recv(), 5)
    assert ws.close_code == 4000


async def test_bare_app_handles_lifespan_and_root_path(uvicorn_serve, http):
    hub = Hub(hub_config())
    rt = HubASGI(hub)
    # Behind a proxy that strips /rt: uvicorn puts root_path in front of path.
    port = await uvicorn_serve(rt, root_path="/rt")
    assert hub._started and not hub.closing
    assert (await http.get(f"http://{HOST}:{port}/health")).status_code == 200
    client, _ = await hub_client(f"ws://{HOST}:{port}/connection/websocket", "bare")
    await client.ws.close()


async def test_bare_app_closes_hub_on_shutdown():
    hub = Hub(hub_config())
    rt = HubASGI(hub)
    messages = iter([{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])
    sent: list[str] = []

    async def receive() -> dict[str, Any]:
        return next(messages)

    async def send(message: Any) -> None:
        sent.append(message["type"])

    await rt({"type": "lifespan"}, receive, send)
    assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert hub.closing


async def test_uvicorn_shutdown_ends_sessions_then_closes_hub(http):
    """uvicorn closes WebSockets (1012), cancels open streams after its graceful timeout,
    then runs lifespan shutdown: every session ends and the hub closes."""
    rt = HubASGI(Hub(hub_config()))
    config = uvicorn.Config(
        starlette_app(rt), host=HOST, port=0, log_level="critical", timeout_graceful_shutdown=0.5
    )
    server = uvicorn.Server(config)
    task = asyncio.ensure_future(server.serve())
    await wait_until(lambda: server.started or task.done())
    port = server.servers[0].sockets[0].getsockname()[1]
    client, _ = await hub_client(f"ws://{HOST}:{port}{WS_PATH}", "ws-user")
    async with http.stream("GET", f"http://{HOST}:{port}{MOUNT}/connection/sse") as response:
        events = EventStream(response)  # kept: dropping it would close the stream
        name, _ = await events.next()
        assert name == "session"
        assert len(rt.hub.sessions) == 2
        server.should_exit = True
        await asyncio.wait_for(task, 10)
        with pytest.raises(httpx.RemoteProtocolError):  # cut off, not ended by the client
            await events.next()
    assert not rt.hub.sessions
    assert rt.hub.closing
    with pytest.raises(ConnectionClosed):
        await client.recv()
    assert client.ws.close_code == 1012


@pytest.mark.parametrize(
    ("root_path", "path"),
    [("/realtime", "/realtime/health"), ("/realtime", "/health"), ("", "/health")],
)
async def test_paths_with_and_without_root_path_in_path(root_path, path):
    """Both ASGI conventions: ``path`` with the mount prefix (current) or without (older)."""
    rt = HubASGI(Hub(hub_config()))
    sent: list[Any] = []
    requests = [{"type": "http.request", "body": b"", "more_body": False}]

    async def receive() -> dict[str, Any]:
        if requests:
            return requests.pop()
        await asyncio.sleep(3600)
        raise AssertionError

    async def send(message: Any) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "GET",
        "path": path,
        "root_path": root_path,
        "query_string": b"",
        "headers": [(b"host", b"example")],
        "client": ("127.0.0.1", 1234),
    }
    try:
        await rt(scope, receive, send)
        assert sent[0]["status"] == 200
        assert json.loads(sent[1]["body"])["status"] == "ok"
    finally:
        await rt.close()


# ------------------------------------------------------------------------------ Redis


def redis_answers() -> bool:
    try:
        with socket.create_connection((REDIS_HOST, REDIS_PORT), 0.5) as sock:
            sock.settimeout(0.5)
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


@pytest.fixture
def redis_prefix() -> str:
    """A fresh key prefix on the Redis at 127.0.0.1:6379 (failing, not skipping, on CI)."""
    try:
        import pulsewire.hub.engines.redis  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"the Redis engine is not importable yet: {exc}")
    if not redis_answers():
        message = f"Redis not reachable at {REDIS_HOST}:{REDIS_PORT}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return f"pwasgi-{uuid.uuid4().hex[:12]}"


async def start_standalone(config: Path, redis_url: str) -> tuple[asyncio.subprocess.Process, int]:
    """``pulsewire serve`` in a subprocess; returns it and its port."""
    cli = Path(sys.executable).with_name("pulsewire")
    process = await asyncio.create_subprocess_exec(
        *(str(cli), "serve", "--host", HOST, "--port", "0"),
        *("--engine", redis_url, "--config", str(config)),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    assert process.stdout is not None
    while True:
        line = await asyncio.wait_for(process.stdout.readline(), 20)
        if not line:
            raise AssertionError(f"pulsewire serve exited with {await process.wait()}")
        match = re.search(rb"listening on http://[^:]+:(\d+)/", line)
        if match:
            return process, int(match.group(1))


async def test_shared_redis_engine_with_standalone_node(
    redis_prefix, uvicorn_serve, http, tmp_path
):
    redis_url = f"redis://{REDIS_HOST}:{REDIS_PORT}/0"
    config = tmp_path / "pulsewire.toml"
    config.write_text(
        f'[hub]\nengine_prefix = "{redis_prefix}"\ntoken_hmac_secret = "{SECRET}"\n'
        f'api_key = "{API_KEY}"\n\n[namespaces.room]\nallow_publish = true\n\n'
        "[namespaces.feed]\nallow_publish = true\nhistory_size = 10\nhistory_ttl = 60\n"
    )
    hub = Hub(
        HubConfig(
            engine=redis_url,
            engine_prefix=redis_prefix,
            token_hmac_secret=SECRET,
            api_key=API_KEY,
            namespaces={
                "room": ChannelOptions(allow_publish=True),
                "feed": ChannelOptions(allow_publish=True, history_size=10, history_ttl=60),
            },
        )
    )
    rt = HubASGI(hub)
    process, standalone_port = await start_standalone(config, redis_url)
    try:
        port = await uvicorn_serve(starlette_app(rt))
        mounted_client, _ = await hub_client(f"ws://{HOST}:{port}{WS_PATH}", "mounted")
        standalone_url = f"ws://{HOST}:{standalone_port}/connection/websocket"
        standalone_client, hello = await hub_client(standalone_url, "standalone")
        assert hello["node"] != hub.node_id
        for client in (mounted_client, standalone_client):
            await client.call("subscribe", channel="room:shared")

        await mounted_client.call("publish", channel="room:shared", data="from mounted")
        await standalone_client.call("publish", channel="room:shared", data="from standalone")
        standalone_api = f"http://{HOST}:{standalone_port}"
        await api(http, standalone_api, "publish", {"channel": "room:shared", "data": "s-api"})
        mounted_api = f"http://{HOST}:{port}{MOUNT}"
        await api(http, mounted_api, "publish", {"channel": "room:shared", "data": "m-api"})
        # Each node delivers its own publications at once, others' via Redis: the order
        # between nodes may differ (channels without history), the set may not.
        expected = sorted(["from mounted", "from standalone", "s-api", "m-api"])
        for client in (mounted_client, standalone_client):
            got = [(await client.publication("room:shared"))["data"] for _ in expected]
            assert sorted(got) == expected

        # A history channel is one stream: offsets follow each other whoever publishes.
        for client in (mounted_client, standalone_client):
            await client.call("subscribe", channel="feed:shared")
        for index in range(4):
            publisher = (mounted_client, standalone_client)[index % 2]
            result = await publisher.call("publish", channel="feed:shared", data=index)
            assert result["offset"] == index + 1
        for client in (mounted_client, standalone_client):
            pushes = [await client.publication("feed:shared") for _ in range(4)]
            assert [(p["offset"], p["data"]) for p in pushes] == [(i + 1, i) for i in range(4)]
        for client in (mounted_client, standalone_client):
            await client.ws.close()
    finally:
        if process.returncode is None:
            process.terminate()
            await asyncio.wait_for(process.wait(), 15)
        import redis.asyncio as aioredis

        admin = aioredis.Redis.from_url(redis_url)
        try:
            keys = [k async for k in admin.scan_iter(match=f"{redis_prefix}*", count=1000)]
            if keys:
                await admin.delete(*keys)
        finally:
            await admin.aclose()
