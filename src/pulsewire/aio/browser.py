"""A browser-style ``WebSocket`` object on asyncio, with the semantics of the WHATWG standard::

    ws = WebSocket("ws://127.0.0.1:8765/")  # inside a running event loop: connects at once
    ws.onopen = lambda event: ws.send("hello")
    ws.onmessage = lambda event: print(event.data)
    await ws.wait_closed()

Differences with a browser: ``binaryType`` is "bytes" (default), "bytearray" or "memoryview";
listeners that are coroutine functions run as tasks; ``wait_closed()`` is an addition. Keyword
arguments other than ``protocols`` go to :func:`pulsewire.connect` (origin, ssl, compression...).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import re
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Generic, Literal, TypeVar, overload

from ..protocol.close import CloseCode
from ..protocol.errors import ConnectionClosed, PulsewireError
from ..protocol.handshake import parse_uri
from .client import ClientConnection, connect

__all__ = [
    "CloseEvent",
    "ErrorEvent",
    "Event",
    "InvalidAccessError",
    "InvalidStateError",
    "InvalidSyntaxError",
    "MessageEvent",
    "WebSocket",
]

logger = logging.getLogger("pulsewire")

BinaryType = Literal["bytes", "bytearray", "memoryview"]
MessageData = str | bytes | bytearray | memoryview
Listener = Callable[[Any], object]
_BINARY_TYPES: tuple[str, ...] = ("bytes", "bytearray", "memoryview")
_TOKEN_RE = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


class InvalidStateError(PulsewireError, RuntimeError):
    """The DOMException of that name: ``send()`` was called while CONNECTING."""


class InvalidAccessError(PulsewireError, ValueError):
    """The DOMException of that name: a close code other than 1000 or 3000-4999."""


class InvalidSyntaxError(PulsewireError, ValueError):
    """The ``SyntaxError`` DOMException: a bad URL, protocol list or close reason."""


# ---------------------------------------------------------------------------------- events


@dataclass(eq=False)
class Event:
    """A DOM event: ``type`` and ``target`` (the WebSocket that fired it)."""

    type: str
    target: WebSocket | None = None
    _stopped: bool = field(default=False, init=False, repr=False)

    def stopImmediatePropagation(self) -> None:
        """Call no further listeners for this event."""
        self._stopped = True


@dataclass(eq=False)
class MessageEvent(Event):
    """A message: ``data`` is ``str`` for text, binary data as ``binaryType`` says."""

    data: MessageData = ""
    origin: str = ""


@dataclass(eq=False)
class CloseEvent(Event):
    """The connection closed: the peer's ``code`` and ``reason`` (1006 and "" if none came),
    and ``wasClean``, true when the closing handshake completed."""

    code: int = 0
    reason: str = ""
    wasClean: bool = False


@dataclass(eq=False)
class ErrorEvent(Event):
    """The connection failed; browsers give no detail, ``error`` holds the exception."""

    error: BaseException | None = None


E = TypeVar("E", bound=Event)


class _EventHandler(Generic[E]):
    """An ``on<type>`` attribute: a listener that keeps its place when it is replaced."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.type = name[2:]

    @overload
    def __get__(self, obj: None, objtype: type) -> _EventHandler[E]: ...
    @overload
    def __get__(
        self, obj: WebSocket, objtype: type | None = None
    ) -> Callable[[E], object] | None: ...
    def __get__(
        self, obj: WebSocket | None, objtype: type | None = None
    ) -> _EventHandler[E] | Callable[[E], object] | None:
        if obj is None:
            return self
        return obj._handlers.get(self.type)

    def __set__(self, obj: WebSocket, value: Callable[[E], object] | None) -> None:
        obj._set_handler(
            self.type, value if callable(value) else None
        )  # like WebIDL: non-callables are null


@dataclass(eq=False)
class _Entry:
    callback: Listener | None  # None: the on<type> handler
    once: bool = False
    removed: bool = False


# ------------------------------------------------------------------------------- WebSocket


class WebSocket:
    """A WebSocket client with the browser API: create it in a running loop, set handlers.

    ``protocols`` is a subprotocol or a list of them; ``connect_options`` go to
    :func:`pulsewire.connect`. Raises :class:`InvalidSyntaxError` for a bad URL or protocol
    list (``http(s)://`` URLs are accepted as ``ws(s)://``, as browsers do).
    """

    CONNECTING: Final = 0
    OPEN: Final = 1
    CLOSING: Final = 2
    CLOSED: Final = 3

    onopen = _EventHandler[Event]()
    onmessage = _EventHandler[MessageEvent]()
    onerror = _EventHandler[ErrorEvent]()
    onclose = _EventHandler[CloseEvent]()

    def __init__(
        self, url: str, protocols: str | Sequence[str] | None = None, **connect_options: Any
    ) -> None:
        loop = asyncio.get_running_loop()
        self._url, self._origin = _parse_url(url)
        subprotocols = _parse_protocols(protocols)
        self._state = self.CONNECTING
        self._protocol = ""
        self._extensions = ""
        self._binary_type: BinaryType = "bytes"
        self._conn: ClientConnection | None = None
        self._unsent = 0  # bytes passed to send() and not yet handed to the connection
        self._discarded = 0  # bytes passed to send() while CLOSING or CLOSED
        self._listeners: dict[str, list[_Entry]] = {}
        self._handlers: dict[str, Listener] = {}
        self._tasks: set[asyncio.Future[Any]] = set()
        options = {"subprotocols": subprotocols, **connect_options}
        self._connecting = loop.create_task(_open(self._url, options))
        self._task = loop.create_task(self._run())

    def __repr__(self) -> str:
        state = ("CONNECTING", "OPEN", "CLOSING", "CLOSED")[self._state]
        return f"<WebSocket {self._url} {state}>"

    # ------------------------------------------------------------------------- attributes

    @property
    def url(self) -> str:
        return self._url

    @property
    def readyState(self) -> int:
        """CONNECTING (0), OPEN (1), CLOSING (2) or CLOSED (3)."""
        return self._state

    @property
    def protocol(self) -> str:
        """The subprotocol the server chose ("" until open, or if none)."""
        return self._protocol

    @property
    def extensions(self) -> str:
        """The server's Sec-WebSocket-Extensions value ("" until open, or if none)."""
        return self._extensions

    @property
    def bufferedAmount(self) -> int:
        """Bytes passed to send() and not written to the network yet (frame headers included
        once the connection has them). Once closing, each send() only adds to it."""
        conn = self._conn
        return self._unsent + (conn.buffered_amount if conn is not None else 0) + self._discarded

    @property
    def binaryType(self) -> BinaryType:
        """The type of binary ``MessageEvent.data``: "bytes", "bytearray" or "memoryview"."""
        return self._binary_type

    @binaryType.setter
    def binaryType(self, value: str) -> None:
        if value in _BINARY_TYPES:  # browsers ignore invalid values
            self._binary_type = value  # type: ignore[assignment]

    # ------------------------------------------------------------------------- methods

    def send(self, data: str | bytes | bytearray | memoryview) -> None:
        """Queue a message: ``str`` as text, bytes-like as binary. Never blocks.

        Raises :class:`InvalidStateError` while CONNECTING; once CLOSING or CLOSED the data is
        discarded and only ``bufferedAmount`` grows.
        """
        if self._state == self.CONNECTING:
            raise InvalidStateError("cannot send while the WebSocket is CONNECTING")
        if isinstance(data, str):
            data = _usv(data)
            size = len(data.encode("utf-8"))
        elif isinstance(data, (bytes, bytearray, memoryview)):
            data = bytes(data)  # a snapshot, as browsers take one
            size = len(data)
        else:
            raise TypeError(f"cannot send {type(data).__name__}: send str or bytes-like data")
        conn = self._conn
        if self._state != self.OPEN or conn is None:
            self._discarded += size
            return
        self._unsent += size
        self._spawn(self._send(conn, data, size))

    async def _send(self, conn: ClientConnection, data: str | bytes, size: int) -> None:
        # Tasks start in creation order and Connection.send queues the frame before its first
        # await, so messages go out in the order of the send() calls, before a later close().
        self._unsent -= size
        try:
            await conn.send(data)
        except ConnectionClosed:
            self._discarded += size

    def close(self, code: int | None = None, reason: str | None = None) -> None:
        """Start the closing handshake (with no code and no reason, an empty Close frame).

        ``code`` must be 1000 or 3000-4999 (:class:`InvalidAccessError`), ``reason`` at most
        123 bytes of UTF-8 (:class:`InvalidSyntaxError`). While CONNECTING, the connection
        fails (error, then close with 1006); once CLOSING or CLOSED, nothing happens.
        """
        if code is not None:
            if isinstance(code, bool) or not isinstance(code, int):
                raise TypeError("the close code must be an int")
            if code != CloseCode.NORMAL_CLOSURE and not 3000 <= code <= 4999:
                raise InvalidAccessError(f"close code must be 1000 or 3000-4999, not {code}")
        if reason is not None:
            reason = _usv(reason)
            if len(reason.encode("utf-8")) > 123:
                raise InvalidSyntaxError("close reason longer than 123 bytes in UTF-8")
        state = self._state
        if state in (self.CLOSING, self.CLOSED):
            return
        self._state = self.CLOSING
        if state == self.CONNECTING:
            self._connecting.cancel()  # _run fails the connection (also if it just opened)
            return
        if code is None:
            code = CloseCode.NO_STATUS_RCVD if reason is None else CloseCode.NORMAL_CLOSURE
        assert self._conn is not None
        self._spawn(self._conn.close(code, reason or ""))

    async def wait_closed(self) -> None:
        """Wait until the close event was dispatched and the listeners' tasks are done."""
        await asyncio.shield(self._task)
        current = asyncio.current_task()
        pending = [task for task in self._tasks if task is not current]
        if pending:
            await asyncio.wait(pending)

    # ------------------------------------------------------------------------- events

    def addEventListener(self, type: str, listener: Listener | None, once: bool = False) -> None:
        """Call ``listener(event)`` for each event of ``type`` (once per listener, like the DOM)."""
        if listener is None:
            return
        entries = self._listeners.setdefault(type, [])
        if any(entry.callback == listener for entry in entries):  # ==: bound methods too
            return
        entries.append(_Entry(listener, once))

    def removeEventListener(self, type: str, listener: Listener | None) -> None:
        """Stop calling ``listener`` for events of ``type``."""
        for entry in self._listeners.get(type, []):
            if entry.callback == listener and listener is not None:
                self._remove(type, entry)
                return

    def dispatchEvent(self, event: Event) -> bool:
        """Call the listeners of ``event.type`` in order; True (events are not cancelable)."""
        event.target = self
        for entry in list(self._listeners.get(event.type, [])):
            if entry.removed:
                continue
            if entry.once:
                self._remove(event.type, entry)
            callback = entry.callback or self._handlers.get(event.type)
            if callback is not None:
                self._call(callback, event)
            if event._stopped:
                break
        return True

    def _set_handler(self, type: str, handler: Listener | None) -> None:
        if handler is None:
            if self._handlers.pop(type, None) is not None:
                entry = next(e for e in self._listeners[type] if e.callback is None)
                self._remove(type, entry)
            return
        if type not in self._handlers:
            self._listeners.setdefault(type, []).append(_Entry(None))
        self._handlers[type] = handler

    def _remove(self, type: str, entry: _Entry) -> None:
        entry.removed = True
        self._listeners[type].remove(entry)

    def _call(self, callback: Listener, event: Event) -> None:
        try:
            result = callback(event)
        except Exception:
            logger.exception("exception in a WebSocket %s listener", event.type)
            return
        if inspect.isawaitable(result):
            self._spawn(result)

    def _spawn(self, awaitable: Any) -> None:
        task = asyncio.ensure_future(awaitable)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Future[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("exception in a WebSocket task", exc_info=task.exception())

    # ------------------------------------------------------------------------- lifecycle

    async def _run(self) -> None:
        """Open, read messages, close: every event is dispatched from here, in order."""
        try:
            await asyncio.wait({self._connecting})
            if self._connecting.cancelled() or self._connecting.exception() is not None:
                error = None if self._connecting.cancelled() else self._connecting.exception()
                self._fire_closed(None, error)
                return
            conn = self._conn = self._connecting.result()
            if self._state != self.CONNECTING:  # close() came just as the handshake completed
                conn.abort()
                await conn.wait_closed()
                self._fire_closed(None, None)
                return
            self._state = self.OPEN
            self._protocol = conn.subprotocol or ""
            if conn.response_headers is not None:
                self._extensions = conn.response_headers.get("Sec-WebSocket-Extensions") or ""
            self.dispatchEvent(Event("open"))
            while True:
                try:
                    message = await conn.recv()
                except ConnectionClosed as exc:
                    self._fire_closed(exc, exc)
                    return
                if self._state != self.OPEN:
                    continue  # after close() messages are dropped (WHATWG)
                data = _convert(message, self._binary_type)
                self.dispatchEvent(MessageEvent("message", data=data, origin=self._origin))
        finally:
            self._connecting.cancel()
            if self._conn is not None and self._state != self.CLOSED:
                self._conn.abort()  # cancelled (loop shutting down)

    def _fire_closed(self, closed: ConnectionClosed | None, error: BaseException | None) -> None:
        self._state = self.CLOSED
        if closed is None or closed.rcvd is None:
            # No Close frame received: the connection failed (RFC 6455 7.1.7, WHATWG).
            self.dispatchEvent(ErrorEvent("error", error=error))
        code = CloseCode.ABNORMAL_CLOSURE if closed is None else closed.code
        reason = "" if closed is None else closed.reason
        clean = closed is not None and closed.rcvd is not None and closed.sent is not None
        self.dispatchEvent(CloseEvent("close", code=int(code), reason=reason, wasClean=clean))


async def _open(url: str, options: dict[str, Any]) -> ClientConnection:
    return await connect(url, **options)


def _parse_url(url: str) -> tuple[str, str]:
    """Check a WebSocket URL; return it (http(s) mapped to ws(s)) and its origin."""
    if "#" in url:
        raise InvalidSyntaxError(f"{url!r}: a WebSocket URL has no fragment")
    parts = urllib.parse.urlsplit(url)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme.lower(), parts.scheme.lower())
    url = urllib.parse.urlunsplit(parts._replace(scheme=scheme))
    try:
        uri = parse_uri(url)
    except ValueError as exc:
        raise InvalidSyntaxError(str(exc)) from None
    return url, f"{scheme}://{uri.host_header}"


def _parse_protocols(protocols: str | Sequence[str] | None) -> list[str]:
    items = (
        [] if protocols is None else [protocols] if isinstance(protocols, str) else list(protocols)
    )
    for item in items:
        if not isinstance(item, str) or not _TOKEN_RE.fullmatch(item):
            raise InvalidSyntaxError(f"invalid subprotocol {item!r}")
    if len(set(items)) != len(items):
        raise InvalidSyntaxError("a subprotocol is listed twice")
    return items


def _convert(message: str | bytes, binary_type: BinaryType) -> MessageData:
    if isinstance(message, str) or binary_type == "bytes":
        return message
    return bytearray(message) if binary_type == "bytearray" else memoryview(message)


def _usv(text: str) -> str:
    """WebIDL's USVString conversion: lone surrogates become U+FFFD."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text
