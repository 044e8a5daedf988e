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

    @property
    def path(self) -> str:
        return urllib.parse.urlsplit(self.target).path or "/"

    @property
    def query(self) -> dict[str, str]:
        return dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(self.target).query))

    def json(self) -> Any:
        """The body as JSON; raises ValueError with a readable reason."""
        if not self.body:
            raise ValueError("empty body: expected a JSON object")
        return json.loads(self.body)


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
