"""The hub inside an ASGI application (Starlette, FastAPI, ... on uvicorn or any ASGI 3 server).

::

    rt = HubASGI(Hub(HubConfig(token_hmac_secret=SECRET, api_key=API_KEY)))
    app = Starlette(routes=[Mount("/realtime", app=rt)], lifespan=rt.lifespan)

Relative to its mount point, :class:`HubASGI` serves what ``pulsewire serve`` serves (static
pages aside): ``connection/websocket``, ``connection/sse``, ``connection/longpoll/*``,
``api/*``, ``health`` and ``metrics``. The HTTP routes run the very handlers of
:class:`~pulsewire.server.app.HubServer`; the WebSocket endpoint runs a hub session over the
ASGI server's WebSocket (the server owns the protocol, this module sees ``websocket.*``
events). Pushes never block the publisher: they are queued per connection (bounded in bytes)
and written by one task per connection; a client that does not read is disconnected as a
slow consumer (1013), like on the native WebSocket endpoint. The queues of every session
(WebSocket, SSE, long-poll) are charged to memory accounts by client address
(``budget_limits``): the session that takes an address past its hard limit ends with 1013.
Connections themselves (their number, sizes and deadlines) are the ASGI server's business.

The hub must be started: use ``lifespan=rt.lifespan`` (or ``await rt.start()`` / ``await
rt.close()`` yourself); otherwise it is started by the first request. Mounted apps get no
lifespan events of their own, but a bare ``HubASGI`` run by the server as the top-level app
handles the ``lifespan`` scope itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, MutableMapping
from typing import Any

from ..aio.budget import Account, BudgetLimits, Budgets
from ..hub.errors import Disconnect
from ..hub.hub import Hub
from ..hub.session import ConnectRequest, Session
from ..hub.types import Publication
from ..hub.wire import SUBPROTOCOLS, codec_for
from ..protocol.close import CloseCode
from ..protocol.handshake import Headers, OriginPolicy, request_scheme
from ..transports.http_session import OVER_BUDGET
from ..transports.http_types import HttpRequest, HttpResponse, StreamResponse
from .app import add_hub_routes
from .http import HttpServer

__all__ = ["AsgiWebSocketTransport", "HubASGI"]

logger = logging.getLogger("pulsewire.transports")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

WEBSOCKET_PATH = "/connection/websocket"
SLOW_CONSUMER = int(CloseCode.TRY_AGAIN_LATER)
MESSAGE_TOO_BIG = int(CloseCode.MESSAGE_TOO_BIG)


class AsgiWebSocketTransport:
    """A hub :class:`~pulsewire.hub.session.Transport` over an ASGI ``websocket`` connection.

    ``send`` queues; a writer task (:meth:`start`) drains the queue with ``websocket.send``
    events, so ``buffered()`` counts what the client has not taken yet (the ASGI server's
    ``send`` waits while its socket buffer is full). ``close`` sends ``websocket.close`` after
    the queue, which is dropped first for a slow consumer (a reconnecting client recovers
    from history); if the close cannot be sent within ``close_timeout`` seconds the writer is
    cancelled.

    ``kind`` is ``"websocket"``: for the client, metrics and hooks this is the WebSocket
    endpoint, whoever terminates the protocol.
    """

    kind = "websocket"

    def __init__(
        self,
        send: Send,
        binary: bool,
        max_buffered: int,
        close_timeout: float = 5.0,
        account: Account | None = None,
    ) -> None:
        self.binary = binary
        self.max_buffered = max_buffered
        self.account = account
        """Charged with the queue's bytes (under the client's address); closed by stop()."""
        self.close_timeout = close_timeout
        self.session: Session | None = None
        self.close_code: int | None = None
        self.close_reason = ""
        self._send = send
        self._queue: deque[str | bytes] = deque()
        self._queued = 0
        self._wakeup = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._deadline: asyncio.TimerHandle | None = None
        self._gone = False

    # -- the Transport protocol ------------------------------------------------------------

    def send(self, message: str | bytes, publication: Publication | None = None) -> None:
        if self.close_code is not None or self._gone:
            return
        self._queue.append(message)
        self._queued += len(message)
        reason = None
        if self._queued > self.max_buffered:
            # The hard cap (replies, pushes, a "drop" channel gone wild): memory stays bounded
            # whatever the session's policy.
            reason = "slow consumer: too much data queued"
        elif self.account is not None and not self.account.hold(self._queued):
            reason = OVER_BUDGET
            self.account.close()
            self.account = None
        if reason is not None:
            if self.session is not None:
                self.session.disconnect(SLOW_CONSUMER, reason)
            else:
                self.close(SLOW_CONSUMER, reason)
            return
        self._wakeup.set()

    def buffered(self) -> int:
        return self._queued

    def close(self, code: int, reason: str) -> None:
        if self.close_code is not None:
            return
        if code == SLOW_CONSUMER:
            self._queue.clear()
            self._queued = 0
            self._charge()
        self.close_code = code
        self.close_reason = reason.encode("utf-8")[:123].decode("utf-8", "ignore")
        self._wakeup.set()
        if self._writer is not None and not self._writer.done():
            loop = asyncio.get_running_loop()
            self._deadline = loop.call_later(self.close_timeout, self._writer.cancel)

    # -- the writer ------------------------------------------------------------------------

    def start(self) -> asyncio.Task[None]:
        self._writer = asyncio.ensure_future(self._write())
        return self._writer

    async def stop(self) -> None:
        """The connection is gone: stop writing, drop what is queued."""
        self._gone = True
        self._queue.clear()
        self._queued = 0
        if self.account is not None:
            self.account.close()
            self.account = None
        if self._deadline is not None:
            self._deadline.cancel()
        writer = self._writer
        if writer is not None and not writer.done():
            writer.cancel()
            await asyncio.wait({writer})

    def _charge(self) -> None:
        if self.account is not None:
            self.account.hold(self._queued)  # shrinking: never over a limit

    async def _write(self) -> None:
        send, queue = self._send, self._queue
        try:
            while True:
                while queue:
                    message = queue[0]
                    if self.binary:
                        data = message if isinstance(message, bytes) else message.encode("utf-8")
                        await send({"type": "websocket.send", "bytes": data})
                    else:
                        text = message if isinstance(message, str) else message.decode("utf-8")
                        await send({"type": "websocket.send", "text": text})
                    if queue and queue[0] is message:  # not dropped meanwhile by close()
                        queue.popleft()
                        self._queued -= len(message)
                        self._charge()
                if self.close_code is not None:
                    await send(
                        {
                            "type": "websocket.close",
                            "code": self.close_code,
                            "reason": self.close_reason,
                        }
                    )
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
        except (OSError, RuntimeError) as exc:
            # The client is gone (uvicorn raises ClientDisconnected, an OSError; others a
            # RuntimeError on a closed connection): the reader sees websocket.disconnect.
            logger.debug("hub WebSocket writer stopped: %r", exc)
            self._gone = True
        finally:
            if self._deadline is not None:
                self._deadline.cancel()


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
        # The route table of HubServer, minus the WebSocket upgrade and the static pages.
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
        headers = _headers(scope)
        method = str(scope["method"])
        length = headers.get("Content-Length")
        too_big = HttpResponse(413, f"request body larger than {self.max_body} bytes\n")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            await _respond(send, method, too_big)
            return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if len(body) > self.max_body:
                await _respond(send, method, too_big)
                return
            if not message.get("more_body", False):
                break
        client = scope.get("client")
        query = scope.get("query_string", b"")
        path = _relative_path(scope)
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
        gone = asyncio.ensure_future(_disconnected(receive))
        handler = asyncio.ensure_future(self._dispatch(request))
        try:
            await asyncio.wait({handler, gone}, return_when=asyncio.FIRST_COMPLETED)
            if handler.done():
                response = handler.result()
                if isinstance(response, StreamResponse):
                    await _stream(send, response, gone)
                elif not gone.done():
                    await _respond(send, method, response)
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
        if (await receive())["type"] != "websocket.connect":
            return
        headers = _headers(scope)
        origin = headers.get("Origin")
        if _relative_path(scope) != WEBSOCKET_PATH or not self.origins.allows(
            origin,
            headers.get("Host"),
            scheme=request_scheme(scope.get("scheme") == "wss", headers),
        ):
            # Before accepting, a close is a refusal: uvicorn answers 403.
            await send({"type": "websocket.close", "code": int(CloseCode.POLICY_VIOLATION)})
            return
        await self.start()
        offered = list(scope.get("subprotocols") or ())
        subprotocol = next((p for p in SUBPROTOCOLS if p in offered), None)
        codec = codec_for(subprotocol)
        await send({"type": "websocket.accept", "subprotocol": subprotocol})
        client = scope.get("client")
        address = str(client[0]) if client else ""
        query = scope.get("query_string", b"")
        request = ConnectRequest(
            transport="websocket",
            path=_full_path(scope) + ("?" + query.decode("latin-1") if query else ""),
            headers=headers.items(),
            remote_address=address,
        )
        transport = AsgiWebSocketTransport(
            send,
            codec.binary,
            self.max_buffered,
            self.close_timeout,
            self.budgets.open(address, _ignore, _ignore),
        )
        try:
            session = self.hub.open_session(transport, codec, request)
        except Disconnect as exc:
            await transport.stop()
            await send({"type": "websocket.close", "code": exc.code, "reason": exc.reason})
            return
        transport.session = session
        writer = transport.start()
        reader = asyncio.ensure_future(self._read(receive, session))
        code, reason = int(CloseCode.ABNORMAL_CLOSURE), ""
        try:
            await asyncio.wait({reader, writer}, return_when=asyncio.FIRST_COMPLETED)
            if not reader.done() and not writer.cancelled():
                # We closed (or could not write): the server reports the disconnect soon.
                await asyncio.wait({reader}, timeout=self.close_timeout)
            if reader.done() and not reader.cancelled():
                if reader.exception() is None:
                    code, reason = reader.result()
                else:
                    logger.error("hub WebSocket reader failed", exc_info=reader.exception())
        finally:
            reader.cancel()
            await transport.stop()
            session.transport_closed(code, reason)
            transport.session = None  # no cycle left with the session

    async def _read(self, receive: Receive, session: Session) -> tuple[int, str]:
        """Feed the client's messages to the session until ``websocket.disconnect``."""
        while True:
            message = await receive()
            kind = message["type"]
            if kind == "websocket.receive":
                data = message.get("text")
                if data is None:
                    data = message.get("bytes") or b""
                if len(data) > self.max_message_size:
                    session.disconnect(
                        MESSAGE_TOO_BIG, f"message larger than {self.max_message_size} bytes"
                    )
                    continue
                await session.handle(data)
            elif kind == "websocket.disconnect":
                code = message.get("code")
                return (
                    int(code) if code is not None else int(CloseCode.NO_STATUS_RCVD),
                    str(message.get("reason") or ""),
                )


# ------------------------------------------------------------------------------ helpers


def _ignore() -> None:
    """Pause/resume of a session's account: input is read one message at a time already."""


def _headers(scope: Scope) -> Headers:
    return Headers(
        (name.decode("latin-1"), value.decode("latin-1")) for name, value in scope["headers"]
    )


def _relative_path(scope: Scope) -> str:
    """The path below the mount point, whether the server put ``root_path`` in ``path``
    (the ASGI convention of uvicorn >= 0.26 and Starlette's ``Mount``) or not (older ones)."""
    path = str(scope.get("path") or "/")
    root = str(scope.get("root_path") or "").rstrip("/")
    if root and (path == root or path.startswith(root + "/")):
        path = path[len(root) :]
    return path or "/"


def _full_path(scope: Scope) -> str:
    return str(scope.get("root_path") or "").rstrip("/") + _relative_path(scope)


async def _disconnected(receive: Receive) -> None:
    """Return when the client has gone (``http.disconnect``)."""
    while (await receive())["type"] != "http.disconnect":
        pass


def _raw_headers(headers: Iterable[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    return [(n.lower().encode("latin-1"), v.encode("latin-1")) for n, v in headers]


async def _respond(send: Send, method: str, response: HttpResponse) -> None:
    body = response.body.encode("utf-8") if isinstance(response.body, str) else response.body
    headers = list(response.headers)
    if response.status not in (204, 304) and not any(
        name.lower() == "content-length" for name, _ in headers
    ):
        headers.append(("Content-Length", str(len(body))))
    if not any(name.lower() == "content-type" for name, _ in headers) and body:
        headers.append(("Content-Type", "text/plain; charset=utf-8"))
    await send(
        {"type": "http.response.start", "status": response.status, "headers": _raw_headers(headers)}
    )
    await send({"type": "http.response.body", "body": b"" if method == "HEAD" else body})


async def _stream(send: Send, response: StreamResponse, gone: asyncio.Future[None]) -> None:
    """Send a streamed body until it ends or the client leaves; close the stream either way."""
    stream = response.stream

    async def pump() -> None:
        async for chunk in stream:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})

    pumping: asyncio.Future[None] | None = None
    try:
        if gone.done():
            return
        await send(
            {
                "type": "http.response.start",
                "status": response.status,
                "headers": _raw_headers(response.headers),
            }
        )
        pumping = asyncio.ensure_future(pump())
        await asyncio.wait({pumping, gone}, return_when=asyncio.FIRST_COMPLETED)
        if pumping.done() and not gone.done():
            pumping.result()
            await send({"type": "http.response.body", "body": b"", "more_body": False})
    finally:
        if pumping is not None and not pumping.done():
            pumping.cancel()
            await asyncio.wait({pumping})
        closer = getattr(stream, "aclose", None)
        if closer is not None:
            with contextlib.suppress(Exception):
                await closer()
