"""The front door's side of the failed-authentication guard (API key, /admin password,
session opening on every transport), the /admin security headers, hostile JSON bodies and
request targets, in-process. The same attacks against real processes are in
tests/security/test_auth_attacks.py."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
from html.parser import HTMLParser
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pulsewire.hub import Hub
from pulsewire.protocol.handshake import Headers
from pulsewire.server.app import HubServer
from pulsewire.transports.http_types import HttpRequest

from .conftest import API_KEY, front_config, request_bytes

BLOCKED = {"auth_failures_burst": 2, "auth_failures_refill": 3600.0}


def basic(password: str) -> tuple[str, str]:
    return ("Authorization", "Basic " + base64.b64encode(f"admin:{password}".encode()).decode())


def api_headers(key: str = API_KEY) -> list[tuple[str, str]]:
    return [("Authorization", f"apikey {key}"), ("Content-Type", "application/json")]


async def publish(http: Any, server: HubServer, key: str = API_KEY, body: bytes = b"") -> Any:
    body = body or json.dumps({"channel": "news:x", "data": 1}).encode()
    return await http(server, "POST", "/api/publish", body=body, headers=api_headers(key))


def sample(server: HubServer, name: str, **labels: str) -> float:
    return server.hub.metrics.registry.get_sample_value(name, labels) or 0.0


def refusals(server: HubServer, status: int) -> int:
    return server.http.refusals.get(status, 0) + server.websocket.refusals.get(status, 0)


# ------------------------------------------------------------------------------ API key


async def test_wrong_api_keys_lead_to_429_before_the_key_is_checked(front, http):
    server = await front(config=front_config(**BLOCKED))
    for _ in range(2):
        assert (await publish(http, server, key="guess")).status == 403
    refused = await publish(http, server)  # even the right key: it is not looked at
    assert refused.status == 429
    assert refused.header("Retry-After") == "3600"
    assert json.loads(refused.body)["error"]["code"] == 111
    assert "retry in 3600 s" in json.loads(refused.body)["error"]["message"]
    assert sample(server, "pulsewire_auth_failures_total", kind="api") == 2
    assert sample(server, "pulsewire_auth_refused_total", kind="api") == 1
    assert refusals(server, 429) == 1


async def test_a_valid_key_does_not_launder_guesses(front, http):
    server = await front(config=front_config(**BLOCKED))
    assert (await publish(http, server, key="guess")).status == 403
    assert (await publish(http, server)).status == 200
    assert (await publish(http, server, key="guess")).status == 403
    assert (await publish(http, server)).status == 429


async def test_a_missing_authorization_header_is_not_a_guess(front, http):
    server = await front(config=front_config(**BLOCKED))
    for _ in range(5):
        answer = await http(server, "POST", "/api/publish", body=b"{}")
        assert answer.status == 401
    assert (await publish(http, server)).status == 200


# ------------------------------------------------------------------------------- /admin


async def test_wrong_admin_passwords_lead_to_429(front, http):
    server = await front(config=front_config(**BLOCKED), admin_password="s3cret")
    assert (await http(server, "GET", "/admin")).status == 401  # a browser asking: no guess
    for _ in range(2):
        assert (await http(server, "GET", "/admin", headers=[basic("guess")])).status == 401
    refused = await http(server, "GET", "/admin/stats", headers=[basic("s3cret")])
    assert refused.status == 429 and refused.header("Retry-After") == "3600"
    assert sample(server, "pulsewire_auth_failures_total", kind="admin") == 2
    assert sample(server, "pulsewire_auth_refused_total", kind="admin") == 1


class _InlineBlocks(HTMLParser):
    """Collects the text of every inline <script> and <style>, and any inline handler."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=False)
        self.blocks: dict[str, list[str]] = {"script": [], "style": []}
        self.attributes: list[str] = []
        self._open: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.attributes += [name for name, _ in attrs if name == "style" or name.startswith("on")]
        if tag in self.blocks:
            self._open = tag
            self.blocks[tag].append("")

    def handle_endtag(self, tag: str) -> None:
        self._open = None

    def handle_data(self, data: str) -> None:
        if self._open is not None:
            self.blocks[self._open][-1] += data


def csp_directives(value: str) -> dict[str, list[str]]:
    return {d.split()[0]: d.split()[1:] for d in (p.strip() for p in value.split(";")) if d}


async def test_admin_page_headers_and_a_csp_that_matches_its_inline_blocks(front, http):
    server = await front(admin_password="pw")
    page = await http(server, "GET", "/admin", headers=[basic("pw")])
    assert page.status == 200
    assert page.header("X-Frame-Options") == "DENY"
    assert page.header("X-Content-Type-Options") == "nosniff"
    assert page.header("Referrer-Policy") == "no-referrer"
    assert page.header("Cache-Control") == "no-store"
    csp = csp_directives(page.header("Content-Security-Policy"))
    assert csp["default-src"] == ["'none'"]
    assert csp["connect-src"] == ["'self'"]
    assert csp["frame-ancestors"] == ["'none'"]
    parser = _InlineBlocks()
    parser.feed(page.body.decode("utf-8"))
    assert not parser.attributes  # inline handlers/styles would need 'unsafe-inline'
    for tag, directive in (("script", "script-src"), ("style", "style-src")):
        assert parser.blocks[tag], tag
        hashes = [
            "'sha256-" + base64.b64encode(hashlib.sha256(b.encode()).digest()).decode() + "'"
            for b in parser.blocks[tag]
        ]
        assert sorted(csp[directive]) == sorted(hashes), directive  # exactly these, nothing else
    assert not re.search(r"unsafe-(inline|eval)", page.header("Content-Security-Policy"))


@pytest.mark.parametrize("path", ["/admin/stats", "/admin"])
async def test_every_admin_answer_is_unframeable(front, http, path):
    server = await front(admin_password="pw")
    for headers in ([basic("pw")], [basic("no")]):
        answer = await http(server, "GET", path, headers=headers)
        assert answer.header("X-Frame-Options") == "DENY", (path, answer.status)
        assert "frame-ancestors 'none'" in answer.header("Content-Security-Policy")
        assert answer.header("Cache-Control") == "no-store"


# ------------------------------------------------------------------- session opening


async def block(server: HubServer, address: str = "127.0.0.1") -> None:
    guard = server.hub.auth_guard
    for _ in range(int(guard.burst)):
        guard.failed(address, "token")


async def test_blocked_address_websocket_handshake_is_429(front, raw_client):
    server = await front(config=front_config(**BLOCKED))
    await block(server)
    conn = await raw_client(server.port, handshake=False)
    key = base64.b64encode(b"0123456789abcdef").decode()
    await conn.send_raw(
        request_bytes(
            "GET",
            "/connection/websocket",
            headers=[
                ("Upgrade", "websocket"),
                ("Connection", "Upgrade"),
                ("Sec-WebSocket-Key", key),
                ("Sec-WebSocket-Version", "13"),
            ],
        )
    )
    answer = await conn.read_http_response()
    assert answer.status == 429 and answer.header("Retry-After") == "3600"
    assert refusals(server, 429) == 1
    assert sample(server, "pulsewire_auth_refused_total", kind="token") == 1


@pytest.mark.parametrize(
    ("method", "path"), [("GET", "/connection/sse"), ("POST", "/connection/longpoll/open")]
)
async def test_blocked_address_cannot_open_http_sessions(front, http, method, path):
    server = await front(config=front_config(**BLOCKED))
    await block(server)
    answer = await http(server, method, path)
    assert answer.status == 429 and answer.header("Retry-After") == "3600"
    assert refusals(server, 429) == 1


async def test_blocked_address_keeps_its_open_long_poll_session(front, http):
    server = await front(config=front_config(**BLOCKED))
    opened = await http(server, "POST", "/connection/longpoll/open")
    session = json.loads(opened.body)["session"]
    await block(server)
    sent = await http(
        server,
        "POST",
        f"/connection/longpoll/send?session={session}",
        body=b'{"id":1,"method":"connect","params":{"token":"x"}}',
        headers=[("Content-Type", "application/json")],
    )
    assert sent.status == 204  # the request goes through; the connect in it is refused
    polled = await http(server, "GET", f"/connection/longpoll/poll?session={session}")
    messages = json.loads(polled.body)
    assert messages[-1]["push"] == "disconnect" and messages[-1]["code"] == 4008


# ---------------------------------------------------------------- Origin on HTTP sessions


@pytest.mark.parametrize(
    "scheme", ["https", "ws", "wss", "file", "chrome-extension", "null-ish", "ftp"]
)
async def test_http_sessions_refuse_another_scheme_on_our_host(front, http, scheme):
    server = await front()
    origin = f"{scheme}://127.0.0.1"  # the helper sends "Host: 127.0.0.1" (port 80)
    for method, path in (("GET", "/connection/sse"), ("POST", "/connection/longpoll/open")):
        answer = await http(server, method, path, headers=[("Origin", origin)])
        assert answer.status == 403, (method, path, answer.status)
    own = await http(
        server,
        "POST",
        "/connection/longpoll/open",
        headers=[("Origin", "http://127.0.0.1")],
    )
    assert own.status == 200


async def test_x_forwarded_proto_https_admits_the_https_page(front, http):
    server = await front()
    page = [("Origin", "https://127.0.0.1")]  # Host: 127.0.0.1, i.e. :443 over https
    refused = await http(server, "POST", "/connection/longpoll/open", headers=page)
    assert refused.status == 403
    headers = [*page, ("X-Forwarded-Proto", "https")]
    answer = await http(server, "POST", "/connection/longpoll/open", headers=headers)
    assert answer.status == 200


# ------------------------------------------------------------------------ hostile JSON


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 5000 + b"]" * 5000,
        b'{"channel":"news:x","data":' + b"[" * 5000 + b"]" * 5000 + b"}",
        b'{"channel":"news:x","data":' + b"[" * 900 + b"]" * 900 + b"}",  # decodes, too deep
        b'{"channel":"news:x","data":' + b"9" * 5000 + b"}",  # past the int digit limit
        b'{"channel":"news:x","data":' + b"9" * 4000 + b"}",  # 4,000 digits: not 64-bit
        b'{"channel":"news:x","data":"\xff"}',
        b'{"channel":"news:x","data":NaN}',
        b"\x00",
    ],
)
async def test_hostile_api_bodies_are_400_with_code_107(front, http, body):
    server = await front()
    answer = await publish(http, server, body=body)
    assert answer.status == 400, answer.body[:200]
    assert json.loads(answer.body)["error"]["code"] == 107
    assert refusals(server, 500) == 0


async def test_128_levels_are_fine(front, http):
    server = await front()
    body = b'{"channel":"news:x","data":' + b"[" * 127 + b"]" * 127 + b"}"
    assert (await publish(http, server, body=body)).status == 200


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner),
    max_leaves=20,
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    body=st.binary(max_size=64)
    | json_values.map(lambda v: json.dumps({"channel": "news:x", "data": v}).encode())
    | st.integers(1, 3000).map(lambda n: b'{"data":' + b"[" * n + b"]" * n + b"}")
)
def test_api_bodies_never_500(body):
    async def run() -> int:
        hub = Hub(front_config())
        api = HubServer(hub, "127.0.0.1", 0, api_key=API_KEY).api
        await hub.start()
        try:
            request = HttpRequest("POST", "/api/publish", Headers(api_headers()), body, "127.0.0.1")
            return (await api(request)).status
        finally:
            await hub.close()

    assert asyncio.run(run()) in (200, 400, 404)


# ---------------------------------------------------------------------- request targets


async def test_front_door_refuses_get_star_with_and_without_upgrade(front, raw_client):
    server = await front()
    upgrade = [
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Key", base64.b64encode(b"0123456789abcdef").decode()),
        ("Sec-WebSocket-Version", "13"),
    ]
    for headers in ([], upgrade):
        conn = await raw_client(server.port, handshake=False)
        await conn.send_raw(request_bytes("GET", "*", headers=headers))
        answer = await conn.read_http_response()
        assert answer.status == 400, headers
        assert b"only valid for OPTIONS" in answer.body
    conn = await raw_client(server.port, handshake=False)
    await conn.send_raw(request_bytes("OPTIONS", "*"))
    assert (await conn.read_http_response()).status == 404  # valid HTTP; nothing to say
