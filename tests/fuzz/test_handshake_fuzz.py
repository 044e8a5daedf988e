"""Fuzzing the opening handshake: ``ServerHandshake.receive_data`` + ``accept`` and
``ClientHandshake.receive_data`` / ``receive_eof``.

Inputs are arbitrary bytes, requests and responses assembled from a pool of normal, odd and
hostile header lines, and mutations of valid ones, fed in random chunks. Whatever the input:

* the server side raises nothing but :class:`Refused`, with a status among the ones it
  documents, and :func:`http_response` can always serialise the refusal;
* an accepted request yields a well-formed 101 response (no header injection: every line is
  ``Name: value`` without stray CR/LF) with the right Accept key;
* the client side raises nothing but :class:`InvalidHandshake` (and its subclasses);
* nothing reads past the configured head limits.
"""

from __future__ import annotations

import base64
import re

from hypothesis import given
from hypothesis import strategies as st

from pulsewire.protocol import DeflateOptions, InvalidHandshake, Refused
from pulsewire.protocol.handshake import (
    ClientHandshake,
    OriginPolicy,
    ServerHandshake,
    accept_key,
    http_response,
    parse_uri,
)

from .common import chunks, cut_points, fuzz_settings, mutated

SETTINGS = fuzz_settings(150)
KEY = "dGhlIHNhbXBsZSBub25jZQ=="
REFUSAL_STATUSES = {400, 403, 405, 414, 426, 431}
HEADER_LINE = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+: [^\r\n]*")

VALID_REQUEST = (
    "GET /chat?room=1 HTTP/1.1\r\n"
    "Host: example.com:8000\r\n"
    "Upgrade: websocket\r\n"
    "Connection: keep-alive, Upgrade\r\n"
    f"Sec-WebSocket-Key: {KEY}\r\n"
    "Sec-WebSocket-Version: 13\r\n"
    "Origin: http://example.com:8000\r\n"
    "Sec-WebSocket-Protocol: chat, superchat\r\n"
    "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits, "
    "permessage-deflate; server_no_context_takeover\r\n"
    "\r\n"
).encode()

HEADER_POOL = [
    "Host: example.com",
    "Host: example.com:8000",
    "Host: ",
    "Upgrade: websocket",
    "Upgrade: WebSocket, h2c",
    "Upgrade: websocket/13",
    "Upgrade: \x00websocket",
    "Connection: Upgrade",
    "Connection: upgrade, close",
    "Connection: ,,,",
    f"Sec-WebSocket-Key: {KEY}",
    "Sec-WebSocket-Key: AAAA",
    "Sec-WebSocket-Key: !!!!!!!!!!!!!!!!!!!!!!!!",
    "Sec-WebSocket-Version: 13",
    "Sec-WebSocket-Version: 8, 13",
    "Sec-WebSocket-Version: 99999999999999999999",
    "Origin: http://example.com:8000",
    "Origin: https://evil.example",
    "Origin: null",
    "Origin: http://example.com:8000\r\nX-Injected: 1",
    "Sec-WebSocket-Protocol: chat",
    "Sec-WebSocket-Protocol: chat, , superchat",
    'Sec-WebSocket-Protocol: "chat"',
    "Sec-WebSocket-Extensions: permessage-deflate",
    "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits=8",
    "Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits",
    "Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits=08",
    'Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits="10"',
    'Sec-WebSocket-Extensions: permessage-deflate; x="\\',
    "Sec-WebSocket-Extensions: foo, permessage-deflate; permessage-deflate",
    "Sec-WebSocket-Extensions: ;;;",
    "Content-Length: 0",
    "Content-Length: 5",
    "Transfer-Encoding: chunked",
    "X-Long: " + "a" * 300,
    "X-Latin: \xe9\xff",
]

METHODS = ["GET", "POST", "HEAD", "OPTIONS", "GETT", "get", "PRI"]
TARGETS = ["/", "/chat", "/chat?room=1", "*", "http://example.com/", "/" + "x" * 300, "/%00"]
VERSIONS = ["HTTP/1.1", "HTTP/1.0", "HTTP/2.0", "HTTP/0.9", "HTTP/1.1 extra", ""]


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    line = f"{draw(st.sampled_from(METHODS))} {draw(st.sampled_from(TARGETS))} " + draw(
        st.sampled_from(VERSIONS)
    )
    headers = draw(st.lists(st.sampled_from(HEADER_POOL), max_size=14))
    head = "\r\n".join([line, *headers]) + "\r\n\r\n"
    tail = draw(st.sampled_from([b"", b"\x81\x80\x00\x00\x00\x00", b"GET / HTTP/1.1\r\n\r\n"]))
    return head.encode("latin-1") + tail


def server_handshake(small: bool) -> ServerHandshake:
    limits = {"max_request_line": 256, "max_headers": 12, "max_header_bytes": 1024}
    return ServerHandshake(
        origins=OriginPolicy(["https://*.example.org"], same_host=True),
        subprotocols=["superchat", "chat"],
        deflate=DeflateOptions(),
        **(limits if small else {}),
    )


def run_server(data: bytes, cuts: list[int], small: bool) -> None:
    handshake = server_handshake(small)
    request = None
    try:
        for chunk in chunks(data, cuts):
            request = handshake.receive_data(chunk)
        if request is None:
            return
        response, subprotocol, codec = handshake.accept(request)
    except Refused as exc:
        assert exc.status in REFUSAL_STATUSES, exc
        assert http_response(exc.status, exc.reason + "\n", exc.headers).startswith(
            f"HTTP/1.1 {exc.status} ".encode()
        )
        return
    if small:  # what got through respects the limits
        assert len(request.headers) <= 12 and len(request.target) <= 256
    head, sep, rest = response.partition(b"\r\n\r\n")
    assert sep and rest == b""
    lines = head.split(b"\r\n")
    assert lines[0] == b"HTTP/1.1 101 Switching Protocols"
    for line in lines[1:]:
        assert HEADER_LINE.fullmatch(line), line
    key = request.headers.get("Sec-WebSocket-Key", "").strip()  # type: ignore[union-attr]
    assert f"Sec-WebSocket-Accept: {accept_key(key)}".encode() in lines
    assert subprotocol in (None, "superchat", "chat")
    assert (codec is None) == (b"Sec-WebSocket-Extensions: " not in head)


@SETTINGS
@given(st.binary(max_size=400), cut_points, st.booleans())
def test_server_arbitrary_bytes(data, cuts, small):
    run_server(data, cuts, small)


@SETTINGS
@given(requests(), cut_points, st.booleans())
def test_server_assembled_requests(data, cuts, small):
    run_server(data, cuts, small)


@SETTINGS
@given(st.data(), cut_points, st.booleans())
def test_server_mutated_valid_request(data, cuts, small):
    run_server(data.draw(mutated(VALID_REQUEST)), cuts, small)


def test_server_valid_request_is_accepted():
    handshake = server_handshake(small=False)
    request = handshake.receive_data(VALID_REQUEST)
    assert request is not None
    response, subprotocol, codec = handshake.accept(request)
    assert subprotocol == "superchat" and codec is not None
    assert f"Sec-WebSocket-Accept: {accept_key(KEY)}".encode() in response


# ------------------------------------------------------------------------------ client side

CLIENT_KEY = base64.b64encode(b"0123456789abcdef").decode()
VALID_RESPONSE = (
    "HTTP/1.1 101 Switching Protocols\r\n"
    "Upgrade: websocket\r\n"
    "Connection: Upgrade\r\n"
    f"Sec-WebSocket-Accept: {accept_key(CLIENT_KEY)}\r\n"
    "Sec-WebSocket-Protocol: chat\r\n"
    "Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits=10; "
    "client_max_window_bits=12\r\n"
    "\r\n"
).encode()
RESPONSE_POOL = [
    "Upgrade: websocket",
    "Upgrade: h2c",
    "Connection: Upgrade",
    "Connection: close",
    f"Sec-WebSocket-Accept: {accept_key(CLIENT_KEY)}",
    "Sec-WebSocket-Accept: wrong",
    "Sec-WebSocket-Protocol: chat",
    "Sec-WebSocket-Protocol: other",
    "Sec-WebSocket-Extensions: permessage-deflate",
    "Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits",
    "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits=16",
    "Sec-WebSocket-Extensions: permessage-deflate, permessage-deflate",
    "Sec-WebSocket-Extensions: x-unknown",
    "Content-Length: 5",
    "Content-Length: -1",
    "Transfer-Encoding: chunked",
]
STATUS_LINES = [
    "HTTP/1.1 101 Switching Protocols",
    "HTTP/1.1 403 Forbidden",
    "HTTP/1.1 200 OK",
    "HTTP/1.0 101 OK",
    "HTTP/1.1 999 Odd",
    "HTTP/1.1 1010",
    "ICY 200 OK",
]


@st.composite
def responses(draw: st.DrawFn) -> bytes:
    headers = draw(st.lists(st.sampled_from(RESPONSE_POOL), max_size=10))
    head = "\r\n".join([draw(st.sampled_from(STATUS_LINES)), *headers]) + "\r\n\r\n"
    return head.encode() + draw(st.sampled_from([b"", b"hello", b"0\r\n\r\n", b"\x81\x02hi"]))


def run_client(data: bytes, cuts: list[int], eof: bool) -> None:
    handshake = ClientHandshake(
        parse_uri("ws://example.com/chat"),
        subprotocols=["chat"],
        deflate=DeflateOptions(),
        key=CLIENT_KEY,
        max_header_bytes=2048,
    )
    assert handshake.request_bytes().endswith(b"\r\n\r\n")
    try:
        response = None
        for chunk in chunks(data, cuts):
            response = handshake.receive_data(chunk)
            if response is not None:
                break
        if response is None and eof:
            handshake.receive_eof()
            raise AssertionError("receive_eof must raise")
    except InvalidHandshake:
        return
    if response is not None:
        assert response.status == 101
        assert response.subprotocol in (None, "chat")


@SETTINGS
@given(st.binary(max_size=400), cut_points, st.booleans())
def test_client_arbitrary_bytes(data, cuts, eof):
    run_client(data, cuts, eof)


@SETTINGS
@given(responses(), cut_points, st.booleans())
def test_client_assembled_responses(data, cuts, eof):
    run_client(data, cuts, eof)


@SETTINGS
@given(st.data(), cut_points, st.booleans())
def test_client_mutated_valid_response(data, cuts, eof):
    run_client(data.draw(mutated(VALID_RESPONSE)), cuts, eof)


def test_client_valid_response_is_accepted():
    handshake = ClientHandshake(
        parse_uri("ws://example.com/chat"),
        subprotocols=["chat"],
        deflate=DeflateOptions(),
        key=CLIENT_KEY,
    )
    response = handshake.receive_data(VALID_RESPONSE)
    assert response is not None and response.subprotocol == "chat"
    assert response.deflate is not None
