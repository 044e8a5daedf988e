"""The answer side of one front-door connection: the complete requests waiting behind the one
being handled (and their bytes, for the memory budget), and the worker that answers them in
order: responses, streams, a refusal or an upgrade hand-over, each told to its
:class:`AnswerOwner` (the connection)."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import dataclass
from typing import Protocol

from ...protocol.handshake import http_response
from ...transports.http_types import HttpRequest, HttpResponse, StreamResponse
from .flow import WriteFlow

__all__ = ["Answer", "AnswerOwner", "Answerer", "Dispatcher", "Upgrade"]

logger = logging.getLogger("pulsewire.server")


@dataclass(slots=True)
class Answer:
    """A refusal to send, in order, after the responses before it; the connection then
    closes."""

    status: int
    reason: str


@dataclass(slots=True)
class Upgrade:
    """An upgrade request, handed over in order, after the responses before it."""

    method: str
    target: str
    version: str
    headers: list[tuple[str, str]]
    trailing: bytes


Item = HttpRequest | Answer | Upgrade


class Dispatcher(Protocol):
    """What an :class:`Answerer` needs of the server (:class:`~.server.HttpServer`)."""

    closing: bool

    async def dispatch(self, request: HttpRequest) -> HttpResponse | StreamResponse:
        """The answer to ``request``."""
        ...


class AnswerOwner(Protocol):
    """What an :class:`Answerer` drives (:class:`~.connection.HttpProtocol`)."""

    transport: asyncio.Transport | None

    @property
    def server(self) -> Dispatcher:
        """The server (it dispatches the requests)."""
        ...

    def idle(self) -> bool:
        """Nothing waits: arm the idle deadline (True), or close if the server is (False)."""
        ...

    def parse_more(self) -> None:
        """Parse what waits in the input, now that an item has left the queue."""
        ...

    def answer(self, status: int, reason: str) -> None:
        """Send a refusal, then close."""
        ...

    def hand_over(self, item: Upgrade) -> None:
        """Hand the connection to the WebSocket server (or refuse)."""
        ...

    def stream_started(self) -> None:
        """A stream begins: no more requests are read; what arrives is dropped."""
        ...

    def charge(self) -> None:
        """Report what the connection holds."""
        ...

    def close(self) -> None:
        """Close once what is written is flushed."""
        ...

    def abort(self) -> None:
        """Abort the connection."""
        ...


class Answerer:
    """The waiting items of one connection and the worker that handles them, in order.

    Public attributes: ``pending`` (the waiting items and their sizes), ``pending_bytes``
    (their total), ``handling`` (the size of the one being handled, until its answer is
    written), ``worker`` (started by the first item, waits for the next), ``busy`` (an item
    is being handled) and ``streaming`` (the response being streamed, if any).
    """

    __slots__ = (
        "_wakeup",
        "busy",
        "flow",
        "handling",
        "loop",
        "owner",
        "pending",
        "pending_bytes",
        "streaming",
        "worker",
    )

    def __init__(
        self, owner: AnswerOwner, loop: asyncio.AbstractEventLoop, flow: WriteFlow
    ) -> None:
        self.owner: AnswerOwner | None = owner
        self.loop = loop
        self.flow = flow
        self.pending: deque[tuple[Item, int]] = deque()
        self.pending_bytes = 0
        self.handling = 0
        self.worker: asyncio.Task[None] | None = None
        self._wakeup: asyncio.Future[None] | None = None
        self.busy = False
        self.streaming: StreamResponse | None = None

    def enqueue(self, item: Item, size: int) -> None:
        """``item`` (of ``size`` bytes) waits for the worker (which starts or wakes up)."""
        self.pending.append((item, size))
        self.pending_bytes += size
        if self.worker is None:
            self.worker = self.loop.create_task(self._work())
        else:
            self.wake()

    def wake(self) -> None:
        """There is work, or the connection is closing: the waiting worker goes on."""
        waker = self._wakeup
        if waker is not None:
            self._wakeup = None
            if not waker.done():
                waker.set_result(None)

    def drop(self) -> None:
        """Forget the waiting items (their bytes are no longer held)."""
        self.pending.clear()
        self.pending_bytes = 0

    def stop(self) -> None:
        """Forget the waiting items and stop the worker (unless this is the worker)."""
        self.drop()
        worker = self.worker
        if worker is not None and worker is not asyncio.current_task():
            self.worker = None
            worker.cancel()

    def close(self) -> None:
        """The connection is gone: stop the worker, forget the items and the owner (no
        reference cycle is left). Called by the worker itself on a hand-over: it then ends
        on its own."""
        self.owner = None
        worker = self.worker
        self.worker = None
        self._wakeup = None
        if worker is not None and worker is not asyncio.current_task():
            worker.cancel()
        self.drop()

    async def _work(self) -> None:
        """Handle the waiting items in order, for as long as the connection is open."""
        owner = self.owner
        assert owner is not None
        try:
            while owner.transport is not None:
                if not self.pending:
                    if not owner.idle():
                        return
                    waker: asyncio.Future[None] = self.loop.create_future()
                    self._wakeup = waker
                    await waker
                    continue
                self.busy = True
                item, size = self.pending.popleft()
                self.pending_bytes -= size
                self.handling = size
                owner.parse_more()  # the next request may be parsed while this one is handled
                if isinstance(item, Answer):
                    owner.answer(item.status, item.reason)
                    return
                if isinstance(item, Upgrade):
                    owner.hand_over(item)
                    return
                responding = self._respond(owner, item)
                del item  # the coroutine drops the request once its answer is written
                if not await responding:
                    owner.close()
                    return
                self.handling = 0
                self.busy = False
        finally:
            if self.worker is asyncio.current_task():
                self.worker = None
            self._wakeup = None
            self.busy = False
            self.handling = 0
            owner.charge()

    async def _respond(self, owner: AnswerOwner, request: HttpRequest) -> bool:
        """Answer one request; True to go on with the next one (keep-alive)."""
        server = owner.server
        keep_alive = request.keep_alive and not server.closing
        response = await server.dispatch(request)
        transport = owner.transport
        if transport is None:
            return False
        if isinstance(response, StreamResponse):
            await self._stream(owner, response)
            return False
        body = response.body.encode("utf-8") if isinstance(response.body, str) else response.body
        headers = list(response.headers)
        if not keep_alive:
            headers.append(("Connection", "close"))
        data = http_response(response.status, body, headers, close=False)
        if request.method == "HEAD":
            data = data[: data.index(b"\r\n\r\n") + 4]
        del body, response, request  # held by the transport's buffer from here on
        transport.write(data)
        del data
        self.handling = 0
        owner.charge()
        if not keep_alive:
            return False
        # Backpressure: the next request is handled once the peer has taken this answer.
        return not self.flow.paused or await self._drained(owner)

    async def _stream(self, owner: AnswerOwner, response: StreamResponse) -> None:
        transport = owner.transport
        assert transport is not None
        self.streaming = response
        # The connection closes when the stream ends: no request after this one will be
        # answered, so what the peer sends is read (to notice when it leaves) and dropped.
        for _, size in self.pending:
            self.pending_bytes -= size
        self.pending.clear()
        self.handling = 0
        owner.stream_started()
        head = http_response(
            response.status, b"", [*response.headers, ("Connection", "close")], close=False
        )
        transport.write(head.replace(b"Content-Length: 0\r\n", b""))
        owner.charge()
        stream = response.stream
        try:
            async for chunk in stream:
                transport = owner.transport
                if transport is None:
                    break
                transport.write(chunk)
                del chunk
                owner.charge()
                # Pull nothing more from the stream while the peer does not read: what it has
                # not taken stays bounded in the stream's own (accounted) queue.
                if not await self._drained(owner, response.ended):
                    break
        finally:
            closer = getattr(stream, "aclose", None)
            if closer is not None:
                try:
                    await closer()
                except Exception:
                    logger.debug("closing a response stream failed", exc_info=True)
            self.streaming = None

    async def _drained(self, owner: AnswerOwner, ended: asyncio.Event | None = None) -> bool:
        """Wait until the peer has taken everything written (True), or abort the connection
        when it does not within ``send_timeout`` or when the stream ``ended`` (False)."""
        if not self.flow.paused:
            return owner.transport is not None
        drained = await self.flow.drained(ended)
        if not drained:
            owner.abort()
        return drained
