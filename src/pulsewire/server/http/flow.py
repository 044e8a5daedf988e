"""The output side's flow control of a front-door connection: whether the peer has taken
everything written, and waiting (at most ``send_timeout``) until it has."""

from __future__ import annotations

import asyncio

from .limits import HttpLimits

__all__ = ["WriteFlow"]


class WriteFlow:
    """Told by the transport when the peer lags (:meth:`pause`) and when it has taken all
    (:meth:`resume`); :meth:`drained` waits for the latter. ``paused`` is public."""

    __slots__ = ("_waiter", "limits", "loop", "paused", "timeouts")

    def __init__(
        self, loop: asyncio.AbstractEventLoop, limits: HttpLimits, timeouts: dict[str, int]
    ) -> None:
        self.loop = loop
        self.limits = limits
        self.timeouts = timeouts
        """The server's timeout counts (``"send"`` is counted here)."""
        self.paused = False
        self._waiter: asyncio.Future[bool] | None = None

    def pause(self) -> None:
        """The peer has not taken everything written."""
        self.paused = True

    def resume(self) -> None:
        """The peer has taken everything written."""
        self.paused = False
        self._settle(True)

    def close(self) -> None:
        """The connection is gone: a wait ends as not drained."""
        self._settle(False)

    async def drained(self, ended: asyncio.Event | None = None) -> bool:
        """Wait until the peer has taken everything written (True), or until it has not
        within ``send_timeout`` or the stream ``ended`` (False)."""
        waiter: asyncio.Future[bool] = self.loop.create_future()
        self._waiter = waiter
        timer = self.loop.call_later(self.limits.send_timeout, self._send_timed_out)
        watcher: asyncio.Task[bool] | None = None
        if ended is not None:
            watcher = asyncio.ensure_future(ended.wait())
            watcher.add_done_callback(self._stream_ended)
        try:
            return await waiter
        finally:
            timer.cancel()
            self._waiter = None
            if watcher is not None:
                watcher.cancel()

    def _settle(self, drained: bool) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(drained)

    def _send_timed_out(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            self.timeouts["send"] += 1
            waiter.set_result(False)

    def _stream_ended(self, _: object) -> None:
        self._settle(False)  # the stream is over and the peer never read its end
