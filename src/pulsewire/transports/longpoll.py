"""The hub over HTTP long-polling: the fallback of last resort (any proxy passes it).

* ``POST /connection/longpoll/open`` opens a hub session: ``{"session": "<id>"}``.
* ``POST /connection/longpoll/send?session=<id>``: commands as JSON lines (``text/plain`` or
  ``application/json``); replies are queued with the pushes.
* ``GET /connection/longpoll/poll?session=<id>``: the queued messages as a JSON array, at once
  when there are some, else as soon as one arrives or after ``poll_timeout`` seconds (``[]``).
  One poll at a time: a new poll answers a waiting one with ``[]``.
* ``POST /connection/longpoll/close?session=<id>``: the client leaves.

A session whose client has not polled for ``idle_timeout`` seconds ends. The queue is bounded
in bytes: past ``max_buffered`` the session ends as a slow consumer (``disconnect`` push with
code 1013 and ``reconnect: true``; unread messages are dropped, recovery brings them back).
The last message of a session is a ``disconnect`` push; polls after it get 404.

A session has no connection of its own, so the front door gives each one a connection slot
of the client's address when it opens (``admit``: refused with 503 over the per-address or
total cap, 429 over the rate of new connections) and takes it back when it ends; its queue is
charged to a memory account under the address (``budgets``).
"""

from __future__ import annotations

import asyncio

from ..aio.budget import Account, Budgets
from ..hub.errors import Disconnect
from ..hub.hub import Hub
from ..protocol.close import CloseCode
from ..protocol.handshake import OriginPolicy
from .http_session import Admit, HttpEndpoints, HttpTransport, Release
from .http_types import HttpRequest, HttpResponse, RouteTable, json_response

__all__ = ["LongPollEndpoints", "LongPollTransport"]


class LongPollTransport(HttpTransport):
    """A session's queue drained by polls; it expires when polls stop coming."""

    kind = "longpoll"

    def __init__(
        self,
        endpoints: LongPollEndpoints,
        account: Account | None = None,
        slot: Release | None = None,
    ) -> None:
        super().__init__(endpoints.max_buffered, account)
        self.endpoints = endpoints
        self._slot = slot
        self._loop = asyncio.get_running_loop()
        self._waiter: asyncio.Future[bool] | None = None
        self._polls = 0
        self._idle: asyncio.TimerHandle | None = None
        self._ended = False
        self._arm_idle()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(True)

    async def poll(self, timeout: float) -> list[bytes]:
        """Wait up to ``timeout`` seconds for messages and take them."""
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(False)  # superseded by this poll
        self._polls += 1
        self._cancel_idle()
        try:
            if not self.pending and not self.closed:
                waiter = self._waiter = self._loop.create_future()
                try:
                    if not await asyncio.wait_for(waiter, timeout):
                        return []
                except asyncio.TimeoutError:
                    return []
                finally:
                    if self._waiter is waiter:
                        self._waiter = None
            return self.take()
        finally:
            self._polls -= 1
            if self._polls == 0 and not self._ended:
                self._arm_idle()

    @property
    def finished(self) -> bool:
        """The session has ended and its last message was taken."""
        return self.closed and not self.pending

    def end(self, code: int, reason: str) -> None:
        """The client is gone (it said so, or stopped polling): end its session now."""
        if self._ended:
            return
        self._ended = True
        self._cancel_idle()
        self.endpoints.forget(self)
        self.closed = True
        self._wake()
        if self.session is not None:
            self.session.transport_closed(code, reason)
        self.release()
        slot, self._slot = self._slot, None
        if slot is not None:
            slot()

    def _arm_idle(self) -> None:
        self._cancel_idle()
        self._idle = self._loop.call_later(self.endpoints.idle_timeout, self._expire)

    def _cancel_idle(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None

    def _expire(self) -> None:
        self._idle = None
        self.end(CloseCode.ABNORMAL_CLOSURE, "long-poll client stopped polling")


class LongPollEndpoints(HttpEndpoints):
    """The ``/connection/longpoll/*`` endpoints."""

    kind = "longpoll"

    def __init__(
        self,
        hub: Hub,
        origins: OriginPolicy,
        *,
        max_buffered: int = 1 << 20,
        max_message_size: int = 65536,
        poll_timeout: float = 25.0,
        idle_timeout: float = 60.0,
        budgets: Budgets | None = None,
        admit: Admit | None = None,
    ) -> None:
        super().__init__(
            hub,
            origins,
            max_buffered=max_buffered,
            max_message_size=max_message_size,
            budgets=budgets,
            admit=admit,
        )
        self.poll_timeout = poll_timeout
        """Seconds a poll waits for messages before answering ``[]``."""
        self.idle_timeout = idle_timeout
        """Seconds without a poll after which a session ends."""

    def register(self, http: RouteTable, path: str = "/connection/longpoll") -> None:
        self.add_route(http, f"{path}/open", self.open_session, "POST")
        self.add_route(http, f"{path}/send", self.send, "POST")
        self.add_route(http, f"{path}/poll", self.poll, "GET")
        self.add_route(http, f"{path}/close", self.close_session, "POST")

    async def open_session(self, request: HttpRequest) -> HttpResponse:
        refused = self.check(request) or self.closing_refusal(request)
        if refused is not None:
            return refused
        slot: Release | None = None
        if self.admit is not None:
            admitted = self.admit(request.remote_address)
            if isinstance(admitted, tuple):
                return self.refuse(request, *admitted)
            slot = admitted
        transport = LongPollTransport(self, self.open_account(request), slot)
        try:
            self.open(request, transport)
        except Disconnect as exc:
            transport.end(exc.code, exc.reason)
            return self.refuse(request, 503, exc.reason)
        return json_response(
            {"session": transport.id, "poll_timeout": self.poll_timeout}, 200, self.cors(request)
        )

    async def poll(self, request: HttpRequest) -> HttpResponse:
        transport = self.lookup(request)
        if isinstance(transport, HttpResponse):
            return transport
        assert isinstance(transport, LongPollTransport)
        messages = await transport.poll(self.poll_timeout)
        if transport.finished:
            transport.end(CloseCode.NORMAL_CLOSURE, "")
        body = b"[" + b",".join(messages) + b"]"
        return HttpResponse(200, body, [("Content-Type", "application/json"), *self.cors(request)])

    async def close_session(self, request: HttpRequest) -> HttpResponse:
        transport = self.lookup(request)
        if isinstance(transport, HttpResponse):
            return transport
        assert isinstance(transport, LongPollTransport)
        transport.end(CloseCode.NORMAL_CLOSURE, "client closed the session")
        return HttpResponse(204, b"", self.cors(request))
