"""Interoperability with Node's ``ws`` client (npm) speaking the hub protocol.

``node_hub_client/client.mjs`` connects with a token, subscribes, prints the publications
it receives, then publishes one itself. Needs node and npm (``ws`` is installed into
``node_hub_client/node_modules`` on first use); without them the test is skipped, except
under ``CI=true`` where that is a failure.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import time
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jwt
import pytest

from pulsewire.demos import demo_config
from pulsewire.hub import Hub, HubConfig
from pulsewire.server.app import HubServer

CLIENT_DIR = Path(__file__).parent / "node_hub_client"
HOST = "127.0.0.1"
API_KEY = "node-interop-key"
SECRET = "node-interop-secret-0123456789abc"


def unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: the Node interop test must run)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def node() -> str:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        unavailable("node and npm are needed for the Node ws interop test")
    assert node is not None and npm is not None
    if not (CLIENT_DIR / "node_modules" / "ws").is_dir():
        result = subprocess.run(
            [npm, "install", "--no-audit", "--no-fund"],
            cwd=CLIENT_DIR,
            capture_output=True,
            text=True,
            timeout=180,
        )
        if result.returncode != 0:
            unavailable(f"npm install failed: {result.stderr[-2000:]}")
    return node


@pytest.fixture
async def server() -> AsyncIterator[HubServer]:
    config = demo_config(HubConfig(token_hmac_secret=SECRET, api_key=API_KEY))
    server = HubServer(Hub(config), HOST, 0, api_key=API_KEY)
    await server.start()
    yield server
    await asyncio.wait_for(server.close(), 10)


def api_publish(server: HubServer, channel: str, data: Any) -> Any:
    request = urllib.request.Request(
        f"http://{HOST}:{server.port}/api/publish",
        data=json.dumps({"channel": channel, "data": data}).encode(),
        headers={"Authorization": f"apikey {API_KEY}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read())["result"]


async def test_node_ws_client_receives_publications(node: str, server: HubServer) -> None:
    token = jwt.encode({"sub": "node", "exp": time.time() + 600}, SECRET, algorithm="HS256")
    url = f"ws://{HOST}:{server.port}/connection/websocket"
    proc = await asyncio.create_subprocess_exec(
        node,
        str(CLIENT_DIR / "client.mjs"),
        url,
        token,
        "chat:node",
        "3",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None

    async def line() -> str:
        return (await asyncio.wait_for(proc.stdout.readline(), 15)).decode().strip()  # type: ignore[union-attr]

    try:
        assert await line() == "ready", (await proc.stderr.read()).decode()
        for n in (1, 2, 3):
            await asyncio.to_thread(api_publish, server, "chat:node", {"n": n})
        received = [json.loads(await line()) for _ in range(4)]
        assert await asyncio.wait_for(proc.wait(), 15) == 0, (await proc.stderr.read()).decode()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert received == [
        {"data": {"n": 1}, "offset": 1},
        {"data": {"n": 2}, "offset": 2},
        {"data": {"n": 3}, "offset": 3},
        {"data": {"from": "node"}, "offset": 4},
    ]
