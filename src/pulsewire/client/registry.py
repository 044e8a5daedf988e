"""The client's subscriptions: subscribing them on each connection, and their pushes.

One :class:`Registry` per client holds every :class:`Subscription` by channel (the
application's and the server-side ones), puts them in ``connect``'s ``subs`` and
``server_subs`` params when (re)connecting, applies the results, resubscribes after
temporary failures and ``unsubscribe`` pushes with ``resubscribe: true``, and routes the
channel pushes (publication, join, leave, unsubscribe, subscribe).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

from ..hub.errors import ErrorCode, UnsubscribeCode
from .connection import Connection, Push
from .errors import TIMEOUT, ClientClosed, ClientError, ConnectionLost
from .subscription import Subscription, SubscriptionHost

__all__ = ["Batch", "Registry", "error_of"]

logger = logging.getLogger("pulsewire.client")

TEMPORARY_ERRORS = frozenset({ErrorCode.NOT_AVAILABLE, ErrorCode.TOO_MANY_REQUESTS, TIMEOUT})
"""Subscribe errors after which the client tries again (after a short random delay)."""

Batch = dict[str, tuple[Subscription, dict[str, Any]]]
"""The subscriptions sent in ``connect``'s ``subs``, with the params sent for each."""


def error_of(error: Mapping[str, Any]) -> ClientError:
    """A :class:`ClientError` from the protocol's ``{"code", "message"}``."""
    code = error.get("code")
    return ClientError(code if isinstance(code, int) else 100, str(error.get("message", "")))


class Registry:
    """Every subscription of one client, by channel, and the current connection."""

    def __init__(
        self,
        host: SubscriptionHost,
        *,
        retry_delay: Callable[[], float],
        on_server_subscription: Callable[[Subscription], None],
    ) -> None:
        self.host = host
        self.subs: dict[str, Subscription] = {}
        self.conn: Connection | None = None
        """The connection subscriptions are made on (None while disconnected)."""
        self._retry_delay = retry_delay
        self._on_server_subscription = on_server_subscription
        self._tasks: set[asyncio.Task[Any]] = set()

    # ---------------------------------------------------------------------- application

    def add(self, sub: Subscription) -> None:
        """A new subscription of the application: subscribe it now if connected."""
        self.subs[sub.channel] = sub
        self.send_subscribe(sub)

    def remove(self, sub: Subscription) -> Connection | None:
        """The application unsubscribed: returns the connection it is subscribed on (to
        send ``unsubscribe`` there), if any."""
        if self.subs.get(sub.channel) is sub:
            del self.subs[sub.channel]
        conn = self.conn
        sent = conn is not None and sub.requested_on is conn
        sub.end(0, "unsubscribed by the client")
        return conn if sent else None

    # ---------------------------------------------------------------- (re)connecting

    def connect_params(self) -> tuple[Batch, dict[str, dict[str, Any]]]:
        """The application's subscriptions for ``subs``, and the positions of the
        server-side ones for ``server_subs``."""
        batch = {
            sub.channel: (sub, sub.subscribe_params())
            for sub in self.subs.values()
            if not sub.server_side and sub.state != "unsubscribed"
        }
        positions = {
            sub.channel: position
            for sub in self.subs.values()
            if sub.server_side and (position := sub.recovery_position()) is not None
        }
        return batch, positions

    async def fetch_tokens(self) -> None:
        """Subscription tokens from ``get_token`` for those that have none (before connect)."""
        subs = [s for s in self.subs.values() if not s.server_side and s.state != "unsubscribed"]
        await asyncio.gather(*(sub.fetch_token() for sub in subs))

    def connected(
        self, conn: Connection, result: Mapping[str, Any], batch: Batch, recovering: set[str]
    ) -> None:
        """Apply the ``connect`` reply (before any message after it is read)."""
        self.conn = conn
        results = result.get("subs")
        results = results if isinstance(results, Mapping) else {}
        for channel, (sub, params) in batch.items():
            sub.requested_on = conn
            entry = results.get(channel)
            if self.subs.get(channel) is not sub:
                if isinstance(entry, Mapping) and "error" not in entry:
                    self._fire_and_forget(conn, "unsubscribe", {"channel": channel})
            elif not isinstance(entry, Mapping):
                sub.requested_on = None  # the hub did not answer for it: ask again
            elif isinstance(error := entry.get("error"), Mapping):
                self._subscribe_failed(sub, conn, error_of(error))
            else:
                sub.subscribed(entry, params.get("recover") is True)
        server_subs = result.get("server_subs")
        server_subs = server_subs if isinstance(server_subs, Mapping) else {}
        for sub in list(self.subs.values()):
            if sub.server_side and sub.channel not in server_subs:
                del self.subs[sub.channel]
                sub.end(UnsubscribeCode.SERVER, "not subscribed again by the server")
        for channel, entry in server_subs.items():
            if isinstance(entry, Mapping):
                self._server_subscribed(conn, str(channel), entry, channel in recovering)

    def resubscribe_all(self) -> None:
        """Subscribe what the ``connect`` batch did not cover (added meanwhile, retried)."""
        for sub in list(self.subs.values()):
            self.send_subscribe(sub)

    def lost(self, conn: Connection) -> None:
        """The connection ended: every subscription waits to be made again."""
        if self.conn is conn:
            self.conn = None
        for sub in self.subs.values():
            sub.set_state("subscribing")

    def close(self, error: ClientClosed | None) -> None:
        """The client stopped: every subscription ends."""
        self.conn = None
        subs = list(self.subs.values())
        self.subs.clear()
        for sub in subs:
            sub.client_closed(error)
        for task in list(self._tasks):
            task.cancel()

    # ------------------------------------------------------------------- subscribing

    def send_subscribe(self, sub: Subscription) -> None:
        """Send ``subscribe`` for ``sub`` on the current connection, unless already asked."""
        conn = self.conn
        if conn is None or sub.server_side or sub.state == "unsubscribed":
            return
        if sub.requested_on is conn:
            return
        sub.requested_on = conn
        if sub.token is None and sub.get_token is not None:
            self._spawn(self._subscribe_with_token(sub, conn))
            return
        params = {"channel": sub.channel, **sub.subscribe_params()}
        recovering = params.get("recover") is True

        def subscribed(result: dict[str, Any]) -> None:
            if self.subs.get(sub.channel) is sub:
                sub.subscribed(result, recovering)

        future = conn.send_command(
            "subscribe", params, timeout=self.host.timeout, on_result=subscribed
        )

        def done(future: asyncio.Future[dict[str, Any]]) -> None:
            if not future.cancelled() and (error := future.exception()) is not None:
                self._subscribe_failed(sub, conn, error)

        future.add_done_callback(done)

    async def _subscribe_with_token(self, sub: Subscription, conn: Connection) -> None:
        try:
            await sub.fetch_token()
        except Exception as exc:
            error = exc if isinstance(exc, ClientError) else ClientError(100, f"get_token: {exc}")
            self._subscribe_failed(sub, conn, error)
            return
        if sub.token is not None and self.conn is conn:
            sub.requested_on = None
            self.send_subscribe(sub)

    def _subscribe_failed(self, sub: Subscription, conn: Connection, error: BaseException) -> None:
        if self.subs.get(sub.channel) is not sub or isinstance(error, ConnectionLost):
            return  # gone, or the connection is: it resubscribes after reconnecting
        if not isinstance(error, ClientError):
            error = ClientError(100, str(error))
        new_token = error.code == ErrorCode.TOKEN_EXPIRED and sub.get_token is not None
        if new_token or error.code in TEMPORARY_ERRORS:
            if new_token:
                sub.token = None
            self._spawn(self._retry_subscribe(sub, conn))
            return
        del self.subs[sub.channel]
        sub.end(error.code, error.message, error)

    async def _retry_subscribe(self, sub: Subscription, conn: Connection) -> None:
        await asyncio.sleep(self._retry_delay())
        if self.conn is conn and self.subs.get(sub.channel) is sub:
            sub.requested_on = None
            self.send_subscribe(sub)

    def _server_subscribed(
        self, conn: Connection, channel: str, result: Mapping[str, Any], recovering: bool
    ) -> None:
        """A server-side subscription's subscribe result (connect reply or push)."""
        sub = self.subs.get(channel)
        error = result.get("error")
        if isinstance(error, Mapping):
            if sub is not None and sub.server_side:
                del self.subs[channel]
                failure = error_of(error)
                sub.end(failure.code, failure.message, failure)
            logger.warning("pulsewire.client: server-side subscription %s: %s", channel, error)
            return
        new = sub is None
        if sub is None:
            sub = Subscription(self.host, channel, server_side=True)
            self.subs[channel] = sub
        sub.requested_on = conn
        if new:
            self._on_server_subscription(sub)
        sub.subscribed(result, recovering)

    # ------------------------------------------------------------------------ pushes

    def on_push(self, push: Push) -> None:
        """A channel push: publication, join, leave, unsubscribe, subscribe."""
        kind = push["push"]
        channel = push.get("channel")
        if not isinstance(channel, str):
            return
        sub = self.subs.get(channel)
        if kind == "subscribe":
            if self.conn is not None:
                self._server_subscribed(self.conn, channel, push, "recovered" in push)
        elif sub is None:
            return
        elif kind == "publication":
            sub.publication(push)
        elif kind == "join":
            sub.joined(push.get("info"))
        elif kind == "leave":
            sub.left(push.get("info"))
        elif kind == "unsubscribe":
            self._unsubscribed(sub, push)

    def _unsubscribed(self, sub: Subscription, push: Push) -> None:
        """The server ended a subscription; ``resubscribe: true`` asks to come back."""
        if push.get("resubscribe") is True:
            sub.set_state("subscribing")
            if not sub.server_side:  # the server resubscribes those itself
                sub.requested_on = None
                self.send_subscribe(sub)
            return
        del self.subs[sub.channel]
        code = push.get("code")
        sub.end(code if isinstance(code, int) else 2000, str(push.get("reason", "")))

    # ------------------------------------------------------------------------ helpers

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _fire_and_forget(self, conn: Connection, method: str, params: dict[str, Any]) -> None:
        future = conn.send_command(method, params, timeout=self.host.timeout)
        future.add_done_callback(lambda f: f.cancelled() or f.exception())
