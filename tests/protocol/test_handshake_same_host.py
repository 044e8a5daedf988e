"""The same-host Origin check compares scheme, host and port; request targets that name no
resource (``GET *``, authority-form, bare words) are refused with 400 by the handshake."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pulsewire.protocol.handshake import (
    Headers,
    OriginPolicy,
    ServerHandshake,
    request_scheme,
    target_error,
)

from .test_handshake import accept, refusal, request

SAME_HOST = OriginPolicy([], same_host=True)


@pytest.mark.parametrize(
    ("host", "scheme", "origin", "ok"),
    [
        ("example.com:8000", "http", "http://example.com:8000", True),
        ("Example.COM:8000", "http", "HTTP://example.com:8000", True),
        ("example.com", "http", "http://example.com", True),
        ("example.com", "http", "http://example.com:80", True),  # default ports are explicit
        ("example.com:80", "http", "http://example.com", True),
        ("example.com", "https", "https://example.com:443", True),
        ("example.com:443", "https", "https://example.com", True),
        ("[::1]:8000", "http", "http://[::1]:8000", True),
        # The attack of issue #10: the node's own host:port under another scheme.
        ("example.com:8000", "http", "https://example.com:8000", False),
        ("example.com:8000", "http", "ws://example.com:8000", False),
        ("example.com:8000", "http", "wss://example.com:8000", False),
        ("example.com:8000", "http", "file://example.com:8000", False),
        ("example.com:8000", "http", "chrome-extension://example.com:8000", False),
        ("example.com:8000", "http", "ftp://example.com:8000", False),
        ("example.com:8000", "http", "null", False),
        ("example.com:8000", "https", "http://example.com:8000", False),
        # Host and port must both match.
        ("example.com:8000", "http", "http://example.com", False),
        ("example.com", "https", "https://example.com:8443", False),
        ("example.com:8000", "http", "http://example.com:8001", False),
        ("example.com:8000", "http", "http://evil.com:8000", False),
        ("example.com:8000", "http", "http://example.com.evil.com:8000", False),
        # Not a serialized origin at all.
        ("example.com:8000", "http", "http://example.com:8000/path", False),
        ("example.com:8000", "http", "http://user@example.com:8000", False),
        ("example.com:8000", "http", "http://example.com:99999", False),
        ("example.com:8000", "http", "http://", False),
        ("example.com:bad", "http", "http://example.com:8000", False),
        ("", "http", "http://example.com", False),
    ],
)
def test_same_host_compares_scheme_host_and_port(host, scheme, origin, ok):
    assert SAME_HOST.allows(origin, host, scheme=scheme) is ok


def test_the_default_scheme_is_http():
    assert SAME_HOST.allows("http://h:1", "h:1")
    assert not SAME_HOST.allows("https://h:1", "h:1")


@pytest.mark.parametrize(
    ("secure", "headers", "scheme"),
    [
        (False, [], "http"),
        (True, [], "https"),
        (False, [("X-Forwarded-Proto", "https")], "https"),
        (False, [("X-Forwarded-Proto", "HTTPS")], "https"),
        (False, [("X-Forwarded-Proto", "https, http")], "https"),
        (False, [("X-Forwarded-Proto", "http")], "http"),
        (False, [("X-Forwarded-Proto", "chrome-extension")], "http"),
        (True, [("X-Forwarded-Proto", "http")], "https"),  # TLS here is a fact, not a claim
    ],
)
def test_request_scheme(secure, headers, scheme):
    assert request_scheme(secure, Headers(headers)) == scheme


class TestHandshake:
    def test_same_host_on_a_plain_listener(self):
        data = request({"Origin": "http://example.com"})
        accept(data, origins=SAME_HOST)
        for other in ("https://example.com", "ws://example.com", "file://example.com"):
            assert refusal(request({"Origin": other}), origins=SAME_HOST).status == 403

    def test_same_host_on_a_tls_listener(self):
        accept(request({"Origin": "https://example.com"}), origins=SAME_HOST, secure=True)
        data = request({"Origin": "http://example.com"})
        assert refusal(data, origins=SAME_HOST, secure=True).status == 403

    def test_behind_a_tls_terminating_proxy(self):
        proxied = {"Origin": "https://example.com", "X-Forwarded-Proto": "https"}
        accept(request(proxied), origins=SAME_HOST)
        downgraded = {"Origin": "http://example.com", "X-Forwarded-Proto": "https"}
        assert refusal(request(downgraded), origins=SAME_HOST).status == 403

    def test_the_request_records_address_and_tls(self):
        hs = ServerHandshake(secure=True, remote_address="192.0.2.1")
        req = hs.receive_data(request())
        assert req is not None and req.secure and req.remote_address == "192.0.2.1"


@pytest.mark.parametrize(
    "target",
    ["*", "example.com:443", "chat", "mailto:a@b.c", "file:///etc/passwd", "http:/no-host"],
)
def test_targets_without_a_resource_are_400(target):
    # llhttp refuses some of these itself; the rest (``*`` above all) are ours to refuse.
    assert refusal(request(start=f"GET {target} HTTP/1.1")).status == 400


def test_get_star_is_refused_by_the_target_check():
    exc = refusal(request(start="GET * HTTP/1.1"))
    assert exc.status == 400 and exc.reason == "request target * is only valid for OPTIONS"


@pytest.mark.parametrize(
    "target", ["/chat", "/", "/a?b=c", "http://example.com/chat", "wss://example.com/chat"]
)
def test_origin_and_absolute_forms_are_accepted(target):
    accept(request(start=f"GET {target} HTTP/1.1"))


def test_target_error():
    assert target_error("OPTIONS", "*") is None  # RFC 7230 5.3.4: server-wide OPTIONS
    assert target_error("GET", "*") is not None
    assert target_error("GET", "/x") is None


@given(st.text(max_size=40))
def test_target_error_never_raises(target):
    target_error("GET", target)
