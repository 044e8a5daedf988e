"""The opening handshake: the server's checks and refusals, the client's checks of the answer."""

from __future__ import annotations

import pytest

from pulsewire.protocol import (
    DeflateOptions,
    InvalidHandshake,
    InvalidStatus,
    NegotiationError,
    Refused,
)
from pulsewire.protocol.handshake import (
    ClientHandshake,
    OriginPolicy,
    Request,
    ServerHandshake,
    accept_key,
    http_response,
    parse_uri,
)

KEY = "dGhlIHNhbXBsZSBub25jZQ=="  # RFC 6455 section 1.3
ACCEPT = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="

BASE = {
    "Host": "example.com",
    "Upgrade": "websocket",
    "Connection": "Upgrade",
    "Sec-WebSocket-Key": KEY,
    "Sec-WebSocket-Version": "13",
}


def request(
    headers: dict[str, str | None] | None = None,
    *,
    start: str = "GET /chat HTTP/1.1",
    extra: list[tuple[str, str]] = (),  # type: ignore[assignment]
) -> bytes:
    """An upgrade request; ``headers`` overrides BASE (None removes a field)."""
    fields = dict(BASE)
    fields.update(headers or {})
    lines = [start, *(f"{k}: {v}" for k, v in fields.items() if v is not None)]
    lines += [f"{k}: {v}" for k, v in extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def parse(data: bytes, **options: object) -> tuple[ServerHandshake, Request]:
    hs = ServerHandshake(**options)  # type: ignore[arg-type]
    req = hs.receive_data(data)
    assert req is not None
    return hs, req


def accept(data: bytes, **options: object) -> tuple[dict[str, str], str | None, object]:
    hs, req = parse(data, **options)
    response, subprotocol, codec = hs.accept(req)
    head, _, body = response.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    assert lines[0] == "HTTP/1.1 101 Switching Protocols"
    assert body == b""
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return headers, subprotocol, codec


def refusal(data: bytes, **options: object) -> Refused:
    hs = ServerHandshake(**options)  # type: ignore[arg-type]
    with pytest.raises(Refused) as info:
        req = hs.receive_data(data)
        assert req is not None, "request incomplete"
        hs.accept(req)
    exc = info.value
    assert isinstance(exc.reason, str) and exc.reason.strip()
    return exc


# =============================================================================== server side


class TestServerAccepts:
    def test_rfc_example(self) -> None:
        headers, subprotocol, codec = accept(request())
        assert headers["Sec-WebSocket-Accept"] == ACCEPT
        assert headers["Upgrade"].lower() == "websocket"
        assert "upgrade" in headers["Connection"].lower()
        assert subprotocol is None and codec is None
        assert "Sec-WebSocket-Extensions" not in headers

    def test_accept_key(self) -> None:
        assert accept_key(KEY) == ACCEPT

    @pytest.mark.parametrize(
        ("upgrade", "connection"),
        [
            ("WebSocket", "keep-alive, Upgrade"),
            ("websocket", "upgrade"),
            ("WEBSOCKET", "Upgrade, keep-alive"),
            ("websocket", "keep-alive,Upgrade ,  close"),
        ],
    )
    def test_case_insensitive_and_listed(self, upgrade: str, connection: str) -> None:
        headers, _, _ = accept(request({"Upgrade": upgrade, "Connection": connection}))
        assert headers["Sec-WebSocket-Accept"] == ACCEPT

    def test_upgrade_header_listing_other_protocols_with_versions(self) -> None:
        # RFC 7230 6.7: Upgrade = 1#protocol, protocol = protocol-name ["/" protocol-version].
        headers, _, _ = accept(request({"Upgrade": "HTTP/2.0, websocket"}))
        assert headers["Sec-WebSocket-Accept"] == ACCEPT

    def test_request_fields(self) -> None:
        _, req = parse(request(start="GET /chat/room?x=1&y=2 HTTP/1.1"))
        assert req.method == "GET" and req.version == "1.1"
        assert req.target == "/chat/room?x=1&y=2"
        assert req.path == "/chat/room"
        assert req.query == {"x": ["1"], "y": ["2"]}
        assert req.headers.get("host") == "example.com"
        assert "SEC-WEBSOCKET-KEY" in req.headers

    def test_byte_by_byte(self) -> None:
        data = request()
        hs = ServerHandshake()
        for i in range(len(data) - 1):
            assert hs.receive_data(data[i : i + 1]) is None
        req = hs.receive_data(data[-1:])
        assert req is not None and req.path == "/chat"
        assert hs.trailing == b""

    def test_bytes_after_the_request_are_kept(self) -> None:
        hs = ServerHandshake()
        req = hs.receive_data(request() + b"\x81\x85frame")
        assert req is not None
        assert hs.trailing == b"\x81\x85frame"
        hs.receive_data(b"more")
        assert hs.trailing == b"\x81\x85framemore"

    def test_extra_headers(self) -> None:
        hs, req = parse(request())
        response, _, _ = hs.accept(req, extra_headers=[("X-Server", "pulsewire")])
        assert b"\r\nX-Server: pulsewire\r\n" in response


class TestServerRefuses:
    def test_non_get(self) -> None:
        exc = refusal(request(start="POST /chat HTTP/1.1"))
        assert exc.status == 405
        assert ("Allow", "GET") in exc.headers

    def test_unknown_method(self) -> None:
        assert refusal(request(start="BREW /chat HTTP/1.1")).status == 405

    def test_http_1_0(self) -> None:
        assert refusal(request(start="GET /chat HTTP/1.0")).status == 400

    def test_missing_host(self) -> None:
        assert refusal(request({"Host": None})).status == 400

    def test_repeated_host(self) -> None:
        assert refusal(request(extra=[("Host", "other.example")])).status == 400

    @pytest.mark.parametrize(
        "headers",
        [
            {"Upgrade": None},
            {"Upgrade": "h2c"},
            {"Upgrade": "websockets"},
            {"Connection": None},
            {"Connection": "keep-alive"},
            {"Connection": "upgraded"},
            {"Upgrade": None, "Connection": None},
        ],
    )
    def test_missing_or_odd_upgrade_or_connection(self, headers: dict[str, str | None]) -> None:
        exc = refusal(request(headers))
        assert exc.status == 426
        assert ("Upgrade", "websocket") in exc.headers

    @pytest.mark.parametrize(
        "key",
        [
            None,
            "",
            "dGhlIHNhbXBsZSBub25jZQ",  # no padding
            "dGhlIHNhbXBsZSBub25j",  # 15 bytes
            "dGhlIHNhbXBsZSBub25jZSE=",  # 17 bytes
            "not base64 at all!!!!!!=",
            "dGhlIHNhbXBsZSBub25jZQ==, dGhlIHNhbXBsZSBub25jZQ==",
        ],
    )
    def test_bad_key(self, key: str | None) -> None:
        assert refusal(request({"Sec-WebSocket-Key": key})).status == 400

    def test_repeated_key(self) -> None:
        assert refusal(request(extra=[("Sec-WebSocket-Key", KEY)])).status == 400

    @pytest.mark.parametrize("version", [None, "8", "12", "14", "13, 8", "thirteen"])
    def test_bad_version(self, version: str | None) -> None:
        exc = refusal(request({"Sec-WebSocket-Version": version}))
        assert exc.status == 426
        assert ("Sec-WebSocket-Version", "13") in exc.headers

    def test_request_with_a_body(self) -> None:
        assert refusal(request({"Content-Length": "5"}) + b"hello").status == 400

    def test_too_long_request_target(self) -> None:
        data = request(start=f"GET /{'a' * 9000} HTTP/1.1")
        assert refusal(data).status == 414
        _, req = parse(data, max_request_line=10_000)
        assert len(req.target) == 9001

    def test_too_long_request_target_fails_before_the_end_of_the_line(self) -> None:
        hs = ServerHandshake(max_request_line=100)
        with pytest.raises(Refused) as info:
            hs.receive_data(b"GET /" + b"a" * 200)
        assert info.value.status == 414

    def test_too_many_headers(self) -> None:
        extra = [(f"X-H{i}", "v") for i in range(100)]
        assert refusal(request(extra=extra)).status == 431
        assert refusal(request(extra=extra[:5]), max_headers=8).status == 431

    def test_head_too_large_while_incomplete(self) -> None:
        hs = ServerHandshake(max_header_bytes=4096)
        data = request(extra=[("X-Pad", "a" * 5000)])
        with pytest.raises(Refused) as info:
            for i in range(0, len(data), 1000):
                hs.receive_data(data[i : i + 1000])
        assert info.value.status == 431

    @pytest.mark.parametrize("chunk", [1000, 15_000, 100_000])
    def test_head_too_large_whatever_the_reads(self, chunk: int) -> None:
        # 40 headers of 500 bytes: under the header count limit, over the 16 KiB head limit.
        # With 15_000 or 100_000-byte reads the head is complete within the read that crosses
        # the limit (a single recv() on a socket usually returns it all).
        data = request(extra=[(f"X-Pad-{i}", "a" * 500) for i in range(40)])
        assert len(data) > 16384
        hs = ServerHandshake(max_header_bytes=16384)
        with pytest.raises(Refused) as info:
            for i in range(0, len(data), chunk):
                req = hs.receive_data(data[i : i + chunk])
                if req is not None:
                    hs.accept(req)
        assert info.value.status == 431

    @pytest.mark.parametrize(
        "data",
        [
            b"GET / HTTX/1.1\r\nHost: x\r\n\r\n",
            b"GET / HTTP/1.1 extra\r\n\r\n",
            b"GET / HTTP/1.1\r\nBad Header\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\x00b\r\n\r\n",
            b"GET / HTTP/1.1\nHost: x\n\n",
        ],
    )
    def test_malformed_http(self, data: bytes) -> None:
        assert refusal(data).status == 400


class TestOrigins:
    @pytest.mark.parametrize(
        ("allowed", "origin", "ok"),
        [
            (None, "https://anything.example", True),
            (["https://example.com"], "https://example.com", True),
            (["https://example.com"], "HTTPS://Example.COM", True),
            (["https://example.com/"], "https://example.com", True),
            (["https://example.com"], "https://evil.com", False),
            (["https://example.com"], "https://example.com.evil.com", False),
            (["https://example.com"], "http://example.com", False),
            (["https://example.com"], "null", False),
            (["https://*.example.com"], "https://app.example.com", True),
            (["https://*.example.com"], "https://a.b.example.com", True),
            (["https://*.example.com"], "https://example.com", False),
            (["https://*.example.com"], "https://app.example.com.evil.com", False),
            (["https://*.example.com"], "http://app.example.com", False),
            (["http://localhost:*"], "http://localhost:8080", True),
            (["http://localhost:*"], "http://localhost", False),
            (["https://a.com", "https://*.b.com"], "https://x.b.com", True),
        ],
    )
    def test_allow_list(self, allowed: list[str] | None, origin: str, ok: bool) -> None:
        data = request({"Origin": origin})
        if ok:
            accept(data, origins=allowed)
        else:
            exc = refusal(data, origins=allowed)
            assert exc.status == 403

    def test_no_origin(self) -> None:
        accept(request(), origins=["https://example.com"])
        exc = refusal(request(), origins=OriginPolicy(["https://example.com"], require=True))
        assert exc.status == 403

    def test_repeated_origin(self) -> None:
        data = request({"Origin": "https://a.com"}, extra=[("Origin", "https://a.com")])
        assert refusal(data).status == 400


class TestSubprotocols:
    def test_server_preference_wins(self) -> None:
        data = request({"Sec-WebSocket-Protocol": "chat.v1, chat.v2"})
        headers, subprotocol, _ = accept(data, subprotocols=["chat.v2", "chat.v1"])
        assert subprotocol == "chat.v2"
        assert headers["Sec-WebSocket-Protocol"] == "chat.v2"

    def test_repeated_header_fields_are_one_list(self) -> None:
        data = request(extra=[("Sec-WebSocket-Protocol", "a"), ("Sec-WebSocket-Protocol", "b")])
        _, subprotocol, _ = accept(data, subprotocols=["b"])
        assert subprotocol == "b"

    def test_no_match(self) -> None:
        data = request({"Sec-WebSocket-Protocol": "other"})
        headers, subprotocol, _ = accept(data, subprotocols=["chat"])
        assert subprotocol is None and "Sec-WebSocket-Protocol" not in headers

    def test_required(self) -> None:
        data = request({"Sec-WebSocket-Protocol": "other"})
        exc = refusal(data, subprotocols=["chat"], require_subprotocol=True)
        assert exc.status == 400 and "chat" in exc.reason
        assert refusal(request(), subprotocols=["chat"], require_subprotocol=True).status == 400

    def test_select_subprotocol(self) -> None:
        data = request({"Sec-WebSocket-Protocol": "a, b, c"})
        seen = []

        def select(offered: list[str]) -> str | None:
            seen.append(offered)
            return offered[-1]

        _, subprotocol, _ = accept(data, select_subprotocol=select)
        assert seen == [["a", "b", "c"]] and subprotocol == "c"

    def test_select_subprotocol_must_pick_an_offered_one(self) -> None:
        hs, req = parse(request({"Sec-WebSocket-Protocol": "a"}))
        hs.select_subprotocol = lambda offered: "z"
        with pytest.raises(ValueError):
            hs.accept(req)

    def test_invalid_header(self) -> None:
        exc = refusal(request({"Sec-WebSocket-Protocol": "a b"}), subprotocols=["a"])
        assert exc.status == 400


class TestExtensions:
    def test_deflate_negotiated(self) -> None:
        data = request({"Sec-WebSocket-Extensions": "permessage-deflate; client_max_window_bits"})
        headers, _, codec = accept(data, deflate=DeflateOptions())
        assert headers["Sec-WebSocket-Extensions"] == "permessage-deflate"
        assert codec is not None

    def test_deflate_disabled_on_the_server(self) -> None:
        data = request({"Sec-WebSocket-Extensions": "permessage-deflate"})
        headers, _, codec = accept(data)
        assert codec is None and "Sec-WebSocket-Extensions" not in headers

    def test_unknown_extensions_and_declined_offers_are_ignored(self) -> None:
        data = request({"Sec-WebSocket-Extensions": "x-foo, permessage-deflate; bogus"})
        headers, _, codec = accept(data, deflate=DeflateOptions())
        assert codec is None and "Sec-WebSocket-Extensions" not in headers

    def test_invalid_header(self) -> None:
        data = request({"Sec-WebSocket-Extensions": 'permessage-deflate; a="b'})
        assert refusal(data, deflate=DeflateOptions()).status == 400


def test_http_response() -> None:
    data = http_response(404, "no such thing\n", [("X-A", "1")])
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0] == "HTTP/1.1 404 Not Found"
    assert "X-A: 1" in lines
    assert "Content-Length: 14" in lines
    assert "Connection: close" in lines
    assert any(line.startswith("Content-Type: text/plain") for line in lines)
    assert body == b"no such thing\n"
    assert http_response(599).startswith(b"HTTP/1.1 599 ")
    with pytest.raises(ValueError):
        http_response(200, "", [("X-Bad", "a\r\nInjected: 1")])


# =============================================================================== client side


def client_handshake(**options: object) -> ClientHandshake:
    return ClientHandshake(parse_uri("ws://example.com:8080/chat?x=1"), **options)  # type: ignore[arg-type]


def response(
    hs: ClientHandshake,
    *extra: str,
    status: str = "101 Switching Protocols",
    accept_value: str | None = None,
) -> bytes:
    lines = [
        f"HTTP/1.1 {status}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Accept: {accept_value or accept_key(hs.key)}",
        *extra,
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


class TestClient:
    def test_request(self) -> None:
        hs = client_handshake(
            origin="https://example.com",
            subprotocols=["a", "b"],
            deflate=DeflateOptions(),
            extra_headers=[("X-Token", "t")],
        )
        server_hs = ServerHandshake()
        req = server_hs.receive_data(hs.request_bytes())
        assert req is not None
        assert req.method == "GET" and req.target == "/chat?x=1" and req.version == "1.1"
        h = req.headers
        assert h.get("Host") == "example.com:8080"
        assert h.get("Origin") == "https://example.com"
        assert h.get("Sec-WebSocket-Protocol") == "a, b"
        assert h.get("Sec-WebSocket-Extensions") == "permessage-deflate; client_max_window_bits"
        assert h.get("X-Token") == "t"
        assert h.get("Sec-WebSocket-Version") == "13"
        assert len(__import__("base64").b64decode(h.get("Sec-WebSocket-Key"))) == 16

    def test_keys_are_random(self) -> None:
        assert client_handshake().key != client_handshake().key

    def test_valid_response(self) -> None:
        hs = client_handshake()
        resp = hs.receive_data(response(hs) + b"\x81\x02hi")
        assert resp is not None and resp.status == 101
        assert resp.subprotocol is None and resp.deflate is None
        assert hs.trailing == b"\x81\x02hi"

    def test_response_byte_by_byte(self) -> None:
        hs = client_handshake()
        data = response(hs)
        for i in range(len(data) - 1):
            assert hs.receive_data(data[i : i + 1]) is None
        assert hs.receive_data(data[-1:]) is not None

    def test_full_handshake_with_a_server(self) -> None:
        hs = client_handshake(subprotocols=["x", "y"], deflate=DeflateOptions())
        server_hs = ServerHandshake(subprotocols=["y"], deflate=DeflateOptions())
        req = server_hs.receive_data(hs.request_bytes())
        assert req is not None
        raw, subprotocol, codec = server_hs.accept(req)
        resp = hs.receive_data(raw)
        assert resp is not None
        assert resp.subprotocol == subprotocol == "y"
        assert resp.deflate is not None and codec is not None

    @pytest.mark.parametrize(
        "data",
        [
            b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n\r\n",
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n",
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
        ],
    )
    def test_missing_upgrade_headers(self, data: bytes) -> None:
        with pytest.raises(InvalidHandshake):
            client_handshake().receive_data(data)

    def test_wrong_accept(self) -> None:
        hs = client_handshake()
        with pytest.raises(InvalidHandshake):
            hs.receive_data(response(hs, accept_value=ACCEPT))

    def test_missing_accept(self) -> None:
        hs = client_handshake()
        data = b"HTTP/1.1 101 OK\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
        with pytest.raises(InvalidHandshake):
            hs.receive_data(data)

    def test_subprotocol_not_offered(self) -> None:
        hs = client_handshake(subprotocols=["a"])
        with pytest.raises(NegotiationError):
            hs.receive_data(response(hs, "Sec-WebSocket-Protocol: b"))
        hs = client_handshake()
        with pytest.raises(NegotiationError):
            hs.receive_data(response(hs, "Sec-WebSocket-Protocol: a"))

    def test_several_subprotocols_chosen(self) -> None:
        hs = client_handshake(subprotocols=["a", "b"])
        with pytest.raises(NegotiationError):
            hs.receive_data(response(hs, "Sec-WebSocket-Protocol: a", "Sec-WebSocket-Protocol: b"))

    def test_subprotocol_chosen(self) -> None:
        hs = client_handshake(subprotocols=["a", "b"])
        resp = hs.receive_data(response(hs, "Sec-WebSocket-Protocol: b"))
        assert resp is not None and resp.subprotocol == "b"

    def test_extension_not_offered(self) -> None:
        hs = client_handshake()
        with pytest.raises(NegotiationError):
            hs.receive_data(response(hs, "Sec-WebSocket-Extensions: permessage-deflate"))
        hs = client_handshake(deflate=DeflateOptions())
        with pytest.raises(NegotiationError):
            hs.receive_data(response(hs, "Sec-WebSocket-Extensions: x-foo"))

    def test_extension_chosen_twice(self) -> None:
        hs = client_handshake(deflate=DeflateOptions())
        value = "permessage-deflate, permessage-deflate"
        with pytest.raises(NegotiationError):
            hs.receive_data(response(hs, f"Sec-WebSocket-Extensions: {value}"))

    def test_invalid_deflate_response(self) -> None:
        hs = client_handshake(deflate=DeflateOptions(server_no_context_takeover=True))
        with pytest.raises(NegotiationError):
            hs.receive_data(response(hs, "Sec-WebSocket-Extensions: permessage-deflate"))

    def test_deflate_accepted(self) -> None:
        hs = client_handshake(deflate=DeflateOptions())
        resp = hs.receive_data(
            response(hs, "Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover")
        )
        assert resp is not None and resp.deflate is not None
        assert resp.deflate.remote_no_context_takeover

    def test_non_101_with_a_body(self) -> None:
        hs = client_handshake()
        body = b"Sec-WebSocket-Key must be the base64 encoding of 16 bytes\n"
        data = http_response(400, body)
        assert hs.receive_data(data[:20]) is None
        with pytest.raises(InvalidStatus) as info:
            hs.receive_data(data[20:])
        assert info.value.status == 400
        assert info.value.body == body
        assert "400" in str(info.value) and "base64" in str(info.value)

    def test_non_101_read_until_eof(self) -> None:
        hs = client_handshake()
        assert hs.receive_data(b"HTTP/1.1 403 Forbidden\r\n\r\nnot you") is None
        with pytest.raises(InvalidStatus) as info:
            hs.receive_eof()
        assert info.value.status == 403 and info.value.body == b"not you"

    def test_redirect(self) -> None:
        hs = client_handshake()
        data = b"HTTP/1.1 302 Found\r\nLocation: /x\r\nContent-Length: 0\r\n\r\n"
        with pytest.raises(InvalidStatus) as info:
            hs.receive_data(data)
        assert ("Location", "/x") in info.value.headers

    def test_eof_before_the_answer(self) -> None:
        hs = client_handshake()
        hs.receive_data(b"HTTP/1.1 101 Switch")
        with pytest.raises(InvalidHandshake):
            hs.receive_eof()

    @pytest.mark.parametrize("data", [b"SSH-2.0-OpenSSH\r\n", b"HTTP/1.1 abc\r\n\r\n"])
    def test_malformed_response(self, data: bytes) -> None:
        with pytest.raises(InvalidHandshake):
            client_handshake().receive_data(data)


class TestParseUri:
    @pytest.mark.parametrize(
        ("uri", "secure", "host", "port", "resource", "host_header"),
        [
            ("ws://example.com", False, "example.com", 80, "/", "example.com"),
            ("wss://example.com/a?b=c", True, "example.com", 443, "/a?b=c", "example.com"),
            ("ws://example.com:443/", False, "example.com", 443, "/", "example.com:443"),
            ("ws://127.0.0.1:8765/x", False, "127.0.0.1", 8765, "/x", "127.0.0.1:8765"),
            ("ws://[::1]:9000/", False, "::1", 9000, "/", "[::1]:9000"),
        ],
    )
    def test_valid(
        self, uri: str, secure: bool, host: str, port: int, resource: str, host_header: str
    ) -> None:
        parsed = parse_uri(uri)
        assert (parsed.secure, parsed.host, parsed.port, parsed.resource) == (
            secure,
            host,
            port,
            resource,
        )
        assert parsed.host_header == host_header

    def test_user_info(self) -> None:
        assert parse_uri("ws://user:p%40ss@host/").user_info == ("user", "p@ss")

    @pytest.mark.parametrize("uri", ["http://example.com", "ws://", "ws://host/#frag", "example"])
    def test_invalid(self, uri: str) -> None:
        with pytest.raises(ValueError):
            parse_uri(uri)
