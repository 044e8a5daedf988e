"""What the HTTP fallback transports (SSE and long-polling) share.

Each HTTP transport session is known by a random id that the client sends back with every
request (``?session=ID``). The id is the only handle on the session, so it is unguessable
(128 random bits). Client-to-server commands arrive by ``POST .../send?session=ID`` with JSON
lines in the body; they are handled one at a time, in arrival order, like WebSocket frames.

Bounds: every session's queue is charged to a memory account under the client's address
(:class:`~pulsewire.aio.budget.Budgets`, shared with the front door's connections), and a
front door may make each new session take a connection slot of the address (``admit``, see
:data:`Admit`): one address's sessions of every transport count together.

Security: browsers attach cookies to these requests, so every request goes through the
server's Origin policy (the same one as the WebSocket handshake) and POST bodies must be
``application/json`` or ``text/plain`` (HTML forms cannot send the former; the Origin check
stops the latter). Allowed cross-origin pages get CORS headers, without credentials.
"""

from __future__ import annotations

import asyncio
import secrets
from collections import deque
from collections.abc import Callable

from ..aio.budget import Account, Budgets
from ..hub.hub import Hub
from ..hub.messages import disconnect_push
from ..hub.session import ConnectRequest, Session
from ..hub.types import PreparedMessage
from ..hub.wire import JSON
from ..protocol.close import CloseCode
from ..protocol.handshake import OriginPolicy, request_scheme
from .http_types import (
    Handler,
    HttpRequest,
    HttpResponse,
    RouteTable,
    StreamResponse,
    json_response,
)

__all__ = [
    "SLOW_CONSUMER",
    "Admit",
    "HttpEndpoints",
    "HttpTransport",
    "Release",
    "disconnect_message",
]

SLOW_CONSUMER = int(CloseCode.TRY_AGAIN_LATER)
"""Disconnect code for a client that does not take its messages (1013, like WebSocket)."""

_CONTENT_TYPES = ("application/json", "text/plain")

Release = Callable[[], None]
"""Gives an admitted session's slot back (safe to call more than once)."""

Admit = Callable[[str], "tuple[int, str] | Release"]
"""Asks the front door for a slot for a new session from an address: either a refusal
``(HTTP status, reason)`` (e.g. 503 over the per-address cap, 429 over the rate of new
sessions) or the :data:`Release` to call when the session ends."""

OVER_BUDGET = "server memory budget exceeded"


def _ignore() -> None:
    """Pause/resume of a session account: a session's queue is filled by the hub, not read
    from the peer (the front door pauses the connections that carry its requests)."""


def disconnect_message(code: int, reason: str) -> str:
    """The ``disconnect`` push that ends an HTTP transport session."""
    return JSON.encode(disconnect_push(code, reason))


class HttpTransport:
    """A session's outgoing queue, bounded in bytes; subclasses decide how it is drained."""

    kind = "http"

    def __init__(self, max_buffered: int, account: Account | None = None) -> None:
        self.id = secrets.token_urlsafe(16)
        self.max_buffered = max_buffered
        self.account = account
        """Charged with the queue's bytes; closed by :meth:`release`."""
        self.session: Session | None = None
        self.closed = False
        self._queue: deque[bytes] = deque()
        self._queued = 0
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()

    # -- the Transport protocol --------------------------------------------------------------

    def send(self, message: str | bytes, prepared: PreparedMessage | None = None) -> None:
        if self.closed:
            return
        data = message.encode("utf-8") if isinstance(message, str) else message
        self._queue.append(data)
        self._queued += len(data)
        reason = None
        if self.buffered() > self.max_buffered:
            reason = "slow consumer: too much data queued"
        elif self.account is not None and not self.account.hold(self._queued):
            reason = OVER_BUDGET
            self._drop_queue()  # what it had not taken: recovery brings it back
            self.account.close()  # counted once (Budgets.exceeded); the rest is one message
            self.account = None
        if reason is not None:
            if self.session is not None:
                self.session.disconnect(SLOW_CONSUMER, reason)
            else:
                self.close(SLOW_CONSUMER, reason)
            return
        self._wake()

    def buffered(self) -> int:
        return self._queued

    def close(self, code: int, reason: str) -> None:
        """Queue the ``disconnect`` push (dropping what a slow consumer left unread), then end."""
        if self.closed:
            return
        if self.buffered() > self.max_buffered:
            self._drop_queue()
        message = disconnect_message(code, reason).encode("utf-8")
        self._queue.append(message)
        self._queued += len(message)
        self.closed = True
        self._wake()

    def release(self) -> None:
        """The session is over: close its account and let go of it (no reference cycle
        with the session is left behind)."""
        self.session = None
        self._drop_queue()
        if self.account is not None:
            self.account.close()
            self.account = None

    def _drop_queue(self) -> None:
        self._queue.clear()
        self._queued = 0
        if self.account is not None:
            self.account.hold(0)

    # -- for subclasses and endpoints --------------------------------------------------------

    def _wake(self) -> None:
        """New messages (or the end) are waiting: let the reader take them."""

    def take(self) -> list[bytes]:
        """Everything queued (encoded JSON messages), oldest first; the queue is emptied."""
        messages = list(self._queue)
        self._drop_queue()  # the front door's connection holds (and charges) them now
        return messages

    @property
    def pending(self) -> bool:
        return bool(self._queue)

    async def handle(self, body: bytes) -> None:
        """Run the commands of one ``send`` request, after those of earlier requests.

        Handling goes on even if the client drops the request: its commands were received.
        """
        task = asyncio.ensure_future(self._handle(body))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        await asyncio.shield(task)

    async def _handle(self, body: bytes) -> None:
        async with self._lock:
            if self.session is not None:
                await self.session.handle(body)


class HttpEndpoints:
    """Request checks, the session registry and the ``send`` endpoint of one HTTP transport."""

    kind = "http"

    def __init__(
        self,
        hub: Hub,
        origins: OriginPolicy,
        *,
        max_buffered: int = 1 << 20,
        max_message_size: int = 65536,
        budgets: Budgets | None = None,
        admit: Admit | None = None,
    ) -> None:
        self.hub = hub
        self.origins = origins
        self.max_buffered = max_buffered
        self.max_message_size = max_message_size
        self.budgets = budgets
        """Where session queues are charged, under the client's address (None: nowhere)."""
        self.admit = admit
        """Asked for a slot by sessions that have no connection of their own (None: no cap)."""
        self.transports: dict[str, HttpTransport] = {}

    # -- checks ------------------------------------------------------------------------------

    def cors(self, request: HttpRequest) -> list[tuple[str, str]]:
        """CORS headers for an allowed cross-origin page (no credentials)."""
        origin = request.headers.get("Origin")
        if origin is None:
            return [("Cache-Control", "no-store")]
        return [
            ("Cache-Control", "no-store"),
            ("Access-Control-Allow-Origin", origin),
            ("Vary", "Origin"),
        ]

    def refuse(self, request: HttpRequest, status: int, reason: str) -> HttpResponse:
        return json_response({"error": reason}, status, self.cors(request))

    def check(self, request: HttpRequest) -> HttpResponse | None:
        """A refusal for a request from a foreign origin, a POST of the wrong type, a HEAD
        (which would open a stream or take a poll's messages without showing them), or one
        that opens a session from an address with too many failed authentications (429)."""
        if request.method == "HEAD":
            return self.refuse(request, 405, "HEAD is not supported here")
        origin = request.headers.get("Origin")
        scheme = request_scheme(request.secure, request.headers)
        if not self.origins.allows(origin, request.headers.get("Host"), scheme=scheme):
            return json_response(
                {"error": f"origin {origin} is not allowed"}, 403, [("Cache-Control", "no-store")]
            )
        if request.method != "OPTIONS" and "session" not in request.query:
            # Opening a session (SSE stream, long-poll open) from a blocked address: refused
            # like a WebSocket handshake. Requests of an open session (?session=) go on; a
            # connect command in them is refused by the session (4008). Preflights pass, so
            # that a browser sees the 429 itself rather than a CORS failure.
            guard = self.hub.auth_guard
            wait = guard.check(guard.client(request.remote_address, request.headers), "token")
            if wait:
                reason = f"too many failed authentications from your address: retry in {wait} s"
                response = self.refuse(request, 429, reason)
                response.headers.append(("Retry-After", str(wait)))
                return response
        if request.method == "POST" and request.body:
            kind = (request.headers.get("Content-Type") or "").split(";")[0].strip().lower()
            if kind not in _CONTENT_TYPES:
                return self.refuse(
                    request, 415, "commands must be sent as application/json or text/plain"
                )
        return None

    def add_route(self, http: RouteTable, path: str, handler: Handler, method: str) -> None:
        """Register ``handler`` for ``method`` at ``path``; ``OPTIONS`` there gets the CORS
        preflight, so the handlers themselves never see it."""

        async def route(request: HttpRequest) -> HttpResponse | StreamResponse:
            if request.method == "OPTIONS":
                return await self.preflight(request)
            return await handler(request)

        http.add(path, route, methods=(method, "OPTIONS"))

    async def preflight(self, request: HttpRequest) -> HttpResponse:
        """Answer a CORS preflight (``OPTIONS``) from an allowed origin."""
        refused = self.check(request)
        if refused is not None:
            return refused
        return HttpResponse(
            204,
            b"",
            [
                *self.cors(request),
                ("Access-Control-Allow-Methods", "GET, POST"),
                ("Access-Control-Allow-Headers", "Content-Type"),
                ("Access-Control-Max-Age", "600"),
            ],
        )

    # -- sessions ----------------------------------------------------------------------------

    def connect_request(self, request: HttpRequest) -> ConnectRequest:
        return ConnectRequest(
            transport=self.kind,
            path=request.path,
            headers=request.headers.items(),
            remote_address=request.remote_address,
        )

    def open_account(self, request: HttpRequest) -> Account | None:
        """A memory account for a new session's queue, under the client's address."""
        if self.budgets is None:
            return None
        return self.budgets.open(request.remote_address, _ignore, _ignore)

    def open(self, request: HttpRequest, transport: HttpTransport) -> Session:
        """Open a hub session carried by ``transport`` and register it; raises Disconnect."""
        session = self.hub.open_session(transport, JSON, self.connect_request(request))
        transport.session = session
        self.transports[transport.id] = transport
        return session

    def forget(self, transport: HttpTransport) -> None:
        if self.transports.get(transport.id) is transport:
            del self.transports[transport.id]

    def lookup(self, request: HttpRequest) -> HttpTransport | HttpResponse:
        """The transport named by ``?session=``, or a refusal (404 if unknown or expired)."""
        refused = self.check(request)
        if refused is not None:
            return refused
        transport = self.transports.get(request.query.get("session", ""))
        if transport is None:
            return self.refuse(request, 404, "unknown or expired session")
        return transport

    async def send(self, request: HttpRequest) -> HttpResponse:
        """``POST .../send?session=ID``: commands as JSON lines; replies come on the stream."""
        transport = self.lookup(request)
        if isinstance(transport, HttpResponse):
            return transport
        if transport.closed:
            return self.refuse(request, 410, "session closed")
        if len(request.body) > self.max_message_size:
            return self.refuse(request, 413, f"commands larger than {self.max_message_size} bytes")
        await transport.handle(request.body)
        return HttpResponse(204, b"", self.cors(request))

    def closing_refusal(self, request: HttpRequest) -> HttpResponse | None:
        """503 while the hub shuts down (clients reconnect elsewhere)."""
        if self.hub.closing:
            return self.refuse(request, 503, "server shutting down")
        return None
