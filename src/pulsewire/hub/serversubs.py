"""Server-side subscriptions: the channels the server subscribes a connection to itself.

They come from the connection's :class:`~pulsewire.hub.auth.Credentials` (``subs``: the
token claim, an ``authenticate`` hook, the backend proxy) at connect, and later from
``Hub.subscribe_user`` (``POST /api/subscribe``, on every node through the engine's control
channel). The client never subscribes to them and may not unsubscribe them (103); otherwise
they are subscriptions like the others, kept by the fan-out (``Subscription.server``).

The session makes each one (permission checks and the ``on_subscribe`` hook skipped: the
server decided); this module holds what surrounds that:

* at connect, the params of each one: the channel and, when the client holds one from its
  previous session (``connect``'s ``server_subs``), the position to recover from;
* after connect, making one (in turn with the session's commands) until it is made: retried
  while the engine is unavailable, given up otherwise (logged; and when the client knew of
  the subscription, an ``unsubscribe`` push, code 2000, tells it it is gone);
* insufficient state: the fan-out removes the subscription and the session makes it again,
  recovering from the last position it delivered (:func:`make_again`).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, Protocol

from .errors import ErrorCode, HubError, UnsubscribeCode
from .fanout import Subscription
from .messages import Message, error_dict, unsubscribe_push

__all__ = [
    "RETRY_DELAYS",
    "ServerSubscriber",
    "at_connect",
    "make_again",
    "make_until_done",
    "subscribe_each",
]

logger = logging.getLogger("pulsewire.hub")

RETRY_DELAYS = (0.5, 1.0, 2.0, 5.0, 10.0)
"""Seconds between attempts while the engine is unavailable (the last one repeats)."""


class ServerSubscriber(Protocol):
    """What :func:`make_until_done` needs of a session."""

    @property
    def connected(self) -> bool: ...

    async def subscribe_by_server(self, params: dict[str, Any]) -> None:
        """One attempt, in turn with the commands (raises HubError)."""

    def push(self, message: dict[str, Any]) -> None: ...

    def log_context(self) -> dict[str, Any]: ...


def at_connect(
    channels: Iterable[str], positions: Mapping[str, dict[str, Any]] | None
) -> dict[str, dict[str, Any]]:
    """The subscribe params of each server-side subscription made at connect: recovery
    params from ``positions`` (``connect``'s ``server_subs``) for the channels it names."""
    positions = positions or {}
    return {c: {**positions.get(c, {}), "channel": c} for c in channels}


async def make_again(
    session: ServerSubscriber,
    sub: Subscription,
    forget: Callable[[Subscription], Awaitable[None]],
) -> None:
    """Make ``sub`` again after insufficient state (the fan-out removed it), recovering from
    the last position it delivered; its presence is ``forget``-ed first (the old entry must
    not be removed after the new one is written)."""
    await forget(sub)
    name = sub.channel.name
    params = {"channel": name, "recover": True, "offset": sub.offset, "epoch": sub.epoch}
    await make_until_done(session, params, known=True)


async def subscribe_each(
    wanted: Mapping[Any, dict[str, Any]],
    subscribe: Callable[[dict[str, Any]], Awaitable[Message]],
) -> dict[Any, Message]:
    """Each channel's subscribe result, or ``{"error": ...}`` for that channel alone (the
    ``subs`` and ``server_subs`` of a ``connect`` result)."""
    results: dict[Any, Message] = {}
    for channel, params in wanted.items():
        try:
            results[channel] = await subscribe(params)
        except HubError as exc:
            results[channel] = {"error": error_dict(exc.code, exc.message)}
    return results


async def make_until_done(
    session: ServerSubscriber, params: dict[str, Any], *, known: bool = False
) -> None:
    """Make a server-side subscription after connect (``session.subscribe_by_server``):
    retried while the engine is unavailable and the session lasts (logged at DEBUG only);
    any other failure is logged (WARNING) and, when the client ``known`` the subscription
    (it is being made again), told with an ``unsubscribe`` push (code 2000)."""
    channel = params["channel"]
    for attempt in itertools.count():
        if attempt:
            await asyncio.sleep(RETRY_DELAYS[min(attempt, len(RETRY_DELAYS)) - 1])
        if not session.connected:
            return
        try:
            await session.subscribe_by_server(params)
            return
        except HubError as exc:
            context = {**session.log_context(), "channel": channel}
            if exc.code == ErrorCode.NOT_AVAILABLE:  # one line per session would flood the log
                logger.debug("server-side subscription: %s; retrying", exc, extra=context)
                continue
            logger.warning("server-side subscription failed: %s", exc, extra=context)
            if known:
                reason = f"server-side subscription failed: {exc.message}"
                session.push(
                    unsubscribe_push(channel, UnsubscribeCode.SERVER, reason, resubscribe=False)
                )
            return
