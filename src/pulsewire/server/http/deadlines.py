"""The one running deadline of a front-door connection: a request head within
``head_timeout`` of its first byte, a body within ``body_timeout`` of its head and at
``body_min_rate`` bytes/s over every ``body_rate_window``, or the next request within
``idle_timeout`` (see :class:`~.limits.HttpLimits`). What happens when one runs out is the
connection's business (:class:`DeadlineOwner`)."""

from __future__ import annotations

import asyncio
from typing import Protocol

from .limits import HttpLimits

__all__ = ["DeadlineOwner", "Deadlines"]


class DeadlineOwner(Protocol):
    """What :class:`Deadlines` reports to (:class:`~.connection.HttpProtocol`)."""

    def body_received(self) -> int:
        """Bytes of the request body received so far."""
        ...

    def deadline_passed(self, kind: str) -> None:
        """The ``"head"`` or ``"idle"`` deadline ran out."""
        ...

    def body_late(self, reason: str) -> None:
        """The request body is late (``reason``: past its deadline, or too slow)."""
        ...


class Deadlines:
    """One timer, re-armed for each stage of a connection.

    ``timer`` (public) is the running one, None when none runs.
    """

    __slots__ = ("_body_deadline", "_kind", "_window_mark", "limits", "loop", "owner", "timer")

    def __init__(
        self, owner: DeadlineOwner, loop: asyncio.AbstractEventLoop, limits: HttpLimits
    ) -> None:
        self.owner: DeadlineOwner | None = owner
        self.loop = loop
        self.limits = limits
        self.timer: asyncio.TimerHandle | None = None
        self._kind = ""
        self._body_deadline = 0.0
        self._window_mark = 0

    def arm(self, kind: str, seconds: float) -> None:
        """Run ``kind`` ("head" or "idle") for ``seconds`` (instead of the running one)."""
        self.cancel()
        self._kind = kind
        self.timer = self.loop.call_later(seconds, self._fire)

    def arm_head(self) -> None:
        """A request head must arrive within ``head_timeout``."""
        self.arm("head", self.limits.head_timeout)

    def arm_body(self, received: int) -> None:
        """The body deadline: all of it within ``body_timeout``, and at the minimum rate
        (``received``: body bytes already there)."""
        limits = self.limits
        now = self.loop.time()
        self._body_deadline = now + limits.body_timeout
        self._window_mark = received
        self.cancel()
        self._kind = "body"
        when = min(now + limits.body_rate_window, self._body_deadline)
        self.timer = self.loop.call_at(when, self._fire)

    def cancel(self) -> None:
        """Stop the running deadline, if any."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def close(self) -> None:
        """Stop, and let go of the owner (no reference cycle is left)."""
        self.cancel()
        self.owner = None

    def _fire(self) -> None:
        self.timer = None
        owner = self.owner
        if owner is None:
            return
        kind = self._kind
        if kind == "body":
            self._body_check(owner)
            return
        owner.deadline_passed(kind)

    def _body_check(self, owner: DeadlineOwner) -> None:
        limits = self.limits
        now = self.loop.time()
        if now >= self._body_deadline:
            owner.body_late(f"request body not received within {limits.body_timeout:g} s")
            return
        wanted = limits.body_min_rate * limits.body_rate_window
        received = owner.body_received()
        if received - self._window_mark < wanted:
            owner.body_late(
                f"request body too slow: under {limits.body_min_rate} bytes/s "
                f"over {limits.body_rate_window:g} s"
            )
            return
        self._window_mark = received
        self._kind = "body"
        when = min(now + limits.body_rate_window, self._body_deadline)
        self.timer = self.loop.call_at(when, self._fire)
