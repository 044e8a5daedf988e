"""One channel subscription: its place in the stream, its events, and how to iterate them.

A :class:`Subscription` outlives connections: after a reconnect the client subscribes it
again, recovering from its last position (docs/protocol.md, "Recovery"), and the
subscription delivers each publication once and in order (offsets at or below the last one
are dropped). It is made by :meth:`Client.subscribe <pulsewire.client.Client.subscribe>`, or
by the server (a server-side subscription, ``server_side`` true).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, Literal, Protocol, TypeAlias

from .errors import ClientClosed, ClientError, ClientTimeout
from .tokens import TokenGetter, fetch_token
from .types import (
    ClientInfo,
    Event,
    HistoryResult,
    Join,
    Leave,
    Position,
    PresenceStats,
    Publication,
    Subscribed,
    Unsubscribed,
)

__all__ = ["Callback", "Subscription", "SubscriptionHost", "SubscriptionState"]

logger = logging.getLogger("pulsewire.client")

SubscriptionState: TypeAlias = Literal["subscribing", "subscribed", "unsubscribed"]
Callback: TypeAlias = Callable[[Any], "Awaitable[None] | None"]


class SubscriptionHost(Protocol):
    """What a subscription needs from its client (its public commands)."""

    timeout: float

    async def publish(self, channel: str, data: Any) -> Position | None: ...

    async def presence(self, channel: str) -> dict[str, ClientInfo]: ...

    async def presence_stats(self, channel: str) -> PresenceStats: ...

    async def history(
        self,
        channel: str,
        *,
        limit: int | None = None,
        since: Position | tuple[int, str] | None = None,
        reverse: bool = False,
    ) -> HistoryResult: ...

    async def unsubscribe(self, channel: str) -> None: ...


def call_back(callback: Callback | None, value: Any) -> None:
    """Run an application callback; a coroutine function's coroutine becomes a task. A
    failing callback is logged and does not stop the client."""
    if callback is None:
        return
    try:
        result = callback(value)
        if asyncio.iscoroutine(result):
            task = asyncio.get_running_loop().create_task(result)
            task.add_done_callback(_log_failure)
    except Exception:
        logger.exception("pulsewire.client: a callback failed")


def _log_failure(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error("pulsewire.client: a callback failed", exc_info=task.exception())


class Subscription:
    """A subscription to ``channel``.

    ``async for pub in sub`` yields its :class:`Publication` s; ``sub.events()`` yields
    everything in order (publications, :class:`Subscribed` after each (re)subscribe,
    :class:`Join`, :class:`Leave`, the final :class:`Unsubscribed`). Iteration ends when the
    subscription ends (unsubscribed, or the client closed by the application); it raises the
    :class:`ClientError` that ended it otherwise (subscribing failed for good, the client was
    disconnected for good). Use one consumer: iterating, or the ``on_publication``
    callback (with it, nothing is queued for iteration).
    """

    def __init__(
        self,
        host: SubscriptionHost,
        channel: str,
        *,
        token: str | None = None,
        get_token: TokenGetter | None = None,
        since: Position | tuple[int, str] | None = None,
        server_side: bool = False,
        on_publication: Callback | None = None,
        on_subscribed: Callback | None = None,
        on_unsubscribed: Callback | None = None,
        on_join: Callback | None = None,
        on_leave: Callback | None = None,
    ) -> None:
        self._host = host
        self.channel = channel
        """The channel's name."""
        self.server_side = server_side
        """Made by the server (it cannot be unsubscribed by the client)."""
        self.state: SubscriptionState = "subscribing"
        self.token = token
        """The subscription token (private channels), if any."""
        self.get_token = get_token
        self.offset: int | None = None
        """Offset of the last publication seen (channels with history)."""
        self.epoch: str | None = None
        """The stream's epoch (channels with history)."""
        self.recoverable = False
        """The channel keeps history: the subscription recovers after a reconnect."""
        if since is not None:
            self.offset, self.epoch = int(since[0]), str(since[1])
            self.recoverable = True
        self.last_subscribed: Subscribed | None = None
        """The last :class:`Subscribed` event (``None`` until subscribed)."""
        self.ended: Unsubscribed | None = None
        """Why the subscription ended, once it has."""
        self.requested_on: object | None = None
        """The connection this subscription was last asked for on (kept by the client)."""
        self._failure: ClientError | None = None
        self._on_publication = on_publication
        self._on_subscribed = on_subscribed
        self._on_unsubscribed = on_unsubscribed
        self._on_join = on_join
        self._on_leave = on_leave
        self._queue: deque[Event] | None = None if on_publication is not None else deque()
        self._wakeup: asyncio.Future[None] | None = None
        self._state_waiters: list[asyncio.Future[None]] = []

    def __repr__(self) -> str:
        side = " server-side" if self.server_side else ""
        return f"<Subscription{side} {self.channel!r} {self.state} at {self.position}>"

    # ------------------------------------------------------------------------------- public

    @property
    def position(self) -> Position | None:
        """Where this subscription stands in the channel's stream (``None`` without history)."""
        if self.epoch is None:
            return None
        return Position(self.offset or 0, self.epoch)

    @property
    def recovered(self) -> bool:
        """Whether the last (re)subscribe recovered every missed publication; ``False``
        after a recovery that failed (reload the state) and before any recovery."""
        return self.last_subscribed is not None and self.last_subscribed.recovered

    async def ready(self, timeout: float | None = None) -> Subscription:
        """Wait until subscribed (raises what ended the subscription, or ClientTimeout)."""
        timeout = self._host.timeout if timeout is None else timeout
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.state != "subscribed":
            if self.state == "unsubscribed":
                raise self._failure or ClientError(113, f"not subscribed to {self.channel}")
            waiter = loop.create_future()
            self._state_waiters.append(waiter)
            try:
                await asyncio.wait_for(waiter, max(0.0, deadline - loop.time()))
            except asyncio.TimeoutError:
                raise ClientTimeout(f"not subscribed to {self.channel} in {timeout} s") from None
        return self

    async def publish(self, data: Any) -> Position | None:
        """Publish to this channel: see :meth:`Client.publish`."""
        return await self._host.publish(self.channel, data)

    async def presence(self) -> dict[str, ClientInfo]:
        """Who is subscribed (channels with presence), by client id."""
        return await self._host.presence(self.channel)

    async def presence_stats(self) -> PresenceStats:
        """How many clients and users are subscribed (channels with presence)."""
        return await self._host.presence_stats(self.channel)

    async def history(
        self,
        *,
        limit: int | None = None,
        since: Position | tuple[int, str] | None = None,
        reverse: bool = False,
    ) -> HistoryResult:
        """Publications kept in the channel's history: see :meth:`Client.history`."""
        return await self._host.history(self.channel, limit=limit, since=since, reverse=reverse)

    async def unsubscribe(self) -> None:
        """End the subscription (iteration ends)."""
        await self._host.unsubscribe(self.channel)

    def __aiter__(self) -> AsyncIterator[Publication]:
        return self._publications()

    async def _publications(self) -> AsyncIterator[Publication]:
        async for event in self.events():
            if isinstance(event, Publication):
                yield event

    async def events(self) -> AsyncIterator[Event]:
        """Everything that happens to the subscription, in order (see the class doc)."""
        queue = self._queue
        if queue is None:
            raise RuntimeError(f"{self.channel}: publications go to on_publication")
        while True:
            while queue:
                yield queue.popleft()
            if self.state == "unsubscribed":
                if self._failure is not None:
                    raise self._failure
                return
            self._wakeup = asyncio.get_running_loop().create_future()
            try:
                await self._wakeup
            finally:
                self._wakeup = None

    # ------------------------------------------------------- driven by the client (in order)

    async def fetch_token(self) -> None:
        """Get a subscription token from ``get_token`` when there is none."""
        if self.token is None and self.get_token is not None:
            self.token = await fetch_token(self.get_token)

    def subscribe_params(self) -> dict[str, Any]:
        """The ``subscribe`` params without ``channel``: recover from the last position."""
        params: dict[str, Any] = {}
        if self.token is not None:
            params["token"] = self.token
        position = self.position
        if self.recoverable and position is not None:
            params.update(recover=True, offset=position.offset, epoch=position.epoch)
        return params

    def recovery_position(self) -> dict[str, Any] | None:
        """A server-side subscription's entry of ``connect``'s ``server_subs``, if any."""
        position = self.position
        if not self.recoverable or position is None:
            return None
        return {"recover": True, "offset": position.offset, "epoch": position.epoch}

    def set_state(self, state: SubscriptionState) -> None:
        """Change the state; wakes whoever waits in :meth:`ready`."""
        if self.state == state:
            return
        self.state = state
        waiters, self._state_waiters = self._state_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def subscribed(self, result: Mapping[str, Any], recovering: bool) -> None:
        """A subscribe result (reply, ``connect`` entry or ``subscribe`` push) arrived."""
        recovered = recovering and result.get("recovered") is True
        self.recoverable = result.get("recoverable") is True
        offset, epoch = result.get("offset"), result.get("epoch")
        if self.recoverable and not recovered and isinstance(offset, int):
            # A new starting point: what came before it is state the application reloads.
            self.offset, self.epoch = offset, str(epoch)
        self.set_state("subscribed")
        event = Subscribed(
            self.channel,
            recovering,
            recovered,
            self.recoverable,
            Position(offset, str(epoch)) if isinstance(offset, int) else None,
            self.server_side,
        )
        self.last_subscribed = event
        call_back(self._on_subscribed, event)
        self._enqueue(event)
        publications = result.get("publications")
        for pub in publications if isinstance(publications, list) else ():
            if isinstance(pub, Mapping):
                self.publication(pub)
        if recovered and isinstance(offset, int):
            self.offset = max(self.offset or 0, offset)

    def publication(self, pub: Mapping[str, Any]) -> None:
        """Deliver a publication once and in order: offsets at or below the last are dropped."""
        offset = pub.get("offset")
        if isinstance(offset, int) and offset > 0:
            if self.offset is not None and offset <= self.offset:
                return
            self.offset = offset
        publication = Publication.from_wire(self.channel, pub)
        call_back(self._on_publication, publication)
        self._enqueue(publication)

    def joined(self, info: Any) -> None:
        """A ``join`` push."""
        event = Join(self.channel, ClientInfo.from_wire(info))
        call_back(self._on_join, event)
        self._enqueue(event)

    def left(self, info: Any) -> None:
        """A ``leave`` push."""
        event = Leave(self.channel, ClientInfo.from_wire(info))
        call_back(self._on_leave, event)
        self._enqueue(event)

    def end(self, code: int, reason: str, failure: ClientError | None = None) -> None:
        """The subscription is over; iteration ends (raising ``failure`` if given)."""
        if self.state == "unsubscribed" and self.ended is not None:
            return
        self._failure = failure
        event = Unsubscribed(self.channel, code, reason)
        self.ended = event
        self.set_state("unsubscribed")
        call_back(self._on_unsubscribed, event)
        self._enqueue(event)

    def client_closed(self, error: ClientClosed | None) -> None:
        """The client stopped: by the application (``None``) or for good (``error``)."""
        if error is None:
            self.end(0, "client closed")
        else:
            self.end(error.code, error.reason, error)

    def _enqueue(self, event: Event) -> None:
        if self._queue is None:
            return
        self._queue.append(event)
        wakeup = self._wakeup
        if wakeup is not None and not wakeup.done():
            wakeup.set_result(None)
