"""A small HTTP/1.1 server on httptools: the front door of ``pulsewire serve``.

It serves plain requests (API, health, metrics, static pages) with keep-alive and pipelining,
streams responses (Server-Sent Events), and hands WebSocket upgrade requests over to a
:class:`pulsewire.aio.Server` on the same port: the request head is replayed into a
``ServerConnection``, which runs the real handshake checks (Origin, version, key, ...).

Bounded by construction:

* **Memory.** Each connection charges an :class:`~pulsewire.aio.budget.Account` of the
  server's :class:`~pulsewire.aio.budget.Budgets` with everything it holds: input not parsed
  yet, the request being received (head and body so far), the request waiting behind the one
  being handled, and the output the peer has not taken (the transport's write buffer).
  Requests are parsed one at a time: at most one complete request waits behind the one being
  handled, and reading stops once input piles up behind it (more than :data:`SLICE` bytes),
  and, while the connection or its address is over its high-water mark, as long as this
  connection holds anything (a request already being received is read to its end: it is
  bounded by the size limits). After each response the worker waits until the peer has
  taken it before handling the next one. Over a hard limit the connection is closed: 503 if
  nothing is on its way out, else aborted.
* **Sizes.** Request line (414), header count and head size (431, counted per request, so
  pipelined requests split across reads are all served), body size (413, refused as soon as
  ``Content-Length`` says so).
* **Time.** A request head must arrive within ``head_timeout`` of its first byte, a body within
  ``body_timeout`` of its head and at ``body_min_rate`` bytes/s over every
  ``body_rate_window`` (408 otherwise); a response or stream chunk the peer does not take
  within ``send_timeout`` aborts the connection; a keep-alive connection idle for
  ``idle_timeout`` is closed, and a closing one that cannot flush within
  :data:`CLOSE_DEADLINE` is aborted.

httptools cannot pause in the middle of a buffer, so input is fed to it in slices that end
where a request head ends (``CRLF CRLF``) or where a ``Content-Length`` body ends, at most
:data:`SLICE` bytes: parsing stops exactly at a request boundary and the rest waits in the
connection's own buffer (at most :data:`SLICE` bytes plus what one read brought in, since
reading is paused then).

Closing is graceful where it can be: our side ends (FIN), what the peer still sends is read
and dropped until it closes too (so that a reset cannot destroy our last answer), and the
connection is aborted :data:`CLOSE_DEADLINE` seconds later if it is still there. A closed
connection keeps no reference cycle: it is freed by reference counting.
"""

from __future__ import annotations

import asyncio
import functools
import urllib.parse
from typing import Protocol

from ...aio.budget import Account, Budgets
from ...protocol.handshake import Headers, Request, http_response
from ...transports.http_types import HttpRequest, HttpResponse, StreamResponse
from ..limits import ConnectionLimiter
from .answering import Answer, Answerer, Upgrade
from .deadlines import Deadlines
from .flow import WriteFlow
from .limits import CLOSE_DEADLINE, SLICE, HttpLimits
from .reader import RequestReader
from .routing import Route

__all__ = ["FrontDoor", "HttpProtocol"]


class FrontDoor(Protocol):
    """What a connection needs of its server (:class:`~.server.HttpServer`)."""

    limits: HttpLimits
    limiter: ConnectionLimiter | None
    budgets: Budgets | None
    connections: set[HttpProtocol]
    closing: bool
    timeouts: dict[str, int]

    def route(self, path: str) -> Route | None:
        """The route of ``path``, if any."""
        ...

    async def dispatch(self, request: HttpRequest) -> HttpResponse | StreamResponse:
        """The answer to ``request``."""
        ...

    def count_refusal(self, status: int) -> None:
        """Count a refused request or connection."""
        ...


class HttpProtocol(asyncio.Protocol):
    """One HTTP/1.1 connection: requests are handled one at a time, in order.

    Public attributes read by the server and tests: ``transport`` (None once closing),
    ``remote`` (the peer's address), ``streaming`` (the response being streamed, if any).
    """

    __slots__ = (
        "_abort_timer",
        "_buf",
        "_over_budget",
        "_pos",
        "_reading",
        "_stopped",
        "account",
        "admitted",
        "answers",
        "deadlines",
        "discarding",
        "flow",
        "limits",
        "loop",
        "pending",
        "reader",
        "remote",
        "secure",
        "server",
        "transport",
    )

    def __init__(self, server: FrontDoor) -> None:
        self.server = server
        self.limits = server.limits
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.deadlines = Deadlines(self, self.loop, server.limits)
        """The running deadline (head, body, idle)."""
        self.reader = RequestReader(self, self.deadlines, server.limits)
        """The httptools parser and the request being received."""
        self.account: Account | None = None
        self.remote = ""
        self.secure = False
        """Whether the connection is TLS (the same-host Origin check then expects https)."""
        self.admitted = False
        # input not fed to the parser yet: self._buf[self._pos:]
        self._buf = b""
        self._pos = 0
        self._stopped = False  # no more requests are parsed on this connection
        self.discarding = False  # what arrives is dropped unread (a stream is on)
        self._reading = True
        self._over_budget = False
        self.flow = WriteFlow(self.loop, server.limits, server.timeouts)
        """Whether the peer has taken what was written (waits for it)."""
        self.answers = Answerer(self, self.loop, self.flow)
        """The complete requests (or refusals, or an upgrade) waiting, and their worker."""
        self.pending = self.answers.pending  # (the same deque: read on every slice)
        self._abort_timer: asyncio.TimerHandle | None = None

    @property
    def streaming(self) -> StreamResponse | None:
        """The response being streamed, if any."""
        return self.answers.streaming

    # -- asyncio callbacks -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        # Told about every byte the peer has not taken (pause) and when it has taken all
        # (resume): the account is exact, and each response waits for the one before it.
        transport.set_write_buffer_limits(high=0)  # type: ignore[attr-defined]
        peer = transport.get_extra_info("peername")
        self.remote = str(peer[0]) if isinstance(peer, tuple) else str(peer or "")
        self.secure = transport.get_extra_info("ssl_object") is not None
        self.reader.remote = self.remote
        self.reader.secure = self.secure
        limiter = self.server.limiter
        if limiter is not None:
            refusal = limiter.admit(self.remote)
            if refusal is not None:
                self.refuse(*refusal)
                return
            self.admitted = True
        self.server.connections.add(self)
        budgets = self.server.budgets
        if budgets is not None:
            self.account = budgets.open(self.remote, self._budget_pause, self._budget_resume)
        self.deadlines.arm_head()

    def pause_writing(self) -> None:
        self.flow.pause()

    def resume_writing(self) -> None:
        self.flow.resume()
        self.charge()

    def connection_lost(self, exc: Exception | None) -> None:
        self._release()
        self.server.connections.discard(self)
        self.transport = None
        # Break every reference from this object to the ones that point back at it (reader,
        # account, timers, worker): a closed connection is freed by reference counting.
        self.reader.close()
        self._stopped = True
        if self.account is not None:
            self.account.close()
            self.account = None
        self.deadlines.close()
        if self._abort_timer is not None:
            self._abort_timer.cancel()
            self._abort_timer = None
        self.flow.close()
        self.answers.close()
        self._drop_input()

    def data_received(self, data: bytes) -> None:
        if self.discarding or self.transport is None:
            return
        if self._pos < len(self._buf):
            self._buf = self._buf[self._pos :] + data
        else:
            self._buf = data
        self._pos = 0
        self._continue()

    # -- parsing -------------------------------------------------------------------------------

    def _can_parse(self) -> bool:
        if self._stopped or self.transport is None:
            return False
        if self.reader.in_message:
            # Finish the request being received (bounded by the size limits); only a chunked
            # body can have started the next one inside the same slice, hence "< 2".
            return len(self.pending) < 2
        # One request waits at most behind the one being handled. (Being over budget stops
        # reading, not parsing: parsing what was read is how it is released.)
        return not self.pending

    def _parse(self) -> None:
        """Feed what is buffered to the parser while a new request may be taken."""
        reader = self.reader
        buf = self._buf
        while reader.parser is not None and self._pos < len(buf) and self._can_parse():
            start = self._pos
            self._pos = end = start + reader.slice(buf, start)
            if not reader.feed(buf, start, end):
                break
        if self._pos >= len(self._buf):
            self._buf = b""
            self._pos = 0
        self.charge()

    def _continue(self) -> None:
        """Parse what waits in the buffer, if a request may be taken now."""
        if self.transport is not None:
            self._parse()

    def _update_reading(self) -> None:
        """Read from the socket only while what is read can be parsed (or dropped)."""
        wanted = self._wants_input()
        if wanted == self._reading:
            return
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        self._reading = wanted
        if wanted:
            transport.resume_reading()
            if self.reader.in_message and self.deadlines.timer is None:
                # Stopped by us in the middle of a request: its deadline starts over.
                if self.reader.head_done:
                    self.deadlines.arm_body(len(self.reader.body))
                else:
                    self.deadlines.arm_head()
        else:
            transport.pause_reading()
            if self.reader.in_message:
                self.deadlines.cancel()  # not the peer's delay while we do not read

    def _wants_input(self) -> bool:
        if self.discarding:
            return True
        if self._stopped:
            return False
        if self.reader.in_message and len(self.pending) < 2:
            return True  # finish the request being received
        if self._over_budget and self.account is not None and self.account.held:
            # Over the connection's or the address's mark: read nothing more while this
            # connection holds anything. One that holds nothing takes one request at a time,
            # so that those that release memory (a poll taking queued messages) get through.
            return False
        # Keep reading while little waits unparsed (no pause per pipelined request): one
        # more read is all that can pile up on top of SLICE bytes while the worker is busy.
        return len(self._buf) - self._pos < SLICE

    def _drop_input(self) -> None:
        """Forget the unparsed input and the request being received."""
        self._buf = b""
        self._pos = 0
        self.reader.drop_message()

    def upgrade_requested(self, trailing: bytes) -> None:
        """An Upgrade request is complete: hand the connection over once its turn comes."""
        reader = self.reader
        parser = reader.parser
        assert parser is not None
        item = Upgrade(
            method=parser.get_method().decode("ascii", "replace"),
            target=reader.url.decode("latin-1"),
            version=parser.get_http_version(),
            headers=reader.headers,
            trailing=trailing,
        )
        size = self.reader.head_bytes + len(trailing)
        self._stopped = True  # what follows belongs to the WebSocket connection
        self._drop_input()
        self.deadlines.cancel()
        self.answers.enqueue(item, size)

    def request_received(self, request: HttpRequest, size: int) -> None:
        """A complete request (from the reader): it waits for the worker."""
        self.answers.enqueue(request, size)

    # -- called by the answer worker ------------------------------------------------------------

    def idle(self) -> bool:
        """Nothing waits: arm the idle deadline (True), or close if the server is (False)."""
        if self.server.closing:
            self.close()
            return False
        if not self.reader.in_message and not self._stopped:
            self.deadlines.arm("idle", self.limits.idle_timeout)
        return True

    def parse_more(self) -> None:
        """Parse what waits in the input, now that an item has left the queue."""
        if self._pos < len(self._buf):
            self._continue()

    def stream_started(self) -> None:
        """A stream begins: no more requests are read; what arrives is dropped."""
        self._stopped = True
        self.discarding = True
        self._drop_input()
        self.deadlines.cancel()
        self._update_reading()

    def hand_over(self, item: Upgrade) -> None:
        """Hand the connection to the WebSocket server of this path (or refuse)."""
        transport = self.transport
        if transport is None:
            return
        path = urllib.parse.urlsplit(item.target).path or "/"
        route = self.server.route(path)
        if route is None or route.websocket is None:
            self.server.count_refusal(404)
            self.answer(404, f"no WebSocket endpoint at {path}")
            return
        # Hand over the parsed head: the WebSocket server runs the handshake checks on it.
        request = Request(item.method, item.target, item.version, Headers(item.headers))
        trailing = item.trailing + self._buf[self._pos :]  # read after the upgrade request
        # The WebSocket connection now owns the transport, with its own account and flow
        # control, and the admission slot (released through a callable that does not keep
        # this object alive).
        release = None
        limiter = self.server.limiter
        if self.admitted and limiter is not None:
            self.admitted = False
            release = functools.partial(limiter.release, self.remote)
        self._detach()
        transport.set_write_buffer_limits()
        if not self._reading:
            transport.resume_reading()
        route.websocket.attach(transport, trailing, on_closed=release, request=request)

    def _detach(self) -> None:
        """Let go of the transport without closing it (it was handed over)."""
        self.server.connections.discard(self)
        self.transport = None
        self.reader.close()
        self._stopped = True
        self.deadlines.close()
        self.answers.close()
        self._drop_input()
        if self.account is not None:
            self.account.close()
            self.account = None

    # -- accounting ------------------------------------------------------------------------------

    def charge(self) -> None:
        """Report what this connection holds (closing it over a hard limit), and read or not
        accordingly."""
        account = self.account
        transport = self.transport
        if account is None or transport is None:
            self._update_reading()
            return  # closing: what it last reported stays charged until it is gone
        held = (
            len(self._buf)
            - self._pos
            + self.reader.head_bytes
            + len(self.reader.body)
            + self.answers.pending_bytes
            + self.answers.handling
            + transport.get_write_buffer_size()
        )
        if held != account.held and not account.hold(held):
            self._over_hard_limit(account)
        self._update_reading()

    def _over_hard_limit(self, account: Account) -> None:
        scope = "connection" if account.held > self._connection_hard() else "address"
        account.close()
        self.account = None
        transport = self.transport
        self._stopped = True
        self._drop_input()
        self.answers.stop()
        if transport is None:
            return
        if self.streaming is None and transport.get_write_buffer_size() == 0:
            who = "this connection" if scope == "connection" else "your address"
            self.server.count_refusal(503)
            transport.write(http_response(503, f"server memory budget exceeded for {who}\n"))
            self.close()
        else:
            self.abort()

    def _connection_hard(self) -> int:
        budgets = self.server.budgets
        return budgets.limits.connection_hard if budgets is not None else 0

    def _budget_pause(self) -> None:
        self._over_budget = True
        self._update_reading()

    def _budget_resume(self) -> None:
        self._over_budget = False
        # Not from inside another connection's report: parse on the next loop iteration.
        self.loop.call_soon(self._continue)

    # -- closing ---------------------------------------------------------------------------------

    def body_received(self) -> int:
        """Bytes of the request body received so far (for the deadlines)."""
        return len(self.reader.body)

    def deadline_passed(self, kind: str) -> None:
        """The head or idle deadline ran out: 408 if a request has begun, else close."""
        if kind == "head" and (
            self.reader.in_message or self.reader.head_bytes or self._pos < len(self._buf)
        ):
            self.server.timeouts["head"] += 1
            self.refuse(408, "request head not received in time")
            return
        self.server.timeouts["idle"] += 1
        self.close()  # nothing was asked: close without an answer

    def body_late(self, reason: str) -> None:
        """The request body is late: 408."""
        self.server.timeouts["body"] += 1
        self.refuse(408, reason)

    def _release(self) -> None:
        if self.admitted and self.server.limiter is not None:
            self.admitted = False
            self.server.limiter.release(self.remote)

    def refuse(self, status: int, reason: str) -> None:
        """Refuse the request being received (or the connection): after the answers to the
        requests before it, then close."""
        self.server.count_refusal(status)
        self._stopped = True
        self._drop_input()
        self.deadlines.cancel()
        if self.answers.worker is not None:
            self.answers.enqueue(Answer(status, reason), 0)
        else:
            self.answer(status, reason)
        self._update_reading()

    def answer(self, status: int, reason: str) -> None:
        if self.transport is not None:
            self.transport.write(http_response(status, reason + "\n"))
        self.close()

    def close(self) -> None:
        """Close once what is written is flushed. Where it can, this ends our side only
        (FIN) and reads and drops what the peer still sends until it closes too: closing
        with unread input would send a reset, and the peer could lose our last answer (a
        413 or 503 refusing a body it is still sending). Either way the connection is
        aborted :data:`CLOSE_DEADLINE` seconds later if still there."""
        self.deadlines.cancel()
        self._stopped = True
        transport = self.transport
        if transport is None:
            return
        self.transport = None
        self.answers.wake()  # (it sees the connection is closing and ends)
        self.discarding = True
        self._drop_input()
        self.answers.drop()
        if transport.is_closing():
            return
        if transport.can_write_eof():
            transport.write_eof()
            if not self._reading:
                self._reading = True
                transport.resume_reading()
        else:
            transport.close()
            if not transport.get_write_buffer_size():
                return
        # The peer may never read what is buffered, nor close: don't keep the socket forever.
        self._abort_timer = self.loop.call_later(CLOSE_DEADLINE, transport.abort)

    def abort(self) -> None:
        self.deadlines.cancel()
        self._stopped = True
        transport = self.transport
        if transport is not None:
            transport.abort()
            self.transport = None
            self.answers.wake()

    def close_if_idle(self) -> None:
        if not self.answers.busy and not self.pending and not self.reader.in_message:
            self.close()
