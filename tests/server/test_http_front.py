"""The HTTP front door of ``pulsewire serve``: routes, limits, keep-alive, API auth, upgrades."""

from __future__ import annotations

import asyncio
import json
import re

import pytest

import pulsewire
from pulsewire.protocol.errors import InvalidStatus
from pulsewire.server.app import WEB_ROOT

from .conftest import API_KEY, HOST, request_bytes

WS = "/connection/websocket"


def metric(text: str, name: str) -> float:
    """The value of one sample line of the Prometheus text format (0 when absent)."""
    pattern = re.compile(rf"^{re.escape(name)} ([0-9.e+-]+)$", re.M)
    match = pattern.search(text)
    return float(match.group(1)) if match else 0.0


# --------------------------------------------------------------------- health, metrics, pages


async def test_health(front, http, token):
    server = await front()
    response = await http(server, "GET", "/health")
    assert response.status == 200
    assert response.header("Content-Type") == "application/json"
    health = json.loads(response.body)
    assert health["status"] == "ok"
    assert health["node"] == server.hub.node_id
    assert health["engine"] == "memory"
    assert health["engine_available"] is True
    assert health["connections"] == 0
    assert isinstance(health["uptime"], float) and health["uptime"] >= 0
    async with pulsewire.connect(f"ws://{HOST}:{server.port}{WS}") as ws:
        await ws.send(json.dumps({"id": 1, "method": "connect", "params": {"token": token("a")}}))
        assert "result" in json.loads(await ws.recv())
        health = json.loads((await http(server, "GET", "/health")).body)
        assert health["connections"] == 1


async def test_metrics_move_after_connect_and_publish(front, http, token):
    server = await front()
    response = await http(server, "GET", "/metrics")
    assert response.status == 200
    assert response.header("Content-Type").startswith("text/plain")
    before = response.body.decode()
    assert "# TYPE pulsewire_publications_total counter" in before
    assert metric(before, "pulsewire_publications_total") == 0
    assert metric(before, 'pulsewire_connects_total{transport="websocket"}') == 0

    async with pulsewire.connect(f"ws://{HOST}:{server.port}{WS}") as ws:
        await ws.send(json.dumps({"id": 1, "method": "connect", "params": {"token": token("a")}}))
        await ws.recv()
        await ws.send(json.dumps({"id": 2, "method": "subscribe", "params": {"channel": "x"}}))
        await ws.recv()
        status = await http(
            server,
            "POST",
            "/api/publish",
            body=json.dumps({"channel": "x", "data": 1}).encode(),
            headers=[("Authorization", f"apikey {API_KEY}")],
        )
        assert status.status == 200
        assert json.loads(await ws.recv())["data"] == 1
        during = (await http(server, "GET", "/metrics")).body.decode()
    assert metric(during, "pulsewire_publications_total") == 1
    assert metric(during, "pulsewire_deliveries_total") == 1
    assert metric(during, 'pulsewire_connects_total{transport="websocket"}') == 1
    assert metric(during, 'pulsewire_connections{transport="websocket"}') == 1
    assert metric(during, 'pulsewire_commands_total{method="connect"}') == 1
    assert metric(during, 'pulsewire_commands_total{method="subscribe"}') == 1
    assert metric(during, "pulsewire_channels") == 1
    assert metric(during, "pulsewire_publish_to_deliver_seconds_count") == 1


async def test_static_index(front, http):
    server = await front()
    expected = (WEB_ROOT / "index.html").read_bytes()
    for target in ("/", "/index.html"):
        response = await http(server, "GET", target)
        assert response.status == 200
        assert response.header("Content-Type") == "text/html; charset=utf-8"
        assert response.header("Cache-Control") == "max-age=60, must-revalidate"
        assert response.body == expected
    head = await http(server, "HEAD", "/")
    assert head.status == 200
    assert int(head.header("Content-Length")) == len(expected)


@pytest.mark.parametrize(
    "target", ["/nope.html", "/../__init__.py", "/%2e%2e/__init__.py", "/demo/../../cli.py"]
)
async def test_static_not_found_and_no_escape(front, http, target):
    server = await front()
    response = await http(server, "GET", target)
    assert response.status == 404
    assert b"not found" in response.body


async def test_404_without_web_root(front, http):
    server = await front(web_root=None)
    response = await http(server, "GET", "/")
    assert response.status == 404
    assert (await http(server, "GET", "/health")).status == 200


@pytest.mark.parametrize(
    ("method", "target", "allow"),
    [
        ("POST", "/health", "GET, HEAD"),
        ("DELETE", "/metrics", "GET, HEAD"),
        ("GET", "/api/publish", "POST"),
    ],
)
async def test_405_with_allow(front, http, method, target, allow):
    server = await front()
    response = await http(server, method, target)
    assert response.status == 405
    assert response.header("Allow") == allow


# -------------------------------------------------------------------------------- limits


async def test_413_body_too_large(front, raw_client):
    server = await front()
    server.http.limits.max_body = 1024
    conn = await raw_client(server.port, handshake=False)
    head = request_bytes("POST", "/api/publish", headers=[("Content-Length", "4096")])
    # only part of the declared body: what the server refuses, it has read entirely
    await conn.send_raw(head + b"x" * 1100)
    response = await conn.read_http_response()
    assert response.status == 413
    assert response.header("Connection") == "close"
    assert await conn.at_eof()


async def test_body_within_the_limit_is_accepted(front, http):
    server = await front()
    server.http.limits.max_body = 1024
    body = json.dumps({"channel": "x", "data": "y" * 900}).encode()
    response = await http(
        server, "POST", "/api/publish", body=body, headers=[("Authorization", f"apikey {API_KEY}")]
    )
    assert response.status == 200


async def test_431_too_many_headers(front, raw_client):
    server = await front()
    conn = await raw_client(server.port, handshake=False)
    headers = [(f"X-Header-{i}", "v") for i in range(101)]
    await conn.send_raw(request_bytes("GET", "/health", headers=headers))
    response = await conn.read_http_response()
    assert response.status == 431
    assert await conn.at_eof()


@pytest.mark.parametrize("complete", [False, True])
async def test_431_head_too_large(front, raw_client, complete):
    """A head over 16 KiB is refused, also when it arrives in one read."""
    server = await front()
    server.http.limits.head_timeout = 1.0  # fail fast (408) if the size limit does not apply
    conn = await raw_client(server.port, handshake=False)
    head = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 17000
    await conn.send_raw(head + (b"\r\n\r\n" if complete else b""))
    response = await conn.read_http_response()
    assert response.status == 431
    assert await conn.at_eof()


async def test_431_head_too_large_in_pieces(front, raw_client):
    server = await front()
    conn = await raw_client(server.port, handshake=False)
    await conn.send_raw(b"GET /health HTTP/1.1\r\nHost: x\r\n")
    await asyncio.sleep(0.05)
    for _ in range(5):
        await conn.send_raw(b"X-Big: " + b"a" * 4000 + b"\r\n")
        await asyncio.sleep(0.02)
    response = await conn.read_http_response()
    assert response.status == 431


async def test_100_headers_are_fine(front, http):
    server = await front()
    response = await http(server, "GET", "/health", headers=[(f"X-{i}", "v") for i in range(99)])
    assert response.status == 200


async def test_414_long_url(front, raw_client):
    server = await front()
    conn = await raw_client(server.port, handshake=False)
    await conn.send_raw(request_bytes("GET", "/health?q=" + "a" * 9000))
    response = await conn.read_http_response()
    assert response.status == 414
    assert await conn.at_eof()


async def test_408_slow_request_head(front, raw_client):
    server = await front()
    server.http.limits.head_timeout = 0.3
    conn = await raw_client(server.port, handshake=False)
    await conn.send_raw(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # never finished
    response = await conn.read_http_response(timeout=3)
    assert response.status == 408
    assert await conn.at_eof()


async def test_silent_connection_is_closed_without_answer(front, raw_client):
    server = await front()
    server.http.limits.head_timeout = 0.2
    conn = await raw_client(server.port, handshake=False)
    assert await conn.at_eof(timeout=3)


async def test_idle_keep_alive_connection_is_closed(front, raw_client):
    server = await front()
    server.http.limits.idle_timeout = 0.2
    conn = await raw_client(server.port, handshake=False)
    await conn.send_raw(request_bytes("GET", "/health"))
    assert (await conn.read_http_response()).status == 200
    assert await conn.at_eof(timeout=3)


# ------------------------------------------------------------------------------ keep-alive


async def test_keep_alive_two_requests_on_one_connection(front, raw_client):
    server = await front()
    conn = await raw_client(server.port, handshake=False)
    for _ in range(2):
        await conn.send_raw(request_bytes("GET", "/health"))
        response = await conn.read_http_response()
        assert response.status == 200
        assert response.header("Connection") is None
    # pipelined: both requests at once, answers in order
    await conn.send_raw(request_bytes("GET", "/health") + request_bytes("GET", "/nope"))
    assert (await conn.read_http_response()).status == 200
    assert (await conn.read_http_response()).status == 404


async def test_connection_close_is_honoured(front, raw_client):
    server = await front()
    conn = await raw_client(server.port, handshake=False)
    await conn.send_raw(request_bytes("GET", "/health", headers=[("Connection", "close")]))
    response = await conn.read_http_response()
    assert response.status == 200
    assert response.header("Connection") == "close"
    assert await conn.at_eof(timeout=2)


async def test_http_10_closes_after_the_response(front, raw_client):
    server = await front()
    conn = await raw_client(server.port, handshake=False)
    await conn.send_raw(request_bytes("GET", "/health", version="1.0"))
    response = await conn.read_http_response()
    assert response.status == 200
    assert response.header("Connection") == "close"
    assert await conn.at_eof(timeout=2)


async def test_malformed_request_is_400(front, raw_client):
    server = await front()
    conn = await raw_client(server.port, handshake=False)
    await conn.send_raw(b"NOT AN HTTP REQUEST\r\n\r\n")
    response = await conn.read_http_response()
    assert response.status == 400
    assert await conn.at_eof()


# ------------------------------------------------------------------------------ the API


async def api_call(http, server, method, body, authorization):
    headers = [("Authorization", authorization)] if authorization is not None else []
    response = await http(server, "POST", f"/api/{method}", body=body, headers=headers)
    return response.status, json.loads(response.body)


@pytest.mark.parametrize(
    ("authorization", "status"),
    [
        (None, 401),
        ("apikey", 401),
        (f"Bearer {API_KEY}", 401),
        ("apikey wrong-key", 403),
        (f"apikey {API_KEY}x", 403),
        (f"ApiKey {API_KEY}", 200),
    ],
)
async def test_api_authentication(front, http, authorization, status):
    server = await front()
    body = json.dumps({"channel": "x", "data": 1}).encode()
    got, answer = await api_call(http, server, "publish", body, authorization)
    assert got == status
    if status == 200:
        assert answer == {"result": {}}
    else:
        assert answer["error"]["code"] in (101, 103)
        assert answer["error"]["message"]


async def test_api_disabled_without_key(front, http):
    server = await front(api_key=None)
    status, answer = await api_call(http, server, "publish", b"{}", "apikey anything")
    assert status == 403
    assert "disabled" in answer["error"]["message"]


@pytest.mark.parametrize(
    ("method", "body", "status", "code"),
    [
        ("publish", b"{not json", 400, 107),
        ("publish", b"[1, 2]", 400, 107),
        ("publish", b'"text"', 400, 107),
        ("publish", b"", 400, 107),  # no body: no data
        ("publish", b'{"channel": "x"}', 400, 107),
        ("publish", b'{"data": 1}', 400, 107),
        ("publish", b'{"channel": "", "data": 1}', 400, 107),
        ("publish", b'{"channel": "bad name", "data": 1}', 400, 107),
        ("publish", b'{"channel": "x", "data": 1, "tags": {"a": 1}}', 400, 107),
        ("publish", b'{"channel": "nope:x", "data": 1}', 404, 102),
        ("frobnicate", b"{}", 404, 104),
        ("", b"{}", 404, 104),
        ("history", b'{"channel": "x"}', 503, 108),
    ],
)
async def test_api_errors(front, http, method, body, status, code):
    server = await front()
    got, answer = await api_call(http, server, method, body, f"apikey {API_KEY}")
    assert (got, answer["error"]["code"]) == (status, code)


async def test_api_history_and_channels(front, http):
    server = await front()
    auth = f"apikey {API_KEY}"
    for n in range(3):
        body = json.dumps({"channel": "news:today", "data": n}).encode()
        status, answer = await api_call(http, server, "publish", body, auth)
        assert status == 200 and answer["result"]["offset"] == n + 1
    body = json.dumps({"channel": "news:today", "limit": 2, "reverse": True}).encode()
    status, answer = await api_call(http, server, "history", body, auth)
    assert status == 200
    assert [p["data"] for p in answer["result"]["publications"]] == [2, 1]
    assert answer["result"]["offset"] == 3
    status, answer = await api_call(http, server, "channels", b"", auth)
    assert (status, answer) == (200, {"result": {"channels": {}}})


# ------------------------------------------------------------------------- WebSocket routes


def upgrade_headers(extra: list[tuple[str, str]] | None = None) -> list[tuple[str, str]]:
    return [
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ("Sec-WebSocket-Version", "13"),
        *(extra or []),
    ]


@pytest.mark.parametrize("target", ["/health", "/nope", "/api/publish", "/connection/websockets"])
async def test_websocket_upgrade_on_other_paths_is_404(front, raw_client, target):
    server = await front()
    conn = await raw_client(server.port, handshake=False)
    await conn.send_raw(request_bytes("GET", target, headers=upgrade_headers()))
    response = await conn.read_http_response()
    assert response.status == 404
    assert await conn.at_eof()


async def test_plain_get_on_the_websocket_path_is_426(front, http):
    server = await front()
    response = await http(server, "GET", WS)
    assert response.status == 426
    assert response.header("Upgrade") == "websocket"


async def test_websocket_upgrade_through_the_front_door(front, raw_client):
    server = await front()
    conn = await raw_client(server.port, WS)  # the root conftest's handshake checks 101
    assert conn.response is not None and conn.response.status == 101
    await conn.send_frame(0x1, b'{"id": 1, "method": "ping"}')
    frame = await conn.recv_frame()
    assert frame is not None and frame.opcode == 0x8
    assert frame.close_code == 4501  # a command before connect


async def test_cross_origin_handshake_is_refused(front, raw_client):
    server = await front()
    conn = await raw_client(server.port, handshake=False)
    headers = upgrade_headers([("Origin", "https://evil.example")])
    await conn.send_raw(request_bytes("GET", WS, headers=headers))
    response = await conn.read_http_response()
    assert response.status == 403
    with pytest.raises(InvalidStatus) as info:
        await pulsewire.connect(f"ws://{HOST}:{server.port}{WS}", origin="https://evil.example")
    assert info.value.status == 403


async def test_same_host_and_allowed_origins_are_accepted(front, raw_client):
    server = await front(allowed_origins=["https://app.example"])
    port = server.port
    same_host = f"http://{HOST}:{port}"
    async with pulsewire.connect(f"ws://{HOST}:{port}{WS}", origin=same_host) as ws:
        await ws.send('{"id": 1, "method": "connect", "params": {}}')
        await ws.wait_closed()
        assert ws.close_code == 4503  # the handshake passed; the hub then wants a token
    async with pulsewire.connect(f"ws://{HOST}:{port}{WS}", origin="https://app.example") as ws:
        assert ws.open
    with pytest.raises(InvalidStatus):
        await pulsewire.connect(f"ws://{HOST}:{port}{WS}", origin="https://other.example")
    # no Origin at all: not a browser, accepted
    async with pulsewire.connect(f"ws://{HOST}:{port}{WS}") as ws:
        assert ws.open


async def test_check_origin_off_accepts_any_origin(front):
    server = await front(check_origin=False)
    url = f"ws://{HOST}:{server.port}{WS}"
    async with pulsewire.connect(url, origin="https://evil.example") as ws:
        assert ws.open


@pytest.mark.parametrize(
    ("offer", "chosen"),
    [
        (["pulsewire.v1.msgpack"], "pulsewire.v1.msgpack"),
        (["pulsewire.v1.json"], "pulsewire.v1.json"),
        # the server's order of preference decides: JSON first
        (["pulsewire.v1.msgpack", "pulsewire.v1.json"], "pulsewire.v1.json"),
        (["other", "pulsewire.v1.msgpack"], "pulsewire.v1.msgpack"),
        (["other"], None),  # no subprotocol: JSON
        ([], None),
    ],
)
async def test_websocket_subprotocol_negotiation(front, offer, chosen):
    server = await front()
    url = f"ws://{HOST}:{server.port}{WS}"
    async with pulsewire.connect(url, subprotocols=offer) as ws:
        assert ws.subprotocol == chosen


async def test_too_large_command_closes_with_1009(front, token):
    server = await front(max_message_size=1024)
    async with pulsewire.connect(f"ws://{HOST}:{server.port}{WS}") as ws:
        await ws.send(json.dumps({"id": 1, "method": "connect", "params": {"token": token("a")}}))
        await ws.recv()
        await ws.send(json.dumps({"id": 2, "method": "ping", "params": {"pad": "x" * 2000}}))
        await asyncio.wait_for(ws.wait_closed(), 5)
        assert ws.close_code == 1009
