"""The hub client: one logical connection that reconnects, and the subscriptions on it.

The same semantics as the browser client (``web/pulsewire.js``): backoff with full jitter
between attempts, no reconnect after disconnect codes 4500-4999, pings when idle, token
refresh through ``get_token``, subscriptions recovered from their last position after every
reconnect, each publication delivered once and in order. :func:`pulsewire.client.connect`
is the usual way in.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import types
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any, Literal

from ..hub.errors import DisconnectCode, ErrorCode, reconnects
from ..hub.wire import PROTOCOL_VERSION
from ..protocol.errors import InvalidHandshake, InvalidStatus
from ..protocol.handshake import parse_uri
from .backoff import Backoff
from .commands import Commands
from .connection import CODECS, Connection, Push
from .errors import ClientClosed, ClientError, ClientTimeout, ConnectionLost
from .feed import Feed
from .registry import TEMPORARY_ERRORS, Batch, Registry
from .subscription import Callback, Subscription, call_back
from .tokens import TokenGetter, fetch_token
from .types import (
    Message,
    Position,
    State,
    StateChange,
)

__all__ = ["Client"]

logger = logging.getLogger("pulsewire.client")

NO_PING = 4005
RETRY_IN = re.compile(r"retry in (\d+(?:\.\d+)?) s")


class _Ended(Exception):
    """The connection ended before ``connect`` was answered."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"the connection closed: {code} {reason}")
        self.code = code
        self.reason = reason


class Client(Commands):
    """A client of the hub at ``urls`` (one WebSocket URL, or several nodes of a cluster:
    the client moves to the next one whenever a connection fails or is lost).

    Made and started by :func:`pulsewire.client.connect`; see docs/client.md for every
    option. Calls made while (re)connecting wait for the connection up to ``timeout``
    seconds; calls in flight when a connection is lost raise :class:`ConnectionLost`.
    """

    def __init__(
        self,
        urls: str | Sequence[str],
        *,
        token: str | None = None,
        get_token: TokenGetter | None = None,
        codec: Literal["json", "msgpack"] = "json",
        data: Any = None,
        timeout: float = 10.0,
        min_reconnect_delay: float = 0.5,
        max_reconnect_delay: float = 20.0,
        ping_interval: float | None = 25.0,
        ping_timeout: float = 10.0,
        on_state: Callback | None = None,
        on_message: Callback | None = None,
        on_server_subscription: Callback | None = None,
        ws_options: Mapping[str, Any] | None = None,
        random: Callable[[], float] = random.random,
    ) -> None:
        self.urls = [urls] if isinstance(urls, str) else list(urls)
        if not self.urls:
            raise ValueError("give at least one URL")
        for url in self.urls:
            parse_uri(url)  # a ValueError now rather than failed attempts until the timeout
        if codec not in CODECS:
            raise ValueError(f"codec must be one of {sorted(CODECS)}, not {codec!r}")
        self.codec = codec
        self.timeout = timeout
        """Seconds a call waits for the connection and for its reply."""
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.data = data
        """Sent with every ``connect`` (for the application's ``authenticate`` hook)."""
        self._token = token or None
        self._get_token = get_token
        self._need_token = self._token is None and get_token is not None
        self._ws_options = dict(ws_options or {})
        self._random = random
        self._backoff = Backoff(min_reconnect_delay, max_reconnect_delay, random=random)
        self._on_state = on_state
        self._on_message = on_message
        self._on_server_subscription = on_server_subscription
        self.state: State = "disconnected"
        """``connecting``, ``connected``, ``disconnected`` (waiting to reconnect), ``closed``."""
        self.id: str | None = None
        """This connection's client id (from the ``connect`` reply)."""
        self.user: str | None = None
        """The user id the hub knows this client as (``""``: anonymous)."""
        self.node: str | None = None
        """The name of the hub node it is connected to."""
        self.url: str | None = None
        """The URL of the current (or last) connection."""
        self.ttl: int | None = None
        """Seconds the credentials had left at the last connect or refresh (None: no expiry)."""
        self.last_error: BaseException | None = None
        """Why the last connection attempt failed (or the last connection ended)."""
        self._url_index = 0
        self._conn: Connection | None = None
        self._registry = Registry(
            self,
            retry_delay=lambda: self._backoff.min_delay * (1 + random()),
            on_server_subscription=self._server_subscription,
        )
        self._runner: asyncio.Task[None] | None = None
        self._closing = False
        self._closed_error: ClientClosed | None = None
        self._state_waiters: list[asyncio.Future[None]] = []
        self._state_feed: Feed[StateChange] = Feed()
        self._message_feed: Feed[Message] = Feed(keep=0 if on_message else 1024)
        self._server_sub_feed: Feed[Subscription] = Feed(keep=0 if on_server_subscription else 1024)

    def __repr__(self) -> str:
        return f"<pulsewire.client.Client {self.state} {self.url or self.urls[0]}>"

    # -------------------------------------------------------------------- the connection

    @property
    def token(self) -> str | None:
        """The connection token sent with the next ``connect`` (set it to replace an expired
        one when there is no ``get_token``)."""
        return self._token

    @token.setter
    def token(self, token: str | None) -> None:
        self._token = token or None
        self._need_token = False

    @property
    def subscriptions(self) -> Mapping[str, Subscription]:
        """Every subscription, by channel: the application's and the server-side ones."""
        return types.MappingProxyType(self._registry.subs)

    async def start(self) -> Client:
        """Connect, and keep reconnecting until :meth:`close`. Returns once connected;
        raises :class:`ClientClosed` if the hub refuses for good (4500-4999, e.g. an invalid
        token), :class:`ClientTimeout` if no connection succeeded within ``timeout``."""
        if self._runner is None:
            self._runner = asyncio.get_running_loop().create_task(self._run())
        try:
            await self.ready()
        except ClientTimeout as exc:
            why = f"; last error: {self.last_error}" if self.last_error else ""
            await self.close()
            raise ClientTimeout(f"{exc.message}{why}") from self.last_error
        return self

    async def ready(self, timeout: float | None = None) -> Client:
        """Wait until connected (raises ClientClosed once closed, ClientTimeout)."""
        await self._connection(timeout)
        return self

    async def close(self) -> None:
        """Close the connection and stop; iterations over subscriptions end."""
        if self.state == "closed":
            return
        self._closing = True
        runner = self._runner
        if runner is not None and runner is not asyncio.current_task():
            runner.cancel()  # it closes the connection it holds (closing handshake)
            await asyncio.gather(runner, return_exceptions=True)
        conn = self._conn
        if conn is not None and conn.is_open:
            await conn.close(1000, "client closed")
        self._stop(None)

    async def __aenter__(self) -> Client:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def state_changes(self) -> AsyncIterator[StateChange]:
        """The state changes from now on (``async for change in client.state_changes()``);
        ends when the client closes."""
        return self._state_feed.__aiter__()

    def messages(self) -> AsyncIterator[Message]:
        """``message`` pushes (the server API's ``send``). Without ``on_message``, up to
        1024 arriving before iteration starts are kept for it."""
        return self._message_feed.__aiter__()

    def server_subscriptions(self) -> AsyncIterator[Subscription]:
        """Server-side subscriptions as the server makes them (also those made at connect,
        kept until iteration starts). Their later re-subscriptions and recoveries show in
        each subscription's own events."""
        return self._server_sub_feed.__aiter__()

    # ------------------------------------------------------------------------ commands

    async def subscribe(
        self,
        channel: str,
        *,
        token: str | None = None,
        get_token: TokenGetter | None = None,
        since: Position | tuple[int, str] | None = None,
        on_publication: Callback | None = None,
        on_subscribed: Callback | None = None,
        on_unsubscribed: Callback | None = None,
        on_join: Callback | None = None,
        on_leave: Callback | None = None,
    ) -> Subscription:
        """Subscribe to ``channel`` and return the :class:`Subscription` once the hub
        accepted it. ``token``/``get_token``: a subscription token (private channels;
        ``get_token`` is called when there is none and when it expired). ``since=(offset,
        epoch)``: start by recovering what came after that position. Raises ClientError
        (e.g. 103 not allowed, 105 already subscribed) or ClientTimeout."""
        if self._closed_error is not None or self.state == "closed":
            raise self._closed_error or ClientClosed(1000, "client closed")
        if channel in self._registry.subs:
            raise ClientError(ErrorCode.ALREADY_SUBSCRIBED, f"already subscribed to {channel}")
        sub = Subscription(
            self,
            channel,
            token=token,
            get_token=get_token,
            since=since,
            on_publication=on_publication,
            on_subscribed=on_subscribed,
            on_unsubscribed=on_unsubscribed,
            on_join=on_join,
            on_leave=on_leave,
        )
        self._registry.add(sub)
        try:
            return await sub.ready()
        except ClientTimeout:
            if self._registry.subs.get(channel) is sub:
                await self.unsubscribe(channel)
            raise

    async def unsubscribe(self, channel: str) -> None:
        """End the subscription to ``channel`` (nothing if there is none). Error 103 for a
        server-side subscription."""
        sub = self._registry.subs.get(channel)
        if sub is None:
            return
        if sub.server_side:
            raise ClientError(ErrorCode.PERMISSION_DENIED, "server-side subscription")
        conn = self._registry.remove(sub)
        if conn is not None:
            try:
                await conn.call("unsubscribe", {"channel": channel}, timeout=self.timeout)
            except ClientError:
                pass  # not subscribed (113) or the connection is gone: either way, done

    async def refresh(self, token: str | None = None) -> int | None:
        """Replace the connection's credentials with ``token`` (default: a new one from
        ``get_token``); returns the seconds they have left (None: they do not expire)."""
        if token is None:
            if self._get_token is None:
                raise ClientError(ErrorCode.BAD_REQUEST, "refresh needs a token or get_token")
            token = await fetch_token(self._get_token)
        result = await self._call("refresh", {"token": token})
        self._token = token
        ttl = result.get("ttl")
        self.ttl = ttl if result.get("expires") and isinstance(ttl, int) else None
        return self.ttl

    async def _connection(self, timeout: float | None = None) -> Connection:
        timeout = self.timeout if timeout is None else timeout
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            if self.state == "closed":
                raise self._closed_error or ClientClosed(1000, "client closed")
            conn = self._conn
            if self.state == "connected" and conn is not None and conn.is_open:
                return conn  # (one that just ended waits for the runner to notice)
            if self._runner is None:
                raise ClientError(0, "the client is not started: use connect() or start()")
            waiter = loop.create_future()
            self._state_waiters.append(waiter)
            try:
                await asyncio.wait_for(waiter, max(0.0, deadline - loop.time()))
            except asyncio.TimeoutError:
                raise ClientTimeout(f"not connected within {timeout} s") from None

    async def _call(self, method: str, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
        conn = await self._connection()
        return await conn.call(method, params, timeout=self.timeout)

    async def _subscribed(self, channel: str) -> None:
        sub = self._registry.subs.get(channel)
        if sub is not None and sub.state == "subscribing":
            await sub.ready()

    # ---------------------------------------------------------------- connection lifecycle

    def _set_state(self, state: State, code: int | None = None, reason: str = "") -> None:
        if self.state == state:
            return
        change = StateChange(state, self.state, code, reason)
        self.state = state
        waiters, self._state_waiters = self._state_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)
        call_back(self._on_state, change)
        self._state_feed.put(change)

    async def _run(self) -> None:
        while True:
            url = self.urls[self._url_index]
            self._set_state("connecting")
            try:
                conn = await self._open(url)
            except Exception as exc:
                if self._closing:
                    return
                self.last_error = exc
                code, reason = (
                    (exc.code, exc.reason) if isinstance(exc, _Ended) else (1006, str(exc))
                )
                if not reconnects(code):
                    self._stop(ClientClosed(code, reason))
                    return
                if not isinstance(exc, (_Ended, ClientError, OSError, InvalidHandshake)):
                    logger.warning("pulsewire.client: connecting to %s failed: %r", url, exc)
                delay = _retry_after(exc, reason)
            else:
                self._backoff.reset()
                code, reason = await self._serve(conn)
                if self._closing:
                    return
                if not reconnects(code):
                    self._stop(ClientClosed(code, reason))
                    return
                self.last_error = ConnectionLost(f"{url}: {code} {reason}")
                delay = _retry_after(None, reason)
            if code == DisconnectCode.TOKEN_EXPIRED and self._get_token is not None:
                self._need_token = True
            self._url_index = (self._url_index + 1) % len(self.urls)
            self._set_state("disconnected", code, reason)
            await asyncio.sleep(max(delay, self._backoff.next_delay()))

    async def _open(self, url: str) -> Connection:
        """A connection with ``connect`` answered (applied by :meth:`_connected`)."""
        if self._get_token is not None and (self._need_token or self._token is None):
            self._token = await fetch_token(self._get_token)
            self._need_token = False
        await self._registry.fetch_tokens()
        self.url = url
        conn = await Connection.open(
            url, self.codec, self._on_push, timeout=self.timeout, ws_options=self._ws_options
        )
        params: dict[str, Any] = {"version": PROTOCOL_VERSION}
        if self._token is not None:
            params["token"] = self._token
        if self.data is not None:
            params["data"] = self.data
        batch, positions = self._registry.connect_params()
        if batch:
            params["subs"] = {channel: p for channel, (_, p) in batch.items()}
        if positions:
            params["server_subs"] = positions

        def connected(result: dict[str, Any]) -> None:
            self._connected(conn, result, batch, set(positions))

        try:
            await conn.call("connect", params, timeout=self.timeout, on_result=connected)
        except ConnectionLost:
            code, reason = await asyncio.shield(conn.ended)
            raise _Ended(code, reason) from None
        except BaseException as exc:
            if isinstance(exc, ClientError) and exc.code == ErrorCode.TOKEN_EXPIRED:
                self._need_token = True
            await conn.close(1000, "connect failed")
            raise
        return conn

    def _connected(
        self,
        conn: Connection,
        result: dict[str, Any],
        batch: Batch,
        recovering: set[str],
    ) -> None:
        """The ``connect`` reply: applied before any message after it is read."""
        self._conn = conn
        self.id = str(result.get("client", ""))
        self.user = str(result.get("user", ""))
        self.node = str(result.get("node", ""))
        ttl = result.get("ttl")
        self.ttl = ttl if result.get("expires") and isinstance(ttl, int) else None
        self._registry.connected(conn, result, batch, recovering)
        self._set_state("connected")
        self._registry.resubscribe_all()

    async def _serve(self, conn: Connection) -> tuple[int, str]:
        """Keep ``conn`` alive (pings, token refresh) until it ends; returns why it ended."""
        loop = asyncio.get_running_loop()
        helpers = [loop.create_task(self._keep_alive(conn)), loop.create_task(self._refresh(conn))]
        try:
            code, reason = await asyncio.shield(conn.ended)
        except asyncio.CancelledError:  # close(): end the connection properly
            await conn.close(1000, "client closed")
            raise
        finally:
            for task in helpers:
                task.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)
            if self._conn is conn:
                self._conn = None
            self._registry.lost(conn)
        return code, reason

    async def _keep_alive(self, conn: Connection) -> None:
        """A ``ping`` after ``ping_interval`` seconds without a message from the server; no
        reply within ``ping_timeout`` ends the connection (4005), and the client reconnects."""
        interval = self.ping_interval
        if not interval:
            return
        loop = asyncio.get_running_loop()
        while conn.is_open:
            idle = loop.time() - conn.last_received
            if idle < interval:
                await asyncio.sleep(interval - idle)
                continue
            try:
                await conn.call("ping", timeout=self.ping_timeout)
            except ClientTimeout:
                conn.abort(NO_PING, "no reply to ping")
                return
            except ClientError:
                return

    async def _refresh(self, conn: Connection) -> None:
        """Refresh expiring credentials through ``get_token`` at 90% of their ttl; after a
        temporary failure (108, e.g. the hub cannot fetch its token keys; 111; no reply;
        ``get_token`` failing) try again a little later, with backoff."""
        retry = Backoff(0.5, 20.0, random=self._random)
        delay: float | None = None
        while self._get_token is not None and self.ttl is not None:
            await asyncio.sleep(max(1.0, self.ttl * 0.9) if delay is None else delay)
            if self._conn is not conn:
                return
            try:
                await self.refresh()
            except ConnectionLost:
                return
            except Exception as exc:
                temporary = not isinstance(exc, ClientError) or exc.code in TEMPORARY_ERRORS
                logger.warning(
                    "pulsewire.client: token refresh failed%s: %s",
                    ", trying again" if temporary else "",
                    exc,
                )
                if not temporary:
                    return  # the session ends with 4002; the reconnect gets a new token
                delay = 0.5 + retry.next_delay()
            else:
                retry.reset()
                delay = None

    def _stop(self, error: ClientClosed | None) -> None:
        if self.state == "closed":
            return
        self._closed_error = error
        self._conn = None
        if error is not None:
            self.last_error = error
        self._registry.close(error)
        code, reason = (error.code, error.reason) if error else (1000, "client closed")
        self._set_state("closed", code, reason)
        self._state_feed.end()
        self._message_feed.end(error)
        self._server_sub_feed.end(error)

    # ------------------------------------------------------------------------- pushes

    def _on_push(self, push: Push) -> None:
        if push["push"] == "message":
            message = Message(push.get("data"))
            call_back(self._on_message, message)
            self._message_feed.put(message)
        else:
            self._registry.on_push(push)

    def _server_subscription(self, sub: Subscription) -> None:
        call_back(self._on_server_subscription, sub)
        self._server_sub_feed.put(sub)


def _retry_after(exc: BaseException | None, reason: str) -> float:
    """The delay a refusal asks for: ``Retry-After`` of a 429/503 handshake answer, or the
    "retry in N s" of a 4008 disconnect."""
    if (match := RETRY_IN.search(reason)) is not None:
        return float(match.group(1))
    if isinstance(exc, InvalidStatus):
        for name, value in exc.headers:
            if name.lower() == "retry-after" and value.strip().isdigit():
                return float(value)
    return 0.0
