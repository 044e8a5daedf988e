"""The threaded client's open connection: a blocking socket, the Sans-I/O core and one reader
thread (:func:`pulsewire.sync.connect` opens it).

Threads and locks:

* ``_cond`` (a Condition over ``_lock``) guards the core Connection, the message queue, the
  pings waiting for their pong and the close state. It is only held for short, non-blocking work.
* ``_write_lock`` is held while bytes taken from the core are written, so they reach the socket
  in the order the core produced them. The reader thread never waits for it: when another
  thread is writing, that thread also writes what the reader queued (pongs, the Close echo)
  before it lets go (see :meth:`ClientConnection._flush`). So a slow send never stops reading.
* ``_message_lock`` serialises data messages: the fragments of one message are never
  interleaved with another message.

The reader thread owns the socket and is the only one to close it. Another thread that needs
it gone (close timeout, write error) shuts it down, which wakes the reader. The reader waits
with a selector rather than a socket timeout, because a timeout would also apply to the
``sendall`` of other threads and could cut a frame in half.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import selectors
import socket
import ssl as ssl_module
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from types import TracebackType

from ..protocol.close import CloseCode
from ..protocol.connection import Connection as CoreConnection
from ..protocol.connection import State
from ..protocol.errors import (
    ConcurrencyError,
    ConnectionClosed,
    ConnectionClosedOK,
    connection_closed,
)
from ..protocol.events import CloseReceived, Pong
from ..protocol.handshake import Headers, Request, Response

__all__ = ["ClientConnection", "Data"]

logger = logging.getLogger("pulsewire.sync")

Data = str | bytes
_BYTES_LIKE = (bytes, bytearray, memoryview)
READ_SIZE = 65536
"""Bytes read from the socket at once."""
_END = object()  # end of a fragment iterator


class ClientConnection:
    """An open client connection, as returned by :func:`connect`; every method is thread-safe.

    :meth:`send` sends ``str`` as text, bytes-like as binary and an iterable of either as one
    fragmented message; :meth:`recv` and iteration (``for message in ws``, which ends on a
    normal close) receive. Up to ``max_queue`` messages wait unread; beyond that the reader
    thread stops reading the socket, and TCP flow control slows the server down.
    """

    def __init__(
        self,
        sock: socket.socket,
        core: CoreConnection,
        response: Response,
        trailing: bytes = b"",
        *,
        max_queue: int = 16,
        close_timeout: float = 10.0,
        ping_interval: float | None = None,
        ping_timeout: float | None = 20.0,
        request: Request | None = None,
    ) -> None:
        self._sock = sock
        self._proto = core
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._write_lock = threading.Lock()
        self._message_lock = threading.Lock()
        self._messages: deque[Data] = deque()
        self._pings: dict[bytes, tuple[concurrent.futures.Future[float], float]] = {}
        self._closed_exc: ConnectionClosed | None = None
        self._close_deadline: float | None = None
        self._stop = False  # the reader must stop (abort, or a write error)
        self._sock_closed = False
        self._ka_next: float | None = (
            None if ping_interval is None else time.monotonic() + ping_interval
        )
        self._ka_waiter: concurrent.futures.Future[float] | None = None
        self._ka_sent = 0.0
        self.max_queue = max_queue
        self.close_timeout = close_timeout
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.latency = 0.0
        """Round-trip time of the last pong received, in seconds."""
        self.request = request
        """The opening request this client sent (path, headers), as with asyncio."""
        self.response_headers: Headers = response.headers
        self.subprotocol: str | None = response.subprotocol
        self.extensions = "permessage-deflate" if response.deflate is not None else ""
        self.remote_address: object = sock.getpeername()
        self._thread = threading.Thread(
            target=self._read_loop, args=(trailing,), name="pulsewire-sync-reader", daemon=True
        )
        self._thread.start()

    def __repr__(self) -> str:
        return f"<pulsewire.sync.ClientConnection {self.remote_address} {self.state.name}>"

    # ----------------------------------------------------------------------- properties

    @property
    def state(self) -> State:
        """OPEN, CLOSING (closing handshake started, TCP not closed yet) or CLOSED."""
        if self._closed_exc is not None:
            return State.CLOSED
        state = self._proto.state
        return State.CLOSING if state is State.CLOSED else state

    @property
    def close_code(self) -> int | None:
        """The code of the Close frame received, 1006 if none, None while open."""
        exc = self._closed_exc
        return None if exc is None else exc.code

    @property
    def close_reason(self) -> str | None:
        """The reason of the Close frame received, None while open."""
        exc = self._closed_exc
        return None if exc is None else exc.reason

    # ----------------------------------------------------------------------- receiving

    def recv(self, timeout: float | None = None) -> Data:
        """The next message: ``str`` for text, ``bytes`` for binary.

        Raises ``TimeoutError`` when none comes within ``timeout`` seconds, and
        :class:`~pulsewire.ConnectionClosed` once the connection is closed and every message
        was read (:class:`~pulsewire.ConnectionClosedOK` after a normal close).
        """
        with self._cond:
            if not self._cond.wait_for(lambda: self._messages or self._closed_exc, timeout):
                raise TimeoutError(f"no message within {timeout} seconds")
            if self._messages:
                message = self._messages.popleft()
                if len(self._messages) + 1 >= self.max_queue:
                    self._cond.notify_all()  # the reader may be waiting for room
                return message
            assert self._closed_exc is not None
            raise self._closed_exc

    def __iter__(self) -> Iterator[Data]:
        """Yield messages until a normal close (an abnormal one raises ConnectionClosedError)."""
        try:
            while True:
                yield self.recv()
        except ConnectionClosedOK:
            return

    # ----------------------------------------------------------------------- sending

    def send(
        self,
        message: Data | bytearray | memoryview | Iterable[Data | bytearray | memoryview],
        *,
        compress: bool | None = None,
    ) -> None:
        """Send ``str`` as text, bytes-like as binary, an iterable of either as fragments.

        ``compress=False`` skips permessage-deflate for this message. Raises
        :class:`~pulsewire.ConnectionClosed` if the connection is closing or closed.
        """
        with self._message_lock:
            if isinstance(message, (str, *_BYTES_LIKE)):
                self._queue(message, first=True, fin=True, compress=compress)
            elif isinstance(message, Iterable) and not isinstance(message, Mapping):
                self._send_fragments(iter(message), compress)
            else:
                raise TypeError(
                    f"cannot send {type(message).__name__}: send str, bytes or an iterable"
                )

    def _send_fragments(self, fragments: Iterator[object], compress: bool | None) -> None:
        sent = False
        try:
            previous = next(fragments, _END)
            if previous is _END:
                return
            text = isinstance(previous, str)
            _check_fragment(previous, text)
            while True:
                current = next(fragments, _END)
                if current is not _END:
                    _check_fragment(current, text)
                self._queue(previous, first=not sent, fin=current is _END, compress=compress)  # type: ignore[arg-type]
                sent = True
                if current is _END:
                    return
                previous = current
        except ConnectionClosed:
            raise
        except BaseException:
            if sent:  # half a message is out: the connection cannot be used any more
                self._fail(CloseCode.INTERNAL_ERROR, "fragmented message aborted")
            raise

    def _queue(
        self,
        data: str | bytes | bytearray | memoryview,
        *,
        first: bool,
        fin: bool,
        compress: bool | None,
    ) -> None:
        with self._cond:
            proto = self._proto
            if proto.state is not State.OPEN:
                raise self._closed_error()
            if not first:
                proto.send_continuation(data if isinstance(data, str) else bytes(data), fin=fin)
            elif isinstance(data, str):
                proto.send_text(data, fin=fin, compress=compress)
            else:
                proto.send_binary(
                    data if isinstance(data, bytes) else bytes(data), fin=fin, compress=compress
                )
        self._write()

    def ping(self, data: str | bytes | None = None, *, timeout: float | None = None) -> float:
        """Send a Ping and wait for its Pong; return the round-trip time in seconds.

        ``data`` defaults to 4 random bytes. Raises ``TimeoutError`` after ``timeout`` seconds
        and :class:`~pulsewire.ConnectionClosed` if the connection closes first.
        """
        payload = data.encode("utf-8") if isinstance(data, str) else data
        waiter: concurrent.futures.Future[float] = concurrent.futures.Future()
        with self._cond:
            if self._proto.state is not State.OPEN:
                raise self._closed_error()
            if payload is None:
                payload = os.urandom(4)
                while payload in self._pings:
                    payload = os.urandom(4)
            elif payload in self._pings:
                raise ConcurrencyError(
                    "a ping with the same payload is already waiting for its pong"
                )
            self._proto.send_ping(payload)
            self._pings[payload] = (waiter, time.monotonic())
        self._write()
        try:
            return waiter.result(timeout)
        except concurrent.futures.TimeoutError:  # not the builtin TimeoutError on Python 3.10
            with self._cond:
                if self._pings.get(payload, (None, 0.0))[0] is waiter:
                    del self._pings[payload]
            raise TimeoutError(f"no pong within {timeout} seconds") from None

    def pong(self, data: str | bytes = b"") -> None:
        """Send an unsolicited Pong (a one-way heartbeat)."""
        with self._cond:
            if self._proto.state is not State.OPEN:
                raise self._closed_error()
            self._proto.send_pong(data.encode("utf-8") if isinstance(data, str) else data)
        self._write()

    # ----------------------------------------------------------------------- closing

    def close(self, code: int = CloseCode.NORMAL_CLOSURE, reason: str = "") -> None:
        """Run the closing handshake, wait for the server to close TCP (at most
        ``close_timeout`` seconds), then close the socket. Does nothing more once closing."""
        with self._cond:
            started = self._proto.state is State.OPEN
            if started:
                self._proto.send_close(code, reason)
                self._close_deadline = time.monotonic() + self.close_timeout
                self._cond.notify_all()  # the reader may be waiting for room in the queue
        if started:
            try:
                self._flush()
            except OSError:
                self._abort()
        self._join()

    def __enter__(self) -> ClientConnection:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _join(self) -> None:
        if threading.current_thread() is self._thread:
            return
        self._thread.join(self.close_timeout)
        if self._thread.is_alive():
            self._abort()
            self._thread.join()

    def _abort(self) -> None:
        """Make the reader stop at once (it then closes the socket)."""
        with self._cond:
            self._stop = True
            self._cond.notify_all()
            if not self._sock_closed:
                _shutdown(self._sock)

    def _fail(self, code: int, reason: str) -> None:
        with self._cond:
            self._proto.fail(code, reason)
        try:
            self._write()
        except ConnectionClosed:
            pass

    def _closed_error(self) -> ConnectionClosed:
        if self._closed_exc is not None:
            return self._closed_exc
        proto = self._proto
        return connection_closed(proto.close_rcvd, proto.close_sent, proto.close_rcvd_then_sent)

    # ----------------------------------------------------------------------- writing

    def _flush(self, block: bool = True) -> None:
        """Write what the core has queued, in order.

        With ``block=False`` (the reader thread), return at once if another thread is writing:
        that thread writes our bytes too, since it checks for more under ``_lock`` and lets
        go of ``_write_lock`` while still holding ``_lock``.
        """
        if not self._write_lock.acquire(blocking=block):
            return
        released = False
        try:
            while True:
                with self._lock:
                    data = self._proto.data_to_send()
                    if not data:
                        self._write_lock.release()
                        released = True
                        return
                for chunk in data:
                    self._sock.sendall(chunk)
        finally:
            if not released:
                self._write_lock.release()

    def _write(self) -> None:
        """Flush from a caller's thread; a write error closes the connection and raises."""
        try:
            self._flush()
        except OSError as exc:
            self._abort()
            self._join()
            raise self._closed_error() from exc
        if self._proto.close_transport:  # the core failed the connection
            self._abort()

    # ----------------------------------------------------------------------- reader thread

    def _read_loop(self, trailing: bytes) -> None:
        selector = selectors.DefaultSelector()
        try:
            selector.register(self._sock, selectors.EVENT_READ)
            if trailing:
                self._receive(trailing)
            while not self._proto.close_transport and not self._stop:
                self._wait_for_room()
                now = time.monotonic()
                deadline = min(
                    (t for t in (self._close_deadline, self._ka_next) if t is not None),
                    default=None,
                )
                if deadline is not None and deadline <= now:
                    if not self._on_deadline(now):
                        break
                    continue
                if not self._readable(selector, None if deadline is None else deadline - now):
                    continue
                try:
                    data = self._sock.recv(READ_SIZE)
                except OSError:
                    data = b""
                self._receive(data)
        except Exception:
            logger.exception("error in the WebSocket reader thread")
        finally:
            selector.close()
            self._finish()

    def _readable(self, selector: selectors.BaseSelector, timeout: float | None) -> bool:
        sock = self._sock
        if isinstance(sock, ssl_module.SSLSocket) and sock.pending():
            return True  # decrypted bytes wait in the TLS layer: the selector cannot see them
        return bool(selector.select(timeout))

    def _wait_for_room(self) -> None:
        """Backpressure: stop reading while ``max_queue`` messages wait (only while OPEN)."""
        with self._cond:
            paused = False
            while (
                len(self._messages) >= self.max_queue
                and self._proto.state is State.OPEN
                and not self._stop
            ):
                paused = True
                self._cond.wait()
        if paused and self._ka_next is not None:
            # The pong may be waiting unread in the socket: give it time to be read.
            delay = self.ping_timeout or self.ping_interval or 0.0
            self._ka_next = max(self._ka_next, time.monotonic() + delay)

    def _receive(self, data: bytes) -> None:
        with self._cond:
            proto = self._proto
            if data:
                proto.receive_data(data)
            else:
                proto.receive_eof()
            events = proto.events_received()
            for event in events:
                if isinstance(event, (str, bytes)):
                    self._messages.append(event)
                elif isinstance(event, Pong):
                    self._pong_received(event.data)
                elif isinstance(event, CloseReceived):
                    self._ka_next = None
            if proto.state is not State.OPEN and self._close_deadline is None:
                # Wait for the server to close TCP (RFC 6455 7.1.1), but not forever.
                self._close_deadline = time.monotonic() + self.close_timeout
            if events:
                self._cond.notify_all()
        try:
            self._flush(block=False)
        except OSError:
            self._stop = True

    def _pong_received(self, data: bytes) -> None:
        pings = self._pings
        if data not in pings:
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

    def _on_deadline(self, now: float) -> bool:
        """Handle the close timeout and keepalive; return False to stop reading."""
        if self._close_deadline is not None and now >= self._close_deadline:
            logger.debug("close timeout expired; closing the socket")
            return False
        if self._ka_next is not None and now >= self._ka_next:
            self._keepalive(now)
        return True

    def _keepalive(self, now: float) -> None:
        interval = self.ping_interval or 0.0
        with self._cond:
            proto = self._proto
            waiter = self._ka_waiter
            self._ka_waiter = None
            if proto.state is not State.OPEN:
                self._ka_next = None
                return
            if waiter is not None:
                if not waiter.done():
                    logger.info("keepalive ping timed out; closing the connection")
                    proto.fail(CloseCode.INTERNAL_ERROR, "keepalive ping timeout")
                    self._ka_next = None
                    return
                if self._ka_sent + interval > now:
                    self._ka_next = self._ka_sent + interval
                    return
            payload = os.urandom(4)
            while payload in self._pings:
                payload = os.urandom(4)
            waiter = concurrent.futures.Future()
            self._pings[payload] = (waiter, now)
            proto.send_ping(payload)
            self._ka_sent = now
            if self.ping_timeout:
                self._ka_waiter = waiter
                self._ka_next = now + self.ping_timeout
            else:
                self._ka_next = now + interval
        try:
            self._flush(block=False)
        except OSError:
            self._stop = True

    def _finish(self) -> None:
        """Reader thread, last step: write what is left, close the socket, wake everyone."""
        if not self._write_lock.acquire(timeout=self.close_timeout):
            with self._lock:
                _shutdown(self._sock)  # a writer is stuck in sendall: make it fail
            self._write_lock.acquire()
        try:
            with self._lock:
                data = self._proto.data_to_send()
            if data:
                try:
                    self._sock.settimeout(self.close_timeout)  # nobody else is writing now
                    for chunk in data:
                        self._sock.sendall(chunk)
                except OSError:
                    pass
            with self._lock:
                self._sock.close()
                self._sock_closed = True
        finally:
            self._write_lock.release()
        with self._cond:
            proto = self._proto
            proto.receive_eof()
            closed = connection_closed(
                proto.close_rcvd, proto.close_sent, proto.close_rcvd_then_sent
            )
            self._closed_exc = closed
            pings = list(self._pings.values())
            self._pings.clear()
            self._cond.notify_all()
        for waiter, _ in pings:
            if not waiter.done():
                waiter.set_exception(closed)


def _check_fragment(fragment: object, text: bool) -> None:
    if not isinstance(fragment, str if text else _BYTES_LIKE):
        raise TypeError("all fragments of a message must be str, or all bytes-like")


def _shutdown(sock: socket.socket) -> None:
    """Shut the TCP connection down both ways, which wakes a thread blocked on it."""
    try:
        # The plain socket's method: SSLSocket.shutdown would also drop its TLS state under
        # the feet of the reader thread.
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:
        pass
