"""A client session: one connected client, whatever transport carries it.

A transport (WebSocket, SSE, long-polling) creates a :class:`Session` through
:meth:`Hub.open_session`, feeds it each message from the client with :meth:`Session.handle`,
and calls :meth:`Session.transport_closed` when the client is gone. The session answers with
replies and pushes through the transport's non-blocking ``send``.

Subscribing with recovery is where ordering matters: the session registers for live
publications *before* it reads history, the fan-out buffers what arrives meanwhile, and then
delivers recovered publications, then the buffered ones newer than the last recovered, then
live ones. Nothing is lost between history and live delivery, and nothing is delivered twice.

A session knows its node only through :class:`~pulsewire.hub.contracts.SessionHost` (public
methods, implemented by :class:`~pulsewire.hub.Hub`), and its subscriptions live in the node's
:class:`~pulsewire.hub.fanout.Fanout`, which hands it each publication already encoded.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Mapping
from typing import Any

from .auth import Credentials, grant_allows
from .channels import ChannelName
from .contracts import ConnectRequest, SessionHost, Transport
from .errors import Disconnect, DisconnectCode, ErrorCode, HubError
from .expiry import Expiry
from .fanout import Subscription
from .hooks import call_hook, subscribe_outcome
from .messages import (
    Message,
    connect_result,
    error_reply,
    history_result,
    presence_result,
    presence_stats_result,
    publish_result,
    reply,
    rpc_result,
    subscribe_push,
    subscribe_result,
)
from .ratelimit import TokenBucket
from .requests import (
    Command,
    ConnectParams,
    HistoryParams,
    HistoryQuery,
    PresenceParams,
    PresenceStatsParams,
    PublishParams,
    RefreshParams,
    RpcParams,
    SendParams,
    SubscribeParams,
    UnsubscribeParams,
)
from .serversubs import at_connect, make_again, subscribe_each
from .types import ClientInfo, PreparedMessage
from .wire import Codec

__all__ = ["ConnectRequest", "Session", "SessionHost", "Subscription", "Transport"]

logger = logging.getLogger("pulsewire.hub")


_CONNECTING, _CONNECTED, _CLOSED = 0, 1, 2
POLICY_VIOLATION = 1008
SLOW_CONSUMER = 1013


class Session:
    """One client connection to the hub (see the module docstring)."""

    def __init__(
        self, hub: SessionHost[Session], transport: Transport, codec: Codec, request: ConnectRequest
    ) -> None:
        self.hub = hub
        self.transport = transport
        self.codec = codec
        self.request = request
        self.id = secrets.token_hex(8)
        self.user = ""
        self.credentials: Credentials | None = None
        self.conn_info: Any = None
        self.state = _CONNECTING
        self._loop = asyncio.get_running_loop()
        self._timer: asyncio.TimerHandle | None = self._loop.call_later(
            hub.config.connect_timeout, self._stale
        )
        config = hub.config
        self._command_rate = TokenBucket(*config.command_rate)
        self._byte_rate = TokenBucket(config.client_bytes_per_second, config.client_bytes_burst)
        self._traffic = hub.metrics.traffic_of(transport.kind)
        self._queue_max = config.client_queue_max_bytes
        self.expiry = Expiry(hub)
        """The credentials' and subscriptions' expiry timers (refresh hooks)."""
        self._turn = asyncio.Lock()
        """Held by each command and each server-side subscription made after connect: they
        run one at a time, so that a push never overtakes the reply it follows."""

    # ------------------------------------------------------------------------- plumbing

    @property
    def connected(self) -> bool:
        return self.state == _CONNECTED

    @property
    def subscriptions(self) -> Mapping[str, Subscription]:
        """This session's subscriptions by channel (a read-only view of the fan-out's)."""
        return self.hub.fanout.subscriptions(self)

    def log_context(self) -> dict[str, Any]:
        """Fields that identify this session in structured logs."""
        return {
            "client": self.id,
            "user": self.user,
            "transport": self.transport.kind,
            "remote": self.request.remote_address,
        }

    def info(self, chan_info: Any = None) -> ClientInfo:
        return ClientInfo(self.id, self.user, self.conn_info, chan_info)

    def _stale(self) -> None:
        self._timer = None
        if self.state == _CONNECTING:
            self.disconnect(DisconnectCode.STALE, "no connect command in time")

    def send(self, message: dict[str, Any]) -> None:
        if self.state != _CLOSED:
            encoded = self.codec.encode(message)
            traffic = self._traffic
            traffic[2] += 1
            traffic[3] += _size(encoded)
            self.transport.send(encoded)

    def push(self, message: dict[str, Any]) -> None:
        self.send(message)

    def send_prepared(self, prepared: PreparedMessage) -> None:
        """Send a push the fan-out encoded once for every session with this codec."""
        if self.state != _CLOSED:
            encoded = prepared.data
            traffic = self._traffic
            traffic[2] += 1
            traffic[3] += _size(encoded)
            self.transport.send(encoded, prepared)

    def disconnect(self, code: int, reason: str) -> None:
        """End this session: tell the client why (code 4000-4499: reconnect; 4500+: don't)."""
        if self.state == _CLOSED:
            return
        self.transport.close(code, reason)
        self._closed(code, reason)

    def transport_closed(self, code: int = 1006, reason: str = "") -> None:
        """The transport is gone (the client left or the network broke)."""
        self._closed(code, reason)

    def _closed(self, code: int, reason: str) -> None:
        if self.state == _CLOSED:
            return
        was_connected = self.state == _CONNECTED
        self.state = _CLOSED
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.expiry.cancel()
        self.hub.session_closed(self, was_connected, code, reason)

    def _auth_address(self) -> str:
        """The key this session's authentication attempts count under (see AuthGuard)."""
        request = self.request
        return self.hub.auth_guard.client(request.remote_address, request.headers)

    def _check_auth_guard(self, address: str) -> None:
        """Refuse a token check (error 111) while the address is over its failure budget."""
        wait = self.hub.auth_guard.check(address, "token")
        if wait:
            raise HubError(
                ErrorCode.TOO_MANY_REQUESTS,
                f"too many failed authentications from your address: retry in {wait} s",
            )

    # ---------------------------------------------------------------------- dispatching

    async def handle(self, data: str | bytes) -> None:
        """Process one message from the client (one or more commands)."""
        if self.state == _CLOSED:
            return
        traffic = self._traffic
        traffic[0] += 1
        size = _size(data)
        traffic[1] += size
        # Bytes are charged before decoding, so that decoding work is bounded by the byte
        # rate; commands after it, one token each: a message may carry many commands (one
        # per line), and a limit that counted messages let 1,935 pings through as one.
        # All or nothing: a message over the limit runs no command (its ids get 111 under
        # "drop"), so a client never has to guess which of its commands ran.
        over = not self._byte_rate.take(size)
        if over and self.hub.config.rate_limit_policy == "disconnect":
            self._over_limit([])  # not even decoded: the byte rate bounds decoding work
            return
        try:
            commands = self.codec.decode_commands(data)
        except HubError as exc:
            if over:
                self._over_limit([])
            else:
                self.disconnect(DisconnectCode.BAD_REQUEST, exc.message)
            return
        if over or not self._command_rate.take(max(1, len(commands))):
            self._over_limit(commands)
            return
        for command in commands:
            if self.state == _CLOSED:
                return
            async with self._turn:
                await self._handle_command(command)

    def _over_limit(self, commands: list[dict[str, Any]]) -> None:
        policy = self.hub.config.rate_limit_policy
        self.hub.metrics.rate_limited.labels(policy).inc()
        logger.info("rate limit exceeded", extra={**self.log_context(), "policy": policy})
        if policy == "disconnect":
            self.disconnect(POLICY_VIOLATION, "rate limit exceeded")
            return
        # Drop policy: answer each command that has an id with error 111, run none.
        for command in commands:
            cid = command.get("id")
            if isinstance(cid, int):
                self.send(error_reply(cid, ErrorCode.TOO_MANY_REQUESTS, "rate limit exceeded"))

    async def _handle_command(self, command: dict[str, Any]) -> None:
        try:
            envelope = Command.parse(command)
        except Disconnect as exc:
            self.disconnect(exc.code, exc.reason)
            return
        cid, method, params = envelope.id, envelope.method, envelope.params
        handler = _METHODS.get(method)
        try:
            if handler is None:
                raise HubError(ErrorCode.METHOD_NOT_FOUND, f"unknown method {method!r}")
            if method != "connect" and self.state != _CONNECTED:
                raise Disconnect(DisconnectCode.BAD_REQUEST, f"{method} before connect")
            self.hub.metrics.command(method)
            result = await handler(self, params)
        except Disconnect as exc:
            self.disconnect(exc.code, exc.reason)
            return
        except HubError as exc:
            self.send(error_reply(cid, exc.code, exc.message))
            return
        except Exception:
            logger.exception("hub command %s failed", method, extra=self.log_context())
            self.send(error_reply(cid, ErrorCode.INTERNAL, "internal error"))
            return
        try:
            self.send(reply(cid, result))
        except (TypeError, ValueError) as exc:  # e.g. an RPC result the codec cannot carry
            logger.error("cannot encode the reply to %s: %s", method, exc)
            message = "the result cannot be encoded"
            self.send(error_reply(cid, ErrorCode.INTERNAL, message))
        self.hub.fanout.flush_recovery(self)

    # ------------------------------------------------------------------------- commands

    async def _connect(self, params: dict[str, Any]) -> dict[str, Any]:
        if self.state != _CONNECTING:
            raise Disconnect(DisconnectCode.BAD_REQUEST, "already connected")
        request = ConnectParams.parse(params)
        token = self.request.token = request.token
        self.request.data = request.data
        self.request.client, self.request.encoding = self.id, self.codec.name
        guard = self.hub.auth_guard
        address = self._auth_address()
        wait = guard.check(address, "token")
        if wait:
            # Refused before the token is even decoded: an address that failed too often
            # learns nothing more, whichever connection or transport it tries through.
            raise Disconnect(
                DisconnectCode.TOO_MANY_REQUESTS,
                f"too many failed authentications from your address: retry in {wait} s",
            )
        try:
            credentials = await self.hub.credentials_for(self.request)
        except Disconnect as exc:
            # A refused credential counts; "no token at all" (with no hook that could have
            # looked at cookies or headers) is a misconfigured client, not a guess.
            presented = bool(token) or self.hub.authenticate is not None
            if exc.code == DisconnectCode.INVALID_TOKEN or (
                exc.code == DisconnectCode.UNAUTHORIZED and presented
            ):
                guard.failed(address, "token")
            raise
        self.credentials = credentials
        self.user = credentials.user
        self.conn_info = credentials.info
        hook = self.hub.on_connect
        if hook is not None:
            await call_hook(hook, self)
        if self.state == _CLOSED:
            raise Disconnect(DisconnectCode.FORCE_NO_RECONNECT, "closed during connect")
        self.state = _CONNECTED
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        ttl = self.expiry.arm(self, credentials.expires_at)
        if ttl is not None and ttl <= 0:
            raise Disconnect(DisconnectCode.TOKEN_EXPIRED, "token expired")
        if self.expiry.refreshes:  # the server refreshes, not the client: no ttl to tell
            ttl = None
        self.hub.session_connected(self)
        # Server-side subscriptions first (from a previous position the client holds), then
        # the client's own: a channel in both is the server's (the client's gets 105).
        server_subs = at_connect(credentials.subs, request.server_subs)
        return connect_result(
            self.id,
            self.user,
            self.hub.node_id,
            self.transport.kind,
            ttl=ttl,
            server_subs=await subscribe_each(server_subs, self._subscribe_server),
            subs=await subscribe_each(request.subs, self._subscribe) if request.subs else None,
        )

    async def _refresh(self, params: dict[str, Any]) -> dict[str, Any]:
        token = RefreshParams.parse(params).token
        address = self._auth_address()
        self._check_auth_guard(address)
        try:
            credentials = await self.hub.tokens.verify_connection(token)
        except Disconnect as exc:
            if exc.code == DisconnectCode.INVALID_TOKEN:
                self.hub.auth_guard.failed(address, "token")
            if exc.code == DisconnectCode.KEYS_UNAVAILABLE:  # the session goes on
                raise HubError(ErrorCode.NOT_AVAILABLE, exc.reason) from None
            raise
        if credentials.user != self.user:
            raise Disconnect(DisconnectCode.INVALID_TOKEN, "refresh token is for another user")
        self.credentials = credentials
        ttl = self.expiry.arm(self, credentials.expires_at)
        result: dict[str, Any] = {"expires": ttl is not None}
        if ttl is not None:
            result["ttl"] = int(ttl)
        return result

    async def _subscribe(self, params: dict[str, Any]) -> dict[str, Any]:
        # SubscribeParams in steps, each where it always was (the error for two faults).
        channel = SubscribeParams.parse_channel(params, self.hub.config)
        self._check_room(channel.name)
        chan_info = await self._check_subscribe(channel, SubscribeParams.parse_token(params))
        hook = self.hub.on_subscribe
        expires_at = None
        if hook is not None:
            outcome = subscribe_outcome(await call_hook(hook, self, channel.name, params))
            if outcome.info is not None:
                chan_info = outcome.info
            expires_at = outcome.expires_at
        return await self._attach(channel, chan_info, params, expires_at)

    async def _subscribe_server(self, params: dict[str, Any]) -> Message:
        """A server-side subscription: no permission checks, no hook (the server decided)."""
        channel = SubscribeParams.parse_channel(params, self.hub.config)
        self._check_room(channel.name)
        return await self._attach(channel, None, params, server=True)

    def _check_room(self, name: str) -> None:
        if name in self.subscriptions:
            raise HubError(ErrorCode.ALREADY_SUBSCRIBED, f"already subscribed to {name}")
        if len(self.subscriptions) >= self.hub.config.max_channels_per_connection:
            raise HubError(ErrorCode.LIMIT_EXCEEDED, "too many channels for one connection")

    async def _attach(
        self,
        channel: ChannelName,
        chan_info: Any,
        params: dict[str, Any],
        expires_at: float | None = None,
        server: bool = False,
    ) -> Message:
        """Subscribe once allowed: register, position (recover), presence, join, expiry."""
        name = channel.name
        options = channel.options
        sub = Subscription(channel, self.info(chan_info), recovering=options.history, server=server)
        fanout = self.hub.fanout
        try:
            await fanout.add(self, sub)
            result: dict[str, Any] = {}
            if options.history:
                result = await self._position_subscription(sub, params)
            if options.presence:
                await self.hub.add_presence(name, sub.info)
            if options.join_leave:
                await self.hub.publish_join(name, sub.info)
        except BaseException:
            if fanout.is_current(self, sub):
                fanout.remove(self, name)
            raise
        self.expiry.arm_subscription(self, sub, expires_at)
        return result

    async def _check_subscribe(self, channel: ChannelName, token: str | None) -> Any:
        """Permission checks; returns channel info from a subscription token, if any."""
        options = channel.options
        credentials = self.credentials
        granted = credentials is not None and grant_allows(credentials.channels, channel.name)
        if token is not None:
            address = self._auth_address()
            self._check_auth_guard(address)
            try:
                claims = await self.hub.tokens.verify_subscription(
                    token, user=self.user, channel=channel.name
                )
            except HubError as exc:
                # expired: it was genuine once; keys unavailable: it may be genuine
                if exc.code not in (ErrorCode.TOKEN_EXPIRED, ErrorCode.NOT_AVAILABLE):
                    self.hub.auth_guard.failed(address, "token")
                raise
            return claims.get("info")
        if granted:
            return None
        if channel.users is not None and self.user not in channel.users:
            raise HubError(ErrorCode.PERMISSION_DENIED, f"{channel.name} is limited to other users")
        if options.private or not options.allow_subscribe:
            raise HubError(
                ErrorCode.PERMISSION_DENIED, f"subscribing to {channel.name} needs a token"
            )
        if not self.user and not options.allow_anonymous:
            raise HubError(
                ErrorCode.PERMISSION_DENIED, "anonymous connections cannot subscribe here"
            )
        return None

    async def _position_subscription(
        self, sub: Subscription, params: dict[str, Any]
    ) -> dict[str, Any]:
        since = SubscribeParams.parse_since(params, sub.channel)  # set when recovering
        publications, position, recovered = await self.hub.recover(sub.channel, since)
        sub.epoch = position.epoch
        sub.offset = max(position.offset, publications[-1].offset if publications else 0)
        if since is not None:
            return subscribe_result(position, recovered=recovered, publications=publications)
        return subscribe_result(position)

    # ------------------------------------------------------- server-side subscriptions

    async def subscribe_by_server(self, params: dict[str, Any]) -> None:
        """Make a server-side subscription after connect (in turn with the commands) and
        push ``subscribe`` with its result; nothing when subscribed to the channel already.
        Raises HubError (retried by :mod:`~pulsewire.hub.serversubs`)."""
        name = params["channel"]
        async with self._turn:
            if self.state != _CONNECTED or name in self.subscriptions:
                return
            result = await self._subscribe_server(params)
            self.push(subscribe_push(name, result))
            self.hub.fanout.flush_recovery(self)

    def resubscribe(self, sub: Subscription) -> None:
        """The fan-out removed the server-side subscription ``sub`` (insufficient state):
        make it again, recovering from the last position it delivered (pushes ``subscribe``
        with the recovery's result)."""
        self.hub.spawn(make_again(self, sub, self.hub.forget_presence))

    def send_publication(self, prepared: PreparedMessage, sub: Subscription) -> None:
        """Send a publication push prepared by the fan-out (which keeps the order), unless
        too much is queued for this client: then, by the channel's policy, drop it or
        disconnect the session (slow consumer)."""
        transport = self.transport
        if transport.buffered() > self._queue_max:
            if sub.channel.options.slow_consumer == "drop":
                self.hub.metrics.queue_drops.inc()
                return
            self.hub.metrics.slow_consumers.inc()
            context = {**self.log_context(), "channel": sub.channel.name}
            logger.info("slow consumer disconnected", extra=context)
            self.disconnect(SLOW_CONSUMER, "slow consumer: too much data queued")
            return
        encoded = prepared.data
        traffic = self._traffic
        traffic[2] += 1
        traffic[3] += _size(encoded)
        transport.send(encoded, prepared)

    async def _unsubscribe(self, params: dict[str, Any]) -> dict[str, Any]:
        channel = UnsubscribeParams.parse(params, self.hub.config).channel
        sub = self.hub.fanout.subscription(self, channel.name)
        if sub is None:
            raise HubError(ErrorCode.NOT_SUBSCRIBED, f"not subscribed to {channel.name}")
        if sub.server:
            raise HubError(ErrorCode.PERMISSION_DENIED, "server-side subscription")
        self.hub.fanout.remove(self, channel.name)
        await self.hub.forget_presence(sub)
        return {}

    async def _publish(self, params: dict[str, Any]) -> dict[str, Any]:
        request = PublishParams.parse(params, self.hub.config)
        channel = request.channel
        if not channel.options.allow_publish:
            raise HubError(
                ErrorCode.PERMISSION_DENIED, f"clients may not publish to {channel.name}"
            )
        sub = self.hub.fanout.subscription(self, channel.name)
        if sub is None:
            raise HubError(
                ErrorCode.PERMISSION_DENIED, f"subscribe to {channel.name} before publishing"
            )
        data = request.data
        hook = self.hub.on_publish
        if hook is not None:
            outcome = await call_hook(hook, self, channel.name, data)
            if outcome is not None:
                data = outcome
        position = await self.hub.publish(
            channel, data, info=sub.info, idempotency_key=request.idempotency_key
        )
        return publish_result(position)

    def _check_subscribed(self, channel: ChannelName, flag: str) -> None:
        """Refuse (103) unless subscribed to ``channel`` and its option ``flag`` is on."""
        if self.hub.fanout.subscription(self, channel.name) is None:
            raise HubError(ErrorCode.PERMISSION_DENIED, f"subscribe to {channel.name} first")
        if not getattr(channel.options, flag):
            raise HubError(
                ErrorCode.PERMISSION_DENIED,
                f"{flag.replace('allow_', '')} is not allowed in {channel.name}",
            )

    async def _presence(self, params: dict[str, Any]) -> dict[str, Any]:
        channel = PresenceParams.parse(params, self.hub.config).channel
        self._check_subscribed(channel, "allow_presence")
        clients = await self.hub.presence(channel)
        return presence_result(clients)

    async def _presence_stats(self, params: dict[str, Any]) -> dict[str, Any]:
        channel = PresenceStatsParams.parse(params, self.hub.config).channel
        self._check_subscribed(channel, "allow_presence")
        clients, users = await self.hub.presence_stats(channel)
        return presence_stats_result(clients, users)

    async def _history(self, params: dict[str, Any]) -> dict[str, Any]:
        # HistoryParams in two steps: the query is parsed after the subscription check.
        channel = HistoryParams.parse_channel(params, self.hub.config)
        self._check_subscribed(channel, "allow_history")
        query = HistoryQuery.parse(params)
        result = await self.hub.history(
            channel, limit=query.limit, since=query.since, reverse=query.reverse
        )
        return history_result(result)

    async def _ping(self, params: dict[str, Any]) -> dict[str, Any]:
        return {}

    async def _rpc(self, params: dict[str, Any]) -> Any:
        request = RpcParams.parse(params)  # 104 without a string method
        hook = self.hub.on_rpc
        if hook is None:
            raise HubError(ErrorCode.METHOD_NOT_FOUND, "no RPC handler for this method")
        return rpc_result(await call_hook(hook, self, request.rpc_method, request.data))

    async def _send_message(self, params: dict[str, Any]) -> dict[str, Any]:
        data = SendParams.parse(params).data  # 107 without data
        hook = self.hub.on_message
        if hook is None:
            raise HubError(ErrorCode.METHOD_NOT_FOUND, "this hub takes no messages (no handler)")
        await call_hook(hook, self, data)
        return {}


def _size(data: str | bytes) -> int:
    """Bytes on the wire: UTF-8 length for text (isascii() is O(1) on CPython)."""
    if type(data) is bytes or data.isascii():
        return len(data)
    return len(data.encode("utf-8"))  # type: ignore[union-attr]


_METHODS = {
    "connect": Session._connect,
    "refresh": Session._refresh,
    "subscribe": Session._subscribe,
    "unsubscribe": Session._unsubscribe,
    "publish": Session._publish,
    "presence": Session._presence,
    "presence_stats": Session._presence_stats,
    "history": Session._history,
    "ping": Session._ping,
    "rpc": Session._rpc,
    "send": Session._send_message,
}
