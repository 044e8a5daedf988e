"""Fixtures for the HTTP fallback transports (SSE, long-polling), driven with httpx.

* ``hub_server(**options)``: a started :class:`HubServer` on 127.0.0.1:0 with the demo
  namespaces (``chat:`` keeps history and allows publishing), API key ``API_KEY`` and token
  secret ``SECRET``; ``options`` go to HubServer. Closed at teardown.
* ``http``: an ``httpx.AsyncClient`` (no proxies from the environment).
* ``token(user)``: a connection token; ``api(server, method, params)``: the server HTTP API.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import jwt
import pytest

from pulsewire.demos import demo_config
from pulsewire.hub import Hub, HubConfig
from pulsewire.server.app import HubServer

httpx = pytest.importorskip("httpx")

HOST = "127.0.0.1"
API_KEY = "transport-tests-key"
SECRET = "transport-tests-secret-0123456789"


def make_token(user: str) -> str:
    return jwt.encode({"sub": user, "exp": time.time() + 600}, SECRET, algorithm="HS256")


def base_url(server: HubServer) -> str:
    return f"http://{HOST}:{server.port}"


def command_lines(*commands: dict[str, Any]) -> bytes:
    """Commands as a ``send`` body: JSON lines."""
    return "\n".join(json.dumps(c) for c in commands).encode()


TEXT = {"Content-Type": "text/plain;charset=UTF-8"}


@pytest.fixture
def hub_server(
    start_hub_server: Callable[[HubServer], Awaitable[HubServer]],
) -> Callable[..., Awaitable[HubServer]]:
    async def start(**options: Any) -> HubServer:
        config = demo_config(HubConfig(token_hmac_secret=SECRET, api_key=API_KEY))
        return await start_hub_server(HubServer(Hub(config), HOST, 0, api_key=API_KEY, **options))

    return start


@pytest.fixture
async def http() -> AsyncIterator[Any]:
    async with httpx.AsyncClient(trust_env=False, timeout=10) as client:
        yield client


@pytest.fixture
def token() -> Callable[[str], str]:
    return make_token


@pytest.fixture
def api(http: Any) -> Callable[..., Awaitable[Any]]:
    async def call(server: HubServer, method: str, params: dict[str, Any]) -> Any:
        response = await http.post(
            f"{base_url(server)}/api/{method}",
            json=params,
            headers={"Authorization": f"apikey {API_KEY}"},
        )
        assert response.status_code == 200, response.text
        return response.json()["result"]

    return call


async def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)
