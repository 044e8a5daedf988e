"""The Redis engine: many hub processes on one Redis act as one hub.

* Fan-out: Redis pub/sub on one dedicated connection per engine (``{prefix}.ch.<channel>``,
  control messages on ``{prefix}.control``). SUBSCRIBE/UNSUBSCRIBE calls made in the same
  loop tick go out as one batch, followed by a ``PING`` used as a barrier: replies come in
  order, so its ``pong`` proves the batch was applied and ``subscribe()`` returns only then.
* History: per channel a stream (``{prefix}:{<channel>}:stream``, entry id ``<offset>-0``) and
  a meta hash (``...:meta``: ``epoch``, ``offset``), written by one Lua script that also
  PUBLISHes the publication, so every node receives a channel's publications in offset order.
* Presence: a hash (client id -> ClientInfo JSON), a sorted set (client id -> expiry, in
  Redis time), a hash (client id -> owning instance) and a sorted set of tombstones per
  channel; expired members are removed when presence is read. A dead instance's entries are
  removed, tombstoned and their leaves PUBLISHed by one script per channel (atomic: of
  several survivors running it, exactly one removes an entry). Per instance, a sorted set
  ``{prefix}:node:{<instance>}:channels`` (channel -> expiry) lists where it has presence.
* Idempotent publish: the key ``{prefix}:{<channel>}:idem:<key>`` (the channel's hash slot)
  is checked and set by the same script that writes, so a retry never writes twice; it holds
  the first ``offset,epoch`` for ``window`` ms. Keyed publications of channels without
  history are delivered to this node through Redis too (their echo is not skipped); unkeyed
  ones are delivered to this node by ``publish()`` itself, before the PUBLISH, and their
  echo is skipped.
* Faults: commands fail fast with :class:`EngineUnavailable` (socket timeouts, no retries);
  a publish that was sent and got no answer raises :class:`EngineOutcomeUnknown` instead.
  The pub/sub reader pings an idle connection, reconnects with exponential backoff and
  jitter, resubscribes and only then reports ``on_engine_state(True)``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import inspect
import json
import logging
import random
import re
import secrets
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import redis.asyncio as aioredis
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError, RedisError, ResponseError

from ..types import ClientInfo, HistoryResult, Publication, PublishOptions, StreamPosition
from . import redis_scripts
from .base import (
    Engine,
    EngineOutcomeUnknown,
    EngineUnavailable,
    IndexedChannels,
    PresenceAdd,
    PublishOnce,
)

__all__ = ["RedisEngine"]

logger = logging.getLogger(__name__)

_ERRORS = (RedisError, OSError, asyncio.TimeoutError, EngineUnavailable)


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


_NAMED_GET: dict[type, bool] = {}


async def _get_connection(pool: aioredis.ConnectionPool) -> AbstractConnection:
    """A connected connection from ``pool`` (redis-py < 5.3 wants a command name, later
    versions warn when given one)."""
    get: Any = pool.get_connection
    named = _NAMED_GET.get(type(pool))
    if named is None:
        param = inspect.signature(get).parameters.get("command_name")
        named = _NAMED_GET[type(pool)] = (
            param is not None and param.default is inspect.Parameter.empty
        )
    return cast(AbstractConnection, await (get("_") if named else get()))


@contextlib.contextmanager
def _unavailable() -> Iterator[None]:
    """Turn connection-level failures into EngineUnavailable."""
    try:
        yield
    except EngineUnavailable:
        raise
    except (RedisError, OSError, asyncio.TimeoutError) as exc:
        raise EngineUnavailable(f"redis: {exc}") from exc


@dataclass(eq=False)
class _Barrier:
    """Futures resolved when the ``PING`` sent after a batch of commands is answered."""

    waiters: list[asyncio.Future[None]]
    sync: bool = False

    def fail(self, reason: str) -> None:
        for fut in self.waiters:
            if not fut.done():
                fut.set_exception(EngineUnavailable(reason))


@dataclass(eq=False)
class _Session:
    """One pub/sub connection and what is in flight on it."""

    conn: AbstractConnection
    barriers: collections.deque[_Barrier] = field(default_factory=collections.deque)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    awaiting_reply: bool = True
    synced: bool = False


class RedisEngine(Engine):
    """History, presence and fan-out through Redis (5 or later; Cluster-friendly keys).

    ``connect_timeout`` and ``command_timeout`` bound every call; ``ping_interval`` is how
    long the pub/sub connection may stay silent before it is pinged (a lost connection is
    noticed within two intervals); ``backoff_min``/``backoff_max`` shape reconnection;
    ``max_connections`` bounds the command connections (the pub/sub one comes on top).
    """

    name = "redis"

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        prefix: str = "pulsewire",
        *,
        connect_timeout: float = 1.0,
        command_timeout: float = 2.0,
        ping_interval: float = 1.0,
        backoff_min: float = 0.05,
        backoff_max: float = 2.0,
        max_connections: int = 64,
        client_name: str | None = None,
    ) -> None:
        super().__init__()
        self.url = url
        self.prefix = prefix
        self._connect_timeout = connect_timeout
        self._command_timeout = command_timeout
        self._ping_interval = ping_interval
        self._backoff_min = backoff_min
        self._backoff_max = backoff_max
        self._max_connections = max_connections
        self._client_name = client_name
        self._ch_prefix = f"{prefix}.ch."
        self._ch_prefix_b = self._ch_prefix.encode()
        self._control = f"{prefix}.control"
        self._control_b = self._control.encode()
        self._redis: aioredis.Redis | None = None
        self._scripts: dict[str, AsyncScript] = {}
        self._session: _Session | None = None
        self._available = False
        self._reader: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        # Channels this node wants; channels whose subscription changed since the last flush.
        self._wanted: set[str] = set()
        self._dirty: set[str] = set()
        self._sub_waiters: list[asyncio.Future[None]] = []
        self._flush_scheduled = False
        self._indexed = IndexedChannels()

    # -- keys ------------------------------------------------------------------------------

    def _key(self, channel: str, kind: str) -> str:
        return f"{self.prefix}:{{{channel}}}:{kind}"

    def _pubsub_name(self, channel: str) -> str:
        return self._ch_prefix + channel

    # -- life cycle ------------------------------------------------------------------------

    @property
    def available(self) -> bool:
        return self._available

    async def start(self) -> None:
        """Connect both connections and subscribe; raises EngineUnavailable on failure."""
        if self._redis is not None:
            return
        if not self.node_id:
            self.node_id = secrets.token_hex(6)
        name = self._client_name or re.sub(r"[^\w.:-]", "_", f"pulsewire-{self.node_id}")
        # A bounded pool: a burst of calls waits for a connection (at most command_timeout)
        # instead of opening hundreds. No retries: a failed call raises EngineUnavailable.
        pool = aioredis.BlockingConnectionPool.from_url(
            self.url,
            max_connections=self._max_connections,
            timeout=self._command_timeout,
            socket_timeout=self._command_timeout,
            socket_connect_timeout=self._connect_timeout,
            socket_keepalive=True,
            retry=Retry(NoBackoff(), 0),
            client_name=name,
            protocol=2,
        )
        self._redis = aioredis.Redis.from_pool(pool)
        self._scripts = {
            "publish": self._redis.register_script(redis_scripts.PUBLISH),
            "publish_once": self._redis.register_script(redis_scripts.PUBLISH_ONCE),
            "history": self._redis.register_script(redis_scripts.HISTORY),
            "presence_add": self._redis.register_script(redis_scripts.PRESENCE_ADD),
            "presence_get": self._redis.register_script(redis_scripts.PRESENCE_GET),
            "presence_remove": self._redis.register_script(redis_scripts.PRESENCE_REMOVE),
            "presence_remove_node": self._redis.register_script(redis_scripts.PRESENCE_REMOVE_NODE),
            "node_index": self._redis.register_script(redis_scripts.NODE_INDEX),
            "node_channels": self._redis.register_script(redis_scripts.NODE_CHANNELS),
        }
        try:
            with _unavailable():
                await self._redis.ping()
                session = await self._open_session()
                await asyncio.wait_for(
                    self._serve(session, until_synced=True), self._command_timeout
                )
        except BaseException:
            await self.close()
            raise
        self._reader = asyncio.create_task(self._run(session), name=f"redis-engine-{name}")

    async def close(self) -> None:
        """Stop the reader, fail pending subscribes, close the connections."""
        self._available = False
        tasks = [t for t in (self._reader, *self._tasks) if t is not None]
        self._reader = None
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._flush_scheduled = False
        session, self._session = self._session, None
        if session is not None:
            await self._drop(session, "engine closed")
        for fut in self._sub_waiters:
            if not fut.done():
                fut.set_exception(EngineUnavailable("engine closed"))
        self._sub_waiters = []
        client, self._redis = self._redis, None
        if client is not None:
            with contextlib.suppress(*_ERRORS):
                await client.aclose()

    # -- pub/sub connection ----------------------------------------------------------------

    async def _open_session(self) -> _Session:
        """Connect the pub/sub connection and (re)subscribe to every wanted channel."""
        assert self._redis is not None
        pool = self._redis.connection_pool
        # RESP2 whatever the URL says: pub/sub messages are then plain replies, not pushes.
        conn: AbstractConnection = pool.connection_class(
            **{**pool.connection_kwargs, "protocol": 2}
        )
        try:
            await cast(Any, conn).connect()
            session = _Session(conn)
            names = [self._control, *(self._pubsub_name(c) for c in self._wanted)]
            self._session = session
            self._dirty.clear()
            await self._send(session, [("SUBSCRIBE", *names)], _Barrier([], sync=True))
        except BaseException:
            if self._session is not None and self._session.conn is conn:
                self._session = None
            await conn.disconnect(nowait=True)
            raise
        return session

    async def _drop(self, session: _Session, reason: str) -> None:
        if self._session is session:
            self._session = None
        while session.barriers:
            session.barriers.popleft().fail(reason)
        with contextlib.suppress(*_ERRORS):
            await session.conn.disconnect(nowait=True)

    async def _send(
        self, session: _Session, commands: list[tuple[str, ...]], barrier: _Barrier | None
    ) -> None:
        """Send commands on the pub/sub connection, optionally followed by a barrier PING."""
        async with session.lock:
            # Never let redis-py transparently reconnect a dropped pub/sub connection.
            if self._session is not session or not session.conn.is_connected:
                raise EngineUnavailable("redis pub/sub connection lost")
            if barrier is not None:
                commands = [*commands, ("PING", "b")]
                session.barriers.append(barrier)
            packed = session.conn.pack_commands(commands)
            await session.conn.send_packed_command(packed, check_health=False)

    async def _run(self, session: _Session | None) -> None:
        """The reader task: serve the session, reconnect with backoff when it fails."""
        backoff = self._backoff_min
        while True:
            try:
                if session is None:
                    session = await self._open_session()
                await self._serve(session, until_synced=False)
            except asyncio.CancelledError:
                raise
            except _ERRORS as exc:
                if self._available:
                    logger.warning("redis engine: pub/sub connection lost: %s", exc)
                else:
                    logger.debug("redis engine: cannot reconnect yet: %s", exc)
            except Exception:
                logger.exception("redis engine: pub/sub reader failed")
            if session is not None:
                if session.synced:
                    backoff = self._backoff_min
                await self._drop(session, "redis pub/sub connection lost")
                session = None
            self._set_available(False)
            await asyncio.sleep(random.uniform(backoff / 2, backoff))
            backoff = min(backoff * 2, self._backoff_max)

    async def _serve(self, session: _Session, *, until_synced: bool) -> None:
        """Read and dispatch messages; raises when the connection fails or stays silent."""
        conn = session.conn
        while not (until_synced and session.synced):
            response = await conn.read_response(timeout=self._ping_interval)
            if response is None:
                if session.awaiting_reply:
                    raise EngineUnavailable("redis pub/sub connection silent")
                session.awaiting_reply = True
                await self._send(session, [("PING", "h")], None)
                continue
            session.awaiting_reply = False
            if isinstance(response, list) and len(response) >= 2:
                kind = response[0]
                if kind == b"message" and len(response) == 3:
                    self._dispatch(response[1], response[2])
                elif kind == b"pong" and response[1] == b"b" and session.barriers:
                    self._complete(session, session.barriers.popleft())

    def _complete(self, session: _Session, barrier: _Barrier) -> None:
        for fut in barrier.waiters:
            if not fut.done():
                fut.set_result(None)
        if barrier.sync:
            session.synced = True
            self._set_available(True)

    def _set_available(self, available: bool) -> None:
        if available == self._available:
            return
        self._available = available
        if self._reader is None:
            return  # start() or close(): the hub is not told about these
        logger.info("redis engine %s", "available" if available else "unavailable")
        if self.handler is not None:
            try:
                self.handler.on_engine_state(available)
            except Exception:
                logger.exception("redis engine: on_engine_state handler failed")

    def _deliver_local(self, channel: str, publication: Publication) -> None:
        """Hand an unkeyed publication without history to this node's handler (if the
        channel is subscribed here), before it is sent to the others."""
        if self.handler is not None and channel in self._wanted:
            self.handler.on_publication(channel, publication)

    def _dispatch(self, name: bytes, data: bytes) -> None:
        handler = self.handler
        if handler is None:
            return
        try:
            if name == self._control_b:
                message = json.loads(data)
                if isinstance(message, dict):
                    handler.on_control(message)
                return
            if not name.startswith(self._ch_prefix_b):
                return
            channel = name[len(self._ch_prefix_b) :].decode()
            if channel not in self._wanted:
                return
            envelope = json.loads(data)
            kind = envelope.pop("t", None)
            if kind == "p":
                echo = envelope.pop("echo", False)
                publication = Publication.from_dict(envelope)
                if publication.offset == 0 and publication.origin == self.node_id and not echo:
                    return  # our own echo: publish() delivered it locally already
                handler.on_publication(channel, publication)
            elif kind == "j":
                node = envelope.get("o")
                info = ClientInfo.from_dict(envelope["info"])
                handler.on_join(channel, info, node if isinstance(node, str) else "")
            elif kind == "l":
                handler.on_leave(channel, ClientInfo.from_dict(envelope["info"]))
        except Exception:
            logger.exception("redis engine: cannot dispatch a message from %r", name)

    # -- fan-out ---------------------------------------------------------------------------

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            task = asyncio.create_task(self._flush())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _flush(self) -> None:
        """Send the (un)subscriptions requested since the last flush, as one batch."""
        self._flush_scheduled = False
        dirty, self._dirty = self._dirty, set()
        barrier = _Barrier(self._sub_waiters)
        self._sub_waiters = []
        commands: list[tuple[str, ...]] = []
        subs = [self._pubsub_name(c) for c in dirty if c in self._wanted]
        unsubs = [self._pubsub_name(c) for c in dirty if c not in self._wanted]
        if subs:
            commands.append(("SUBSCRIBE", *subs))
        if unsubs:
            commands.append(("UNSUBSCRIBE", *unsubs))
        session = self._session
        if session is None:
            barrier.fail("redis pub/sub connection lost")
            return
        try:
            await self._send(session, commands, barrier)
        except _ERRORS as exc:
            barrier.fail(f"redis: {exc}")

    async def subscribe(self, channel: str) -> None:
        """Subscribe; returns once Redis applied it. On failure (EngineUnavailable) the
        channel stays wanted and is subscribed on reconnection: unsubscribe to drop it."""
        self._wanted.add(channel)
        self._dirty.add(channel)
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._sub_waiters.append(fut)
        self._schedule_flush()
        try:
            await asyncio.wait_for(fut, self._command_timeout)
        except asyncio.TimeoutError:
            raise EngineUnavailable("redis: SUBSCRIBE not confirmed in time") from None

    async def unsubscribe(self, channel: str) -> None:
        """Stop delivering ``channel`` at once; the UNSUBSCRIBE goes out with the next batch."""
        if channel in self._wanted:
            self._wanted.discard(channel)
            self._dirty.add(channel)
            self._schedule_flush()

    def _client(self) -> aioredis.Redis:
        if self._redis is None:
            raise EngineUnavailable("redis engine is not started")
        return self._redis

    async def _script(self, script: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        self._client()
        with _unavailable():
            return await self._scripts[script](keys=list(keys), args=list(args))

    def _encode(self, publication: Publication) -> str:
        """JSON without offset/prev/epoch (the script adds them); TypeError for data JSON
        cannot carry (bytes...), before anything reaches Redis."""
        out = publication.to_dict()
        for key in ("offset", "prev", "epoch"):
            out.pop(key, None)
        out["origin"] = self.node_id
        return _dumps(out)

    async def _send_once(self, *command: Any) -> Any:
        """Run one command on a pooled connection, without retry, and say how it failed:
        :class:`EngineUnavailable` when it was not sent (no connection could be had: refused,
        handshake failed or timed out, pool exhausted) or Redis refused it with an error reply;
        :class:`EngineOutcomeUnknown` when it was sent and no reply came (read timeout,
        connection lost), since Redis may run it anyway (a stopped server runs what is queued
        on its sockets when it resumes). :class:`NoScriptError` is raised as is."""
        pool = self._client().connection_pool
        try:
            conn = await _get_connection(pool)
        except (RedisError, OSError, asyncio.TimeoutError) as exc:
            raise EngineUnavailable(f"redis: not sent: {exc}") from exc
        try:
            # Both calls disconnect the connection when they fail or are cancelled, so a late
            # reply can never be read as the answer to another command.
            await conn.send_command(*command, check_health=False)
            return await conn.read_response()
        except NoScriptError:
            raise
        except ResponseError as exc:
            # An error reply: refused before running (OOM, BUSY, LOADING, READONLY...). The
            # scripts raise no errors of their own.
            raise EngineUnavailable(f"redis: refused: {exc}") from exc
        except (RedisError, OSError, asyncio.TimeoutError) as exc:
            raise EngineOutcomeUnknown(f"redis: sent, no answer: {exc}") from exc
        finally:
            await pool.release(conn)

    async def _eval_once(self, script: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """A publish script through :meth:`_send_once` (EVAL when Redis lost the script)."""
        lua = self._scripts[script]
        try:
            return await self._send_once("EVALSHA", lua.sha, len(keys), *keys, *args)
        except NoScriptError:  # refused before running: nothing was done
            return await self._send_once("EVAL", lua.script, len(keys), *keys, *args)

    async def publish(
        self, channel: str, publication: Publication, options: PublishOptions
    ) -> StreamPosition | None:
        body = self._encode(publication)
        if not options.history:
            # This node's subscribers get it at once, whatever Redis does (its echo is
            # skipped); the other nodes at most once.
            self._deliver_local(channel, publication)
            await self._send_once("PUBLISH", self._pubsub_name(channel), '{"t":"p",' + body[1:])
            return None
        position, _ = await self._publish_history(channel, options, body)
        return position

    async def _publish_history(
        self,
        channel: str,
        options: PublishOptions,
        body: str,
        key: str | None = None,
        window: float = 0.0,
    ) -> tuple[StreamPosition, bool]:
        keys = [self._key(channel, "stream"), self._key(channel, "meta")]
        args: list[Any] = [
            body,
            options.history_size,
            _ms(options.history_ttl),
            _ms(max(options.history_meta_ttl, options.history_ttl)),
            secrets.token_hex(4),
            self._pubsub_name(channel),
        ]
        if key is not None:
            keys.append(self._key(channel, f"idem:{key}"))
            args.append(_ms(window))
        offset, epoch, seen = await self._eval_once("publish", keys, args)
        return StreamPosition(int(offset), epoch.decode()), bool(seen)

    async def publish_once(
        self,
        channel: str,
        publication: Publication,
        options: PublishOptions,
        key: str,
        window: float,
    ) -> PublishOnce:
        body = self._encode(publication)
        if options.history:
            position, seen = await self._publish_history(channel, options, body, key, window)
            return PublishOnce(position, seen)
        if not self._available:
            # Delivered here only through our pub/sub connection: while it is down, local
            # subscribers would miss a publication the other nodes get.
            raise EngineUnavailable("redis pub/sub connection down: not published")
        message = '{"t":"p","echo":1,' + body[1:]
        published = await self._eval_once(
            "publish_once",
            [self._key(channel, f"idem:{key}")],
            [_ms(window), self._pubsub_name(channel), message],
        )
        return PublishOnce(None, duplicate=not published)

    async def _publish_event(
        self, channel: str, kind: str, info: ClientInfo, node: str = ""
    ) -> None:
        envelope = {"t": kind, "info": info.to_dict(), "origin": self.node_id}
        if node:
            envelope["o"] = node
        client = self._client()
        with _unavailable():
            await client.publish(self._pubsub_name(channel), _dumps(envelope))

    async def publish_join(self, channel: str, info: ClientInfo, node: str = "") -> None:
        await self._publish_event(channel, "j", info, node)

    async def publish_leave(self, channel: str, info: ClientInfo) -> None:
        await self._publish_event(channel, "l", info)

    async def publish_control(self, message: dict[str, Any]) -> None:
        client = self._client()
        with _unavailable():
            await client.publish(self._control, _dumps(message))

    # -- history ---------------------------------------------------------------------------

    async def history(
        self,
        channel: str,
        *,
        since: StreamPosition | None = None,
        limit: int | None = None,
        reverse: bool = False,
        options: PublishOptions,
    ) -> HistoryResult:
        offset, epoch, items = await self._script(
            "history",
            [self._key(channel, "stream"), self._key(channel, "meta")],
            [
                "" if since is None else max(since.offset, 0),
                -1 if limit is None else limit,
                int(reverse),
                int(options.history),
                secrets.token_hex(4),
                _ms(max(options.history_meta_ttl, options.history_ttl)),
            ],
        )
        publications = [Publication.from_dict(json.loads(item)) for item in items]
        return HistoryResult(publications, StreamPosition(int(offset), epoch.decode()))

    async def remove_history(self, channel: str) -> None:
        """Drop the kept publications; the stream's offset and epoch stay."""
        client = self._client()
        with _unavailable():
            await client.delete(self._key(channel, "stream"))

    # -- presence --------------------------------------------------------------------------

    def _presence_keys(self, channel: str) -> list[str]:
        return [
            self._key(channel, "presence"),
            self._key(channel, "presence_exp"),
            self._key(channel, "presence_node"),
            self._key(channel, "presence_left"),
        ]

    def _node_key(self, node: str) -> str:
        return f"{self.prefix}:node:{{{node}}}:channels"

    async def add_presence(
        self, channel: str, info: ClientInfo, ttl: float, node: str = ""
    ) -> PresenceAdd:
        outcome = await self._script(
            "presence_add",
            self._presence_keys(channel),
            [info.client, _dumps(info.to_dict()), _ms(ttl), node],
        )
        if node and self._indexed.due(node, channel):
            # The index is another key (another slot in a Cluster): a second call, made once
            # a third of the ttl per channel, not on every refresh. Best effort: the entry is
            # written, failing the add for it would leave it behind; retried next refresh.
            try:
                await self._script(
                    "node_index",
                    [self._node_key(node)],
                    [channel, _ms(IndexedChannels.INDEX_TTL_FACTOR * ttl)],
                )
            except EngineUnavailable as exc:
                logger.debug("redis engine: presence index of %s not written: %s", node, exc)
            else:
                self._indexed.written(node, channel, ttl)
        return PresenceAdd(int(outcome))

    async def remove_presence(self, channel: str, client_id: str) -> bool:
        removed = await self._script("presence_remove", self._presence_keys(channel), [client_id])
        return bool(int(removed))

    async def remove_node_presence(
        self, channel: str, node: str, ttl: float, *, leave: bool
    ) -> list[ClientInfo]:
        removed = await self._script(
            "presence_remove_node",
            self._presence_keys(channel),
            [node, _ms(ttl), self._pubsub_name(channel) if leave else "", self.node_id],
        )
        return [ClientInfo.from_dict(json.loads(item)) for item in removed]

    async def node_presence_channels(self, node: str) -> list[str]:
        channels = await self._script("node_channels", [self._node_key(node)], [])
        return [channel.decode() for channel in channels]

    async def presence(self, channel: str) -> dict[str, ClientInfo]:
        flat = await self._script("presence_get", self._presence_keys(channel), ["all"])
        return {
            flat[i].decode(): ClientInfo.from_dict(json.loads(flat[i + 1]))
            for i in range(0, len(flat), 2)
        }

    async def presence_stats(self, channel: str) -> tuple[int, int]:
        clients, users = await self._script("presence_get", self._presence_keys(channel), ["stats"])
        return int(clients), int(users)
