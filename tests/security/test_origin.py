"""Cross-Site WebSocket Hijacking defence: a page on another origin cannot open a session.

The hub's endpoints (WebSocket, SSE, long-polling) accept a browser request only if its
Origin has the request's own host[:port] or is listed in ``allowed_origins``; requests without
an Origin (non-browser clients) are accepted. Refusals are HTTP 403 and, for WebSocket
handshakes, counted in ``pulsewire_refusals{status="403"}``.
"""

from __future__ import annotations

import asyncio

from .conftest import HOST, WsClient, http, open_tcp, read_response, scrape

EVIL = "https://evil.example"
APP = "https://app.example"


async def test_cross_origin_websocket_handshake_is_refused_with_403(hub, clients):
    server = await hub()
    before = await scrape(server.port)
    for origin in (
        EVIL,
        "null",  # sandboxed iframes, file:// pages
        f"http://{HOST}:{server.port}.evil.example",  # the host as a prefix of another
        f"http://{HOST}:{server.port + 1}",  # same host, another port
        f"https://{HOST}:{server.port}@evil.example",
    ):
        client = await WsClient.open(server.port, origin=origin, expect=None)
        clients.append(client)
        assert client.status == 403, (origin, client.status, client.body)
        assert b"not allowed" in client.body
        assert await client.at_eof(), "a refused handshake closes the connection"
    after = await scrape(server.port)
    assert after.delta(before, "pulsewire_refusals_total", status="403") == 5
    assert after.delta(before, "pulsewire_handshakes_total", transport="websocket") == 0
    assert server.hub.sessions == {}


async def test_own_origin_and_allowed_origins_are_accepted(hub, clients):
    server = await hub(allowed_origins=[APP, "https://*.tenant.example"])
    port = server.port
    for origin in (f"http://{HOST}:{port}", APP, "https://a.b.tenant.example", None):
        client = await WsClient.open(port, origin=origin)  # asserts 101
        clients.append(client)
        result = await client.connect()
        assert result["user"] == "alice"
    for origin in (
        "https://tenant.example",  # '*' needs at least one label
        "https://evil.example/.tenant.example",
        "https://a.tenant.example.evil.example",
        "http://app.example",  # scheme matters
    ):
        client = await WsClient.open(port, origin=origin, expect=403)
        clients.append(client)


async def test_origin_checks_can_be_switched_off(hub, clients):
    server = await hub(check_origin=False)
    client = await WsClient.open(server.port, origin=EVIL)
    clients.append(client)
    assert (await client.connect())["user"] == "alice"


async def test_repeated_origin_headers_are_refused(hub, clients):
    server = await hub()
    own = f"http://{HOST}:{server.port}"
    client = await WsClient.open(
        server.port, headers=[("Origin", own), ("Origin", EVIL)], expect=None
    )
    clients.append(client)
    assert client.status == 400


# -- the HTTP fallbacks: SSE and long-polling go through the same Origin policy --------------


async def test_cross_origin_sse_stream_is_refused_with_403(hub):
    server = await hub()
    answer = await http(server.port, "GET", "/connection/sse", headers=[("Origin", EVIL)])
    assert answer.status == 403
    assert answer.header("Access-Control-Allow-Origin") is None
    assert server.hub.sessions == {}
    preflight = await http(
        server.port,
        "OPTIONS",
        "/connection/sse/send",
        headers=[("Origin", EVIL), ("Access-Control-Request-Method", "POST")],
    )
    assert preflight.status == 403


async def test_own_origin_sse_stream_is_accepted(hub):
    server = await hub()
    reader, writer = await open_tcp(server.port)
    try:
        writer.write(
            (
                f"GET /connection/sse HTTP/1.1\r\nHost: {HOST}:{server.port}\r\n"
                f"Origin: http://{HOST}:{server.port}\r\n\r\n"
            ).encode()
        )
        answer = await read_response(reader)
        assert answer.status == 200
        assert (answer.header("Content-Type") or "").startswith("text/event-stream")
        first = await asyncio.wait_for(reader.readuntil(b"\n\n"), 5)
        assert first.startswith(b"event: session")
    finally:
        writer.close()


async def test_cross_origin_long_poll_is_refused_with_403(hub):
    server = await hub()
    for method, target in (
        ("POST", "/connection/longpoll/open"),
        ("GET", "/connection/longpoll/poll?session=x"),
        ("POST", "/connection/longpoll/send?session=x"),
        ("OPTIONS", "/connection/longpoll/open"),
    ):
        answer = await http(
            server.port,
            method,
            target,
            headers=[("Origin", EVIL), ("Content-Type", "text/plain")],
        )
        assert answer.status == 403, (method, target, answer)
    assert server.hub.sessions == {}
    own = await http(
        server.port,
        "POST",
        "/connection/longpoll/open",
        headers=[("Origin", f"http://{HOST}:{server.port}"), ("Content-Type", "text/plain")],
    )
    assert own.status == 200, own
    allowed = await hub(allowed_origins=[APP])
    answer = await http(
        allowed.port, "POST", "/connection/longpoll/open", headers=[("Origin", APP)]
    )
    assert answer.status == 200
    assert answer.header("Access-Control-Allow-Origin") == APP
    assert answer.header("Access-Control-Allow-Credentials") is None


async def test_cross_origin_http_fallback_refusals_are_counted(hub):
    server = await hub()
    before = await scrape(server.port)
    await http(server.port, "GET", "/connection/sse", headers=[("Origin", EVIL)])
    await http(server.port, "POST", "/connection/longpoll/open", headers=[("Origin", EVIL)])
    after = await scrape(server.port)
    assert after.delta(before, "pulsewire_refusals_total", status="403") == 2
