"""End to end over a real WebSocket: what only the WebSocket transport shows of connecting.

The hub logic of connecting is tested one layer down in test_hub_connect.py; these stay on
sockets because they test the transport: subprotocol negotiation (which codec a session
gets), the Close frame's 123-byte reason limit, the connect request built from the upgrade
(path, headers, peer address), and a publication from the HTTP API reaching a MessagePack
WebSocket client.
"""

from __future__ import annotations

from typing import Any

from pulsewire.hub import ConnectRequest


async def test_subprotocol_picks_the_codec(hub_server, hub_client, api, uniq):
    server = await hub_server()
    packed = await hub_client(server, "quinn", codec="msgpack")
    assert packed.ws.subprotocol == "pulsewire.v1.msgpack"
    assert packed.log[0]["result"]["user"] == "quinn"  # decoded from binary frames
    text = await hub_client(server, "json")
    assert text.ws.subprotocol == "pulsewire.v1.json"
    channel = uniq("chat")
    await packed.subscribe(channel)
    await text.subscribe(channel)
    status, _ = await api(server, "publish", {"channel": channel, "data": [1, 2]})
    assert status == 200
    assert (await packed.wait_push(channel=channel))["data"] == [1, 2]
    assert (await text.wait_push(channel=channel))["data"] == [1, 2]


async def test_no_subprotocol_means_json(hub_server, hub_client, make_token):
    server = await hub_server()
    client = await hub_client(server, subprotocols=[], connect=False)
    assert client.ws.subprotocol is None
    result = await client.connect(make_token("tia"))
    assert result["user"] == "tia"


async def test_unsupported_non_ascii_protocol_version_closes_with_4505(
    hub_server, hub_client, make_token
):
    """The close reason quotes the version the client sent: it must still fit a Close frame."""
    server = await hub_server()
    client = await hub_client(server, connect=False)
    await client.send("connect", {"token": make_token("lee"), "version": "é" * 60})
    code, reason = await client.wait_closed()
    assert code == 4505
    assert reason is not None and len(reason.encode()) <= 123


async def test_the_websocket_transport_fills_the_connect_request(hub_server, hub_client):
    seen: list[ConnectRequest] = []

    def authenticate(request: ConnectRequest) -> Any:
        seen.append(request)
        return "hooked"

    server = await hub_server(authenticate=authenticate)
    client = await hub_client(server, additional_headers=[("X-Test", "yes")])
    assert client.log[0]["result"]["user"] == "hooked"
    (request,) = seen
    assert request.transport == "websocket"
    assert request.path == "/connection/websocket"
    assert request.remote_address == "127.0.0.1"
    assert request.token is None
    assert ("X-Test", "yes") in [(k, v) for k, v in request.headers]
