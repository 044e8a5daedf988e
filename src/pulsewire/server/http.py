"""A small HTTP/1.1 server on httptools: the front door of ``pulsewire serve``.

It serves plain requests (API, health, metrics, static pages) with keep-alive, streams
responses (Server-Sent Events), and hands WebSocket upgrade requests over to a
:class:`pulsewire.aio.Server` on the same port: the request head is replayed into a
``ServerConnection``, which runs the real handshake checks (Origin, version, key, ...).

Limits: request line, header count and head size (414/431), body size (413), a deadline for
the request head (408, slow-loris protection) and an idle keep-alive timeout.
"""

from __future__ import annotations

import asyncio
import logging
import urllib.parse
from dataclasses import dataclass

import httptools

from ..aio.server import Server as WebSocketServer
from ..protocol.handshake import Headers, http_response, target_error
from ..transports.http_types import (
    Handler,
    HttpRequest,
    HttpResponse,
    StreamResponse,
    json_response,
)
from .limits import ConnectionLimiter

__all__ = [
    "Handler",
    "HttpRequest",
    "HttpResponse",
    "HttpServer",
    "Route",
    "StreamResponse",
    "json_response",
]

logger = logging.getLogger("pulsewire.server")

CLOSE_DEADLINE = 5.0
"""Seconds a closing connection may take to flush its buffer before it is aborted."""


@dataclass
class Route:
    handler: Handler | None = None
    websocket: WebSocketServer | None = None
    methods: tuple[str, ...] = ("GET",)
    prefix: bool = False


class _Limits:
    max_target = 8192
    max_headers = 100
    max_head = 16384
    max_body = 1 << 20
    head_timeout = 10.0
    idle_timeout = 75.0


class HttpServer:
    """Routes by exact path or prefix; WebSocket routes hand the connection over."""

    def __init__(
        self,
        *,
        max_body: int = 1 << 20,
        head_timeout: float = 10.0,
        idle_timeout: float = 75.0,
        limiter: ConnectionLimiter | None = None,
    ) -> None:
        self.limiter = limiter
        self.refusals: dict[int, int] = {}
        """Requests and connections refused at the front door, by HTTP status."""
        self.routes: dict[str, Route] = {}
        self.prefixes: list[tuple[str, Route]] = []
        self.limits = _Limits()
        self.limits.max_body = max_body
        self.limits.head_timeout = head_timeout
        self.limits.idle_timeout = idle_timeout
        self.connections: set[HttpProtocol] = set()
        self.closing = False

    def add(
        self,
        path: str,
        handler: Handler,
        methods: tuple[str, ...] = ("GET", "HEAD"),
        *,
        prefix: bool = False,
    ) -> None:
        route = Route(handler=handler, methods=methods, prefix=prefix)
        if prefix:
            self.prefixes.append((path, route))
            self.prefixes.sort(key=lambda item: -len(item[0]))
        else:
            self.routes[path] = route

    def add_websocket(self, path: str, server: WebSocketServer) -> None:
        self.routes[path] = Route(websocket=server)

    def route(self, path: str) -> Route | None:
        route = self.routes.get(path)
        if route is not None:
            return route
        for prefix, candidate in self.prefixes:
            if path.startswith(prefix):
                return candidate
        return None

    async def dispatch(self, request: HttpRequest) -> HttpResponse | StreamResponse:
        """Route ``request``: 404, 426 (WebSocket path), 405, or the handler (500 if it fails)."""
        route = self.route(request.path)
        try:
            if route is None or route.handler is None:
                if route is not None and route.websocket is not None:
                    return HttpResponse(
                        426,
                        "this is a WebSocket endpoint: Upgrade: websocket is required\n",
                        [("Upgrade", "websocket")],
                    )
                return HttpResponse(404, f"not found: {request.path}\n")
            if request.method not in route.methods:
                # HEAD runs the GET handler and drops the body, so only routes that list it
                # (plain pages) take it: on a stream or a long poll it would have effects.
                allowed = ", ".join(route.methods)
                return HttpResponse(
                    405,
                    f"method {request.method} not allowed; use {allowed}\n",
                    [("Allow", allowed)],
                )
            response = await route.handler(request)
        except Exception:
            logger.exception("HTTP handler failed for %s %s", request.method, request.path)
            response = HttpResponse(500, "internal server error\n")
        if response.status >= 400:  # handlers refuse too (Origin 403, unknown session 404...)
            self.refusals[response.status] = self.refusals.get(response.status, 0) + 1
        return response

    def protocol_factory(self) -> HttpProtocol:
        return HttpProtocol(self)

    def close_idle(self) -> None:
        """Stop keep-alive: close connections that are between requests."""
        self.closing = True
        for conn in list(self.connections):
            conn.close_if_idle()


class HttpProtocol(asyncio.Protocol):
    """One HTTP/1.1 connection: requests are handled one at a time, in order."""

    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self.limits = server.limits
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.remote = ""
        self._reset()
        self.queue: asyncio.Queue[HttpRequest | None] | None = None
        self.worker: asyncio.Task[None] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.busy = False
        self.streaming: asyncio.Task[None] | None = None
        self.admitted = False
        self.pending_head = 0
        self.writable = asyncio.Event()
        self.writable.set()

    def _reset(self) -> None:
        self.url = bytearray()
        self.headers: list[tuple[str, str]] = []
        self.body = bytearray()
        self.head_size = 0
        self.head_done = False

    # -- asyncio callbacks -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.remote = str(peer[0]) if isinstance(peer, tuple) else str(peer or "")
        limiter = self.server.limiter
        if limiter is not None:
            refusal = limiter.admit(self.remote)
            if refusal is not None:
                self._error(*refusal)
                return
            self.admitted = True
        self.server.connections.add(self)
        self._arm(self.limits.head_timeout)

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self.writable.set()  # wake a stream waiting to write: it sees the transport is gone
        self._release()
        self.server.connections.discard(self)
        self.transport = None
        if self.timer is not None:
            self.timer.cancel()
        if self.worker is not None:
            self.worker.cancel()
        if self.streaming is not None:
            self.streaming.cancel()

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self._upgrade(data[exc.args[0] :])
            return
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, _Refusal):
                self._error(cause.status, cause.reason)
            else:
                self._error(400, f"malformed HTTP request: {exc}")
            return
        except httptools.HttpParserError as exc:
            self._error(400, f"malformed HTTP request: {exc}")
            return
        if not self.head_done and self.transport is not None:
            # An unfinished head: count raw bytes (a single huge header line never reaches
            # on_header). Finished heads are measured field by field in the callbacks.
            self.pending_head += len(data)
            if self.pending_head > self.limits.max_head:
                self._error(431, f"request head larger than {self.limits.max_head} bytes")
        else:
            self.pending_head = 0

    # -- httptools callbacks -------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._reset()
        self._arm(self.limits.head_timeout)

    def on_url(self, url: bytes) -> None:
        self.url += url
        self._grow_head(len(url))
        if len(self.url) > self.limits.max_target:
            raise _Refusal(414, f"request target longer than {self.limits.max_target} bytes")

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.decode("latin-1"), value.decode("latin-1")))
        self._grow_head(len(name) + len(value) + 4)
        if len(self.headers) > self.limits.max_headers:
            raise _Refusal(431, f"more than {self.limits.max_headers} header fields")

    def _grow_head(self, n: int) -> None:
        self.head_size += n
        if self.head_size > self.limits.max_head:
            raise _Refusal(431, f"request head larger than {self.limits.max_head} bytes")

    def on_headers_complete(self) -> None:
        problem = target_error(
            self.parser.get_method().decode("ascii", "replace"), self.url.decode("latin-1")
        )
        if problem is not None:  # e.g. "GET *": no resource to route, upgrade or not
            raise _Refusal(400, problem)
        self.head_done = True
        self.pending_head = 0
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def on_body(self, body: bytes) -> None:
        if len(self.body) + len(body) > self.limits.max_body:
            raise _Refusal(413, f"request body larger than {self.limits.max_body} bytes")
        self.body += body

    def on_message_complete(self) -> None:
        if self.parser.should_upgrade():
            return  # handled by HttpParserUpgrade
        request = HttpRequest(
            method=self.parser.get_method().decode("ascii", "replace"),
            target=self.url.decode("latin-1"),
            headers=Headers(self.headers),
            body=bytes(self.body),
            remote_address=self.remote,
            version=self.parser.get_http_version(),
            keep_alive=self.parser.should_keep_alive(),
            secure=self.transport is not None
            and self.transport.get_extra_info("ssl_object") is not None,
        )
        if self.queue is None:
            self.queue = asyncio.Queue()
            self.worker = self.loop.create_task(self._work())
        self.queue.put_nowait(request)

    # -- request handling ----------------------------------------------------------------------

    async def _work(self) -> None:
        assert self.queue is not None
        while True:
            request = await self.queue.get()
            if request is None or self.transport is None:
                return
            self.busy = True
            try:
                keep = await self._respond(request)
            finally:
                self.busy = False
            if not keep:
                self._close()
                return
            if self.queue.empty():
                if self.server.closing:
                    self._close()
                    return
                self._arm(self.limits.idle_timeout)

    async def _respond(self, request: HttpRequest) -> bool:
        keep_alive = request.keep_alive and not self.server.closing
        response = await self.server.dispatch(request)
        if self.transport is None:
            return False
        if isinstance(response, StreamResponse):
            await self._stream(response)
            return False
        body = response.body.encode("utf-8") if isinstance(response.body, str) else response.body
        headers = list(response.headers)
        if not keep_alive:
            headers.append(("Connection", "close"))
        data = http_response(response.status, body, headers, close=False)
        if request.method == "HEAD":
            data = data[: data.index(b"\r\n\r\n") + 4]
        self.transport.write(data)
        return keep_alive

    async def _stream(self, response: StreamResponse) -> None:
        assert self.transport is not None
        head = http_response(
            response.status, b"", [*response.headers, ("Connection", "close")], close=False
        )
        head = head.replace(b"Content-Length: 0\r\n", b"")
        self.transport.write(head)
        self.streaming = asyncio.current_task()
        try:
            async for chunk in response.stream:
                if self.transport is None:
                    break
                self.transport.write(chunk)
                # Backpressure: while the client does not read, pull nothing more from the
                # stream; what it has not taken stays bounded in the stream's own queue.
                if not self.writable.is_set() and not await self._wait_writable(response.ended):
                    if self.transport is not None:
                        self.transport.abort()  # the stream ended, the client never read
                    break
        except asyncio.CancelledError:
            pass
        finally:
            closer = getattr(response.stream, "aclose", None)
            if closer is not None:
                try:
                    await closer()
                except Exception:
                    pass

    async def _wait_writable(self, ended: asyncio.Event | None) -> bool:
        """Wait until the client reads again (True) or the stream has ended (False)."""
        if ended is None:
            await self.writable.wait()
            return True
        writable = asyncio.ensure_future(self.writable.wait())
        over = asyncio.ensure_future(ended.wait())
        try:
            await asyncio.wait({writable, over}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            writable.cancel()
            over.cancel()
        return self.writable.is_set() and self.transport is not None

    def _upgrade(self, trailing: bytes) -> None:
        """Hand the connection to the WebSocket server of this path (or refuse)."""
        path = urllib.parse.urlsplit(self.url.decode("latin-1")).path or "/"
        route = self.server.route(path)
        transport = self.transport
        if transport is None:
            return
        if route is None or route.websocket is None:
            self._error(404, f"no WebSocket endpoint at {path}")
            return
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.server.connections.discard(self)
        # Replay the parsed head: the WebSocket server runs the full handshake checks on it.
        method = self.parser.get_method().decode("ascii", "replace")
        lines = [f"{method} {self.url.decode('latin-1')} HTTP/{self.parser.get_http_version()}"]
        lines += [f"{name}: {value}" for name, value in self.headers]
        raw = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        self.transport = None
        # The WebSocket connection now owns the transport, and the admission slot with it.
        release = self._release if self.admitted else None
        route.websocket.attach(transport, raw + trailing, on_closed=release)

    # -- closing ---------------------------------------------------------------------------------

    def _arm(self, seconds: float) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.timer = self.loop.call_later(seconds, self._timeout)

    def _timeout(self) -> None:
        self.timer = None
        if self.busy or self.streaming is not None:
            return
        if self.url or self.pending_head or self.headers:
            self._error(408, "request not received in time")
        else:
            self._close()

    def _release(self) -> None:
        if self.admitted and self.server.limiter is not None:
            self.admitted = False
            self.server.limiter.release(self.remote)

    def _error(self, status: int, reason: str) -> None:
        self.server.refusals[status] = self.server.refusals.get(status, 0) + 1
        if self.transport is not None:
            self.transport.write(http_response(status, reason + "\n"))
        self._close()

    def _close(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        transport = self.transport
        if transport is not None:
            transport.close()  # flushes what is buffered first...
            if transport.get_write_buffer_size():
                # ...unless the client never reads it: don't keep the socket forever.
                self.loop.call_later(CLOSE_DEADLINE, transport.abort)
            self.transport = None

    def close_if_idle(self) -> None:
        if not self.busy and self.streaming is None:
            self._close()


class _Refusal(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
