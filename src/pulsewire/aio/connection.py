"""The asyncio connection: an ``asyncio.Protocol`` that feeds the Sans-I/O core.

One object per connection is both the transport's protocol and the user's handle, so the
per-message path is short: ``data_received`` -> ``Connection.receive_data`` -> messages into a
deque (or straight into a waiting ``recv``). Writes are batched: ``send`` queues frames in the
core and the bytes are written once per batch, either when the consumer is about to wait for
more input (everything it produced in reaction to one read goes out in one system call) or at
the end of the loop iteration, whichever comes first.

Flow control both ways: ``send`` waits while the transport's write buffer is above its
high-water mark, and reading from the socket pauses for any of three reasons, each ending on its
own (a bit mask, so one ending does not resume reading while another holds): ``max_queue``
messages wait unread; on a server, the write buffer is above its high-water mark (a peer that
makes us write, pings included, and does not read gets TCP backpressure rather than our
memory); or, on a server, the connection's memory account (:mod:`.budget`) is over its
high-water mark.

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
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Sequence
from typing import Any

from ..protocol.close import Close, CloseCode
from ..protocol.connection import Connection as CoreConnection
from ..protocol.connection import State
from ..protocol.errors import (
    ConcurrencyError,
    ConnectionClosed,
    ConnectionClosedOK,
    ProtocolError,
    connection_closed,
)
from ..protocol.events import CloseReceived, Ping, Pong
from ..protocol.frames import PreparedFrame
from ..protocol.handshake import Headers, Request
from .budget import INFLATED_PER_READ, Account

__all__ = ["ConcurrencyError", "Connection", "Data", "Listener"]

logger = logging.getLogger("pulsewire")

Data = str | bytes

# Why reading from the socket is paused (bits of Connection._paused_reading).
_QUEUE = 1  # max_queue messages wait unread
_WRITE = 2  # the transport's write buffer is above its high-water mark
_BUDGET = 4  # the memory account is over its (or its address's) high-water mark

_OBJECT = 48
"""Bytes a str or bytes object costs besides its characters (CPython: 33 to 80)."""


def _queue_size(messages: collections.deque[Data]) -> int:
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


class _FlushQueue:
    """Writes out, once per event-loop iteration, every connection that queued frames in it.

    One loop callback for all of them rather than one ``call_soon`` per connection: a fan-out
    to 10,000 connections would otherwise allocate 10,000 handles, bound methods and contexts
    per message (measured: a third of the hub's fan-out CPU, and enough short-lived survivors
    to trigger a full garbage collection every few rounds, 380 ms each with 10,000 sessions).
    """

    __slots__ = ("loop", "pending")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.pending: list[Connection] = []  # not empty: run() is scheduled

    def add(self, conn: Connection) -> None:
        pending = self.pending
        pending.append(conn)
        if len(pending) == 1:
            self.loop.call_soon(self.run)

    def run(self) -> None:
        pending = self.pending
        self.pending = []
        for conn in pending:
            if conn._flush_scheduled:
                try:
                    conn.flush()
                except Exception:
                    logger.exception("error while writing to a connection")


_flush_queues: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _FlushQueue] = (
    weakref.WeakKeyDictionary()
)


def _flush_queue(loop: asyncio.AbstractEventLoop) -> _FlushQueue:
    queue = _flush_queues.get(loop)
    if queue is None:
        queue = _flush_queues[loop] = _FlushQueue(loop)
    return queue


class Connection(asyncio.Protocol):
    """An open WebSocket connection (shared by the server and the client sides).

    Iterate with ``async for message in ws`` (ends on a normal close, raises
    :class:`~pulsewire.ConnectionClosedError` on an abnormal one), or call :meth:`recv`;
    :meth:`send` sends ``str`` as text and ``bytes`` as binary.
    """

    _pause_while_writing = False
    """Whether reading stops while the write buffer is above its high-water mark: on a
    server (see ServerConnection). A client keeps reading (up to ``max_queue`` messages),
    so that one that sends several messages before reading does not deadlock with such a
    server: one of the two sides must read while it cannot write."""

    __slots__ = (
        "__weakref__",
        "_account",
        "_close_timer",
        "_closed",
        "_drain_waiter",
        "_ended",
        "_flush_queue",
        "_flush_scheduled",
        "_fragmenting",
        "_keepalive",
        "_lingering",
        "_listener",
        "_loop",
        "_messages",
        "_paused_reading",
        "_paused_writing",
        "_pings",
        "_proto",
        "_queued",
        "_recv_waiter",
        "_transport",
        "close_timeout",
        "extensions",
        "id",
        "latency",
        "max_queue",
        "ping_interval",
        "ping_timeout",
        "remote_address",
        "request",
        "response_headers",
        "subprotocol",
        "write_limit",
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
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._proto: CoreConnection | None = None
        self._messages: collections.deque[Data] = collections.deque()
        # Memory of the unread messages as last counted (when messages arrive, when the queue
        # empties, and when it is read while over budget): in between it may be more than
        # what remains, the safe side, and counting on every read would cost the hot path.
        self._queued = 0
        self._recv_waiter: asyncio.Future[Data | None] | None = None  # None: closed
        self._closed: asyncio.Future[None] | None = None
        # How the connection ended; never raised itself (see _closed_error).
        self._ended: ConnectionClosed | None = None
        self._drain_waiter: asyncio.Future[None] | None = None
        self._paused_writing = False
        self._paused_reading = 0  # why: _QUEUE | _WRITE | _BUDGET
        self._lingering = False  # failed: our side is shut, reading until the peer's EOF
        self._account: Account | None = None
        self._flush_scheduled = False
        self._flush_queue = _flush_queue(self._loop)
        self._listener: Listener | None = None
        self._fragmenting: asyncio.Future[None] | None = None
        # Each ping's waiter (its result is the round-trip time, None if closed) and send time.
        self._pings: dict[bytes, tuple[asyncio.Future[float | None], float]] | None = None
        self._keepalive: asyncio.TimerHandle | None = None
        self._close_timer: asyncio.TimerHandle | None = None
        self.max_queue = max_queue
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.close_timeout = close_timeout
        self.write_limit = write_limit
        self.latency = 0.0
        """Round-trip time of the last keepalive ping, in seconds."""
        self.request: Request | None = None
        """The opening request (path, headers); on a client, the one we sent."""
        self.response_headers: Headers | None = None
        self.subprotocol: str | None = None
        self.extensions: str = ""
        self.remote_address: Any = None
        self.id = 0

    # ----------------------------------------------------------------------- properties

    @property
    def state(self) -> State:
        """OPEN, CLOSING or CLOSED (a connection object only exists after the handshake)."""
        proto = self._proto
        if proto is None:
            return State.CLOSED
        if proto.state is State.CLOSED and self._closed is not None and not self._closed.done():
            return State.CLOSING  # closing handshake done, TCP not closed yet
        return proto.state

    @property
    def open(self) -> bool:
        return self._proto is not None and self._proto.state is State.OPEN

    @property
    def closed(self) -> bool:
        return self._ended is not None

    @property
    def close_code(self) -> int | None:
        """The code of the Close frame received, 1006 if none, None while open."""
        ended = self._ended
        return None if ended is None else ended.code

    @property
    def close_reason(self) -> str | None:
        ended = self._ended
        return None if ended is None else ended.reason

    @property
    def path(self) -> str:
        return self.request.path if self.request is not None else "/"

    @property
    def writing_paused(self) -> bool:
        """The transport's write buffer is above its high-water mark (a slow reader): what
        is sent now waits in memory; :func:`broadcast` skips such a connection."""
        return self._paused_writing

    @property
    def failure(self) -> ProtocolError | None:
        """Why this side failed the connection (1002, 1007, 1009, 1011, 1013...), with the
        code and reason it sent; ``None`` if it did not (then :attr:`close_code` is the
        peer's)."""
        proto = self._proto
        return None if proto is None else proto.failure

    @property
    def buffered_amount(self) -> int:
        """Bytes handed to send() and not yet written to the socket."""
        queued = self._proto.out_bytes if self._proto is not None else 0
        transport = self._transport
        if transport is not None and not transport.is_closing():
            queued += transport.get_write_buffer_size()
        return queued

    # ----------------------------------------------------------------------- receiving

    async def recv(self) -> Data:
        """The next message: ``str`` for text, ``bytes`` for binary.

        Raises ConnectionClosed once the connection is closed and every message was read.
        """
        messages = self._messages
        if messages:
            message = messages.popleft()
            paused = self._paused_reading
            if paused and (paused & _BUDGET or len(messages) <= self.max_queue >> 2):
                self._consumed()
            return message
        return await self._wait_message()

    def __aiter__(self) -> AsyncIterator[Data]:
        return self

    async def __anext__(self) -> Data:
        messages = self._messages
        if messages:
            message = messages.popleft()
            paused = self._paused_reading
            if paused and (paused & _BUDGET or len(messages) <= self.max_queue >> 2):
                self._consumed()
            return message
        try:
            return await self._wait_message()
        except ConnectionClosedOK:
            raise StopAsyncIteration from None

    def _consumed(self) -> None:
        """A queued message was taken while reading is paused: maybe resume."""
        paused = self._paused_reading
        if paused & _QUEUE and len(self._messages) <= self.max_queue >> 2:
            self._resume(_QUEUE)
        if paused & _BUDGET:
            self._queued = _queue_size(self._messages)
            self._report()

    async def _wait_message(self) -> Data:
        if self._listener is not None:
            raise ConcurrencyError("this connection delivers its messages to a Listener")
        if self._ended is not None:
            raise self._closed_error()
        if self._recv_waiter is not None:
            raise ConcurrencyError("recv() is already being awaited by another coroutine")
        self._queued = 0  # the queue is empty now
        proto = self._proto
        if proto is not None and proto.out_bytes:
            self.flush()  # about to wait: write everything produced since the last read
        elif self._account is not None and self._account.held:
            self._report()
        if self._paused_reading & _QUEUE:
            self._resume(_QUEUE)
        waiter: asyncio.Future[Data | None] = self._loop.create_future()
        self._recv_waiter = waiter
        try:
            message = await waiter
        finally:
            self._recv_waiter = None
        if message is None:
            raise self._closed_error()
        return message

    # asyncio.Protocol callbacks ---------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        proto = self._proto
        if proto is None:
            self._handshake_data(data)
            return
        while True:
            proto.receive_data(data)
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
            data = b""
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
                messages.append(event)  # type: ignore[arg-type]
            else:
                self._control_event(event)
        if len(messages) >= self.max_queue and not self._paused_reading & _QUEUE:
            self._pause(_QUEUE)

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
        """No more messages will come or go (TCP may still linger): the close code is final
        and every waiter is woken."""
        proto = self._proto
        if proto is not None:
            self._ended = connection_closed(
                proto.close_rcvd, proto.close_sent, proto.close_rcvd_then_sent
            )
        else:
            self._ended = connection_closed(None, None, None)
        # Waiters get a result meaning "closed", and whoever awaits raises a fresh
        # ConnectionClosed: an exception stored in a future would keep, through its
        # traceback, the awaiting frame and this connection alive (a cycle).
        waiter = self._recv_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        drain = self._drain_waiter
        if drain is not None and not drain.done():
            drain.set_result(None)
        if self._pings:
            for fut, _ in self._pings.values():
                if not fut.done():
                    fut.set_result(None)
            self._pings = None

    def connection_closed(self) -> None:
        """Hook: TCP is gone; :attr:`close_code` is final (subclasses clean up here)."""

    def _handshake_data(self, data: bytes) -> None:
        raise NotImplementedError

    # ----------------------------------------------------------------------- sending

    async def send(
        self, message: Data | Iterable[Data] | AsyncIterable[Data], *, compress: bool | None = None
    ) -> None:
        """Send a message: ``str`` as text, bytes-like as binary.

        An iterable or async iterable of str/bytes is sent as one fragmented message.
        ``compress=False`` skips permessage-deflate for this message (incompressible data);
        ``None`` compresses when the extension is on and the message is above its threshold.
        Waits while the write buffer is above its high-water mark, and while another
        coroutine's fragmented message is being sent (frames of two messages never interleave).
        """
        while self._fragmenting is not None:
            await asyncio.shield(self._fragmenting)
        proto = self._proto
        if proto is None or proto.state is not State.OPEN:
            raise self._closed_error()
        kind = type(message)
        if kind is str:
            proto.send_text(message, compress=compress)  # type: ignore[arg-type]
        elif kind is bytes or isinstance(message, (bytearray, memoryview)):
            proto.send_binary(message, compress=compress)  # type: ignore[arg-type]
        elif isinstance(message, AsyncIterable):
            await self._send_fragments_async(message, compress)
            return
        elif isinstance(message, Iterable) and not isinstance(message, dict):
            await self._send_fragments_async(_aiter_sync(message), compress)  # type: ignore[arg-type]
            return
        else:
            raise TypeError(f"cannot send {kind.__name__}: send str, bytes or an iterable of them")
        if proto.out_bytes > self.write_limit:
            self.flush()
        elif not self._flush_scheduled:
            self._flush_scheduled = True
            self._flush_queue.add(self)
        if self._paused_writing:
            await self._drain()

    def send_nowait(self, message: Data, *, compress: bool | None = None) -> None:
        """Queue a message without waiting (for :class:`Listener` callbacks and fan-out).

        The bytes are written at the end of the current read callback or loop iteration.
        It never blocks, so check :attr:`buffered_amount` before sending much to a client
        that may not be reading. Raises ConnectionClosed when the connection is not open.
        """
        # The same dispatch as send()'s, which keeps its own copy inline rather than calling
        # this: send() is the idiomatic API's per-message path (one Python call less there).
        proto = self._proto
        if proto is None or proto.state is not State.OPEN:
            raise self._closed_error()
        if type(message) is str:
            proto.send_text(message, compress=compress)
        elif isinstance(message, (bytes, bytearray, memoryview)):
            proto.send_binary(message, compress=compress)
        else:
            raise TypeError(f"cannot send {type(message).__name__}: send str or bytes")
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._flush_queue.add(self)

    def send_prepared(
        self, frame: PreparedFrame, *, compress: bool | None = None, now: bool = False
    ) -> None:
        """Queue a message prepared once for many connections (see
        :class:`~pulsewire.protocol.PreparedFrame`), without waiting: like
        :meth:`send_nowait`, written at the end of the loop iteration, or at once with
        ``now=True``. Raises ConnectionClosed when the connection is not open, and
        :class:`~pulsewire.protocol.InvalidState` while a fragmented message is being sent."""
        proto = self._proto
        if proto is None or proto.state is not State.OPEN:
            raise self._closed_error()
        proto.send_prepared(frame, compress=compress)
        if now:
            self.flush()
        elif not self._flush_scheduled:
            self._flush_scheduled = True
            self._flush_queue.add(self)

    def close_nowait(self, code: int = CloseCode.NORMAL_CLOSURE, reason: str = "") -> None:
        """Start the closing handshake without waiting for it (see :meth:`close`)."""
        proto = self._proto
        if proto is not None and proto.state is State.OPEN:
            proto.send_close(code, reason)
            self.flush()
            self._start_close_timer()

    async def _send_fragments_async(
        self, fragments: AsyncIterable[Data], compress: bool | None
    ) -> None:
        done = self._fragmenting = self._loop.create_future()
        try:
            await self._send_fragments(fragments, compress)
        finally:
            self._fragmenting = None
            done.set_result(None)

    async def _send_fragments(self, fragments: AsyncIterable[Data], compress: bool | None) -> None:
        proto = self._proto
        assert proto is not None
        iterator = fragments.__aiter__()
        try:
            previous = await iterator.__anext__()
        except StopAsyncIteration:
            return
        text = isinstance(previous, str)
        first = True
        while True:
            try:
                current = await iterator.__anext__()
            except StopAsyncIteration:
                current = None
            if current is not None and isinstance(current, str) != text:
                proto.fail(CloseCode.INTERNAL_ERROR, "mixed text and binary fragments")
                self.flush()
                raise TypeError("all fragments of a message must be str, or all bytes")
            if proto.state is not State.OPEN:
                raise self._closed_error()
            fin = current is None
            if first:
                if text:
                    proto.send_text(previous, fin=fin, compress=compress)
                else:
                    proto.send_binary(previous, fin=fin, compress=compress)  # type: ignore[arg-type]
                first = False
            else:
                proto.send_continuation(previous, fin=fin)
            self.flush()
            if self._paused_writing:
                await self._drain()
            if current is None:
                return
            previous = current

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
        waiter: asyncio.Future[float | None] = self._loop.create_future()
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

    async def wait_closed(self) -> None:
        """Wait until the connection is closed."""
        if self._closed is None:
            return
        await asyncio.shield(self._closed)

    def abort(self) -> None:
        """Close TCP at once, without a closing handshake."""
        if self._transport is not None:
            self._transport.abort()

    # -------------------------------------------------------------------- flow control

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._flush_queue.add(self)

    def flush(self) -> None:
        """Write what is queued for this connection now, rather than at the end of the loop
        iteration (e.g. in a fan-out, so that the first peers receive while the loop is still
        serving the others)."""
        self._flush_scheduled = False
        proto = self._proto
        transport = self._transport
        if proto is None or transport is None:
            return
        data = proto.pending_output
        if data:
            if len(data) == 1:
                transport.write(data[0])
            elif proto.out_bytes > 65536:
                transport.writelines(data)  # large payloads: vectored write, no join copy
            else:
                transport.write(b"".join(data))
            proto.output_written()
        account = self._account
        if account is not None:  # _report(), inline: once per write
            held = self._queued + proto.buffered_in + transport.get_write_buffer_size()
            if held != account.held and not account.hold(held):
                self._over_budget()
        if proto.close_transport:
            self._close_transport()

    def _close_transport(self) -> None:
        transport = self._transport
        if transport is None or transport.is_closing() or self._lingering:
            return
        proto = self._proto
        if proto is not None:
            data = proto.pending_output
            if data:
                transport.write(b"".join(data))
                proto.output_written()
        if proto is not None and proto.failure is not None and transport.can_write_eof():
            # We failed the connection (1002, 1007, 1009, 1013...) and the peer may still be
            # sending: closing with unread input would make the kernel answer with a reset,
            # and the peer could lose our Close frame (and its code) with it. Shut our side
            # after the Close instead, and read (the core drops it) until the peer's EOF.
            self._lingering = True
            transport.write_eof()
            if self._paused_reading:
                self._paused_reading = 0
                transport.resume_reading()
            self._ended_now()  # for the handler, the connection is over now
        else:
            transport.close()  # flushes the write buffer first
        self._start_close_timer()  # abort if the buffer cannot drain or the peer never closes

    def _start_close_timer(self) -> None:
        if self._close_timer is None and self._transport is not None:
            self._close_timer = self._loop.call_later(
                self.close_timeout, self._close_timeout_expired
            )

    def _close_timeout_expired(self) -> None:
        self._close_timer = None
        if self._transport is not None:
            logger.debug("close timeout expired; aborting the connection")
            self._transport.abort()

    def pause_writing(self) -> None:
        self._paused_writing = True
        if self._pause_while_writing:
            # Stop taking input until the output drains: whatever the peer sends that makes
            # us write (requests, pings) waits in TCP buffers, not in ours.
            self._pause(_WRITE)

    def resume_writing(self) -> None:
        self._paused_writing = False
        self._resume(_WRITE)
        if self._account is not None:
            self._report()
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        self._drain_waiter = None

    async def _drain(self) -> None:
        if self._transport is None:
            raise self._closed_error()
        waiter = self._drain_waiter
        if waiter is None or waiter.done():
            waiter = self._drain_waiter = self._loop.create_future()
        await asyncio.shield(waiter)
        if self._transport is None:
            raise self._closed_error()

    def _pause(self, reason: int) -> None:
        """Stop reading from the socket for ``reason`` (reading resumes once no reason holds)."""
        if self._lingering:
            return  # draining what the peer still sends until it closes
        paused = self._paused_reading
        self._paused_reading = paused | reason
        if not paused:
            transport = self._transport
            if transport is not None and not transport.is_closing():
                transport.pause_reading()

    def _resume(self, reason: int) -> None:
        paused = self._paused_reading
        if not paused & reason:
            return
        self._paused_reading = paused = paused & ~reason
        if paused:
            return  # another reason still holds
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.resume_reading()
        proto = self._proto
        if proto is not None and proto.input_held_back:
            # Parsed input is waiting in the core; not from here (maybe another
            # connection's report, or recv()), but from the loop.
            self._loop.call_soon(self._parse_held_back)

    def _parse_held_back(self) -> None:
        proto = self._proto
        if proto is not None and proto.input_held_back and not self._paused_reading:
            self.data_received(b"")

    def _budget_pause(self) -> None:
        self._pause(_BUDGET)

    def _budget_resume(self) -> None:
        self._resume(_BUDGET)

    def _report(self) -> None:
        """Tell the memory account what this connection holds now: input not yet parsed or
        assembled, messages not yet read, and output not yet written."""
        account = self._account
        proto = self._proto
        if account is None or proto is None:
            return
        held = self._queued + proto.out_bytes + proto.buffered_in
        transport = self._transport
        if transport is not None:
            held += transport.get_write_buffer_size()
        if held != account.held and not account.hold(held):
            self._over_budget()

    def _over_budget(self) -> None:
        """Past a hard limit (its own or its address's): fail with 1013 (once)."""
        proto = self._proto
        if proto is None or proto.state is State.CLOSED:
            return  # closing already; the close timer bounds how long that takes
        logger.info(
            "connection over its memory budget; closing it",
            extra={"remote": self.remote_address},
        )
        proto.fail(CloseCode.TRY_AGAIN_LATER, "over its memory budget")
        self._close_transport()

    def _closed_error(self) -> ConnectionClosed:
        """A new exception for each raise: one stored and raised again would collect the
        frames it passes through, and with them this connection."""
        ended = self._ended
        if ended is not None:
            return connection_closed(ended.rcvd, ended.sent, ended.rcvd_then_sent)
        proto = self._proto
        if proto is None:
            return connection_closed(None, None, None)
        return connection_closed(proto.close_rcvd, proto.close_sent, proto.close_rcvd_then_sent)

    # ----------------------------------------------------------------------- keepalive

    def _opened(self, proto: CoreConnection, trailing: bytes) -> None:
        """Switch from the handshake to WebSocket frames."""
        if proto.max_inflated_per_read is None:
            # data_received handles held-back input: bound what one read inflates into, even
            # when it brings many small bombs, each under max_size.
            proto.max_inflated_per_read = max(proto.max_message_size or 0, INFLATED_PER_READ)
        self._proto = proto
        self._closed = self._loop.create_future()
        transport = self._transport
        if transport is not None:
            transport.set_write_buffer_limits(high=self.write_limit)
        if self.ping_interval:
            self._keepalive = self._loop.call_later(self.ping_interval, self._send_keepalive)
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
        waiter: asyncio.Future[float | None] = self._loop.create_future()
        pings[data] = (waiter, time.monotonic())
        proto.send_ping(data)
        self.flush()
        if self.ping_timeout:
            self._keepalive = self._loop.call_later(
                self.ping_timeout, self._check_keepalive, waiter
            )
        elif self.ping_interval:
            self._keepalive = self._loop.call_later(self.ping_interval, self._send_keepalive)

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
        self._keepalive = self._loop.call_later(delay or 0.0, self._send_keepalive)


async def _aiter_sync(items: Iterable[Data]) -> AsyncIterator[Data]:
    for item in items:
        yield item
