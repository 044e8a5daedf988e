"""What expires in a session, and what happens then: its credentials and its subscriptions.

A session's credentials may carry ``expires_at`` (a token's ``exp``, or what the
``authenticate`` hook returned); a subscription may be given one by ``on_subscribe``
(:class:`~pulsewire.hub.hooks.SubscribeOutcome`). :class:`Expiry` keeps one timer for each
and, when one falls due:

* credentials: ``on_refresh(session)`` gives new credentials (the session goes on, with the
  next expiry) or ``None`` (the session ends with 4002); without the hook the session ends
  with 4002, as it always did (the client refreshes its token itself beforehand). A
  :class:`HubError` from the hook (the application's backend could not decide) ends it with
  4010, a :class:`Disconnect` with its own code;
* a subscription: ``on_sub_refresh(session, channel)`` gives the next expiry, or ``None``:
  the subscription ends with an ``unsubscribe`` push, code 2501, ``resubscribe: true`` (the
  client subscribes again and the application decides anew). Without the hook it ends.

Timers are wall-clock expiries (Unix time) turned into loop delays when armed, kept in the
node's :class:`~pulsewire.hub.timers.TimerQueue` (one loop timer for them all). An
:class:`Expiry` belongs to one session but does not hold it (the session is given to each
call and to the timers, which drop it when cancelled): a session must be freed by reference
counting alone once it ends, without the garbage collector.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from typing import Any, Protocol

from .auth import Credentials
from .contracts import Hook, HookSession
from .errors import Disconnect, DisconnectCode, HubError, UnsubscribeCode
from .fanout import Fanout, Subscriber, Subscription
from .hooks import call_hook
from .timers import Timer, TimerQueue

__all__ = ["ExpiringSession", "Expiry", "ExpiryHost"]

logger = logging.getLogger("pulsewire.hub")

EXPIRED_REASON = "subscription expired"


class ExpiringSession(HookSession, Subscriber, Protocol):
    """What :class:`Expiry` needs from its session (a :class:`~pulsewire.hub.Session`)."""


class ExpiryHost(Protocol):
    """What :class:`Expiry` needs from the node (a :class:`~pulsewire.hub.Hub`)."""

    fanout: Fanout
    timers: TimerQueue
    on_refresh: Hook | None
    on_sub_refresh: Hook | None


class Expiry:
    """The expiry timers of one session (see the module docstring)."""

    def __init__(self, host: ExpiryHost) -> None:
        self._host = host
        self._timers = host.timers
        self._timer: Timer | None = None
        # Created when first needed: most sessions never hold one (an empty set is 216 bytes).
        self._subs: dict[str, Timer] | None = None
        self._tasks: set[asyncio.Future[Any]] | None = None

    @property
    def refreshes(self) -> bool:
        """Whether the server refreshes expiring credentials itself (an ``on_refresh`` hook):
        then the client is not told to refresh them."""
        return self._host.on_refresh is not None

    def arm(self, session: ExpiringSession, expires_at: float | None) -> float | None:
        """(Re)arm the credentials' timer for ``expires_at`` (``None``: no expiry); returns
        the seconds left (at most 0 when already expired: the timer fires at once)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if expires_at is None:
            return None
        ttl = expires_at - time.time()
        self._timer = self._timers.call_later(ttl, self._credentials_expired, session)
        return ttl

    def arm_subscription(
        self, session: ExpiringSession, sub: Subscription, expires_at: float | None
    ) -> None:
        """Arm ``sub``'s timer (``None``: it does not expire)."""
        name = sub.channel.name
        subs = self._subs
        if subs is None:
            if expires_at is None:
                return
            subs = self._subs = {}
        old = subs.pop(name, None)
        if old is not None:
            old.cancel()
        if expires_at is not None:
            delay = expires_at - time.time()
            subs[name] = self._timers.call_later(delay, self._sub_expired, session, sub)

    def cancel(self) -> None:
        """The session ended: no timer fires, no refresh goes on."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._subs is not None:
            for timer in self._subs.values():
                timer.cancel()
            self._subs.clear()
        for task in self._tasks or ():
            task.cancel()

    def _spawn(self, awaitable: Awaitable[None]) -> None:
        task = asyncio.ensure_future(awaitable)
        tasks = self._tasks
        if tasks is None:
            tasks = self._tasks = set()
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    # ------------------------------------------------------------------------ credentials

    def _credentials_expired(self, session: ExpiringSession) -> None:
        self._timer = None
        if not session.connected:
            return
        hook = self._host.on_refresh
        if hook is None:
            session.disconnect(DisconnectCode.TOKEN_EXPIRED, "token expired")
            return
        self._spawn(self._refresh(session, hook))

    async def _refresh(self, session: ExpiringSession, hook: Hook) -> None:
        try:
            outcome = await call_hook(hook, session)
        except Disconnect as exc:
            session.disconnect(exc.code, exc.reason)
            return
        except HubError as exc:
            session.disconnect(DisconnectCode.UNAVAILABLE, f"refresh failed: {exc.message}")
            return
        except Exception:
            logger.exception("on_refresh hook failed")
            session.disconnect(DisconnectCode.UNAVAILABLE, "refresh failed")
            return
        if not session.connected:
            return
        if outcome is None:
            session.disconnect(DisconnectCode.TOKEN_EXPIRED, "token expired")
            return
        if not isinstance(outcome, Credentials):
            logger.error("on_refresh must return Credentials or None, not %r", type(outcome))
            session.disconnect(DisconnectCode.UNAVAILABLE, "refresh failed")
            return
        if outcome.user != session.user:
            session.disconnect(DisconnectCode.INVALID_TOKEN, "refreshed for another user")
            return
        session.credentials = outcome
        if outcome.info is not None:
            session.conn_info = outcome.info
        ttl = self.arm(session, outcome.expires_at)
        if ttl is not None and ttl <= 0:
            session.disconnect(DisconnectCode.TOKEN_EXPIRED, "token expired")

    # ---------------------------------------------------------------------- subscriptions

    def _sub_expired(self, session: ExpiringSession, sub: Subscription) -> None:
        if self._subs is not None:
            self._subs.pop(sub.channel.name, None)
        if not self._current(session, sub):
            return
        hook = self._host.on_sub_refresh
        if hook is None:
            self._end(session, sub, EXPIRED_REASON)
            return
        self._spawn(self._sub_refresh(session, hook, sub))

    async def _sub_refresh(self, session: ExpiringSession, hook: Hook, sub: Subscription) -> None:
        try:
            outcome = await call_hook(hook, session, sub.channel.name)
        except Disconnect as exc:
            session.disconnect(exc.code, exc.reason)
            return
        except HubError as exc:
            self._end(session, sub, f"{EXPIRED_REASON}: {exc.message}")
            return
        except Exception:
            logger.exception("on_sub_refresh hook failed")
            self._end(session, sub, EXPIRED_REASON)
            return
        if not self._current(session, sub):
            return
        if outcome is None:
            self._end(session, sub, EXPIRED_REASON)
        elif isinstance(outcome, (int, float)) and not isinstance(outcome, bool):
            if outcome <= time.time():
                self._end(session, sub, EXPIRED_REASON)
            else:
                self.arm_subscription(session, sub, float(outcome))
        else:
            logger.error("on_sub_refresh must return a Unix time or None, not %r", outcome)
            self._end(session, sub, EXPIRED_REASON)

    def _current(self, session: ExpiringSession, sub: Subscription) -> bool:
        """Whether ``sub`` is still the session's subscription to its channel."""
        return session.connected and self._host.fanout.is_current(session, sub)

    def _end(self, session: ExpiringSession, sub: Subscription, reason: str) -> None:
        self._host.fanout.unsubscribe(
            session, sub.channel.name, UnsubscribeCode.EXPIRED, reason, True
        )
