"""The hub over Server-Sent Events: a fallback for clients that cannot open a WebSocket.

``GET /connection/sse`` opens a ``text/event-stream`` and a hub session that lives exactly
as long as the stream. The first event names the transport session::

    event: session
    data: {"session": "<id>", "heartbeat": 20}

Every reply and push after it is one unnamed event whose data is the JSON message. Commands
go by ``POST /connection/sse/send?session=<id>`` (JSON lines, ``text/plain`` or
``application/json``); their replies arrive on the stream. A comment line (``: ping``) every
``heartbeat`` seconds keeps proxies from closing an idle stream. When the hub ends the session,
the last event is a ``disconnect`` push (``code``, ``reason``, ``reconnect``) and the stream
closes; when the client closes the stream, the session ends.

The session's queue is charged to a memory account under the client's address (``budgets``);
the stream's connection itself holds a connection slot, so an SSE session takes no other.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

from ..aio.budget import Account, Budgets
from ..hub.errors import Disconnect
from ..hub.hub import Hub
from ..protocol.close import CloseCode
from ..protocol.handshake import OriginPolicy
from .http_session import HttpEndpoints, HttpTransport, disconnect_message
from .http_types import HttpRequest, HttpResponse, RouteTable, StreamResponse

__all__ = ["SseEndpoints", "SseTransport"]

_HEADERS = [
    ("Content-Type", "text/event-stream; charset=utf-8"),
    ("X-Accel-Buffering", "no"),
]


class SseTransport(HttpTransport):
    """A session's queue drained by its event stream."""

    kind = "sse"

    def __init__(
        self, max_buffered: int, ended: asyncio.Event, account: Account | None = None
    ) -> None:
        super().__init__(max_buffered, account)
        self.ready = asyncio.Event()
        self.ended = ended

    def buffered(self) -> int:
        # The HTTP layer stops pulling events while the socket's write buffer is full, so
        # what a slow reader has not taken stays here, counted against max_buffered.
        return self._queued

    def _wake(self) -> None:
        self.ready.set()
        if self.closed:
            self.ended.set()

    def events(self) -> bytes:
        """The queued messages as SSE events, in one chunk."""
        self.ready.clear()
        return b"".join(b"data: " + m + b"\n\n" for m in self.take())


class SseEndpoints(HttpEndpoints):
    """``GET /connection/sse`` (the stream) and ``POST /connection/sse/send``."""

    kind = "sse"

    def __init__(
        self,
        hub: Hub,
        origins: OriginPolicy,
        *,
        max_buffered: int = 1 << 20,
        max_message_size: int = 65536,
        heartbeat: float = 20.0,
        budgets: Budgets | None = None,
    ) -> None:
        super().__init__(
            hub,
            origins,
            max_buffered=max_buffered,
            max_message_size=max_message_size,
            budgets=budgets,
        )
        self.heartbeat = heartbeat
        """Seconds between comment lines on an idle stream."""
        self._http: RouteTable | None = None

    def register(self, http: RouteTable, path: str = "/connection/sse") -> None:
        self._http = http
        self.add_route(http, path, self.stream, "GET")
        self.add_route(http, f"{path}/send", self.send, "POST")

    async def stream(self, request: HttpRequest) -> HttpResponse | StreamResponse:
        refused = self.check(request) or self.closing_refusal(request)
        if refused is not None:
            return refused
        # The session opens when the stream starts, so that it cannot outlive an unsent stream.
        ended = asyncio.Event()
        headers = [*_HEADERS, *self.cors(request)]
        return StreamResponse(self._events(request, ended), 200, headers, ended)

    async def _events(self, request: HttpRequest, ended: asyncio.Event) -> AsyncIterator[bytes]:
        transport = SseTransport(self.max_buffered, ended, self.open_account(request))
        try:
            session = self.open(request, transport)
        except Disconnect as exc:
            transport.release()
            yield f"data: {disconnect_message(exc.code, exc.reason)}\n\n".encode()
            return
        hello = json.dumps({"session": transport.id, "heartbeat": self.heartbeat})
        try:
            yield f"event: session\ndata: {hello}\n\n".encode()
            while True:
                if transport.pending:
                    yield transport.events()
                    continue
                if transport.closed:
                    return
                try:
                    await asyncio.wait_for(transport.ready.wait(), self.heartbeat)
                except asyncio.TimeoutError:
                    yield b": ping\n\n"
        finally:
            self.forget(transport)
            session.transport_closed(CloseCode.ABNORMAL_CLOSURE, "event stream closed")
            transport.release()
