"""Fixtures for the HTTP front door of ``pulsewire serve`` (tests/server/).

* ``front(**options)``: starts a :class:`HubServer` on 127.0.0.1:0 with the API key
  ``API_KEY``, an HMAC token secret and a ``news`` namespace (``options`` go to HubServer;
  ``config=`` replaces the HubConfig); closed at teardown.
* ``http(server, "GET", "/health", body=b"", headers=[...])``: one request on a fresh
  connection (``Connection: close``-free: the response is read by Content-Length); returns
  the root conftest's ``HttpResponse`` (status, headers, body).
* ``token(user)``: an HS256 connection token for ``front`` servers.

The raw socket client of the root conftest (``raw_client(port, handshake=False)``) is what
the tests use for anything the helper cannot express (partial heads, pipelining, upgrades).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import jwt
import pytest

from pulsewire.hub import ChannelOptions, Hub, HubConfig
from pulsewire.server.app import HubServer

HOST = "127.0.0.1"
API_KEY = "front-door-key"
SECRET = "front-door-secret-0123456789abcdef"


def front_config(**changes: Any) -> HubConfig:
    config = HubConfig(
        token_hmac_secret=SECRET,
        api_key=API_KEY,
        namespaces={"news": ChannelOptions(history_size=10, history_ttl=60)},
    )
    return config.replace(**changes)


@pytest.fixture
def front(
    start_hub_server: Callable[[HubServer], Awaitable[HubServer]],
) -> Callable[..., Awaitable[HubServer]]:
    async def start(config: HubConfig | None = None, **options: Any) -> HubServer:
        config = config or front_config()
        options.setdefault("api_key", config.api_key)
        return await start_hub_server(HubServer(Hub(config), HOST, 0, **options))

    return start


@pytest.fixture
def token() -> Callable[[str], str]:
    def make(user: str) -> str:
        return jwt.encode({"sub": user, "exp": time.time() + 600}, SECRET, algorithm="HS256")

    return make


def request_bytes(
    method: str,
    target: str,
    *,
    body: bytes = b"",
    headers: Sequence[tuple[str, str]] = (),
    host: str = HOST,
    version: str = "1.1",
) -> bytes:
    lines = [f"{method} {target} HTTP/{version}", f"Host: {host}"]
    lines += [f"{name}: {value}" for name, value in headers]
    declared = any(name.lower() == "content-length" for name, _ in headers)
    if not declared and (body or method in ("POST", "PUT")):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


@pytest.fixture
def http(raw_client: Any) -> Callable[..., Awaitable[Any]]:
    async def call(
        server: HubServer,
        method: str,
        target: str,
        *,
        body: bytes = b"",
        headers: Sequence[tuple[str, str]] = (),
    ) -> Any:
        conn = await raw_client(server.port, handshake=False)
        await conn.send_raw(request_bytes(method, target, body=body, headers=headers))
        if method == "HEAD":
            return await conn.read_head()
        return await conn.read_http_response()

    return call
