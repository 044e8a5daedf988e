"""The ASGI carrier of hub sessions: a WebSocket transport over ASGI ``websocket`` events,
and the pieces an ASGI front door needs to carry the HTTP transports (SSE, long-polling).

:class:`AsgiWebSocketTransport` and :func:`serve_asgi_websocket` run a hub session over the
ASGI server's WebSocket (the server owns the protocol, this module sees ``websocket.*``
events). Pushes never block the publisher: they are queued per connection (bounded in bytes)
and written by one task per connection; a client that does not read is disconnected as a
slow consumer (1013), like on the native WebSocket endpoint. The application that routes
requests to these is :class:`pulsewire.server.asgi.HubASGI`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

from ..aio.budget import Account, Budgets
from ..hub.errors import Disconnect
from ..hub.hub import Hub
from ..hub.session import ConnectRequest, Session
from ..hub.types import PreparedMessage
from ..hub.wire import SUBPROTOCOLS, codec_for
from ..protocol.close import CloseCode
from ..protocol.handshake import Headers, OriginPolicy, request_scheme
from .http_session import OVER_BUDGET
from .http_types import HttpResponse, StreamResponse

__all__ = [
    "WEBSOCKET_PATH",
    "AsgiWebSocketTransport",
    "Message",
    "Receive",
    "Scope",
    "Send",
    "disconnected",
    "full_path",
    "relative_path",
    "respond",
    "scope_headers",
    "serve_asgi_websocket",
    "stream_response",
]

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

    def send(self, message: str | bytes, prepared: PreparedMessage | None = None) -> None:
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


async def serve_asgi_websocket(
    hub: Hub,
    scope: Scope,
    receive: Receive,
    send: Send,
    *,
    origins: OriginPolicy,
    budgets: Budgets,
    max_buffered: int,
    max_message_size: int,
    close_timeout: float,
    start: Callable[[], Awaitable[None]],
) -> None:
    """Run one hub session over an ASGI ``websocket`` scope, from ``websocket.connect`` to
    the disconnect; ``start`` starts the hub (called once the handshake is allowed).

    Scopes for another path than ``/connection/websocket`` (below the mount point) or from
    a refused Origin are closed before being accepted (the ASGI server answers 403)."""
    if (await receive())["type"] != "websocket.connect":
        return
    headers = scope_headers(scope)
    origin = headers.get("Origin")
    if relative_path(scope) != WEBSOCKET_PATH or not origins.allows(
        origin,
        headers.get("Host"),
        scheme=request_scheme(scope.get("scheme") == "wss", headers),
    ):
        # Before accepting, a close is a refusal: uvicorn answers 403.
        await send({"type": "websocket.close", "code": int(CloseCode.POLICY_VIOLATION)})
        return
    await start()
    offered = list(scope.get("subprotocols") or ())
    subprotocol = next((p for p in SUBPROTOCOLS if p in offered), None)
    codec = codec_for(subprotocol)
    await send({"type": "websocket.accept", "subprotocol": subprotocol})
    client = scope.get("client")
    address = str(client[0]) if client else ""
    query = scope.get("query_string", b"")
    request = ConnectRequest(
        transport="websocket",
        path=full_path(scope) + ("?" + query.decode("latin-1") if query else ""),
        headers=headers.items(),
        remote_address=address,
    )
    transport = AsgiWebSocketTransport(
        send,
        codec.binary,
        max_buffered,
        close_timeout,
        budgets.open(address, _ignore, _ignore),
    )
    try:
        session = hub.open_session(transport, codec, request)
    except Disconnect as exc:
        await transport.stop()
        await send({"type": "websocket.close", "code": exc.code, "reason": exc.reason})
        return
    transport.session = session
    writer = transport.start()
    reader = asyncio.ensure_future(_read(receive, session, max_message_size))
    code, reason = int(CloseCode.ABNORMAL_CLOSURE), ""
    try:
        await asyncio.wait({reader, writer}, return_when=asyncio.FIRST_COMPLETED)
        if not reader.done() and not writer.cancelled():
            # We closed (or could not write): the server reports the disconnect soon.
            await asyncio.wait({reader}, timeout=close_timeout)
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


async def _read(receive: Receive, session: Session, max_message_size: int) -> tuple[int, str]:
    """Feed the client's messages to the session until ``websocket.disconnect``."""
    while True:
        message = await receive()
        kind = message["type"]
        if kind == "websocket.receive":
            data = message.get("text")
            if data is None:
                data = message.get("bytes") or b""
            if len(data) > max_message_size:
                session.disconnect(MESSAGE_TOO_BIG, f"message larger than {max_message_size} bytes")
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


def scope_headers(scope: Scope) -> Headers:
    """The request headers of an ASGI scope."""
    return Headers(
        (name.decode("latin-1"), value.decode("latin-1")) for name, value in scope["headers"]
    )


def relative_path(scope: Scope) -> str:
    """The path below the mount point, whether the server put ``root_path`` in ``path``
    (the ASGI convention of uvicorn >= 0.26 and Starlette's ``Mount``) or not (older ones)."""
    path = str(scope.get("path") or "/")
    root = str(scope.get("root_path") or "").rstrip("/")
    if root and (path == root or path.startswith(root + "/")):
        path = path[len(root) :]
    return path or "/"


def full_path(scope: Scope) -> str:
    """The path including the mount point."""
    return str(scope.get("root_path") or "").rstrip("/") + relative_path(scope)


async def disconnected(receive: Receive) -> None:
    """Return when the client has gone (``http.disconnect``)."""
    while (await receive())["type"] != "http.disconnect":
        pass


def _raw_headers(headers: Iterable[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    return [(n.lower().encode("latin-1"), v.encode("latin-1")) for n, v in headers]


async def respond(send: Send, method: str, response: HttpResponse) -> None:
    """Send ``response`` (no body for HEAD), with Content-Length and a default Content-Type."""
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


async def stream_response(send: Send, response: StreamResponse, gone: asyncio.Future[None]) -> None:
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
