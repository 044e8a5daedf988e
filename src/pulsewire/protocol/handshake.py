"""The opening handshake (RFC 6455 section 4), Sans-I/O, on the httptools (llhttp) parser.

Server side: :class:`ServerHandshake` parses the request with limits on the request line,
the header count and the header bytes, then :meth:`ServerHandshake.accept` checks it and
returns the 101 response, or raises :class:`Refused` whose status and plain-text reason
:func:`http_response` turns into the answer. Client side: :class:`ClientHandshake` builds the
request and checks the response: status 101, the Accept key, and that the server chose only
what was offered. Time limits belong to the I/O layer.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
import urllib.parse
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from http import HTTPStatus

import httptools

from .deflate import EXTENSION_NAME, DeflateOptions, PerMessageDeflate
from .errors import InvalidHandshake, InvalidStatus, NegotiationError, Refused
from .headers import parse_extension_list, parse_token_list, parse_upgrade_list

__all__ = [
    "ClientHandshake",
    "HeadLimits",
    "OriginPolicy",
    "Request",
    "Response",
    "ServerHandshake",
    "WsURI",
    "accept_key",
    "http_response",
    "parse_uri",
    "request_scheme",
    "resolve_head_limits",
    "target_error",
]

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
USER_AGENT = "pulsewire/0.1"
_HEADER_VALUE_RE = re.compile(r"[^\r\n\x00]*")


@dataclass(frozen=True)
class HeadLimits:
    """Limits on an HTTP request head, enforced as its bytes arrive.

    One definition for every parser of request heads: the WebSocket handshake
    (:class:`ServerHandshake`, :class:`~pulsewire.Server`) and the hub's HTTP front door.
    """

    max_target: int = 8192
    """Longest request target (414)."""
    max_headers: int = 100
    """Most header fields (431)."""
    max_head: int = 16384
    """Largest request head, request line included (431)."""


def accept_key(key: str) -> str:
    """The Sec-WebSocket-Accept value for a Sec-WebSocket-Key."""
    return base64.b64encode(hashlib.sha1((key + GUID).encode("ascii")).digest()).decode("ascii")


class Headers:
    """An ordered, case-insensitive multi-map of header fields."""

    __slots__ = ("_items",)

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        self._items = list(items)

    def get(self, name: str, default: str | None = None) -> str | None:
        """The field's value; repeated fields are joined with ", " as RFC 7230 allows."""
        values = self.get_all(name)
        return ", ".join(values) if values else default

    def get_all(self, name: str) -> list[str]:
        name = name.lower()
        return [v for k, v in self._items if k.lower() == name]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and bool(self.get_all(name))

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def items(self) -> list[tuple[str, str]]:
        return list(self._items)

    def __repr__(self) -> str:
        return f"Headers({self._items!r})"


@dataclass
class Request:
    """An HTTP request as parsed by :class:`ServerHandshake`."""

    method: str
    target: str
    version: str
    headers: Headers
    remote_address: str = ""
    """The peer's address, as the I/O binding gave it to the handshake."""
    secure: bool = False
    """Whether the request arrived over TLS."""

    @property
    def path(self) -> str:
        """The path part of the target, without the query string."""
        return urllib.parse.urlsplit(self.target).path or "/"

    @property
    def query(self) -> dict[str, list[str]]:
        return urllib.parse.parse_qs(urllib.parse.urlsplit(self.target).query)


@dataclass
class Response:
    """The server's 101 answer as checked by :class:`ClientHandshake`."""

    status: int
    headers: Headers
    subprotocol: str | None = None
    extensions: str | None = None
    deflate: PerMessageDeflate | None = None


def http_response(
    status: int,
    body: str | bytes = b"",
    headers: Sequence[tuple[str, str]] = (),
    *,
    close: bool = True,
) -> bytes:
    """Serialise a plain HTTP/1.1 response (text bodies are sent as UTF-8 text/plain)."""
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Unknown"
    if isinstance(body, str):
        body = body.encode("utf-8")
    names = {k.lower() for k, _ in headers}
    lines = [f"HTTP/1.1 {status} {phrase}"]
    for name, value in headers:
        _check_header(name, value)
        lines.append(f"{name}: {value}")
    if "content-type" not in names and body:
        lines.append("Content-Type: text/plain; charset=utf-8")
    if "content-length" not in names and status >= 200 and status not in (204, 304):
        lines.append(f"Content-Length: {len(body)}")
    if close and "connection" not in names:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def resolve_head_limits(
    limits: HeadLimits | None,
    max_target: int | None = None,
    max_headers: int | None = None,
    max_head: int | None = None,
) -> HeadLimits:
    """``limits`` (default: :class:`HeadLimits`'s) with the fields given here replaced."""
    limits = limits if limits is not None else HeadLimits()
    changes = {
        name: value
        for name, value in (
            ("max_target", max_target),
            ("max_headers", max_headers),
            ("max_head", max_head),
        )
        if value is not None
    }
    return replace(limits, **changes) if changes else limits


def _check_header(name: str, value: str) -> None:
    if not re.fullmatch(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+", name) or not _HEADER_VALUE_RE.fullmatch(
        value
    ):
        raise ValueError(f"invalid header field {name!r}: {value!r}")


def request_scheme(secure: bool, headers: Headers) -> str:
    """The scheme (``http``/``https``) of the page a same-host browser request comes from.

    ``https`` on a TLS listener; on a plain one, what a TLS-terminating proxy says in
    ``X-Forwarded-Proto`` (the shipped nginx configuration sends it), else ``http``.

    Trusting that header cannot let a foreign page in: a browser page cannot set it on a
    WebSocket handshake (the WebSocket API takes no headers) or on an EventSource, and on a
    fetch it is a non-simple header, so a cross-origin page's request is preceded by a CORS
    preflight that carries no such header and is judged (and refused) as it is. A page of
    our own origin setting it only gets itself refused. Clients that are not browsers can
    send anything, Origin included: the Origin check never concerned them.
    """
    if secure:
        return "https"
    value = headers.get("X-Forwarded-Proto")
    if value:
        proto = value.split(",", 1)[0].strip().lower()
        if proto in ("http", "https"):
            return proto
    return "http"


_DEFAULT_PORTS = {"http": 80, "https": 443}


def _origin_tuple(origin: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of a serialized http(s) origin, ports made explicit; None if it
    is anything else (another scheme, ``null``, a path, user info, a bad port)."""
    try:
        parts = urllib.parse.urlsplit(origin)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme
    if scheme not in _DEFAULT_PORTS or not parts.hostname:
        return None
    if parts.path or parts.query or parts.fragment or "@" in parts.netloc:
        return None
    return scheme, parts.hostname, port if port is not None else _DEFAULT_PORTS[scheme]


def _host_tuple(host: str, scheme: str) -> tuple[str, int] | None:
    """(host, port) of a Host header for a request made with ``scheme``."""
    try:
        parts = urllib.parse.urlsplit("//" + host.strip())
        port = parts.port
    except ValueError:
        return None
    if not parts.hostname or parts.path or "@" in parts.netloc:
        return None
    return parts.hostname, port if port is not None else _DEFAULT_PORTS[scheme]


class OriginPolicy:
    """Which Origin headers a server accepts (defence against Cross-Site WebSocket Hijacking).

    ``allowed`` holds exact origins (``https://example.com``) or patterns where ``*`` matches
    one or more DNS labels or a port (``https://*.example.com``, ``http://localhost:*``).
    With ``same_host=True`` the server's own origin is accepted too: scheme, host and port
    equal to the request's (the scheme from :func:`request_scheme`, the host and port from
    the ``Host`` header; default ports made explicit, so ``http://h`` is ``http://h:80``).
    Any other scheme on the same host:port (``ws://``, ``file://``, ``chrome-extension://``,
    ``null``...) is refused. ``allowed=None`` with ``same_host=False`` accepts every origin.
    A request without an Origin header comes from a non-browser client (browsers always send
    it) and is accepted unless ``require=True``.
    """

    def __init__(
        self,
        allowed: Iterable[str] | None = None,
        *,
        same_host: bool = False,
        require: bool = False,
    ) -> None:
        self.allowed = None if allowed is None else list(allowed)
        self.same_host = same_host
        self.require = require
        self._exact: set[str] = set()
        self._patterns: list[re.Pattern[str]] = []
        for origin in self.allowed or ():
            if "*" in origin:
                parts = [re.escape(p) for p in origin.lower().split("*")]
                self._patterns.append(re.compile(r"[a-z0-9\-.]+".join(parts)))
            else:
                self._exact.add(origin.lower().rstrip("/"))

    @property
    def open(self) -> bool:
        return self.allowed is None and not self.same_host

    def allows(self, origin: str | None, host: str | None = None, *, scheme: str = "http") -> bool:
        """Whether a request with this Origin and Host, made over ``scheme``, is accepted."""
        if origin is None:
            return not self.require
        if self.open:
            return True
        origin = origin.lower()
        if origin in self._exact or any(p.fullmatch(origin) for p in self._patterns):
            return True
        if self.same_host and host and scheme in _DEFAULT_PORTS:
            page = _origin_tuple(origin)
            ours = _host_tuple(host.lower(), scheme)
            return page is not None and ours is not None and page == (scheme, *ours)
        return False


def target_error(method: str, target: str) -> str | None:
    """Why a request target is not acceptable (None if it is).

    Accepted: origin-form (``/path?query``) and absolute-form with an http(s) or ws(s)
    scheme and a host (RFC 7230 5.3; RFC 6455 4.1 names the resource in origin-form, and
    proxies may use absolute-form); asterisk-form ``*`` only for ``OPTIONS``. Anything else
    (``*`` on GET, authority-form, a bare path) has no resource to route and is refused.
    """
    if target.startswith("/"):
        return None
    if target == "*":
        return None if method == "OPTIONS" else "request target * is only valid for OPTIONS"
    try:
        parts = urllib.parse.urlsplit(target)
    except ValueError:
        parts = None
    if parts is not None and parts.scheme in ("http", "https", "ws", "wss") and parts.netloc:
        return None
    return "request target must be a path (/...) or an absolute http(s)/ws(s) URL"


class _Parser:
    """Collects what httptools reports, enforcing size limits as bytes arrive."""

    def __init__(self, limits: HeadLimits) -> None:
        self.max_target = limits.max_target
        self.max_headers = limits.max_headers
        self.target = bytearray()
        self.headers: list[tuple[str, str]] = []
        self.status = b""
        self.body = bytearray()
        self.headers_complete = False
        self.message_complete = False

    # httptools callbacks
    def on_url(self, url: bytes) -> None:
        self.target += url
        if len(self.target) > self.max_target:
            raise Refused(414, f"request target longer than {self.max_target} bytes")

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.decode("latin-1"), value.decode("latin-1")))
        if len(self.headers) > self.max_headers:
            raise Refused(431, f"more than {self.max_headers} header fields")

    def on_headers_complete(self) -> None:
        self.headers_complete = True

    def on_body(self, body: bytes) -> None:
        if len(self.body) + len(body) <= 65536:
            self.body += body

    def on_message_complete(self) -> None:
        self.message_complete = True


class ServerHandshake:
    """Parses one upgrade request and decides on it.

    ``subprotocols`` lists what the server speaks in order of preference (or pass
    ``select_subprotocol(offered) -> str | None``); ``deflate`` enables permessage-deflate.
    ``limits`` bounds the request head (``max_request_line``, ``max_headers`` and
    ``max_header_bytes``, when given, override its fields). A request already parsed
    elsewhere (an HTTP server that saw the Upgrade) is handed over with
    :meth:`receive_request` instead of :meth:`receive_data`.
    """

    def __init__(
        self,
        *,
        origins: OriginPolicy | Iterable[str] | None = None,
        subprotocols: Sequence[str] = (),
        select_subprotocol: Callable[[list[str]], str | None] | None = None,
        require_subprotocol: bool = False,
        deflate: DeflateOptions | None = None,
        limits: HeadLimits | None = None,
        max_request_line: int | None = None,
        max_headers: int | None = None,
        max_header_bytes: int | None = None,
        secure: bool = False,
        remote_address: str = "",
    ) -> None:
        self.secure = secure
        """Whether the request arrives over TLS (the same-host Origin check expects https)."""
        self.remote_address = remote_address
        """The peer's address (copied into the Request for ``process_request`` hooks)."""
        self.origins = origins if isinstance(origins, OriginPolicy) else OriginPolicy(origins)
        self.subprotocols = list(subprotocols)
        self.select_subprotocol = select_subprotocol
        self.require_subprotocol = require_subprotocol
        self.deflate = deflate
        limits = resolve_head_limits(limits, max_request_line, max_headers, max_header_bytes)
        self.limits = limits
        self.max_header_bytes = limits.max_head
        self._p = _Parser(limits)
        self._parser = httptools.HttpRequestParser(self._p)
        self._received = 0
        self.request: Request | None = None
        self.trailing = b""
        """Bytes that followed the request (frames a client sent before our answer)."""

    def receive_data(self, data: bytes) -> Request | None:
        """Feed bytes; returns the Request once its head is complete, raises Refused if bad."""
        if self.request is not None:
            self.trailing += data
            return self.request
        self._received += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self.trailing = data[exc.args[0] :]
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, Refused):
                raise cause from None
            raise Refused(400, f"malformed HTTP request: {exc}") from None
        except httptools.HttpParserInvalidMethodError:
            raise Refused(405, "invalid HTTP method", [("Allow", "GET")]) from None
        except httptools.HttpParserError as exc:
            raise Refused(400, f"malformed HTTP request: {exc}") from None
        p = self._p
        if not p.headers_complete:
            if self._received > self.max_header_bytes:
                raise Refused(431, f"request head larger than {self.max_header_bytes} bytes")
            return None
        # Headers complete; count only the head against the limit.
        head_size = self._received - len(self.trailing)
        if head_size > self.max_header_bytes:
            raise Refused(431, f"request head larger than {self.max_header_bytes} bytes")
        version = self._parser.get_http_version()
        method = self._parser.get_method().decode("ascii", "replace")
        target = p.target.decode("latin-1")
        return self.receive_request(
            Request(method=method, target=target, version=version, headers=Headers(p.headers))
        )

    def receive_request(self, request: Request, trailing: bytes = b"") -> Request:
        """Take a request head parsed elsewhere (within its own limits), and ``trailing``, the
        bytes that followed it; returns it with :attr:`remote_address` and :attr:`secure`
        filled in, or raises Refused. The request is not parsed again."""
        # Before routing or any hook sees it: "GET *" used to reach a single-handler server
        # as the path "*" and be upgraded.
        problem = target_error(request.method, request.target)
        if problem is not None:
            raise Refused(400, problem)
        request.remote_address = self.remote_address
        request.secure = self.secure
        self.request = request
        if trailing:
            self.trailing += trailing
        return request

    def accept(
        self, request: Request, *, extra_headers: Sequence[tuple[str, str]] = ()
    ) -> tuple[bytes, str | None, PerMessageDeflate | None]:
        """Check ``request``; return (101 response bytes, subprotocol, deflate codec).

        Raises :class:`Refused` with the HTTP status and reason of the first check that fails.
        """
        headers = request.headers
        if request.method != "GET":
            raise Refused(
                405, f"WebSocket handshake needs GET, not {request.method}", [("Allow", "GET")]
            )
        if request.version in ("0.9", "1.0"):
            raise Refused(400, f"WebSocket handshake needs HTTP/1.1, not HTTP/{request.version}")
        hosts = headers.get_all("Host")
        if len(hosts) != 1 or not hosts[0].strip():
            raise Refused(400, "missing or repeated Host header")
        if headers.get("Content-Length", "0") != "0" or "Transfer-Encoding" in headers:
            raise Refused(400, "a WebSocket handshake request has no body")
        upgrade_headers = [("Upgrade", "websocket"), ("Connection", "Upgrade")]
        try:
            upgrade = parse_upgrade_list(headers.get("Upgrade", "") or "")
            connection = [t.lower() for t in parse_token_list(headers.get("Connection", "") or "")]
        except ValueError as exc:
            raise Refused(400, f"invalid Upgrade or Connection header: {exc}") from None
        if "websocket" not in upgrade:
            raise Refused(
                426, "this is a WebSocket endpoint: Upgrade: websocket is required", upgrade_headers
            )
        if "upgrade" not in connection:
            raise Refused(
                426, "Connection: Upgrade is required for a WebSocket handshake", upgrade_headers
            )
        versions = headers.get_all("Sec-WebSocket-Version")
        if versions != ["13"]:
            got = ", ".join(versions) or "none"
            raise Refused(
                426,
                f"unsupported Sec-WebSocket-Version ({got}); this server speaks 13",
                [("Sec-WebSocket-Version", "13"), *upgrade_headers],
            )
        keys = headers.get_all("Sec-WebSocket-Key")
        if len(keys) != 1:
            raise Refused(400, "exactly one Sec-WebSocket-Key header is required")
        key = keys[0].strip()
        try:
            raw = base64.b64decode(key, validate=True)
        except (binascii.Error, ValueError):
            raw = b""
        if len(raw) != 16:
            raise Refused(400, "Sec-WebSocket-Key must be the base64 encoding of 16 bytes")
        origins = headers.get_all("Origin")
        if len(origins) > 1:
            raise Refused(400, "repeated Origin header")
        origin = origins[0] if origins else None
        if not self.origins.allows(origin, hosts[0], scheme=request_scheme(self.secure, headers)):
            raise Refused(403, f"origin {origin or '(none)'} is not allowed")

        response_headers = [
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Accept", accept_key(key)),
        ]
        subprotocol = self._negotiate_subprotocol(headers)
        if subprotocol is not None:
            response_headers.append(("Sec-WebSocket-Protocol", subprotocol))
        codec = None
        if self.deflate is not None:
            try:
                offers = parse_extension_list(headers.get("Sec-WebSocket-Extensions", "") or "")
            except ValueError as exc:
                raise Refused(400, f"invalid Sec-WebSocket-Extensions header: {exc}") from None
            accepted = self.deflate.server_accept(offers)
            if accepted is not None:
                value, codec = accepted
                response_headers.append(("Sec-WebSocket-Extensions", value))
        response_headers.extend(extra_headers)
        return http_response(101, b"", response_headers, close=False), subprotocol, codec

    def _negotiate_subprotocol(self, headers: Headers) -> str | None:
        try:
            offered = parse_token_list(headers.get("Sec-WebSocket-Protocol", "") or "")
        except ValueError as exc:
            raise Refused(400, f"invalid Sec-WebSocket-Protocol header: {exc}") from None
        if self.select_subprotocol is not None:
            chosen = self.select_subprotocol(offered)
            if chosen is not None and chosen not in offered:
                raise ValueError(f"select_subprotocol chose {chosen!r}, which was not offered")
        else:
            chosen = next((p for p in self.subprotocols if p in offered), None)
        if chosen is None and self.require_subprotocol:
            wanted = ", ".join(self.subprotocols) or "(server-defined)"
            raise Refused(400, f"no supported subprotocol offered; this server speaks: {wanted}")
        return chosen


@dataclass(frozen=True)
class WsURI:
    """A parsed ws:// or wss:// URI."""

    secure: bool
    host: str
    port: int
    resource: str
    user_info: tuple[str, str] | None = None

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.secure else 80
        return host if self.port == default else f"{host}:{self.port}"


def parse_uri(uri: str) -> WsURI:
    """Parse a WebSocket URI; raises ValueError (with the reason) if it is not one."""
    parts = urllib.parse.urlsplit(uri)
    if parts.scheme not in ("ws", "wss"):
        raise ValueError(f"{uri!r} is not a ws:// or wss:// URI")
    if parts.fragment:
        raise ValueError(f"{uri!r}: a WebSocket URI has no fragment")
    if not parts.hostname:
        raise ValueError(f"{uri!r} has no host")
    secure = parts.scheme == "wss"
    port = parts.port or (443 if secure else 80)
    resource = parts.path or "/"
    if parts.query:
        resource += "?" + parts.query
    user_info = None
    if parts.username is not None:
        user_info = (
            urllib.parse.unquote(parts.username),
            urllib.parse.unquote(parts.password or ""),
        )
    return WsURI(secure, parts.hostname, port, resource, user_info)


@dataclass
class ClientHandshake:
    """Builds the upgrade request and checks the server's response."""

    uri: WsURI
    origin: str | None = None
    subprotocols: Sequence[str] = ()
    deflate: DeflateOptions | None = None
    extra_headers: Sequence[tuple[str, str]] = ()
    user_agent: str | None = USER_AGENT
    key: str = field(default_factory=lambda: base64.b64encode(os.urandom(16)).decode("ascii"))
    max_header_bytes: int = 65536
    trailing: bytes = b""

    def __post_init__(self) -> None:
        self._p = _Parser(HeadLimits(1 << 20, 1000, self.max_header_bytes))
        self._parser = httptools.HttpResponseParser(self._p)
        self._received = 0
        self._request: Request | None = None

    @property
    def request(self) -> Request:
        """The upgrade request this handshake sends (built once)."""
        request = self._request
        if request is None:
            request = self._request = self._build_request()
        return request

    def _build_request(self) -> Request:
        headers = [
            ("Host", self.uri.host_header),
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Key", self.key),
            ("Sec-WebSocket-Version", "13"),
        ]
        if self.origin is not None:
            headers.append(("Origin", self.origin))
        if self.subprotocols:
            headers.append(("Sec-WebSocket-Protocol", ", ".join(self.subprotocols)))
        if self.deflate is not None:
            headers.append(("Sec-WebSocket-Extensions", self.deflate.client_offer()))
        if self.uri.user_info is not None:
            token = base64.b64encode(":".join(self.uri.user_info).encode()).decode()
            headers.append(("Authorization", f"Basic {token}"))
        names = {k.lower() for k, _ in self.extra_headers}
        if self.user_agent and "user-agent" not in names:
            headers.append(("User-Agent", self.user_agent))
        for name, value in self.extra_headers:
            _check_header(name, value)
            headers.append((name, value))
        return Request("GET", self.uri.resource, "1.1", Headers(headers), secure=self.uri.secure)

    def request_bytes(self) -> bytes:
        """The upgrade request, serialised."""
        request = self.request
        lines = [f"{request.method} {request.target} HTTP/{request.version}"]
        lines += [f"{name}: {value}" for name, value in request.headers]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def receive_data(self, data: bytes) -> Response | None:
        """Feed response bytes; returns the checked Response, or raises InvalidHandshake."""
        self._received += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self.trailing = data[exc.args[0] :]
        except httptools.HttpParserError as exc:
            if self._p.headers_complete and self._parser.get_status_code() != 101:
                return self._refusal()
            raise InvalidHandshake(f"malformed HTTP response: {exc}") from None
        p = self._p
        if not p.headers_complete:
            if self._received > self.max_header_bytes:
                raise InvalidHandshake("HTTP response head too large")
            return None
        status = self._parser.get_status_code()
        if status != 101:
            if p.message_complete:
                return self._refusal()
            return None  # read the body: it usually says why
        return self._check(Headers(p.headers))

    def receive_eof(self) -> None:
        """The server closed the connection before a complete answer."""
        if self._p.headers_complete and self._parser.get_status_code() != 101:
            self._refusal()
        raise InvalidHandshake("connection closed during the opening handshake")

    def _refusal(self) -> Response:
        raise InvalidStatus(self._parser.get_status_code(), self._p.headers, bytes(self._p.body))

    def _check(self, headers: Headers) -> Response:
        try:
            upgrade = parse_upgrade_list(headers.get("Upgrade", "") or "")
            connection = [t.lower() for t in parse_token_list(headers.get("Connection", "") or "")]
        except ValueError as exc:
            raise InvalidHandshake(f"invalid Upgrade or Connection header: {exc}") from None
        if upgrade != ["websocket"]:
            raise InvalidHandshake("response lacks Upgrade: websocket")
        if "upgrade" not in connection:
            raise InvalidHandshake("response lacks Connection: Upgrade")
        accepts = headers.get_all("Sec-WebSocket-Accept")
        if accepts != [accept_key(self.key)]:
            raise InvalidHandshake("wrong or missing Sec-WebSocket-Accept")
        protocols = headers.get_all("Sec-WebSocket-Protocol")
        subprotocol = None
        if protocols:
            if len(protocols) > 1 or protocols[0] not in self.subprotocols:
                raise NegotiationError(
                    f"server chose subprotocol {protocols!r}, which was not offered"
                )
            subprotocol = protocols[0]
        extensions = headers.get("Sec-WebSocket-Extensions")
        codec = None
        if extensions:
            try:
                chosen = parse_extension_list(extensions)
            except ValueError as exc:
                raise NegotiationError(f"invalid Sec-WebSocket-Extensions: {exc}") from None
            for name, params in chosen:
                if name != EXTENSION_NAME or self.deflate is None or codec is not None:
                    raise NegotiationError(
                        f"server chose extension {name!r}, which was not offered"
                    )
                codec = self.deflate.client_accept(params)
        return Response(101, headers, subprotocol, extensions, codec)
