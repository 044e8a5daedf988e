"""``HubASGI`` serves the browser client (``pulsewire.js``, ``pulsewire.d.ts``) under its mount
point, with ETags and CORS for its allowed origins, and no other static file; driven
through a Starlette ``Mount`` by httpx's ASGI transport (the app, without a server)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from pulsewire.hub import Hub, HubConfig
from pulsewire.server.app import WEB_ROOT
from pulsewire.server.asgi import HubASGI
from pulsewire.server.files import CACHE_CONTROL

from .conftest import API_KEY, SECRET

httpx = pytest.importorskip("httpx")
starlette_applications = pytest.importorskip("starlette.applications")
starlette_routing = pytest.importorskip("starlette.routing")

OTHER = "https://app.example.com"


@pytest.fixture
async def mounted() -> AsyncIterator[Any]:
    """``await mounted(**HubASGI options)``: an httpx client of a Starlette app that mounts
    the hub at /realtime (the hub closed at teardown)."""
    apps: list[HubASGI] = []
    clients: list[Any] = []

    async def make(**options: Any) -> Any:
        rt = HubASGI(Hub(HubConfig(token_hmac_secret=SECRET, api_key=API_KEY)), **options)
        apps.append(rt)
        await rt.start()
        app = starlette_applications.Starlette(
            routes=[starlette_routing.Mount("/realtime", app=rt)]
        )
        client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://testserver"
        )
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.aclose()
    for rt in apps:
        await rt.close()


async def test_the_client_files_under_the_mount(mounted: Any):
    http = await mounted(allowed_origins=[OTHER])
    for name in ("pulsewire.js", "pulsewire.d.ts"):
        response = await http.get(f"/realtime/{name}", headers={"Origin": OTHER})
        assert response.status_code == 200, name
        assert response.content == (WEB_ROOT / name).read_bytes()
        assert response.headers["Access-Control-Allow-Origin"] == OTHER
        assert response.headers["Vary"] == "Origin"
        assert response.headers["Cache-Control"] == CACHE_CONTROL
        etag = response.headers["ETag"]
        again = await http.get(f"/realtime/{name}", headers={"If-None-Match": etag})
        assert again.status_code == 304 and again.content == b""
        assert again.headers["ETag"] == etag
    js = await http.get("/realtime/pulsewire.js", headers={"Origin": "https://evil.example"})
    assert js.status_code == 200
    assert "Access-Control-Allow-Origin" not in js.headers
    assert js.headers["Content-Type"] == "text/javascript; charset=utf-8"


async def test_no_other_static_file_and_the_routes_still_answer(mounted: Any):
    http = await mounted()
    for path in ("/realtime/", "/realtime/index.html", "/realtime/demo/common.js"):
        assert (await http.get(path)).status_code == 404, path
    assert (await http.get("/realtime/health")).status_code == 200
    assert (await http.get("/realtime/connection/websocket")).status_code == 426


async def test_client_files_off(mounted: Any):
    http = await mounted(client_files=False)
    assert (await http.get("/realtime/pulsewire.js")).status_code == 404
