"""The hub: sessions, channels, presence and history on top of an engine.

One :class:`Hub` per process. Transports hand it sessions; the application (or the HTTP API)
publishes through it; the engine connects it to the other nodes. Live publications of
history channels are checked for order: a publication whose ``prev`` is past the last one
delivered here means something was missed (e.g. while the engine was down), and the hub
fills the gap from history before delivering further, so subscribers see every offset once
and in order; when the gap cannot be filled (history trimmed, epoch changed) subscribers are
told to resubscribe, and their recovery tells them to reload state.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

import msgpack

from .auth import AuthGuard, Credentials, TokenVerifier
from .channels import ChannelName, parse_channel
from .config import ChannelOptions, HubConfig
from .engines import create_engine
from .engines.base import Engine, EngineOutcomeUnknown, EngineUnavailable, IdempotencyKeysFull
from .errors import Disconnect, DisconnectCode, ErrorCode, HubError
from .metrics import HubMetrics
from .session import ConnectRequest, Session, Subscription, Transport
from .types import ClientInfo, HistoryResult, Publication, PublishOptions, StreamPosition
from .wire import Codec

__all__ = ["Hub"]

logger = logging.getLogger("pulsewire.hub")

Hook = Callable[..., Any]
T = TypeVar("T")
UNSUBSCRIBE_INSUFFICIENT_STATE = 2500
UNSUBSCRIBE_SERVER = 2000


class Hub:
    """A real-time hub node. ``await hub.start()`` before use, ``await hub.close()`` after.

    Hooks (plain or async callables) let an embedding application decide:
    ``authenticate(ConnectRequest) -> Credentials | None`` (None: fall back to the token),
    ``on_connect(session)``, ``on_subscribe(session, channel, params) -> chan_info | None``,
    ``on_publish(session, channel, data) -> data | None`` (raise HubError to refuse),
    ``on_rpc(session, method, data) -> result``, ``on_disconnect(session, code, reason)``.
    """

    def __init__(
        self,
        config: HubConfig | None = None,
        *,
        engine: Engine | None = None,
        authenticate: Hook | None = None,
        on_connect: Hook | None = None,
        on_subscribe: Hook | None = None,
        on_publish: Hook | None = None,
        on_rpc: Hook | None = None,
        on_disconnect: Hook | None = None,
    ) -> None:
        self.config = config or HubConfig()
        self.node_id = self.config.node_name or secrets.token_hex(4)
        self.engine = engine or create_engine(self.config.engine, prefix=self.config.engine_prefix)
        self.tokens = TokenVerifier(self.config)
        self.metrics = HubMetrics()
        self.auth_guard = AuthGuard.from_config(self.config)
        """Failed authentications per address: sessions record token failures in it, the
        server layer its API key and /admin password failures (shared by all transports)."""
        self.metrics.registry.register(self.auth_guard.collector())
        self.authenticate = authenticate
        self.on_connect = on_connect
        self.on_subscribe = on_subscribe
        self.on_publish = on_publish
        self.on_rpc = on_rpc
        self.on_disconnect = on_disconnect
        self.sessions: dict[str, Session] = {}
        self.users: dict[str, set[Session]] = {}
        self._channels: dict[str, dict[Session, Subscription]] = {}
        self._positions: dict[str, StreamPosition] = {}
        self._syncing: dict[str, list[Publication]] = {}
        self._subscribing: dict[str, asyncio.Future[None]] = {}
        self._nodes: dict[str, dict[str, Any]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._presence_task: asyncio.Task[None] | None = None
        self._node_task: asyncio.Task[None] | None = None
        self._started = False
        self.closing = False

    # ---------------------------------------------------------------------- lifecycle

    @property
    def started(self) -> bool:
        """True once :meth:`start` has completed."""
        return self._started

    async def start(self) -> None:
        self.engine.bind(self, self.node_id)
        await self.engine.start()
        self._started = True
        self._presence_task = asyncio.create_task(self._refresh_presence_forever())
        self._node_task = asyncio.create_task(self._announce_forever())

    async def close(
        self, code: int = DisconnectCode.SHUTDOWN, reason: str = "server shutting down"
    ) -> None:
        """Disconnect every local session (they may reconnect elsewhere), then stop the engine."""
        self.closing = True
        for session in list(self.sessions.values()):
            session.disconnect(code, reason)
        for task in (self._presence_task, self._node_task):
            if task is not None:
                task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=2)
        await self.engine.close()

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            if isinstance(exc, EngineUnavailable):
                self.metrics.engine_errors.inc()
            else:
                logger.error("hub background task failed", exc_info=exc)

    # ----------------------------------------------------------------------- sessions

    def open_session(self, transport: Transport, codec: Codec, request: ConnectRequest) -> Session:
        """Called by a transport for each new client connection."""
        if self.closing:
            raise Disconnect(DisconnectCode.SHUTDOWN, "server shutting down")
        session = Session(self, transport, codec, request)
        self.sessions[session.id] = session
        self.metrics.connection_gauge(transport.kind).inc()
        return session

    async def _authenticate(self, request: ConnectRequest) -> Credentials:
        if self.authenticate is not None:
            outcome = self.authenticate(request)
            if inspect.isawaitable(outcome):
                outcome = await outcome
            if isinstance(outcome, int) and not isinstance(outcome, bool):
                outcome = str(outcome)  # numeric user ids are common
            if isinstance(outcome, str):
                if not outcome and not self.config.allow_anonymous:
                    raise Disconnect(DisconnectCode.UNAUTHORIZED, "anonymous connections are off")
                outcome = Credentials(user=outcome)
            if isinstance(outcome, Credentials):
                return outcome
            if outcome is not None:
                raise TypeError("authenticate must return Credentials, a user id or None")
        if request.token:
            return self.tokens.connection(request.token)
        if self.config.allow_anonymous:
            return Credentials(user="")
        raise Disconnect(DisconnectCode.UNAUTHORIZED, "a connection token is required")

    def _session_connected(self, session: Session) -> None:
        logger.debug("session connected", extra=session.log_context())
        self.users.setdefault(session.user, set()).add(session)
        self.metrics.connects.labels(session.transport.kind).inc()

    def _session_closed(
        self, session: Session, was_connected: bool, code: int, reason: str
    ) -> None:
        self.sessions.pop(session.id, None)
        logger.debug(
            "session closed", extra={**session.log_context(), "code": code, "reason": reason}
        )
        self.metrics.connection_gauge(session.transport.kind).dec()
        self.metrics.disconnects.labels(str(code)).inc()
        users = self.users.get(session.user)
        if users is not None:
            users.discard(session)
            if not users:
                del self.users[session.user]
        for name, sub in list(session.subscriptions.items()):
            self._remove_subscriber(name, session)
            self._spawn(self._forget_presence(sub))
        session.subscriptions.clear()
        if was_connected and self.on_disconnect is not None:
            try:
                outcome = self.on_disconnect(session, code, reason)
                if inspect.isawaitable(outcome):
                    self._spawn(outcome)
            except Exception:
                logger.exception("on_disconnect hook failed")

    # ----------------------------------------------------------------------- channels

    async def _add_subscriber(self, name: str, session: Session) -> None:
        """Register ``session`` for live publications of ``name``; returns once this node
        receives the channel from the engine (so a history read after it misses nothing)."""
        subs = self._channels.get(name)
        if subs is not None:
            subs[session] = session.subscriptions[name]
            pending = self._subscribing.get(name)
            if pending is not None:  # the node's first subscriber is still subscribing
                await asyncio.shield(pending)
            return
        subs = self._channels[name] = {session: session.subscriptions[name]}
        self.metrics.channels.set(len(self._channels))
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._subscribing[name] = done
        try:
            await self.engine.subscribe(name)
        except EngineUnavailable:
            error = HubError(ErrorCode.NOT_AVAILABLE, "engine unavailable, try again")
            done.set_exception(error)
            done.exception()  # retrieved: nobody else may be waiting
            raise error from None
        else:
            done.set_result(None)
        finally:
            self._subscribing.pop(name, None)

    def _remove_subscriber(self, name: str, session: Session) -> None:
        subs = self._channels.get(name)
        if subs is None:
            return
        subs.pop(session, None)
        if not subs:
            del self._channels[name]
            self._positions.pop(name, None)
            self.metrics.channels.set(len(self._channels))
            if not self.closing:
                self._spawn(self._engine_unsubscribe(name))

    async def _engine_unsubscribe(self, name: str) -> None:
        if name not in self._channels:  # nobody came back meanwhile
            await self.engine.unsubscribe(name)

    def _options(self, name: str) -> tuple[ChannelName, PublishOptions]:
        channel = parse_channel(name, self.config)
        return channel, self._publish_options(channel.options)

    def _publish_options(self, options: ChannelOptions) -> PublishOptions:
        return PublishOptions(
            options.history_size, options.history_ttl, self.config.history_meta_ttl
        )

    # ------------------------------------------------------------------- publishing API

    async def publish(
        self,
        channel: str,
        data: Any,
        *,
        info: ClientInfo | None = None,
        tags: dict[str, str] | None = None,
        idempotency_key: str | None = None,
    ) -> StreamPosition | None:
        """Publish ``data`` to ``channel`` on every node; returns its history position, if kept.

        With ``idempotency_key`` (a non-empty string of at most 256 characters, scoped to the
        channel) a retry within ``config.idempotency_window`` seconds, on any node, returns the
        first result (same offset and epoch; None without history) and publishes nothing.

        Raises :class:`HubError` with code 107 for bad data or key, 102 for an unknown
        namespace, and when the engine fails:

        * 108 (NOT_AVAILABLE): **not published** (the engine was not reached, or refused it):
          retry, with the same key if one was given;
        * 114 (OUTCOME_UNKNOWN): sent, no answer: it **may have been published**. Retry with
          the same key (always safe within the window); without a key a retry may publish
          twice;
        * 106 (LIMIT_EXCEEDED): the in-memory engine holds as many keys as it may: not
          published, retry later.

        Without a key, a publication to a channel without history is delivered to this node's
        subscribers at once and sent to the other nodes at most once: an engine failure is
        not raised (it is counted in ``pulsewire_engine_errors_total``). With a key it reaches
        every node, this one included, through the engine, and engine failures are raised.
        """
        _, options = self._options(channel)
        _check_data(data)
        if idempotency_key is not None:
            _check_idempotency_key(idempotency_key)
        publication = Publication(
            data, info=info, tags=tags, origin=self.node_id, published_at=time.time()
        )
        self.metrics.publications.inc()
        if idempotency_key is not None:
            try:
                outcome = await self.engine.publish_once(
                    channel, publication, options, idempotency_key, self.config.idempotency_window
                )
            except EngineUnavailable as exc:
                raise self._publish_failed(exc) from None
            except IdempotencyKeysFull as exc:
                self.metrics.idempotency_keys_full.inc()
                raise HubError(ErrorCode.LIMIT_EXCEEDED, f"{exc}: retry later") from None
            if outcome.duplicate:
                self.metrics.publish_duplicates.inc()
            return outcome.position
        if options.history:
            try:
                return await self.engine.publish(channel, publication, options)
            except EngineUnavailable as exc:
                raise self._publish_failed(exc) from None
        if self.engine.local_fanout:
            self.on_publication(channel, publication)
        try:
            await self.engine.publish(channel, publication, options)
        except EngineUnavailable:
            # Delivered locally; other nodes miss it (at most once for channels without history).
            self.metrics.engine_errors.inc()
        return None

    def _publish_failed(self, exc: EngineUnavailable) -> HubError:
        """The error that tells a publisher whether its publication may be out there."""
        self.metrics.engine_errors.inc()
        if isinstance(exc, EngineOutcomeUnknown):
            self.metrics.publish_outcome_unknown.inc()
            return HubError(
                ErrorCode.OUTCOME_UNKNOWN,
                "unknown outcome: the engine did not answer, it may have been published; "
                "retry with the same idempotency_key",
            )
        return HubError(ErrorCode.NOT_AVAILABLE, "engine unavailable: not published, retry")

    async def broadcast(
        self, channels: Iterable[str], data: Any, *, idempotency_key: str | None = None
    ) -> list[StreamPosition | HubError | None]:
        """Publish the same data to many channels; one result (or error) per channel.

        ``idempotency_key`` applies to each channel on its own (keys are scoped per channel):
        retrying a broadcast with the same key publishes only to the channels that did not
        get it yet, and returns the first results of the others. A bad key raises 107."""
        if idempotency_key is not None:
            _check_idempotency_key(idempotency_key)
        results: list[StreamPosition | HubError | None] = []
        for channel in channels:
            try:
                results.append(await self.publish(channel, data, idempotency_key=idempotency_key))
            except HubError as exc:
                results.append(exc)
        return results

    async def presence(self, channel: str) -> dict[str, ClientInfo]:
        chan, _ = self._options(channel)
        if not chan.options.presence:
            raise HubError(ErrorCode.NOT_AVAILABLE, f"presence is off in {channel}")
        return await self._engine_call(self.engine.presence(channel))

    async def presence_stats(self, channel: str) -> tuple[int, int]:
        chan, _ = self._options(channel)
        if not chan.options.presence:
            raise HubError(ErrorCode.NOT_AVAILABLE, f"presence is off in {channel}")
        return await self._engine_call(self.engine.presence_stats(channel))

    async def history(
        self,
        channel: str,
        *,
        limit: int | None = None,
        since: StreamPosition | None = None,
        reverse: bool = False,
    ) -> HistoryResult:
        _, options = self._options(channel)
        if not options.history:
            raise HubError(ErrorCode.NOT_AVAILABLE, f"history is off in {channel}")
        return await self._engine_call(
            self.engine.history(channel, since=since, limit=limit, reverse=reverse, options=options)
        )

    async def _history_reply(self, channel: str, params: dict[str, Any]) -> dict[str, Any]:
        limit = params.get("limit")
        since = params.get("since")
        if limit is not None and (not isinstance(limit, int) or limit < 0):
            raise HubError(ErrorCode.BAD_REQUEST, "limit must be a non-negative integer")
        position = None
        if since is not None:
            if not isinstance(since, dict) or not isinstance(since.get("offset"), int):
                raise HubError(ErrorCode.BAD_REQUEST, "since must be {offset, epoch}")
            position = StreamPosition(since["offset"], str(since.get("epoch", "")))
        result = await self.history(
            channel, limit=limit, since=position, reverse=bool(params.get("reverse"))
        )
        return {
            "publications": [self._publication_dict(p) for p in result.publications],
            "offset": result.position.offset,
            "epoch": result.position.epoch,
        }

    async def _engine_call(self, awaitable: Awaitable[T]) -> T:
        try:
            return await awaitable
        except EngineUnavailable:
            self.metrics.engine_errors.inc()
            raise HubError(ErrorCode.NOT_AVAILABLE, "engine unavailable, try again") from None

    async def disconnect_user(
        self,
        user: str,
        code: int = DisconnectCode.FORCE_NO_RECONNECT,
        reason: str = "disconnected by the server",
    ) -> None:
        """Disconnect every connection of ``user`` on every node."""
        await self._control({"op": "disconnect", "user": user, "code": code, "reason": reason})

    async def unsubscribe_user(self, user: str, channel: str) -> None:
        """Unsubscribe every connection of ``user`` from ``channel`` on every node."""
        await self._control({"op": "unsubscribe", "user": user, "channel": channel})

    async def send(self, data: Any, *, user: str | None = None, client: str | None = None) -> None:
        """Push ``data`` as a ``message`` to one connection or to every connection of a user."""
        if (user is None) == (client is None):
            raise ValueError("give exactly one of user= or client=")
        _check_data(data)
        await self._control({"op": "message", "user": user, "client": client, "data": data})

    async def _control(self, message: dict[str, Any]) -> None:
        message["from"] = self.node_id
        await self._engine_call(self.engine.publish_control(message))

    @property
    def channels(self) -> dict[str, int]:
        """Channels with subscribers on this node, and how many."""
        return {name: len(subs) for name, subs in self._channels.items()}

    @property
    def nodes(self) -> dict[str, dict[str, Any]]:
        """Nodes seen recently (this one included) with their last announced stats."""
        now = time.time()
        self._nodes = {k: v for k, v in self._nodes.items() if v.get("expires", 0) > now}
        return dict(self._nodes)

    # ------------------------------------------------------------------ engine callbacks

    def on_publication(self, channel: str, publication: Publication) -> None:
        subs = self._channels.get(channel)
        if not subs:
            return
        if publication.offset:
            syncing = self._syncing.get(channel)
            if syncing is not None:
                syncing.append(publication)
                return
            position = self._positions.get(channel)
            if position is not None:
                if publication.epoch and position.epoch and publication.epoch != position.epoch:
                    self._insufficient_state(channel)
                    if channel in self._channels:
                        self._positions[channel] = StreamPosition(
                            publication.offset, publication.epoch
                        )
                    return
                if publication.offset <= position.offset:
                    return
                if publication.prev is not None and publication.prev > position.offset:
                    self._syncing[channel] = [publication]
                    self._spawn(self._fill_gap(channel, position))
                    return
            self._positions[channel] = StreamPosition(
                publication.offset, publication.epoch or (position.epoch if position else "")
            )
        self._deliver(channel, subs, publication)

    def _deliver(
        self, channel: str, subs: dict[Session, Subscription], publication: Publication
    ) -> None:
        # A snapshot of the keys only (delivering may disconnect a slow consumer): with 10,000
        # subscribers, list(subs.items()) would allocate 10,000 tuples per publication, enough
        # short-lived survivors to trigger a full garbage collection every few publications.
        for session in list(subs):
            sub = subs.get(session)
            if sub is not None:
                session.deliver(channel, sub, publication)
        self.metrics.deliveries.inc(len(subs))
        if publication.published_at:
            self.metrics.latency.observe(max(0.0, time.time() - publication.published_at))

    async def _fill_gap(self, channel: str, since: StreamPosition) -> None:
        """Deliver what was missed after ``since`` from history, then what arrived meanwhile."""
        try:
            try:
                _, options = self._options(channel)
                result = await self.engine.history(channel, since=since, options=options)
            except (EngineUnavailable, HubError):
                self._insufficient_state(channel)
                return
            publications = result.publications
            complete = result.position.epoch == since.epoch and (
                (not publications and result.position.offset == since.offset)
                or (bool(publications) and _first_follows(publications[0], since.offset))
            )
            if not complete:
                self._insufficient_state(channel)
                if channel in self._channels:
                    self._positions[channel] = result.position
                return
            self.metrics.gap_fills.inc()
            buffered = self._syncing.get(channel, [])
            last = since.offset
            subs = self._channels.get(channel, {})
            for publication in sorted([*publications, *buffered], key=lambda p: p.offset):
                if publication.offset <= last or (
                    publication.epoch and publication.epoch != since.epoch
                ):
                    continue
                last = publication.offset
                publication.epoch = publication.epoch or since.epoch
                self._positions[channel] = StreamPosition(last, since.epoch)
                if subs:
                    self._deliver(channel, subs, publication)
        finally:
            self._syncing.pop(channel, None)

    def _insufficient_state(self, channel: str) -> None:
        """Local subscribers can't be brought up to date: ask them to resubscribe (and recover)."""
        subs = self._channels.get(channel)
        if not subs:
            return
        for session in list(subs):
            sub = session.subscriptions.get(channel)
            if sub is None:
                continue
            session.push(
                {
                    "push": "unsubscribe",
                    "channel": channel,
                    "code": UNSUBSCRIBE_INSUFFICIENT_STATE,
                    "reason": "insufficient state",
                    "resubscribe": True,
                }
            )
            session.subscriptions.pop(channel, None)
            self._remove_subscriber(channel, session)
            self._spawn(self._forget_presence(sub))

    def on_join(self, channel: str, info: ClientInfo) -> None:
        self._push_event(channel, "join", info)

    def on_leave(self, channel: str, info: ClientInfo) -> None:
        self._push_event(channel, "leave", info)

    def _push_event(self, channel: str, kind: str, info: ClientInfo) -> None:
        subs = self._channels.get(channel)
        if not subs:
            return
        message = {"push": kind, "channel": channel, "info": info.to_dict()}
        for session in list(subs):
            session.push(message)

    def on_control(self, message: dict[str, Any]) -> None:
        op = message.get("op")
        if op == "node":
            info = dict(message.get("info") or {})
            info["expires"] = time.time() + 3 * max(self.config.presence_update_interval, 1.0)
            self._nodes[str(message.get("from"))] = info
            return
        targets: list[Session] = []
        if message.get("user") is not None:
            targets = list(self.users.get(str(message["user"]), ()))
        elif message.get("client") is not None:
            session = self.sessions.get(str(message["client"]))
            targets = [session] if session is not None else []
        for session in targets:
            if op == "disconnect":
                session.disconnect(
                    int(message.get("code", DisconnectCode.FORCE_NO_RECONNECT)),
                    str(message.get("reason", "")),
                )
            elif op == "unsubscribe":
                channel = str(message.get("channel"))
                sub = session.subscriptions.pop(channel, None)
                if sub is not None:
                    self._remove_subscriber(channel, session)
                    self._spawn(self._forget_presence(sub))
                    session.push(
                        {
                            "push": "unsubscribe",
                            "channel": channel,
                            "code": UNSUBSCRIBE_SERVER,
                            "reason": "unsubscribed by the server",
                            "resubscribe": False,
                        }
                    )
            elif op == "message":
                session.push({"push": "message", "data": message.get("data")})

    def on_engine_state(self, available: bool) -> None:
        self.metrics.engine_up.set(1 if available else 0)
        if available:
            logger.info(
                "engine %s is back: filling gaps in %d channels",
                self.engine.name,
                len(self._positions),
            )
            for channel, position in list(self._positions.items()):
                if channel in self._channels and channel not in self._syncing:
                    self._syncing[channel] = []
                    self._spawn(self._fill_gap(channel, position))
        else:
            logger.warning("engine %s is unavailable; serving local clients", self.engine.name)

    # ------------------------------------------------------------------ subscribe helpers

    async def _recover(
        self, channel: str, chan: ChannelName, since: StreamPosition | None
    ) -> tuple[list[Publication], StreamPosition, bool]:
        """Publications after ``since`` if all of them are still there, the position, and
        whether recovery succeeded."""
        options = self._publish_options(chan.options)
        limit = 0 if since is None else None
        result: HistoryResult = await self._engine_call(
            self.engine.history(channel, since=since, limit=limit, options=options)
        )
        position = result.position
        # Only the node's first subscriber sets where live delivery stands: moving it later
        # would make publications still on their way look like duplicates.
        if channel not in self._positions and channel not in self._syncing:
            self._positions[channel] = position
        if since is None:
            return [], position, False
        if position.epoch != since.epoch or since.offset > position.offset:
            return [], position, False
        publications = result.publications
        if not publications:
            return [], position, position.offset == since.offset
        if not _first_follows(publications[0], since.offset):
            return [], position, False
        return publications, position, True

    async def _add_presence(self, channel: str, info: ClientInfo) -> None:
        await self._engine_call(self.engine.add_presence(channel, info, self.config.presence_ttl))

    async def _publish_join(self, channel: str, info: ClientInfo) -> None:
        try:
            await self.engine.publish_join(channel, info)
        except EngineUnavailable:
            self.metrics.engine_errors.inc()

    async def _forget_presence(self, sub: Subscription) -> None:
        options = sub.channel.options
        name = sub.channel.name
        try:
            if options.presence:
                await self.engine.remove_presence(name, sub.info.client)
            if options.join_leave:
                await self.engine.publish_leave(name, sub.info)
        except EngineUnavailable:
            self.metrics.engine_errors.inc()

    async def _refresh_presence_forever(self) -> None:
        while True:
            await asyncio.sleep(self.config.presence_update_interval)
            for name, subs in list(self._channels.items()):
                for sub in list(subs.values()):
                    if sub.channel.options.presence:
                        try:
                            await self.engine.add_presence(name, sub.info, self.config.presence_ttl)
                        except EngineUnavailable:
                            self.metrics.engine_errors.inc()
                            break

    async def _announce_forever(self) -> None:
        while True:
            info = {
                "name": self.node_id,
                "sessions": len(self.sessions),
                "users": len(self.users),
                "channels": len(self._channels),
                "engine": self.engine.name,
            }
            try:
                await self.engine.publish_control(
                    {"op": "node", "from": self.node_id, "info": info}
                )
            except EngineUnavailable:
                self.metrics.engine_errors.inc()
            await asyncio.sleep(max(self.config.presence_update_interval, 1.0))

    # ------------------------------------------------------------------------- encoding

    def _publication_dict(self, publication: Publication) -> dict[str, Any]:
        out: dict[str, Any] = {"data": publication.data}
        if publication.offset:
            out["offset"] = publication.offset
        if publication.info is not None:
            out["info"] = publication.info.to_dict()
        if publication.tags:
            out["tags"] = publication.tags
        return out

    def _encode_publication(
        self, codec: Codec, channel: str, publication: Publication
    ) -> str | bytes:
        key = (codec.name, channel)
        encoded = publication.cache.get(key)
        if encoded is None:
            message = self._publication_dict(publication)
            message["push"] = "publication"
            message["channel"] = channel
            encoded = publication.cache[key] = codec.encode(message)
        return encoded


def _first_follows(publication: Publication, offset: int) -> bool:
    """True when ``publication`` comes right after ``offset`` in its stream."""
    if publication.prev is not None:
        return publication.prev == offset
    return publication.offset == offset + 1


#: Longest ``idempotency_key``, in characters.
IDEMPOTENCY_KEY_MAX = 256


def _check_idempotency_key(key: object) -> None:
    if not isinstance(key, str) or not 0 < len(key) <= IDEMPOTENCY_KEY_MAX:
        raise HubError(
            ErrorCode.BAD_REQUEST,
            f"idempotency_key must be a non-empty string of at most {IDEMPOTENCY_KEY_MAX} "
            "characters",
        )


_json_check = json.JSONEncoder(allow_nan=False, separators=(",", ":")).encode
_msgpack_check = msgpack.Packer(use_bin_type=True).pack


def _check_data(data: Any) -> None:
    """Publications travel and are stored as JSON and reach MessagePack subscribers too:
    refuse what either cannot represent (bytes, NaN, integers beyond 64 bits...)."""
    try:
        _json_check(data)
        _msgpack_check(data)
    except (TypeError, ValueError, OverflowError, RecursionError) as exc:
        message = f"data must be representable as JSON: {exc}"
        raise HubError(ErrorCode.BAD_REQUEST, message) from None
