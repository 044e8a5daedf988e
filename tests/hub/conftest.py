"""Fixtures for the hub tests, at two layers.

One layer down (hub logic: no sockets, see ``fakes.py``):

* ``local_hub(config=None, *, engine=None, hooks...)``: a started :class:`Hub` (closed at
  teardown); ``engine`` e.g. ``MemoryEngine(FakeClock())`` for history expiry.
* ``local_client(hub, user=..., token=..., connect=True, codec="json", params=...,
  headers=..., remote_address=...)``: a :class:`FakeClient` on a fake transport, with the
  methods of ``HubClient`` below.
* ``loop_clock``: a :class:`LoopClock` that moves the event loop's clock forward (timers).

End to end (transports, the HTTP API, clusters: a real HubServer on a free loopback port):

* ``hub_config(**changes)``: a :class:`HubConfig` with an HMAC secret, an API key and the test
  namespaces below (``changes`` replace hub settings; ``namespaces=`` entries are merged).
* ``hub_server(config=None, *, hooks..., **server_options)``: starts
  ``HubServer(Hub(config, hooks...), "127.0.0.1", 0, api_key=config.api_key, ...)``; every
  server is closed at teardown.
* ``hub_client(server, user=..., token=..., connect=True, codec="json", **connect_params)``:
  a :class:`HubClient` on ``pulsewire.connect`` (JSON or MessagePack subprotocol) that sends
  commands with ids, matches replies and collects pushes; ``connect=True`` (the default)
  sends the connect command and checks its reply.
* ``make_token(user, ttl=3600, secret=SECRET, **claims)``: an HS256 JWT.
* ``api(server, method, params, key=API_KEY)``: ``(status, json)`` of ``POST /api/<method>``.
* ``uniq(namespace)``: a channel name unique to this test.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import jwt
import msgpack
import pytest

import pulsewire
from pulsewire.hub import ChannelOptions, Hub, HubConfig
from pulsewire.protocol.errors import ConnectionClosed
from pulsewire.server.app import HubServer

from .fakes import CommandClient, FakeClient, LoopClock

HOST = "127.0.0.1"
SECRET = "hub-test-secret-0123456789abcdef"
API_KEY = "test-api-key"
WS_PATH = "/connection/websocket"
TIMEOUT = 5.0

NAMESPACES = {
    # presence, join/leave, history, client publishing: the "everything on" namespace
    "chat": ChannelOptions(
        presence=True, join_leave=True, history_size=100, history_ttl=300, allow_publish=True
    ),
    "hist": ChannelOptions(history_size=100, history_ttl=300),
    "small": ChannelOptions(history_size=3, history_ttl=300),
    "pub": ChannelOptions(allow_publish=True),
    "ro": ChannelOptions(),
    "priv": ChannelOptions(private=True, presence=True),
    "notif": ChannelOptions(),
    "anon": ChannelOptions(allow_anonymous=True, allow_publish=True),
    "locked": ChannelOptions(
        presence=True,
        history_size=10,
        history_ttl=300,
        allow_presence=False,
        allow_history=False,
    ),
    "nosub": ChannelOptions(allow_subscribe=False),
    "lossy": ChannelOptions(history_size=1000, history_ttl=300, slow_consumer="drop"),
}


class HubClosed(Exception):
    """The server closed the connection while a command waited for its reply."""

    def __init__(self, code: int | None, reason: str | None) -> None:
        super().__init__(f"closed by the server: {code} {reason!r}")
        self.code = code
        self.reason = reason


class HubClient(CommandClient):
    """A hub client over a real WebSocket: commands with ids, replies matched, pushes kept."""

    closed_error = HubClosed

    def __init__(self, ws: Any, codec: str = "json") -> None:
        super().__init__(codec)
        self.ws = ws
        self._reader = asyncio.get_running_loop().create_task(self._read())

    def decode(self, data: str | bytes) -> dict[str, Any]:
        if self.codec == "msgpack":
            assert isinstance(data, bytes), f"msgpack sessions answer in binary, got {data!r}"
            return msgpack.unpackb(data, raw=False)  # type: ignore[no-any-return]
        assert isinstance(data, str), f"JSON sessions answer in text, got {data!r}"
        return json.loads(data)  # type: ignore[no-any-return]

    async def _read(self) -> None:
        try:
            async for data in self.ws:
                self.received(self.decode(data))
        except ConnectionClosed:
            pass
        finally:
            self.ended(self.ws.close_code, self.ws.close_reason)

    async def send_raw(self, data: str | bytes) -> None:
        await self.ws.send(data)

    async def close(self) -> None:
        try:
            await asyncio.wait_for(self.ws.close(), 2)
        except (asyncio.TimeoutError, ConnectionClosed, OSError):
            self.ws.abort()
        if not self._reader.done():
            self._reader.cancel()
        await asyncio.gather(self._reader, return_exceptions=True)


def build_config(**changes: Any) -> HubConfig:
    namespaces = {**NAMESPACES, **changes.pop("namespaces", {})}
    base = HubConfig(
        token_hmac_secret=SECRET,
        api_key=API_KEY,
        connect_timeout=5.0,
        namespaces=namespaces,
    )
    return base.replace(**changes)


def encode_token(
    user: str | int, *, ttl: float | None = 3600, secret: str = SECRET, **claims: Any
) -> str:
    payload: dict[str, Any] = {"sub": str(user), **claims}
    if ttl is not None and "exp" not in claims:
        payload["exp"] = time.time() + ttl
    return jwt.encode(payload, secret, algorithm="HS256")


@pytest.fixture
def hub_config() -> Callable[..., HubConfig]:
    return build_config


@pytest.fixture
def make_token() -> Callable[..., str]:
    return encode_token


@pytest.fixture
def uniq(request: pytest.FixtureRequest) -> Callable[[str], str]:
    """``uniq("chat")`` -> ``chat:<test name>-<random>``, unique per call."""
    stem = "".join(c if c.isalnum() else "-" for c in request.node.name)[:60]

    def make(namespace: str = "") -> str:
        name = f"{stem}-{uuid.uuid4().hex[:8]}"
        return f"{namespace}:{name}" if namespace else name

    return make


@pytest.fixture
def hub_server(
    start_hub_server: Callable[[HubServer], Awaitable[HubServer]],
) -> Callable[..., Awaitable[HubServer]]:
    async def start(
        config: HubConfig | None = None,
        *,
        engine: Any = None,
        authenticate: Any = None,
        on_connect: Any = None,
        on_subscribe: Any = None,
        on_publish: Any = None,
        on_rpc: Any = None,
        on_disconnect: Any = None,
        **server_options: Any,
    ) -> HubServer:
        config = config or build_config()
        hub = Hub(
            config,
            engine=engine,
            authenticate=authenticate,
            on_connect=on_connect,
            on_subscribe=on_subscribe,
            on_publish=on_publish,
            on_rpc=on_rpc,
            on_disconnect=on_disconnect,
        )
        server_options.setdefault("api_key", config.api_key)
        return await start_hub_server(HubServer(hub, HOST, 0, **server_options))

    return start


@pytest.fixture
async def hub_client(
    hub_server: Any,
) -> AsyncIterator[Callable[..., Awaitable[HubClient]]]:
    clients: list[HubClient] = []

    async def open_client(
        server: HubServer,
        user: str | int | None = None,
        *,
        token: str | None = None,
        connect: bool = True,
        codec: str = "json",
        subprotocols: list[str] | None = None,
        **options: Any,
    ) -> HubClient:
        connect_params = options.pop("params", {})
        if subprotocols is None:
            subprotocols = [f"pulsewire.v1.{codec}"]
        ws = await pulsewire.connect(
            f"ws://{HOST}:{server.port}{WS_PATH}", subprotocols=subprotocols, **options
        )
        client = HubClient(ws, codec)
        clients.append(client)
        if token is None and user is not None:
            token = encode_token(user)
        client.token = token
        if connect:
            await client.connect(token, **connect_params)
        return client

    yield open_client
    await asyncio.gather(*(client.close() for client in clients))


@pytest.fixture
async def local_hub() -> AsyncIterator[Callable[..., Awaitable[Hub]]]:
    hubs: list[Hub] = []

    async def start(config: HubConfig | None = None, **options: Any) -> Hub:
        hub = Hub(config or build_config(), **options)
        await hub.start()
        hubs.append(hub)
        return hub

    yield start
    for hub in hubs:
        await hub.close()


@pytest.fixture
async def local_client() -> AsyncIterator[Callable[..., Awaitable[FakeClient]]]:
    clients: list[FakeClient] = []

    async def open_client(
        hub: Hub,
        user: str | int | None = None,
        *,
        token: str | None = None,
        connect: bool = True,
        codec: str = "json",
        params: dict[str, Any] | None = None,
        **request: Any,
    ) -> FakeClient:
        client = FakeClient(hub, codec, **request)
        clients.append(client)
        if token is None and user is not None:
            token = encode_token(user)
        client.token = token
        if connect:
            await client.connect(token, **(params or {}))
        return client

    yield open_client
    await asyncio.gather(*(client.close() for client in clients))


@pytest.fixture
async def loop_clock() -> AsyncIterator[LoopClock]:
    clock = LoopClock(asyncio.get_running_loop())
    yield clock
    clock.restore()


@pytest.fixture
def api() -> Callable[..., Awaitable[tuple[int, Any]]]:
    async def call(
        server: HubServer,
        method: str,
        params: Any = None,
        *,
        key: str | None = API_KEY,
        body: bytes | None = None,
    ) -> tuple[int, Any]:
        if body is None:
            body = json.dumps(params if params is not None else {}).encode()
        headers = [
            f"POST /api/{method} HTTP/1.1",
            f"Host: {HOST}:{server.port}",
            "Content-Type: application/json",
            f"Content-Length: {len(body)}",
            "Connection: close",
        ]
        if key is not None:
            headers.append(f"Authorization: apikey {key}")
        reader, writer = await asyncio.open_connection(HOST, server.port)
        try:
            writer.write(("\r\n".join(headers) + "\r\n\r\n").encode() + body)
            await writer.drain()
            # Read by Content-Length: don't depend on the server closing the connection.
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
            lines = head.decode("latin-1").split("\r\n")
            fields = dict(line.lower().split(": ", 1) for line in lines[1:] if line)
            length = int(fields.get("content-length", "0"))
            payload = await asyncio.wait_for(reader.readexactly(length), TIMEOUT)
        finally:
            writer.close()
        status = int(lines[0].split(" ", 2)[1])
        return status, json.loads(payload) if payload else None

    return call
