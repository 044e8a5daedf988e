"""The hub: sessions, channels, presence and history on top of an engine.

One :class:`Hub` per process (a node). Transports hand it sessions; the application (or the
HTTP API) publishes through it; the engine connects it to the other nodes and hands it back
each publication (:meth:`Hub.on_publication`), which goes one way down: to the node's
:class:`~pulsewire.hub.fanout.Fanout` (the subscription index; order checked, gaps filled from
history, encoded once per codec), to each session, to its transport. The node keeps publish,
presence, history, administration and the engine callbacks; sessions reach it through the
public :class:`~pulsewire.hub.contracts.SessionHost` interface.

Presence is written and refreshed by :mod:`pulsewire.hub.presence`; nodes watch each other
through :mod:`pulsewire.hub.node_watch` (announcements, dead nodes, rejoining).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Iterable
from typing import Any, TypeVar

from .auth import AuthGuard, Credentials, TokenVerifier
from .backpressure import Backpressure
from .channels import ChannelName, parse_channel
from .checks import check_data, check_idempotency_key
from .config import ChannelOptions, HubConfig
from .contracts import Hook
from .control import (
    Control,
    DisconnectControl,
    MessageControl,
    NodeAnnounce,
    NodeDead,
    NodeGone,
    NodeLoad,
    SubscribeControl,
    UnsubscribeControl,
    parse_control,
)
from .engines import create_engine
from .engines.base import (
    ChannelFilter,
    Engine,
    EngineOutcomeUnknown,
    EngineUnavailable,
    IdempotencyKeysFull,
)
from .errors import Disconnect, DisconnectCode, ErrorCode, HubError, UnsubscribeCode
from .fanout import Fanout, Subscription, first_follows
from .hooks import call_hook, credentials_from
from .jwks import TokenKeysCollector
from .messages import join_push, leave_push, message_push
from .metrics import HubMetrics
from .node_watch import NodeWatch
from .presence import PresenceKeeper
from .serversubs import make_until_done
from .session import ConnectRequest, Session, Transport
from .timers import TimerQueue
from .types import ClientInfo, HistoryResult, Publication, PublishOptions, StreamPosition
from .wire import Codec

__all__ = ["Hub"]

logger = logging.getLogger("pulsewire.hub")

T = TypeVar("T")


class Hub:
    """A real-time hub node. ``await hub.start()`` before use, ``await hub.close()`` after.

    Hooks (plain or async callables) let an embedding application decide:
    ``authenticate(ConnectRequest) -> Credentials | None`` (None: fall back to the token),
    ``on_connect(session)``, ``on_subscribe(session, channel, params) -> chan_info | None``,
    ``on_publish(session, channel, data) -> data | None`` (raise HubError to refuse),
    ``on_rpc(session, method, data) -> result``, ``on_disconnect(session, code, reason)``,
    ``on_message(session, data)`` (a client's ``send``),
    ``on_refresh(session) -> Credentials | None`` (credentials expired) and
    ``on_sub_refresh(session, channel) -> expires_at | None`` (see :mod:`.hooks`).
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
        on_message: Hook | None = None,
        on_refresh: Hook | None = None,
        on_sub_refresh: Hook | None = None,
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
        self.metrics.registry.register(TokenKeysCollector(lambda: self.tokens.jwks))
        self.authenticate = authenticate
        self.on_connect = on_connect
        self.on_subscribe = on_subscribe
        self.on_publish = on_publish
        self.on_rpc = on_rpc
        self.on_disconnect = on_disconnect
        self.on_message = on_message
        self.on_refresh = on_refresh
        self.on_sub_refresh = on_sub_refresh
        self.timers = TimerQueue()  # the sessions' expiry timers, under one loop timer
        self.sessions: dict[str, Session] = {}
        self.users: dict[str, set[Session]] = {}
        self.fanout = Fanout(
            self.engine,
            self.metrics,
            spawn=self.spawn,
            publish_options=lambda name: self._options(name)[1],
            ended=lambda sub: self.spawn(self.forget_presence(sub)),
            channel_closed=self._channel_closed,
        )
        """The subscription index and live delivery (see :mod:`pulsewire.hub.fanout`)."""
        self.node_watch = NodeWatch(
            self.config,
            self.engine,
            self.metrics,
            self.fanout,
            self.node_id,
            spawn=self.spawn,
            stats=self._stats,
            clean=lambda: self.presence_keeper.clean,
            push_event=self._push_event,
            closing=lambda: self.closing,
        )
        """Announcements, the other nodes, dead-node cleanup, rejoining."""
        self.presence_keeper = PresenceKeeper(
            self.config, self.engine, self.metrics, self.fanout, self.node_watch, spawn=self.spawn
        )
        """Presence entries of this node's subscribers."""
        self.backpressure = Backpressure(
            self.config,
            self.engine,
            self.metrics,
            self.fanout,
            self.node_id,
            instance=lambda: self.node_watch.instance,
            is_own=self.node_watch.is_own,
            spawn=self.spawn,
        )
        """This node's delivery lag, the cluster's, and the publish gate (error 115)."""
        self._tasks: set[asyncio.Task[Any]] = set()
        self._presence_task: asyncio.Task[None] | None = None
        self._started = False
        self.closing = False
        self._engine_heard = True

    # ---------------------------------------------------------------------- lifecycle

    @property
    def started(self) -> bool:
        """True once :meth:`start` has completed."""
        return self._started

    async def start(self) -> None:
        self.engine.bind(self, self.node_id)
        await self.engine.start()
        self._started = True
        self._presence_task = asyncio.create_task(self.presence_keeper.refresh_forever())
        self.node_watch.start()
        self.backpressure.start()

    @property
    def instance(self) -> str:
        """This process run's id among the nodes; presence entries are owned by it. Renewed
        when the hub learns it was declared dead (it was frozen or cut off too long)."""
        return self.node_watch.instance

    def _stats(self) -> dict[str, int]:
        """What this node announces to the others."""
        return {
            "sessions": len(self.sessions),
            "users": len(self.users),
            "channels": len(self.fanout),
        }

    async def close(
        self, code: int = DisconnectCode.SHUTDOWN, reason: str = "server shutting down"
    ) -> None:
        """Disconnect every local session (they may reconnect elsewhere), tell the other nodes
        this one is leaving, then stop the engine."""
        self.closing = True
        self.fanout.close()
        for session in list(self.sessions.values()):
            session.disconnect(code, reason)
        if self._presence_task is not None:
            self._presence_task.cancel()
        self.node_watch.stop()
        self.backpressure.stop()
        self.tokens.close()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=2)
        if self._started:
            await self.node_watch.say_gone()
        await self.engine.close()

    def spawn(self, coro: Awaitable[Any]) -> None:
        """Run ``coro`` in a task of the node (awaited a while by :meth:`close`; failures
        logged)."""
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

    async def credentials_for(self, request: ConnectRequest) -> Credentials:
        """Authenticate a connecting client: the ``authenticate`` hook, else its token."""
        if self.authenticate is not None:
            outcome = await call_hook(self.authenticate, request)
            credentials = credentials_from(outcome, allow_anonymous=self.config.allow_anonymous)
            if credentials is not None:
                return credentials
        if request.token:
            return await self.tokens.verify_connection(request.token)
        if self.config.allow_anonymous:
            return Credentials(user="")
        raise Disconnect(DisconnectCode.UNAUTHORIZED, "a connection token is required")

    def session_connected(self, session: Session) -> None:
        """Called by a session once connected: it counts under its user."""
        logger.debug("session connected", extra=session.log_context())
        self.users.setdefault(session.user, set()).add(session)
        self.metrics.connects.labels(session.transport.kind).inc()

    def session_closed(self, session: Session, was_connected: bool, code: int, reason: str) -> None:
        """Called by a session when it ends: its subscriptions end, the node forgets it."""
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
        for sub in self.fanout.remove_all(session):
            self.spawn(self.forget_presence(sub))
        if was_connected and self.on_disconnect is not None:
            try:
                self.spawn(call_hook(self.on_disconnect, session, code, reason))
            except Exception:
                logger.exception("on_disconnect hook failed")

    # ----------------------------------------------------------------------- channels

    def _channel_closed(self, name: str) -> None:
        """The fan-out's last local subscriber of ``name`` left."""
        self.node_watch.channel_closed(name)

    def _options(self, name: str | ChannelName) -> tuple[ChannelName, PublishOptions]:
        """The channel, parsed (unless it is already), and its history options."""
        channel = name if isinstance(name, ChannelName) else parse_channel(name, self.config)
        return channel, self._publish_options(channel.options)

    def _publish_options(self, options: ChannelOptions) -> PublishOptions:
        return PublishOptions(
            options.history_size, options.history_ttl, self.config.history_meta_ttl
        )

    # ------------------------------------------------------------------- publishing API

    async def publish(
        self,
        channel: str | ChannelName,
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

        While a node is behind on delivering ``channel`` (or every channel) by more than
        ``config.overload_lag``, the publish first waits for it to catch up, at most
        ``config.overload_wait`` seconds; then it raises 115 (OVERLOADED): **not published**,
        retry later (see :mod:`pulsewire.hub.backpressure`).

        Without a key, a publication to a channel without history is delivered to this node's
        subscribers at once and sent to the other nodes at most once: an engine failure is
        not raised (it is counted in ``pulsewire_engine_errors_total``). With a key it reaches
        every node, this one included, through the engine, and engine failures are raised.
        """
        chan, options = self._options(channel)
        channel = chan.name
        check_data(data)
        if idempotency_key is not None:
            check_idempotency_key(idempotency_key)
        if self.backpressure.engaged:  # cheaper than awaiting admit() on every publish
            await self.backpressure.admit(channel)
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
        try:
            await self.engine.publish(channel, publication, options)
        except EngineUnavailable:
            # The engine delivered it locally; other nodes miss it (at most once without history).
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
            check_idempotency_key(idempotency_key)
        results: list[StreamPosition | HubError | None] = []
        with self.backpressure.one_wait():  # held channels wait overload_wait in all
            for channel in channels:
                try:
                    position = await self.publish(channel, data, idempotency_key=idempotency_key)
                    results.append(position)
                except HubError as exc:
                    results.append(exc)
        return results

    async def presence(self, channel: str | ChannelName) -> dict[str, ClientInfo]:
        """Who is subscribed to ``channel`` on every node, by client id."""
        chan, _ = self._options(channel)
        if not chan.options.presence:
            raise HubError(ErrorCode.NOT_AVAILABLE, f"presence is off in {chan.name}")
        return await self._engine_call(self.engine.presence(chan.name))

    async def presence_stats(self, channel: str | ChannelName) -> tuple[int, int]:
        """How many clients and distinct users are subscribed to ``channel``."""
        chan, _ = self._options(channel)
        if not chan.options.presence:
            raise HubError(ErrorCode.NOT_AVAILABLE, f"presence is off in {chan.name}")
        return await self._engine_call(self.engine.presence_stats(chan.name))

    async def history(
        self,
        channel: str | ChannelName,
        *,
        limit: int | None = None,
        since: StreamPosition | None = None,
        reverse: bool = False,
    ) -> HistoryResult:
        """``channel``'s kept publications (after ``since``, at most ``limit``) and position."""
        chan, options = self._options(channel)
        if not options.history:
            raise HubError(ErrorCode.NOT_AVAILABLE, f"history is off in {chan.name}")
        return await self._engine_call(
            self.engine.history(
                chan.name, since=since, limit=limit, reverse=reverse, options=options
            )
        )

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
        await self._control(DisconnectControl(user, code=code, reason=reason, sender=self.node_id))

    async def unsubscribe_user(self, user: str, channel: str, client: str | None = None) -> None:
        """Unsubscribe every connection of ``user`` (only the connection ``client`` of the
        user, when given) from ``channel`` on every node (push ``unsubscribe``, code 2000):
        client-side and server-side subscriptions alike."""
        await self._control(UnsubscribeControl(user, channel, client, sender=self.node_id))

    async def subscribe_user(self, user: str, channel: str, client: str | None = None) -> None:
        """Subscribe every connection of ``user`` (only the connection ``client`` of the
        user, when given) to ``channel`` on every node: a server-side subscription, without
        permission checks; each connection gets a ``subscribe`` push, then the channel's
        publications. Connections subscribed to ``channel`` already are left as they are.
        Raises HubError 102/107 for an unknown namespace or a bad channel name."""
        parse_channel(channel, self.config)
        await self._control(SubscribeControl(user, channel, client, sender=self.node_id))

    async def send(self, data: Any, *, user: str | None = None, client: str | None = None) -> None:
        """Push ``data`` as a ``message`` to one connection or to every connection of a user."""
        if (user is None) == (client is None):
            raise ValueError("give exactly one of user= or client=")
        check_data(data)
        await self._control(MessageControl(user, client, data, sender=self.node_id))

    async def _control(self, control: Control) -> None:
        await self._engine_call(self.engine.publish_control(control.to_dict()))

    @property
    def channels(self) -> dict[str, int]:
        """Channels with subscribers on this node, and how many."""
        return self.fanout.counts

    @property
    def nodes(self) -> dict[str, dict[str, Any]]:
        """Live nodes (this one included) by name: their last announced stats, ``instance``
        and ``expires`` (Unix time until which they count as alive without another
        announcement). Dead and departed nodes are dropped at once."""
        return self.node_watch.nodes

    # ------------------------------------------------------------------ engine callbacks

    def on_publication(self, channel: str, publication: Publication) -> None:
        """The engine's callback for each publication: to the fan-out."""
        self.fanout.on_publication(channel, publication)

    def on_join(self, channel: str, info: ClientInfo, node: str = "") -> None:
        # A join from an instance declared dead is still news: that node is alive after all
        # and has not heard yet; it rejoins (and joins again) under a new id once told.
        if node and not self.node_watch.is_own(node):
            self.node_watch.track_member(channel, info, node)
        self._push_event(channel, "join", info)

    def on_leave(self, channel: str, info: ClientInfo) -> None:
        self.node_watch.member_left(channel, info.client)
        self._push_event(channel, "leave", info)

    def _push_event(self, channel: str, kind: str, info: ClientInfo) -> None:
        if self.fanout.has_subscribers(channel):
            push = join_push if kind == "join" else leave_push
            self.fanout.push_event(channel, push(channel, info))

    def on_control(self, message: dict[str, Any]) -> None:
        """The engine's callback for each control message: node messages to the node watch,
        commands for sessions run on this node's sessions of the user (or the client)."""
        try:
            control = parse_control(message)
        except ValueError as exc:
            logger.warning("malformed control message ignored: %s", exc)
            return
        if control is None:
            return  # an op of a newer version
        if isinstance(control, (NodeDead, NodeGone, NodeLoad)):
            self.backpressure.on_control(control)  # a dead or departed node's load goes
        if isinstance(control, (NodeAnnounce, NodeDead, NodeGone)):
            self.node_watch.on_control(control)
            return
        if isinstance(control, NodeLoad):
            return
        targets: list[Session] = []
        if control.client is not None:
            session = self.sessions.get(control.client)
            if session is not None and control.user in (None, session.user):
                targets = [session]
        elif control.user is not None:
            targets = list(self.users.get(control.user, ()))
        for session in targets:
            if isinstance(control, SubscribeControl):
                self.spawn(make_until_done(session, {"channel": control.channel}))
            elif isinstance(control, DisconnectControl):
                session.disconnect(control.code, control.reason)
            elif isinstance(control, UnsubscribeControl):
                self.fanout.unsubscribe(
                    session,
                    control.channel,
                    UnsubscribeCode.SERVER,
                    "unsubscribed by the server",
                    False,
                )
            else:
                session.push(message_push(control.data))

    def on_engine_state(self, available: bool, channels: ChannelFilter | None = None) -> None:
        heard = available if channels is None else self.engine.available  # a shard: any up?
        if channels is None or heard != self._engine_heard:
            self._engine_heard = heard
            self.metrics.engine_up.set(1 if heard else 0)
            self.node_watch.engine_state(heard)  # deaf meanwhile: judges nobody
        what = f"engine {self.engine.name}" + ("" if channels is None else " (one shard)")
        if available:
            count = self.fanout.resync(channels)
            logger.info("%s is back: filling gaps in %d channels", what, count)
        else:
            logger.warning("%s is unavailable; serving local clients", what)

    # ------------------------------------------------------------------ subscribe helpers

    async def recover(
        self, chan: ChannelName, since: StreamPosition | None
    ) -> tuple[list[Publication], StreamPosition, bool]:
        """Publications after ``since`` if all of them are still there, the position, and
        whether recovery succeeded. The node's first subscriber sets where the fan-out's live
        delivery stands."""
        channel = chan.name
        options = self._publish_options(chan.options)
        limit = 0 if since is None else None
        result: HistoryResult = await self._engine_call(
            self.engine.history(channel, since=since, limit=limit, options=options)
        )
        position = result.position
        self.fanout.start_position(channel, position)
        if since is None:
            return [], position, False
        if position.epoch != since.epoch or since.offset > position.offset:
            return [], position, False
        publications = result.publications
        if not publications:
            return [], position, position.offset == since.offset
        if not first_follows(publications[0], since.offset):
            return [], position, False
        return publications, position, True

    async def add_presence(self, channel: str, info: ClientInfo) -> None:
        """Write a subscriber's presence entry (owned by this instance); 108 on failure."""
        await self.presence_keeper.add(channel, info)

    async def publish_join(self, channel: str, info: ClientInfo) -> None:
        """Push ``join`` for a subscriber on every node (engine failures only counted)."""
        await self.presence_keeper.publish_join(channel, info)

    async def forget_presence(self, sub: Subscription) -> None:
        """A subscription ended: remove its presence entry and push its leave, as configured
        (engine failures only counted)."""
        await self.presence_keeper.forget(sub)
