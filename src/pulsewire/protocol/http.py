"""HTTP/1.1 pieces of the opening handshake, shared with the hub's front door: request head
limits, header fields, the parsed :class:`Request`, plain responses and request targets.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from http import HTTPStatus

from .errors import Refused

__all__ = [
    "HeadLimits",
    "HeadParser",
    "Headers",
    "Request",
    "check_header",
    "http_response",
    "resolve_head_limits",
    "target_error",
]

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
        check_header(name, value)
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


def check_header(name: str, value: str) -> None:
    """Raise ValueError unless ``name: value`` is a valid header field (no CR, LF or NUL)."""
    if not re.fullmatch(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+", name) or not _HEADER_VALUE_RE.fullmatch(
        value
    ):
        raise ValueError(f"invalid header field {name!r}: {value!r}")


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


class HeadParser:
    """httptools callbacks: collects a request or response head (and up to 64 KiB of body),
    refusing a request (414, 431) as soon as it is over its :class:`HeadLimits`."""

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
