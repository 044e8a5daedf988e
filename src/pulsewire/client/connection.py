"""One WebSocket connection to a hub node: numbered commands, replies matched, pushes handed on.

It knows the wire (docs/protocol.md: commands, replies, pushes; JSON or MessagePack by the
subprotocol the server chose) and nothing of reconnecting, subscriptions or tokens: the
:class:`~pulsewire.client.client.Client` makes a new one for every connection.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ..aio.client import ClientConnection
from ..aio.client import connect as ws_connect
from ..hub.errors import HubError
from ..hub.wire import JSON_SUBPROTOCOL, MSGPACK_SUBPROTOCOL, Codec, codec_for
from ..protocol.errors import ConnectionClosed
from .errors import ClientError, ClientTimeout, ConnectionLost

__all__ = ["CODECS", "Connection", "Push", "ResultHook"]

logger = logging.getLogger("pulsewire.client")

CODECS = {"json": JSON_SUBPROTOCOL, "msgpack": MSGPACK_SUBPROTOCOL}
"""The client's ``codec`` option: the one subprotocol it offers for each."""

ABNORMAL = 1006
PROTOCOL_ERROR = 1002

Push = dict[str, Any]
ResultHook = Callable[[dict[str, Any]], None]


@dataclass(slots=True)
class _Pending:
    future: asyncio.Future[dict[str, Any]]
    timer: asyncio.TimerHandle
    on_result: ResultHook | None


class Connection:
    """An open connection (the ``connect`` command not sent yet). ``ended`` resolves with
    ``(code, reason)`` once it is over, for whatever reason; every call still waiting then
    fails with :class:`ConnectionLost`."""

    def __init__(self, ws: ClientConnection, url: str, on_push: Callable[[Push], None]) -> None:
        self.ws = ws
        self.url = url
        self.codec: Codec = codec_for(ws.subprotocol)
        """The encoding the server chose (JSON when it chose none)."""
        self._on_push = on_push
        self._pending: dict[int, _Pending] = {}
        self._next_id = 1
        self._loop = asyncio.get_running_loop()
        self.last_received = self._loop.time()
        """Loop time of the last message from the server (the client pings when idle)."""
        self._own_end: tuple[int, str] | None = None
        self.ended: asyncio.Future[tuple[int, str]] = self._loop.create_future()
        self._reader = self._loop.create_task(self._read())

    @classmethod
    async def open(
        cls,
        url: str,
        codec: str,
        on_push: Callable[[Push], None],
        *,
        timeout: float,
        ws_options: Mapping[str, Any],
    ) -> Connection:
        """Open a WebSocket to ``url`` offering the subprotocol of ``codec``."""
        # No size limit by default: one reply may carry a whole recovery (history_size
        # publications of up to the hub's message size each). Pings: the client's own.
        options = {"ping_interval": None, "max_size": None, "open_timeout": timeout, **ws_options}
        ws = await ws_connect(url, subprotocols=[CODECS[codec]], **options)
        return cls(ws, url, on_push)

    @property
    def is_open(self) -> bool:
        """Not ended yet."""
        return not self.ended.done()

    # ----------------------------------------------------------------------------- commands

    def send_command(
        self,
        method: str,
        params: Mapping[str, Any] | None,
        *,
        timeout: float,
        on_result: ResultHook | None = None,
    ) -> asyncio.Future[dict[str, Any]]:
        """Send a command; the future gets its result, or fails with :class:`ClientError`
        (an error reply), :class:`ClientTimeout` or :class:`ConnectionLost`. ``on_result``
        runs as soon as the reply is read, before any message after it is handled: replies
        that change how later pushes are handled (connect, subscribe) take effect in order.
        """
        future: asyncio.Future[dict[str, Any]] = self._loop.create_future()
        if not self.is_open:
            future.set_exception(ConnectionLost("not connected"))
            return future
        cid = self._next_id
        message: dict[str, Any] = {"id": cid, "method": method}
        if params:
            message["params"] = dict(params)
        try:
            data = self.codec.encode(message)
        except (TypeError, ValueError, OverflowError) as exc:
            # Checked here so that bad data fails this call, not the connection.
            future.set_exception(ClientError(107, f"cannot encode {method} params: {exc}"))
            return future
        self._next_id += 1
        timer = self._loop.call_later(timeout, self._timed_out, cid, method, timeout)
        self._pending[cid] = _Pending(future, timer, on_result)
        try:
            self.ws.send_nowait(data)
        except ConnectionClosed:
            pass  # the reader ends soon and fails the call
        return future

    async def call(
        self,
        method: str,
        params: Mapping[str, Any] | None = None,
        *,
        timeout: float,
        on_result: ResultHook | None = None,
    ) -> dict[str, Any]:
        """:meth:`send_command` and wait for the result."""
        return await self.send_command(method, params, timeout=timeout, on_result=on_result)

    def _timed_out(self, cid: int, method: str, timeout: float) -> None:
        pending = self._pending.pop(cid, None)
        if pending is not None and not pending.future.done():
            pending.future.set_exception(ClientTimeout(f"no reply to {method} in {timeout} s"))

    # ------------------------------------------------------------------------------ reading

    async def _read(self) -> None:
        try:
            async for data in self.ws:
                self.last_received = self._loop.time()
                try:
                    messages = self.codec.decode_commands(data)
                except HubError as exc:
                    self.abort(PROTOCOL_ERROR, f"bad message from the server: {exc.message}")
                    break
                for message in messages:
                    self._dispatch(message)
        except ConnectionClosed:
            pass
        except Exception:  # a bug here must not leave calls waiting forever
            logger.exception("pulsewire.client: reading from %s failed", self.url)
            self.ws.abort()
        finally:
            self._finish()

    def _dispatch(self, message: dict[str, Any]) -> None:
        if self._own_end is not None:
            return  # ended by this side (closed, no reply to a ping): nothing more counts
        cid = message.get("id")
        if isinstance(cid, int) and cid > 0:
            self._reply(cid, message)
        elif isinstance(message.get("push"), str):
            try:
                self._on_push(message)
            except Exception:
                logger.exception("pulsewire.client: handling a %s push failed", message["push"])

    def _reply(self, cid: int, reply: dict[str, Any]) -> None:
        pending = self._pending.pop(cid, None)
        if pending is None:
            return  # timed out already
        pending.timer.cancel()
        if pending.future.done():
            return
        error = reply.get("error")
        if isinstance(error, Mapping):
            code = error.get("code")
            message = error.get("message")
            pending.future.set_exception(
                ClientError(code if isinstance(code, int) else 100, str(message or "error"))
            )
            return
        result = reply.get("result")
        result = result if isinstance(result, dict) else {}
        if pending.on_result is not None:
            try:
                pending.on_result(result)
            except Exception:
                logger.exception("pulsewire.client: handling a reply failed")
        pending.future.set_result(result)

    # ------------------------------------------------------------------------------ closing

    def _finish(self) -> None:
        if self.ended.done():
            return
        ws = self.ws
        if self._own_end is not None:
            code, reason = self._own_end
        else:
            code, reason = ws.close_code or ABNORMAL, ws.close_reason or ""
        pending = list(self._pending.values())
        self._pending.clear()
        for call in pending:
            call.timer.cancel()
            if not call.future.done():
                call.future.set_exception(ConnectionLost(f"connection lost: {code} {reason}"))
        self.ended.set_result((code, reason))

    def abort(self, code: int, reason: str) -> None:
        """End the connection at once (e.g. no reply to a ping): ``ended`` gets ``code``."""
        if self._own_end is None and not self.ended.done():
            self._own_end = (code, reason)
        self.ws.abort()

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """The closing handshake (bounded by the WebSocket's close_timeout), then wait for
        the reader to end."""
        if self._own_end is None and not self.ended.done():
            self._own_end = (code, reason)
        try:
            await self.ws.close(code, reason)
        except (ConnectionClosed, OSError):
            self.ws.abort()
        await asyncio.gather(self._reader, return_exceptions=True)
