"""The hub inside an ASGI application (Starlette, FastAPI, ... on uvicorn or any ASGI 3 server).

::

    rt = HubASGI(Hub(HubConfig(token_hmac_secret=SECRET, api_key=API_KEY)))
    app = Starlette(routes=[Mount("/realtime", app=rt)], lifespan=rt.lifespan)

Relative to its mount point, :class:`HubASGI` serves what ``pulsewire serve`` serves (the demo
pages aside): ``connection/websocket``, ``connection/sse``, ``connection/longpoll/*``,
``api/*``, ``health``, ``metrics``, and the browser client ``pulsewire.js`` with its
``pulsewire.d.ts`` (ETags, CORS for the allowed origins: :mod:`pulsewire.server.files`).
The HTTP routes run the very handlers of :class:`~pulsewire.server.app.HubServer`; the
WebSocket endpoint runs a hub session over the ASGI server's WebSocket through
:mod:`pulsewire.transports.asgi` (the ASGI transport: a client that does not read is
disconnected as a slow consumer, 1013). The queues of every session (WebSocket, SSE,
long-poll) are charged to memory accounts by client address (``budget_limits``): the
session that takes an address past its hard limit ends with 1013.
Connections themselves (their number, sizes and deadlines) are the ASGI server's business.

The hub must be started: use ``lifespan=rt.lifespan`` (or ``await rt.start()`` / ``await
rt.close()`` yourself); otherwise it is started by the first request. Mounted apps get no
lifespan events of their own, but a bare ``HubASGI`` run by the server as the top-level app
handles the ``lifespan`` scope itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterable
from typing import Any

from ..aio.budget import BudgetLimits, Budgets
from ..hub.hub import Hub
from ..protocol.handshake import OriginPolicy
from ..transports.asgi import (
    WEBSOCKET_PATH,
    Receive,
    Scope,
    Send,
    disconnected,
    relative_path,
    respond,
    scope_headers,
    serve_asgi_websocket,
    stream_response,
)
from ..transports.http_types import HttpRequest, HttpResponse, StreamResponse
from .app import WEB_ROOT, add_hub_routes
from .files import CLIENT_FILES, StaticFiles
from .http import HttpServer

__all__ = ["HubASGI"]


class HubASGI:
    """An ASGI 3 application serving a :class:`Hub` (see the module docstring).

    ``allowed_origins``/``check_origin``: the Origin policy of the WebSocket and HTTP
    transports (same host always allowed; ``check_origin=False`` allows every origin).
    ``api_key``: the key of ``/api/*`` (default: ``hub.config.api_key``; none: API disabled).
    ``max_buffered``: bytes queued for one client before it is disconnected whatever its
    channels' policy (default: twice ``client_queue_max_bytes``). ``max_message_size``: the
    largest client message or command body; ``max_body``: the largest request body (413).
    ``close_timeout``: seconds to flush a closing WebSocket before giving up on it.
    ``budget_limits``: what the session queues of one client address may hold together.
    ``client_files``: serve ``pulsewire.js`` and ``pulsewire.d.ts`` (False: 404).
    """

    def __init__(
        self,
        hub: Hub,
        *,
        allowed_origins: Iterable[str] = (),
        check_origin: bool = True,
        api_key: str | None = None,
        max_buffered: int | None = None,
        max_message_size: int = 65536,
        max_body: int = 1 << 20,
        close_timeout: float = 5.0,
        budget_limits: BudgetLimits | None = None,
        client_files: bool = True,
    ) -> None:
        self.hub = hub
        self.budgets = Budgets(budget_limits)
        """The memory accounts of the sessions' queues, by client address."""
        if max_buffered is None:
            max_buffered = 2 * hub.config.client_queue_max_bytes
        self.max_buffered = max_buffered
        self.max_message_size = max_message_size
        self.max_body = max_body
        self.close_timeout = close_timeout
        self.origins = (
            OriginPolicy(list(allowed_origins), same_host=True)
            if check_origin
            else OriginPolicy(None)
        )
        self.started_at = time.time()
        self._start_lock: asyncio.Lock | None = None
        self._owns_hub = False
        # The route table of HubServer, minus the WebSocket upgrade and the demo pages.
        self.http = HttpServer(max_body=max_body)
        self.api, self.sse, self.longpoll = add_hub_routes(
            self.http,
            hub,
            api_key=api_key if api_key is not None else hub.config.api_key,
            origins=self.origins,
            max_buffered=max_buffered,
            max_message_size=max_message_size,
            started_at=self.started_at,
            budgets=self.budgets,
        )
        if client_files:
            files = StaticFiles(WEB_ROOT, self.origins, only=CLIENT_FILES)
            for name in CLIENT_FILES:
                self.http.add(f"/{name}", files)

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the hub unless it runs already (safe to call concurrently)."""
        if self.hub.started or self.hub.closing:
            return
        if self._start_lock is None:
            self._start_lock = asyncio.Lock()
        async with self._start_lock:
            if not self.hub.started and not self.hub.closing:
                await self.hub.start()
                self._owns_hub = True
                self.started_at = time.time()

    async def close(self) -> None:
        """Stop the hub if this app started it (clients are told to reconnect elsewhere)."""
        if self._owns_hub and not self.hub.closing:
            await self.hub.close()

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Any = None) -> AsyncIterator[None]:
        """``Starlette(..., lifespan=rt.lifespan)``: the hub runs while the app does."""
        await self.start()
        try:
            yield
        finally:
            await self.close()

    # -- ASGI ------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "websocket":
            await self._websocket(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.start()
                except Exception as exc:
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    # -- HTTP ------------------------------------------------------------------------------

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = scope_headers(scope)
        method = str(scope["method"])
        length = headers.get("Content-Length")
        too_big = HttpResponse(413, f"request body larger than {self.max_body} bytes\n")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            await respond(send, method, too_big)
            return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if len(body) > self.max_body:
                await respond(send, method, too_big)
                return
            if not message.get("more_body", False):
                break
        client = scope.get("client")
        query = scope.get("query_string", b"")
        path = relative_path(scope)
        request = HttpRequest(
            method=method,
            target=path + ("?" + query.decode("latin-1") if query else ""),
            headers=headers,
            body=bytes(body),
            remote_address=str(client[0]) if client else "",
            version=str(scope.get("http_version", "1.1")),
            secure=scope.get("scheme") == "https",
        )
        await self.start()
        # Handlers may wait (long polls) or stream (SSE): stop them when the client leaves.
        gone = asyncio.ensure_future(disconnected(receive))
        handler = asyncio.ensure_future(self._dispatch(request))
        try:
            await asyncio.wait({handler, gone}, return_when=asyncio.FIRST_COMPLETED)
            if handler.done():
                response = handler.result()
                if isinstance(response, StreamResponse):
                    await stream_response(send, response, gone)
                elif not gone.done():
                    await respond(send, method, response)
        finally:
            gone.cancel()
            if not handler.done():
                handler.cancel()
                await asyncio.wait({handler})

    async def _dispatch(self, request: HttpRequest) -> HttpResponse | StreamResponse:
        """Route like ``pulsewire serve`` does; the WebSocket path answers 426 to plain HTTP."""
        if request.path == WEBSOCKET_PATH:
            return HttpResponse(
                426,
                "this is a WebSocket endpoint: Upgrade: websocket is required\n",
                [("Upgrade", "websocket")],
            )
        return await self.http.dispatch(request)

    # -- WebSocket -------------------------------------------------------------------------

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        await serve_asgi_websocket(
            self.hub,
            scope,
            receive,
            send,
            origins=self.origins,
            budgets=self.budgets,
            max_buffered=self.max_buffered,
            max_message_size=self.max_message_size,
            close_timeout=self.close_timeout,
            start=self.start,
        )
