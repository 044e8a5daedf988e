"""Fakes for testing the hub one layer down: no sockets, no HTTP, no real waiting.

* :class:`FakeTransport` implements :class:`pulsewire.hub.session.Transport`: it records
  every message a session sends (decoded with the session's codec), how it was closed, and
  reports a settable number of ``buffered`` bytes (to play a slow reader).
* :class:`FakeClient` drives a :class:`~pulsewire.hub.session.Session` the way the WebSocket
  transport does (messages handled one after the other, ``transport_closed`` when it goes)
  and offers the same methods as the end-to-end ``HubClient`` of ``conftest.py`` (``ok``,
  ``fail``, ``wait_push``...), so a test reads the same at either layer.
* :class:`FakeClock`: a callable clock for the components that take one (``MemoryEngine``,
  ``TokenBucket``, ``AuthGuard``, ``NodeTracker``); :class:`LoopClock` moves the event loop's
  clock forward, so that the session's timers (connect timeout, token expiry) fire without
  waiting for them.
* :func:`until`: wait for a condition (woken by the loop, bounded by a timeout) instead of
  sleeping a fixed time.

Only public names of the hub are used: ``Hub.open_session``, ``Session.handle``,
``Session.transport_closed`` and the ``Transport`` protocol.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Callable
from typing import Any

import msgpack

from pulsewire.hub import ConnectRequest, Hub, Session
from pulsewire.hub.wire import JSON, Codec, MsgpackCodec

__all__ = ["FakeClient", "FakeClock", "FakeTransport", "LoopClock", "codec_named", "until"]

TIMEOUT = 5.0


async def until(
    predicate: Callable[[], object], timeout: float = TIMEOUT, message: str = ""
) -> None:
    """Return as soon as ``predicate()`` is true; fail after ``timeout`` seconds (real time).

    Polls once per loop iteration (``sleep(0)``) at first, then every millisecond: the
    condition usually holds after a few callbacks, and nothing waits a fixed time."""
    deadline = time.monotonic() + timeout
    spins = 0
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(message or f"condition not met in {timeout} s")
        spins += 1
        await asyncio.sleep(0 if spins < 100 else 0.001)


class FakeClock:
    """A clock that moves only when told to: ``clock()`` is the time, ``advance(s)`` moves it."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class LoopClock:
    """Moves the running event loop's clock forward (``loop.time()`` plus an offset).

    Timers scheduled with ``call_later`` (the session's connect timeout and token expiry)
    fall due at once when the clock passes them. ``restore()`` puts the loop's own clock
    back (the ``loop_clock`` fixture does it at teardown)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.offset = 0.0
        self._time = loop.time
        offset = self

        def shifted() -> float:
            return offset._time() + offset.offset

        loop.time = shifted  # type: ignore[method-assign]

    async def advance(self, seconds: float) -> None:
        """Move the clock forward and let the timers that fell due run."""
        self.offset += seconds
        for _ in range(3):
            await asyncio.sleep(0)

    def restore(self) -> None:
        del self.loop.time  # the instance attribute: back to the class's method


def codec_named(name: str) -> Codec:
    """The hub codec of a subprotocol suffix: ``"json"`` or ``"msgpack"``."""
    return MsgpackCodec() if name == "msgpack" else JSON


class FakeTransport:
    """A :class:`~pulsewire.hub.session.Transport` that records instead of sending."""

    def __init__(self, codec: Codec, kind: str = "websocket") -> None:
        self.kind = kind
        self.codec = codec
        self.sent: list[dict[str, Any]] = []
        """Every message the session sent, decoded, in order."""
        self.raw: list[str | bytes] = []
        """The same, as encoded by the session."""
        self.prepared: list[object | None] = []
        """The second argument given with each message (what the session shares between
        the subscribers of a publication push; None for replies and other pushes)."""
        self.closed: tuple[int, str] | None = None
        """(code, reason) once the session closed the transport."""
        self.late: list[str | bytes] = []
        """Messages sent after close (dropped, as a closed connection drops them)."""
        self.pending = 0
        """What :meth:`buffered` reports: set it to play a client that does not read."""
        self.listeners: list[Callable[[dict[str, Any]], None]] = []
        self.on_close: list[Callable[[int, str], None]] = []

    def decode(self, message: str | bytes) -> dict[str, Any]:
        if self.codec.binary:
            assert isinstance(message, bytes), f"a binary codec sends bytes, got {message!r}"
            return msgpack.unpackb(message, raw=False)  # type: ignore[no-any-return]
        assert isinstance(message, str), f"a text codec sends str, got {message!r}"
        return json.loads(message)  # type: ignore[no-any-return]

    def send(self, message: str | bytes, prepared: object | None = None) -> None:
        if self.closed is not None:
            self.late.append(message)
            return
        decoded = self.decode(message)
        self.raw.append(message)
        self.sent.append(decoded)
        self.prepared.append(prepared)
        for listener in self.listeners:
            listener(decoded)

    def buffered(self) -> int:
        return self.pending

    def close(self, code: int, reason: str) -> None:
        if self.closed is None:
            self.closed = (code, reason)
            for callback in self.on_close:
                callback(code, reason)

    def replies(self) -> dict[int, dict[str, Any]]:
        """Replies by command id."""
        return {m["id"]: m for m in self.sent if "id" in m}

    def pushes(self, kind: str | None = None) -> list[dict[str, Any]]:
        return [m for m in self.sent if "push" in m and (kind is None or m["push"] == kind)]


class FakeClosed(Exception):
    """The session closed while a command waited for its reply."""

    def __init__(self, code: int | None, reason: str | None) -> None:
        super().__init__(f"closed by the hub: {code} {reason!r}")
        self.code = code
        self.reason = reason


class CommandClient:
    """What every test client of the hub shares: commands with ids, replies matched to them,
    pushes kept until taken. A subclass carries the bytes (:meth:`send_raw`), feeds each
    message from the hub to :meth:`received` and calls :meth:`ended` when the hub closes."""

    closed_error: type[Exception] = FakeClosed

    def __init__(self, codec: str = "json") -> None:
        self.codec = codec
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.log: list[dict[str, Any]] = []
        """Every message from the hub, replies and pushes, in arrival order."""
        self.pushes: list[dict[str, Any]] = []
        """Pushes not yet taken by wait_push/take."""
        self._changed = asyncio.Event()
        self._closed = asyncio.Event()
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self.client_id: str | None = None
        self.token: str | None = None
        """The token given to the fixture (also when it did not connect)."""

    # -- what the subclass calls ---------------------------------------------------------------

    def received(self, message: dict[str, Any]) -> None:
        self.log.append(message)
        if "push" in message:
            self.pushes.append(message)
            self._changed.set()
            return
        future = self._waiting.get(message.get("id"))  # type: ignore[arg-type]
        assert future is not None, f"reply to no pending command: {message}"
        assert not future.done(), f"second reply to one command: {message}"
        future.set_result(message)

    def ended(self, code: int | None, reason: str | None) -> None:
        self.close_code, self.close_reason = code, reason
        self._closed.set()
        self._changed.set()
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(self.closed_error(code, reason))

    def encode(self, message: dict[str, Any]) -> str | bytes:
        if self.codec == "msgpack":
            return msgpack.packb(message, use_bin_type=True)  # type: ignore[no-any-return]
        return json.dumps(message)

    # -- commands ------------------------------------------------------------------------------

    async def send_raw(self, data: str | bytes) -> None:
        raise NotImplementedError

    async def send(self, method: str, params: dict[str, Any] | None = None) -> int:
        """Send a command without waiting; returns its id."""
        cid = next(self._ids)
        command: dict[str, Any] = {"id": cid, "method": method}
        if params is not None:
            command["params"] = params
        self.expect(cid)
        await self.send_raw(self.encode(command))
        return cid

    def expect(self, cid: int) -> None:
        """Register a command id whose reply :meth:`reply` will return."""
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        future.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._waiting[cid] = future
        if self.closed:
            future.set_exception(self.closed_error(self.close_code, self.close_reason))

    async def reply(self, cid: int, timeout: float = TIMEOUT) -> dict[str, Any]:
        future = self._waiting[cid]
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout)
        finally:
            if future.done():
                del self._waiting[cid]

    async def call(
        self, method: str, params: dict[str, Any] | None = None, timeout: float = TIMEOUT
    ) -> dict[str, Any]:
        return await self.reply(await self.send(method, params), timeout)

    async def ok(self, method: str, params: dict[str, Any] | None = None) -> Any:
        reply = await self.call(method, params)
        assert "error" not in reply, f"{method} {params} failed: {reply}"
        return reply["result"]

    async def fail(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        reply = await self.call(method, params)
        assert "error" in reply, f"{method} {params} should have failed: {reply}"
        assert "result" not in reply
        return reply["error"]  # type: ignore[no-any-return]

    async def connect(self, token: str | None = None, **params: Any) -> dict[str, Any]:
        if token is not None:
            params["token"] = token
        result: dict[str, Any] = await self.ok("connect", params)
        self.client_id = result["client"]
        return result

    async def subscribe(self, channel: str, **params: Any) -> dict[str, Any]:
        return await self.ok("subscribe", {"channel": channel, **params})  # type: ignore[no-any-return]

    async def sync(self) -> None:
        """A ping round trip: what the hub queued before it has been recorded after it."""
        await self.ok("ping")

    # -- pushes --------------------------------------------------------------------------------

    @staticmethod
    def _matches(push: dict[str, Any], kind: str | None, channel: str | None) -> bool:
        return (kind is None or push.get("push") == kind) and (
            channel is None or push.get("channel") == channel
        )

    def take(self, kind: str | None = None, channel: str | None = None) -> list[dict[str, Any]]:
        taken = [p for p in self.pushes if self._matches(p, kind, channel)]
        self.pushes = [p for p in self.pushes if not self._matches(p, kind, channel)]
        return taken

    async def wait_push(
        self, kind: str | None = "publication", channel: str | None = None, timeout: float = TIMEOUT
    ) -> dict[str, Any]:
        """The first matching push (waiting for it if needed); others stay queued."""
        deadline = time.monotonic() + timeout
        while True:
            for i, push in enumerate(self.pushes):
                if self._matches(push, kind, channel):
                    return self.pushes.pop(i)
            if self._closed.is_set():
                raise self.closed_error(self.close_code, self.close_reason)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {kind} push on {channel} in {timeout}s: {self.pushes}")
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except asyncio.TimeoutError:
                pass

    async def publications(
        self, channel: str, count: int, timeout: float = TIMEOUT
    ) -> list[dict[str, Any]]:
        return [await self.wait_push("publication", channel, timeout) for _ in range(count)]

    async def wait_closed(self, timeout: float = TIMEOUT) -> tuple[int | None, str | None]:
        await asyncio.wait_for(self._closed.wait(), timeout)
        return self.close_code, self.close_reason

    @property
    def closed(self) -> bool:
        return self._closed.is_set()


class FakeClient(CommandClient):
    """A client of ``hub`` on a :class:`FakeTransport`: the methods of the e2e ``HubClient``.

    Messages go to ``session.handle`` one at a time, in order, from one task, as the
    WebSocket transport feeds them; replies and pushes are recorded as the session sends
    them."""

    def __init__(
        self,
        hub: Hub,
        codec: str = "json",
        *,
        transport: str = "websocket",
        path: str = "/connection/websocket",
        headers: list[tuple[str, str]] | None = None,
        remote_address: str = "127.0.0.1",
    ) -> None:
        super().__init__(codec)
        self.transport = FakeTransport(codec_named(codec), transport)
        self.request = ConnectRequest(transport, path, list(headers or []), remote_address)
        self.session: Session = hub.open_session(self.transport, self.transport.codec, self.request)
        self._inbox: asyncio.Queue[str | bytes | None] = asyncio.Queue()
        self.transport.listeners.append(self.received)
        self.transport.on_close.append(self.ended)
        self._reader = asyncio.get_running_loop().create_task(self._feed())

    async def _feed(self) -> None:
        while True:
            data = await self._inbox.get()
            if data is None or self.closed:
                break
            await self.session.handle(data)

    async def send_raw(self, data: str | bytes) -> None:
        self._inbox.put_nowait(data)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """The client leaves: the transport tells the session, as the WebSocket one does."""
        self._inbox.put_nowait(None)
        await asyncio.gather(self._reader, return_exceptions=True)
        if not self.closed:
            self.session.transport_closed(code, reason)
            self.ended(code, reason)
