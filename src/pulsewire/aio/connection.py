"""The asyncio connection: an ``asyncio.BufferedProtocol`` that feeds the Sans-I/O core.

One object per connection is both the transport's protocol and the user's handle, so the
per-message path is short: the transport reads into ``Connection.get_buffer()`` (one buffer
per event loop, shared by its connections, or the core's own memory for the rest of a frame
that takes several reads: no ``bytes`` per read), ``buffer_updated`` ->
``Connection.buffer_updated`` -> messages into a deque (or straight into a waiting ``recv``),
or to a :class:`Listener`'s callbacks. This module
is the reading side, keepalive and the closing handshake; the writing side, batching and flow
control are its base class's (:mod:`.sending`).

Reading from the socket pauses for any of three reasons, each ending on its own (a bit mask,
so one ending does not resume reading while another holds): ``max_queue`` messages wait
unread; on a server, the write buffer is above its high-water mark (a peer that makes us
write, pings included, and does not read gets TCP backpressure rather than our memory); or,
on a server, the connection's memory account (:mod:`.budget`) is over its high-water mark.

A connection is freed by reference counting when it ends: exceptions are never stored and
re-raised (each ``raise`` gets a fresh :class:`ConnectionClosed`, and futures are completed
with results, not exceptions), so no traceback ties a handler's frame to the connection.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import time
import weakref
from collections.abc import AsyncIterator, Collection, Sequence

from ..protocol.close import Close, CloseCode
from ..protocol.connection import Connection as CoreConnection
from ..protocol.connection import State
from ..protocol.errors import (
    ConcurrencyError,
    ConnectionClosedOK,
)
from ..protocol.events import CloseReceived, Ping, Pong
from ..protocol.handshake import Headers, Request
from .budget import INFLATED_PER_READ, READ_SIZE
from .sending import PAUSE_BUDGET, PAUSE_QUEUE, Data, Sender

__all__ = ["ConcurrencyError", "Connection", "Data", "Listener"]

logger = logging.getLogger("pulsewire")

_OBJECT = 48
"""Bytes a str or bytes object costs besides its characters (CPython: 33 to 80)."""


_read_buffers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, memoryview] = (
    weakref.WeakKeyDictionary()
)


def read_buffer(loop: asyncio.AbstractEventLoop) -> memoryview:
    """The memory every connection of ``loop`` reads into when it holds no partial frame
    (``READ_SIZE``, asyncio's and uvloop's own read size): a loop runs one read callback at
    a time, and the core copies out what it leaves unparsed before the callback returns."""
    view = _read_buffers.get(loop)
    if view is None:
        view = _read_buffers[loop] = memoryview(bytearray(READ_SIZE))
    return view


def _queue_size(messages: Collection[Data]) -> int:
    """What unread messages hold: their lengths (characters for text: wide characters cost
    more, by at most 4x) and an object each. len() rather than sys.getsizeof(), which costs
    five times as much, for every message of every read."""
    return sum(map(len, messages)) + _OBJECT * len(messages)


class Listener:
    """Callbacks for an endpoint that handles messages without a coroutine per connection.

    Route a path to a ``Listener`` subclass (one instance per connection) or to an instance
    (shared by every connection). ``on_message`` runs inside the read callback, so it must not
    block: reply with :meth:`Connection.send_nowait` (everything sent while handling one read
    goes out in one write) and close with :meth:`Connection.close_nowait`. Reading pauses
    while the connection's write buffer is above its high-water mark (as for every server
    connection), so a client that does not read its replies cannot grow the server's memory.
    An exception in a callback is logged and closes the connection with 1011.
    """

    def on_open(self, ws: Connection) -> None:
        """The opening handshake is done."""

    def on_message(self, ws: Connection, message: Data) -> None:
        """A message arrived: ``str`` for text, ``bytes`` for binary."""

    def on_close(self, ws: Connection) -> None:
        """TCP is gone; ``ws.close_code`` and ``ws.close_reason`` are final."""


class Connection(Sender):
    """An open WebSocket connection (shared by the server and the client sides).

    Iterate with ``async for message in ws`` (ends on a normal close, raises
    :class:`~pulsewire.ConnectionClosedError` on an abnormal one), or call :meth:`recv`;
    :meth:`send` sends ``str`` as text and ``bytes`` as binary.
    """

    __slots__ = (
        "__weakref__",
        "_keepalive",
        "_listener",
        "_messages",
        "_pings",
        "_read_buffer",
        "_recv_waiter",
        "extensions",
        "id",
        "latency",
        "max_queue",
        "ping_interval",
        "ping_timeout",
        "request",
        "response_headers",
        "subprotocol",
    )

    def __init__(
        self,
        *,
        max_queue: int = 16,
        ping_interval: float | None = 20.0,
        ping_timeout: float | None = 20.0,
        close_timeout: float = 10.0,
        write_limit: int = 65536,
    ) -> None:
        super().__init__(close_timeout=close_timeout, write_limit=write_limit)
        # Created for a message no recv() is waiting for, dropped when recv() waits again: an
        # empty deque is 624 bytes, and an idle connection holds none (tracemalloc, 2,000
        # subscribed hub connections: it was the largest single item per connection).
        self._messages: collections.deque[Data] | None = None
        self._recv_waiter: asyncio.Future[Data | None] | None = None  # None: closed
        self._listener: Listener | None = None
        self._read_buffer = read_buffer(self.loop)
        # Each ping's waiter (its result is the round-trip time, None if closed) and send time.
        self._pings: dict[bytes, tuple[asyncio.Future[float | None], float]] | None = None
        self._keepalive: asyncio.TimerHandle | None = None
        self.max_queue = max_queue
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.latency = 0.0
        """Round-trip time of the last keepalive ping, in seconds."""
        self.request: Request | None = None
        """The opening request (path, headers); on a client, the one we sent."""
        self.response_headers: Headers | None = None
        self.subprotocol: str | None = None
        self.extensions: str = ""
        self.id = 0

    # ----------------------------------------------------------------------- properties

    @property
    def path(self) -> str:
        return self.request.path if self.request is not None else "/"

    # ----------------------------------------------------------------------- receiving

    async def recv(self) -> Data:
        """The next message: ``str`` for text, ``bytes`` for binary.

        Raises ConnectionClosed once the connection is closed and every message was read.
        """
        messages = self._messages
        if messages:
            message = messages.popleft()
            paused = self._paused_reading
            if paused and (paused & PAUSE_BUDGET or len(messages) <= self.max_queue >> 2):
                self._consumed()
            return message
        del messages  # not held while waiting (_wait_message lets the empty queue go)
        return await self._wait_message()

    def __aiter__(self) -> AsyncIterator[Data]:
        return self

    async def __anext__(self) -> Data:
        messages = self._messages
        if messages:
            message = messages.popleft()
            paused = self._paused_reading
            if paused and (paused & PAUSE_BUDGET or len(messages) <= self.max_queue >> 2):
                self._consumed()
            return message
        del messages  # as in recv()
        try:
            return await self._wait_message()
        except ConnectionClosedOK:
            raise StopAsyncIteration from None

    def _consumed(self) -> None:
        """A queued message was taken while reading is paused: maybe resume."""
        paused = self._paused_reading
        messages = self._messages or ()
        if paused & PAUSE_QUEUE and len(messages) <= self.max_queue >> 2:
            self._resume(PAUSE_QUEUE)
        if paused & PAUSE_BUDGET:
            self._queued = _queue_size(messages)
            self._report()

    async def _wait_message(self) -> Data:
        if self._listener is not None:
            raise ConcurrencyError("this connection delivers its messages to a Listener")
        if self._ended is not None:
            raise self._closed_error()
        if self._recv_waiter is not None:
            raise ConcurrencyError("recv() is already being awaited by another coroutine")
        self._queued = 0  # the queue is empty now
        self._messages = None  # and let go of: a connection mostly waits with none queued
        proto = self._proto
        if proto is not None and proto.out_bytes:
            self.flush()  # about to wait: write everything produced since the last read
        elif self._account is not None and self._account.held:
            self._report()
        if self._paused_reading & PAUSE_QUEUE:
            self._resume(PAUSE_QUEUE)
        waiter: asyncio.Future[Data | None] = self.loop.create_future()
        self._recv_waiter = waiter
        try:
            message = await waiter
        finally:
            self._recv_waiter = None
        if message is None:
            raise self._closed_error()
        return message

    # asyncio.BufferedProtocol callbacks -------------------------------------------------

    def get_buffer(self, sizehint: int) -> memoryview:
        proto = self._proto
        if proto is None:
            return self._read_buffer
        return proto.get_buffer(self._read_buffer)

    def buffer_updated(self, nbytes: int) -> None:
        proto = self._proto
        if proto is None:
            self._handshake_data(bytes(self._read_buffer[:nbytes]))
            return
        proto.buffer_updated(nbytes)
        self._received(proto)

    def data_received(self, data: bytes) -> None:
        """Bytes read elsewhere: after the handshake's last bytes, from an HTTP server that
        handed the connection over, or ``b""`` to go on with input the core held back."""
        proto = self._proto
        if proto is None:
            self._handshake_data(data)
            return
        proto.receive_data(data)
        self._received(proto)

    def _received(self, proto: CoreConnection) -> None:
        """The core parsed a read: deliver its events, write, report, maybe close."""
        while True:
            events = proto.events_received()
            dispatched = False
            if events:
                if self._listener is not None:
                    self._dispatch(self._listener, events)  # writes, and reports, at its end
                    dispatched = True
                else:
                    self._deliver(events)
            # Input held back after much inflation: go on unless reading is paused meanwhile
            # (then _resume() picks it up).
            if not proto.input_held_back or self._paused_reading:
                break
            proto.receive_data(b"")
        if proto.out_bytes:
            self._schedule_flush()
        account = self._account
        if account is not None and not dispatched:  # _report(), inline: once per read
            messages = self._messages
            self._queued = queued = _queue_size(messages) if messages else 0
            held = queued + proto.out_bytes + proto.buffered_in
            transport = self._transport
            if transport is not None:
                held += transport.get_write_buffer_size()
            if held != account.held and not account.hold(held):
                self._over_budget()
        if proto.close_transport:
            self._close_transport()

    def _deliver(self, events: Sequence[object]) -> None:
        """Coroutine mode: hand messages to a waiting recv(), or queue them."""
        waiter = self._recv_waiter
        messages = self._messages
        for event in events:
            kind = type(event)
            if kind is str or kind is bytes:
                if waiter is not None:
                    if not waiter.done():
                        waiter.set_result(event)  # type: ignore[arg-type]
                        waiter = None
                        continue
                    waiter = None
                if messages is None:
                    messages = self._messages = collections.deque()
                messages.append(event)  # type: ignore[arg-type]
            else:
                self._control_event(event)
        if (
            messages is not None
            and len(messages) >= self.max_queue
            and not self._paused_reading & PAUSE_QUEUE
        ):
            self._pause(PAUSE_QUEUE)

    def _dispatch(self, listener: Listener, events: Sequence[object]) -> None:
        """Callback mode: hand each message to the listener, then write all replies at once."""
        proto = self._proto
        assert proto is not None
        self._flush_scheduled = True  # send_nowait() only queues; the _flush() below writes
        try:
            on_message = listener.on_message
            for event in events:
                kind = type(event)
                if kind is str or kind is bytes:
                    on_message(self, event)  # type: ignore[arg-type]
                else:
                    self._control_event(event)
        except Exception:
            logger.exception("on_message failed")
            if proto.state is State.OPEN:
                proto.fail(CloseCode.INTERNAL_ERROR, "internal server error")
        self.flush()

    def _control_event(self, event: object) -> None:
        if type(event) is Pong:
            self._pong_received(event.data)
        elif type(event) is CloseReceived:
            close: Close = event.close
            proto = self._proto
            assert proto is not None
            if not proto.close_transport:
                # Client: handshake done; the server should close TCP now. Don't wait forever.
                self._start_close_timer()
            self.closing_handshake_done(close)
        elif type(event) is Ping:
            pass  # the core already queued the Pong

    def closing_handshake_done(self, close: Close) -> None:
        """Hook: the peer's Close arrived (subclasses log or count it)."""

    def eof_received(self) -> bool | None:
        if self._proto is not None:
            self._proto.receive_eof()
        return None  # let the transport close itself

    def connection_lost(self, exc: Exception | None) -> None:
        proto = self._proto
        if proto is not None:
            proto.receive_eof()
        self._ended_now()
        for handle in (self._keepalive, self._close_timer):
            if handle is not None:
                handle.cancel()
        self._keepalive = self._close_timer = None
        if self._closed is not None and not self._closed.done():
            self._closed.set_result(None)
        self._transport = None
        account = self._account
        if account is not None:
            self._account = None
            account.close()
        listener = self._listener
        if listener is not None:
            try:
                listener.on_close(self)
            except Exception:
                logger.exception("on_close failed")
        self.connection_closed()

    def _ended_now(self) -> None:
        super()._ended_now()
        # Waiters get a result meaning "closed", and whoever awaits raises a fresh
        # ConnectionClosed: an exception stored in a future would keep, through its
        # traceback, the awaiting frame and this connection alive (a cycle).
        waiter = self._recv_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if self._pings:
            for fut, _ in self._pings.values():
                if not fut.done():
                    fut.set_result(None)
            self._pings = None

    def _handshake_data(self, data: bytes) -> None:
        """Bytes of the opening handshake (the server and client subclasses parse them)."""
        raise NotImplementedError

    def connection_closed(self) -> None:
        """Hook: TCP is gone; :attr:`close_code` is final (subclasses clean up here)."""

    # ----------------------------------------------------------------------- sending

    async def ping(self, data: bytes | str | None = None) -> float:
        """Send a Ping and wait for its Pong; returns the round-trip time in seconds."""
        proto = self._proto
        if proto is None or proto.state is not State.OPEN:
            raise self._closed_error()
        if isinstance(data, str):
            data = data.encode("utf-8")
        pings = self._pings
        if pings is None:
            pings = self._pings = {}
        if data is None:
            data = os.urandom(4)
            while data in pings:
                data = os.urandom(4)
        elif data in pings:
            raise ConcurrencyError("a ping with the same payload is already waiting for its pong")
        waiter: asyncio.Future[float | None] = self.loop.create_future()
        pings[data] = (waiter, time.monotonic())
        proto.send_ping(data)
        self.flush()
        rtt = await waiter
        if rtt is None:
            raise self._closed_error()
        return rtt

    async def pong(self, data: bytes | str = b"") -> None:
        """Send an unsolicited Pong (a one-way heartbeat)."""
        proto = self._proto
        if proto is None or proto.state is not State.OPEN:
            raise self._closed_error()
        proto.send_pong(data.encode("utf-8") if isinstance(data, str) else data)
        self.flush()

    def _pong_received(self, data: bytes) -> None:
        pings = self._pings
        if not pings or data not in pings:
            return  # unsolicited pong
        now = time.monotonic()
        # A Pong answers its Ping and every earlier one (RFC 6455 5.5.3).
        for key in list(pings):
            waiter, sent_at = pings.pop(key)
            if not waiter.done():
                waiter.set_result(now - sent_at)
            if key == data:
                self.latency = now - sent_at
                break

    async def close(self, code: int = CloseCode.NORMAL_CLOSURE, reason: str = "") -> None:
        """Run the closing handshake and wait until TCP is closed (at most ``close_timeout``)."""
        if self._proto is None and self._transport is not None:
            self._transport.close()  # still in the opening handshake
        else:
            self.close_nowait(code, reason)
        await self.wait_closed()

    # -------------------------------------------------------------------- flow control

    # ----------------------------------------------------------------------- keepalive

    def _opened(self, proto: CoreConnection, trailing: bytes) -> None:
        """Switch from the handshake to WebSocket frames."""
        if proto.max_inflated_per_read is None:
            # data_received handles held-back input: bound what one read inflates into, even
            # when it brings many small bombs, each under max_size.
            proto.max_inflated_per_read = max(proto.max_message_size or 0, INFLATED_PER_READ)
        self._proto = proto
        self._closed = self.loop.create_future()
        transport = self._transport
        if transport is not None:
            transport.set_write_buffer_limits(high=self.write_limit)
        if self.ping_interval:
            self._keepalive = self.loop.call_later(self.ping_interval, self._send_keepalive)
        listener = self._listener
        if listener is not None:
            self._flush_scheduled = True
            try:
                listener.on_open(self)
            except Exception:
                logger.exception("on_open failed")
                proto.fail(CloseCode.INTERNAL_ERROR, "internal server error")
            self.flush()
        if trailing:
            self.data_received(trailing)

    def _send_keepalive(self) -> None:
        self._keepalive = None
        proto = self._proto
        if proto is None or proto.state is not State.OPEN:
            return
        data = os.urandom(4)
        pings = self._pings
        if pings is None:
            pings = self._pings = {}
        waiter: asyncio.Future[float | None] = self.loop.create_future()
        pings[data] = (waiter, time.monotonic())
        proto.send_ping(data)
        self.flush()
        if self.ping_timeout:
            self._keepalive = self.loop.call_later(self.ping_timeout, self._check_keepalive, waiter)
        elif self.ping_interval:
            self._keepalive = self.loop.call_later(self.ping_interval, self._send_keepalive)

    def _check_keepalive(self, waiter: asyncio.Future[float | None]) -> None:
        self._keepalive = None
        proto = self._proto
        if proto is None or proto.state is State.CLOSED:
            return
        if not waiter.done():
            logger.info("keepalive ping timed out; closing the connection")
            proto.fail(CloseCode.INTERNAL_ERROR, "keepalive ping timeout")
            self.flush()
            return
        delay = max(0.0, (self.ping_interval or 0.0) - (self.ping_timeout or 0.0))
        self._keepalive = self.loop.call_later(delay or 0.0, self._send_keepalive)
