"""The writing side of an asyncio connection: the transport, the core's output, flow control.

:class:`Sender` is the base of :class:`~pulsewire.aio.connection.Connection` (which adds the
reading side, keepalive and the closing handshake). Writes are batched: ``send`` queues frames
in the core and the bytes are written once per batch, either when the consumer is about to wait
for more input (everything it produced in reaction to one read goes out in one system call) or
at the end of the loop iteration, whichever comes first, through one :class:`FlushQueue` per
event loop. ``send`` waits while the transport's write buffer is above its high-water mark;
reading pauses for reasons kept as bits (:data:`PAUSE_QUEUE`, :data:`PAUSE_WRITE`,
:data:`PAUSE_BUDGET`), each ending on its own. What the connection holds is reported to its
memory account (:mod:`.budget`); over a hard limit it is failed with 1013.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from typing import Any

from ..protocol.close import CloseCode
from ..protocol.connection import Connection as CoreConnection
from ..protocol.connection import State
from ..protocol.errors import ConnectionClosed, ProtocolError, connection_closed
from ..protocol.frames import PreparedFrame
from .budget import Account

__all__ = ["PAUSE_BUDGET", "PAUSE_QUEUE", "PAUSE_WRITE", "Data", "FlushQueue", "Sender"]

logger = logging.getLogger("pulsewire")

Data = str | bytes

# Why reading from the socket is paused (bits of Sender._paused_reading).
PAUSE_QUEUE = 1
"""``max_queue`` messages wait unread."""
PAUSE_WRITE = 2
"""The transport's write buffer is above its high-water mark."""
PAUSE_BUDGET = 4
"""The memory account is over its (or its address's) high-water mark."""


class FlushQueue:
    """Writes out, once per event-loop iteration, every connection that queued frames in it.

    One loop callback for all of them rather than one ``call_soon`` per connection: a fan-out
    to 10,000 connections would otherwise allocate 10,000 handles, bound methods and contexts
    per message (measured: a third of the hub's fan-out CPU, and enough short-lived survivors
    to trigger a full garbage collection every few rounds, 380 ms each with 10,000 sessions).
    """

    __slots__ = ("loop", "pending")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.pending: list[Sender] = []  # not empty: run() is scheduled

    def add(self, conn: Sender) -> None:
        """Write ``conn`` out at the end of this loop iteration."""
        pending = self.pending
        pending.append(conn)
        if len(pending) == 1:
            self.loop.call_soon(self.run)

    def run(self) -> None:
        """The loop callback: write out every connection still waiting for it."""
        pending = self.pending
        self.pending = []
        for conn in pending:
            if conn._flush_scheduled:
                try:
                    conn.flush()
                except Exception:
                    logger.exception("error while writing to a connection")


_flush_queues: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, FlushQueue] = (
    weakref.WeakKeyDictionary()
)


def flush_queue(loop: asyncio.AbstractEventLoop) -> FlushQueue:
    """The flush queue of ``loop`` (one per event loop)."""
    queue = _flush_queues.get(loop)
    if queue is None:
        queue = _flush_queues[loop] = FlushQueue(loop)
    return queue


class Sender(asyncio.BufferedProtocol):
    """The transport, the protocol core and the writing side of a connection."""

    _pause_while_writing = False
    """Whether reading stops while the write buffer is above its high-water mark: on a
    server (see ServerConnection). A client keeps reading (up to ``max_queue`` messages),
    so that one that sends several messages before reading does not deadlock with such a
    server: one of the two sides must read while it cannot write."""

    __slots__ = (
        "_account",
        "_close_timer",
        "_closed",
        "_drain_waiter",
        "_ended",
        "_flush_queue",
        "_flush_scheduled",
        "_fragmenting",
        "_lingering",
        "_paused_reading",
        "_paused_writing",
        "_proto",
        "_queued",
        "_transport",
        "close_timeout",
        "loop",
        "remote_address",
        "write_limit",
    )

    def __init__(self, *, close_timeout: float = 10.0, write_limit: int = 65536) -> None:
        self.loop = asyncio.get_running_loop()
        """The event loop this connection runs on."""
        self._transport: asyncio.Transport | None = None
        self._proto: CoreConnection | None = None
        # Memory of the unread messages as last counted (when messages arrive, when the queue
        # empties, and when it is read while over budget): in between it may be more than
        # what remains, the safe side, and counting on every read would cost the hot path.
        self._queued = 0
        self._closed: asyncio.Future[None] | None = None
        # How the connection ended; never raised itself (see _closed_error).
        self._ended: ConnectionClosed | None = None
        self._drain_waiter: asyncio.Future[None] | None = None
        self._paused_writing = False
        self._paused_reading = 0  # why: PAUSE_QUEUE | PAUSE_WRITE | PAUSE_BUDGET
        self._lingering = False  # failed: our side is shut, reading until the peer's EOF
        self._account: Account | None = None
        self._flush_scheduled = False
        self._flush_queue = flush_queue(self.loop)
        self._fragmenting: asyncio.Future[None] | None = None
        self._close_timer: asyncio.TimerHandle | None = None
        self.close_timeout = close_timeout
        self.write_limit = write_limit
        self.remote_address: Any = None
        """The peer's address, as the transport gives it."""

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
        done = self._fragmenting = self.loop.create_future()
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

    async def wait_closed(self) -> None:
        """Wait until the connection is closed."""
        if self._closed is None:
            return
        await asyncio.shield(self._closed)

    def abort(self) -> None:
        """Close TCP at once, without a closing handshake."""
        if self._transport is not None:
            self._transport.abort()

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
            self._close_timer = self.loop.call_later(
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
            self._pause(PAUSE_WRITE)

    def resume_writing(self) -> None:
        self._paused_writing = False
        self._resume(PAUSE_WRITE)
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
            waiter = self._drain_waiter = self.loop.create_future()
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
            self.loop.call_soon(self._parse_held_back)

    def data_received(self, data: bytes) -> None:
        """Bytes read elsewhere, or ``b""`` to go on with input the core held back (the
        reading side, :class:`~pulsewire.aio.connection.Connection`, parses them)."""
        raise NotImplementedError

    def _parse_held_back(self) -> None:
        proto = self._proto
        if proto is not None and proto.input_held_back and not self._paused_reading:
            self.data_received(b"")

    def _budget_pause(self) -> None:
        self._pause(PAUSE_BUDGET)

    def _budget_resume(self) -> None:
        self._resume(PAUSE_BUDGET)

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

    def _ended_now(self) -> None:
        """No more messages will come or go (TCP may still linger): the close code is final
        and every waiter is woken (subclasses wake theirs too)."""
        proto = self._proto
        if proto is not None:
            self._ended = connection_closed(
                proto.close_rcvd, proto.close_sent, proto.close_rcvd_then_sent
            )
        else:
            self._ended = connection_closed(None, None, None)
        drain = self._drain_waiter
        if drain is not None and not drain.done():
            drain.set_result(None)


async def _aiter_sync(items: Iterable[Data]) -> AsyncIterator[Data]:
    for item in items:
        yield item
