"""The opening handshake (RFC 6455 section 4), Sans-I/O, on the httptools (llhttp) parser.

Server side: :class:`ServerHandshake` parses the request with limits on the request line,
the header count and the header bytes, then :meth:`ServerHandshake.accept` checks it and
returns the 101 response, or raises :class:`Refused` whose status and plain-text reason
:func:`http_response` turns into the answer. Client side: :class:`ClientHandshake` builds the
request and checks the response: status 101, the Accept key, and that the server chose only
what was offered. Time limits belong to the I/O layer.

The HTTP pieces (:class:`HeadLimits`, :class:`Headers`, :class:`Request`, :func:`http_response`)
live in :mod:`.http` and the Origin check in :mod:`.origins`; both are re-exported here.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import urllib.parse
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import httptools

from .deflate import EXTENSION_NAME, DeflateOptions, PerMessageDeflate
from .errors import InvalidHandshake, InvalidStatus, NegotiationError, Refused
from .headers import parse_extension_list, parse_token_list, parse_upgrade_list
from .http import (
    Headers,
    HeadLimits,
    HeadParser,
    Request,
    check_header,
    http_response,
    resolve_head_limits,
    target_error,
)
from .origins import OriginPolicy, request_scheme

__all__ = [
    "ClientHandshake",
    "HeadLimits",
    "Headers",
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


def accept_key(key: str) -> str:
    """The Sec-WebSocket-Accept value for a Sec-WebSocket-Key."""
    return base64.b64encode(hashlib.sha1((key + GUID).encode("ascii")).digest()).decode("ascii")


@dataclass
class Response:
    """The server's 101 answer as checked by :class:`ClientHandshake`."""

    status: int
    headers: Headers
    subprotocol: str | None = None
    extensions: str | None = None
    deflate: PerMessageDeflate | None = None


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
        self._p = HeadParser(limits)
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
        self._p = HeadParser(HeadLimits(1 << 20, 1000, self.max_header_bytes))
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
            check_header(name, value)
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
