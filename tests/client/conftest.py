"""Fixtures for the hub client tests: real HubServers on free loopback ports.

* ``hub_server(config=None, *, engine=None, **hooks)``: a started
  :class:`~pulsewire.server.app.HubServer` around a :class:`Hub` with the namespaces below
  (``config``: a :func:`hub_config`); ``server.hub`` is the hub, for its in-process API
  (publish, disconnect_user, unsubscribe_user, send). Closed at teardown.
* ``ws_url(server)``: the server's client endpoint.
* ``make_token(user, ttl=3600, **claims)``: an HS256 connection token for the test secret.
* ``uniq(namespace)``: a channel name unique to the test.
* ``fake_hub``: a :class:`FakeHub` (``fakehub.py``): a WebSocket server whose connections
  the test scripts by hand.
* ``fast``: client options for tests (short reconnect delays, short timeout).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import jwt
import pytest

import pulsewire
from pulsewire.hub import ChannelOptions, Hub, HubConfig
from pulsewire.server.app import HubServer

from .fakehub import FakeHub

HOST = "127.0.0.1"
SECRET = "client-test-secret-0123456789abcdef"
API_KEY = "client-test-api-key"

NAMESPACES = {
    "chat": ChannelOptions(
        presence=True, join_leave=True, history_size=100, history_ttl=300, allow_publish=True
    ),
    "hist": ChannelOptions(history_size=100, history_ttl=300, allow_publish=True),
    "small": ChannelOptions(history_size=2, history_ttl=300),
    "pub": ChannelOptions(allow_publish=True),
    "priv": ChannelOptions(private=True),
}

FAST = {"min_reconnect_delay": 0.01, "max_reconnect_delay": 0.05, "timeout": 5.0}


def hub_config(**changes: Any) -> HubConfig:
    base = HubConfig(
        token_hmac_secret=SECRET, api_key=API_KEY, connect_timeout=5.0, namespaces=NAMESPACES
    )
    return base.replace(**changes)


def token_for(user: str, *, ttl: float | None = 3600, **claims: Any) -> str:
    payload: dict[str, Any] = {"sub": user, **claims}
    if ttl is not None:
        payload["exp"] = int(time.time() + ttl)
    return jwt.encode(payload, SECRET, algorithm="HS256")


def ws_url(server: HubServer) -> str:
    return f"ws://{HOST}:{server.port}/connection/websocket"


async def until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll until ``predicate()`` holds (fails the test after ``timeout``)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.005)


@pytest.fixture
def make_token() -> Callable[..., str]:
    return token_for


@pytest.fixture
def fast() -> dict[str, Any]:
    return dict(FAST)


@pytest.fixture
def uniq(request: pytest.FixtureRequest) -> Callable[[str], str]:
    stem = "".join(c if c.isalnum() else "-" for c in request.node.name)[:50]
    return lambda namespace: f"{namespace}:{stem}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
async def hub_server() -> AsyncIterator[Callable[..., Awaitable[HubServer]]]:
    servers: list[HubServer] = []

    async def start(
        config: HubConfig | None = None, *, engine: Any = None, **hooks: Any
    ) -> HubServer:
        config = config or hub_config()
        hub = Hub(config, engine=engine, **hooks)
        server = HubServer(hub, HOST, 0, api_key=config.api_key)
        await server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await asyncio.wait_for(server.close(), 10)


@pytest.fixture
async def fake_hub() -> AsyncIterator[FakeHub]:
    fake = FakeHub()
    server = await pulsewire.serve(fake.handler, HOST, 0, subprotocols=["pulsewire.v1.json"])
    fake.url = f"ws://{HOST}:{server.port}/connection/websocket"
    yield fake
    for session in fake.all:
        session.done.set()
    server.close()
    await asyncio.wait_for(server.wait_closed(), 10)
