"""SIGHUP: the config file is read again and applied without dropping connections."""

from __future__ import annotations

import asyncio
import signal
import time

import pytest

import pulsewire
from pulsewire.protocol.errors import InvalidStatus

from .conftest import HOST, Client, api

pytestmark = pytest.mark.timeout(90)

BEFORE = """
[server]
port = {port}
allowed_origins = []

[hub]
allow_anonymous = true
api_key = "old-key"
engine_prefix = "before"

[namespaces.chat]
allow_anonymous = true
allow_publish = false
"""

AFTER = """
[server]
port = {other}
allowed_origins = ["https://app.example.com"]

[hub]
allow_anonymous = true
api_key = "new-key"
engine_prefix = "after"

[namespaces.chat]
allow_anonymous = true
allow_publish = true
history_size = 10
history_ttl = 60
"""


async def handshake_status(url: str, origin: str) -> int:
    try:
        ws = await asyncio.wait_for(pulsewire.connect(url, origin=origin), 10)
    except InvalidStatus as exc:
        return exc.status
    await ws.close()
    return 101


async def until(check, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def test_sighup_applies_namespace_key_and_origins_live(serve, write_config, free_port_pair):
    port, other = free_port_pair
    path = write_config(BEFORE.format(port=port))
    node = await serve("--config", path)
    assert await node.listening() == port
    url = f"ws://{HOST}:{port}/connection/websocket"
    client = await Client.open(url)
    await client.subscribe("chat:room")
    refused = await client.call("publish", {"channel": "chat:room", "data": "hi"})
    assert refused["error"]["code"] == 103  # permission denied: allow_publish is false
    assert (await api(port, "publish", {"channel": "chat:room", "data": 0}, "old-key"))[0] == 200
    assert await client.publication() == 0
    assert await handshake_status(url, "https://app.example.com") == 403

    write_config(AFTER.format(other=other))
    node.signal(signal.SIGHUP)

    async def new_key_works() -> bool:
        return (await api(port, "info", {}, "new-key"))[0] == 200

    await until(new_key_works)
    assert (await api(port, "info", {}, "old-key"))[0] == 403
    # The connection opened before the reload is still there, with the new channel options.
    accepted = await client.call("publish", {"channel": "chat:room", "data": "hello"})
    assert "error" not in accepted, accepted
    assert accepted["result"]["offset"] == 1  # history_size/ttl applied too
    assert await client.publication() == "hello"
    assert client.ws.close_code is None
    assert await handshake_status(url, "https://app.example.com") == 101

    await node.wait_line(r"reloaded .*allow_publish: False -> True")
    await node.wait_line(r"reloaded .*api_key changed")
    await node.wait_line(r"reloaded .*allowed_origins: \[\] -> \['https://app.example.com'\]")
    restart = await node.wait_line(r"restart needed for (.*) \(changed in")
    assert restart.group(1) == "port, engine_prefix"
    assert "new-key" not in node.output and "old-key" not in node.output

    # A broken file is reported and changes nothing.
    write_config("[hub\nbroken")
    node.signal(signal.SIGHUP)
    await node.wait_line(r"reload of .* failed, settings unchanged")
    assert (await api(port, "info", {}, "new-key"))[0] == 200
    assert client.ws.close_code is None
    await client.ws.close()


@pytest.fixture
def free_port_pair() -> tuple[int, int]:
    from .conftest import free_port

    first = free_port()
    second = free_port()
    while second == first:
        second = free_port()
    return first, second
