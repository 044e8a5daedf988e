"""HTTP request and response values shared by the HTTP transports (SSE, long-polling) and
the front doors that carry them (``pulsewire serve``'s HTTP server, the ASGI adapter).

They live here, below ``server/``, so that transports never import the layer above them:
a front door turns its wire format into an :class:`HttpRequest`, calls a handler, and
writes back the :class:`HttpResponse` or :class:`StreamResponse` it returns.
"""

from __future__ import annotations

import asyncio
import json
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..hub.wire import MAX_DEPTH, too_deep
from ..protocol.handshake import Headers

__all__ = [
    "Handler",
    "HttpRequest",
    "HttpResponse",
    "RouteTable",
    "StreamResponse",
    "json_response",
]


@dataclass
class HttpRequest:
    method: str
    target: str
    headers: Headers
    body: bytes
    remote_address: str
    version: str = "1.1"
    keep_alive: bool = True
    secure: bool = False
    """Whether it arrived over TLS (the same-host Origin check then expects https pages)."""

    @property
    def path(self) -> str:
        return urllib.parse.urlsplit(self.target).path or "/"

    @property
    def query(self) -> dict[str, str]:
        return dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(self.target).query))

    def json(self) -> Any:
        """The body as JSON; raises ValueError with a readable reason for any bad input:
        invalid JSON or UTF-8, integers past Python's digit limit, nesting deeper than
        :data:`~pulsewire.hub.wire.MAX_DEPTH` (which could not be re-encoded safely)."""
        if not self.body:
            raise ValueError("empty body: expected a JSON object")
        try:
            value = json.loads(self.body)
        except RecursionError:  # not a ValueError: without this, deep nesting was a 500
            raise ValueError("nested too deeply") from None
        if (self.body.count(b"[") + self.body.count(b"{") > MAX_DEPTH) and too_deep(value):
            raise ValueError(f"nested more than {MAX_DEPTH} levels deep")
        return value


@dataclass
class HttpResponse:
    status: int = 200
    body: bytes | str = b""
    headers: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class StreamResponse:
    """A response whose body is produced over time (e.g. text/event-stream).

    ``stream`` yields chunks; the connection closes when it ends, and the front door closes
    the stream (``aclose``) when the client goes away first.
    """

    stream: AsyncIterator[bytes]
    status: int = 200
    headers: list[tuple[str, str]] = field(default_factory=list)
    ended: asyncio.Event | None = None
    """Set by the producer when the stream is over, so that a connection stalled on a client
    that does not read is aborted instead of waiting for it forever."""


def json_response(
    data: Any, status: int = 200, headers: list[tuple[str, str]] | None = None
) -> HttpResponse:
    body = json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return HttpResponse(status, body, [("Content-Type", "application/json"), *(headers or [])])


Handler = Callable[[HttpRequest], Awaitable[HttpResponse | StreamResponse]]


class RouteTable(Protocol):
    """Where transports register their endpoints (``HttpServer`` implements it)."""

    def add(
        self,
        path: str,
        handler: Handler,
        methods: tuple[str, ...] = ("GET", "HEAD"),
        *,
        prefix: bool = False,
    ) -> None: ...
