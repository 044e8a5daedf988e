"""The Redis engine: many hub processes on one Redis act as one hub.

* Fan-out: Redis pub/sub on one dedicated connection per engine (``{prefix}.ch.<channel>``,
  control messages on ``{prefix}.control``), see :mod:`.redis_pubsub`.
* History: per channel a stream (``{prefix}:{<channel>}:stream``, entry id ``<offset>-0``) and
  a meta hash (``...:meta``: ``epoch``, ``offset``, ``run``: the run_id of the Redis server
  that last wrote it, for fencing), written by one Lua script that also
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
import contextlib
import json
import logging
import re
import secrets
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError, RedisError, ResponseError

from ..types import ClientInfo, HistoryResult, Publication, PublishOptions, StreamPosition
from . import redis_scripts
from .base import (
    ChannelFilter,
    Engine,
    EngineOutcomeUnknown,
    EngineUnavailable,
    IndexedChannels,
    PresenceAdd,
    PublishOnce,
)
from .redis_connection import PoolFactory, get_connection, server_run_id, url_pool_factory
from .redis_pubsub import REDIS_ERRORS, PubSubLike, RedisPubSub, unavailable

__all__ = ["RedisEngine"]

logger = logging.getLogger(__name__)


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


class RedisEngine(Engine):
    """History, presence and fan-out through Redis (5 or later; Cluster-friendly keys).

    ``connect_timeout`` and ``command_timeout`` bound every call; ``ping_interval`` is how
    long the pub/sub connection may stay silent before it is pinged (a lost connection is
    noticed within two intervals); ``backoff_min``/``backoff_max`` shape reconnection;
    ``max_connections`` bounds the command connections (the pub/sub one comes on top).
    ``pool_factory`` makes the command pool (default: one server, from ``url``); the
    pub/sub connection is made by the same pool's connection class, so it follows the
    same server (e.g. the master Sentinel names, asked again on each reconnection).
    """

    name = "redis"
    #: The command fanning a publication out (``SPUBLISH`` on a Cluster, see
    #: :mod:`.redis_cluster`).
    publish_command = "PUBLISH"

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
        pool_factory: PoolFactory | None = None,
    ) -> None:
        super().__init__()
        self.url = url
        self._pool_factory = pool_factory or url_pool_factory(url)
        self.prefix = prefix
        self._connect_timeout = connect_timeout
        self._command_timeout = command_timeout
        self._max_connections = max_connections
        self._client_name = client_name
        self._ch_prefix = f"{prefix}.ch."
        self._ch_prefix_b = self._ch_prefix.encode()
        self._control = f"{prefix}.control"
        self._control_b = self._control.encode()
        self._redis: Any = None  # aioredis.Redis, or RedisCluster (same command methods)
        self._scripts: dict[str, AsyncScript] = {}
        self._pubsub: PubSubLike = self._new_pubsub(
            command_timeout=command_timeout,
            ping_interval=ping_interval,
            backoff_min=backoff_min,
            backoff_max=backoff_max,
        )
        self._indexed = IndexedChannels()

    def _new_pubsub(
        self,
        *,
        command_timeout: float,
        ping_interval: float,
        backoff_min: float,
        backoff_max: float,
    ) -> PubSubLike:
        """The pub/sub connection(s) delivering to :meth:`_dispatch`."""
        return RedisPubSub(
            control=self._control,
            ch_prefix=self._ch_prefix,
            command_timeout=command_timeout,
            ping_interval=ping_interval,
            backoff_min=backoff_min,
            backoff_max=backoff_max,
            on_message=self._dispatch,
            on_state=self._on_state,
        )

    # -- keys ------------------------------------------------------------------------------

    def _key(self, channel: str, kind: str) -> str:
        return f"{self.prefix}:{{{channel}}}:{kind}"

    def _pubsub_name(self, channel: str) -> str:
        return self._ch_prefix + channel

    def _channel_of(self, name: bytes) -> str | None:
        """The channel of a pub/sub channel name (None if it is not one)."""
        if not name.startswith(self._ch_prefix_b):
            return None
        return name[len(self._ch_prefix_b) :].decode()

    def _make_client(self, name: str) -> Any:
        """The command client (not connected yet); ``name`` is its CLIENT SETNAME."""
        # A bounded pool: a burst of calls waits for a connection (at most command_timeout)
        # instead of opening hundreds. No retries: a failed call raises EngineUnavailable.
        pool = self._pool_factory(
            max_connections=self._max_connections,
            timeout=self._command_timeout,
            socket_timeout=self._command_timeout,
            socket_connect_timeout=self._connect_timeout,
            socket_keepalive=True,
            retry=Retry(NoBackoff(), 0),
            client_name=name,
            protocol=2,
        )
        return aioredis.Redis.from_pool(pool)

    def _lua(self, source: str) -> str:
        """A script's source as this engine runs it."""
        return source

    # -- life cycle ------------------------------------------------------------------------

    @property
    def available(self) -> bool:
        return self._pubsub.available

    async def start(self) -> None:
        """Connect both connections and subscribe; raises EngineUnavailable on failure."""
        if self._redis is not None:
            return
        if not self.node_id:
            self.node_id = secrets.token_hex(6)
        name = self._client_name or re.sub(r"[^\w.:-]", "_", f"pulsewire-{self.node_id}")
        self._redis = client = self._make_client(name)
        self._scripts = {
            k: client.register_script(self._lua(v)) for k, v in redis_scripts.SCRIPTS.items()
        }
        try:
            with unavailable():
                await client.ping()
                await self._pubsub.start(client, name)
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """Stop the reader, fail pending subscribes, close the connections."""
        await self._pubsub.close()
        client, self._redis = self._redis, None
        if client is not None:
            with contextlib.suppress(*REDIS_ERRORS):
                await client.aclose()

    async def reconnect(self) -> None:
        """Close every connection, in use or not (calls on them fail, a publish with an
        unknown outcome): the next ones are made afresh, e.g. to a new master."""
        if self._redis is not None:
            with contextlib.suppress(*REDIS_ERRORS):
                await self._redis.connection_pool.disconnect(inuse_connections=True)
        await self._pubsub.reconnect()

    def _on_state(self, available: bool, channels: ChannelFilter | None = None) -> None:
        if self.handler is not None:
            self.handler.on_engine_state(available, channels)

    def _deliver_local(self, channel: str, publication: Publication) -> None:
        """Hand an unkeyed publication without history to this node's handler (if the
        channel is subscribed here), before it is sent to the others."""
        if self.handler is not None and channel in self._pubsub.wanted:
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
            channel = self._channel_of(name)
            if channel is None or channel not in self._pubsub.wanted:
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

    async def subscribe(self, channel: str) -> None:
        """Subscribe; returns once Redis applied it. On failure (EngineUnavailable) the
        channel stays wanted and is subscribed on reconnection: unsubscribe to drop it."""
        await self._pubsub.subscribe(channel)

    async def unsubscribe(self, channel: str) -> None:
        """Stop delivering ``channel`` at once; the UNSUBSCRIBE goes out with the next batch."""
        await self._pubsub.unsubscribe(channel)

    def _client(self) -> Any:
        if self._redis is None:
            raise EngineUnavailable("redis engine is not started")
        return self._redis

    async def _script(self, script: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        self._client()
        with unavailable():
            return await self._scripts[script](keys=list(keys), args=list(args))

    def _encode(self, publication: Publication) -> str:
        """JSON without offset/prev/epoch (the script adds them); TypeError for data JSON
        cannot carry (bytes...), before anything reaches Redis."""
        out = publication.to_dict()
        for key in ("offset", "prev", "epoch"):
            out.pop(key, None)
        out["origin"] = self.node_id
        return _dumps(out)

    async def _send_once(self, *command: Any, fenced: bool = False) -> Any:
        """Run one command on a pooled connection, without retry, and say how it failed:
        :class:`EngineUnavailable` when it was not sent (no connection could be had: refused,
        handshake failed or timed out, pool exhausted) or Redis refused it with an error reply;
        :class:`EngineOutcomeUnknown` when it was sent and no reply came (read timeout,
        connection lost), since Redis may run it anyway (a stopped server runs what is queued
        on its sockets when it resumes). :class:`NoScriptError` is raised as is. ``fenced``:
        the run_id of the server the connection reaches is appended to the command."""
        pool = self._client().connection_pool
        try:
            conn = await get_connection(pool)
        except (RedisError, OSError, asyncio.TimeoutError) as exc:
            raise EngineUnavailable(f"redis: not sent: {exc}") from exc
        try:
            if fenced:
                run_id = server_run_id(conn)
                if not run_id:  # '' would make every script start a new epoch
                    raise EngineUnavailable(
                        "redis: the connection does not know its server's run_id (a pool "
                        "factory must use redis_connection.fenced_connection_class)"
                    )
                command = (*command, run_id)
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

    async def _eval_once(
        self, script: str, keys: Sequence[str], args: Sequence[Any], *, fenced: bool = False
    ) -> Any:
        """A script through :meth:`_send_once` (EVAL when Redis lost the script); ``fenced``
        appends the server's run_id to ``args``."""
        lua = self._scripts[script]
        command = (len(keys), *keys, *args)
        try:
            return await self._send_once("EVALSHA", lua.sha, *command, fenced=fenced)
        except NoScriptError:  # refused before running: nothing was done
            return await self._send_once("EVAL", lua.script, *command, fenced=fenced)

    async def publish(
        self, channel: str, publication: Publication, options: PublishOptions
    ) -> StreamPosition | None:
        body = self._encode(publication)
        if not options.history:
            # This node's subscribers get it at once, whatever Redis does (its echo is
            # skipped); the other nodes at most once.
            self._deliver_local(channel, publication)
            name = self._pubsub_name(channel)
            await self._send_once(self.publish_command, name, '{"t":"p",' + body[1:])
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
            0,
        ]
        if key is not None:
            keys.append(self._key(channel, f"idem:{key}"))
            args[-1] = _ms(window)
        offset, epoch, seen = await self._eval_once("publish", keys, args, fenced=True)
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
        if not self._pubsub.available:
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
        with unavailable():
            await client.execute_command(
                self.publish_command, self._pubsub_name(channel), _dumps(envelope)
            )

    async def publish_join(self, channel: str, info: ClientInfo, node: str = "") -> None:
        await self._publish_event(channel, "j", info, node)

    async def publish_leave(self, channel: str, info: ClientInfo) -> None:
        await self._publish_event(channel, "l", info)

    async def publish_control(self, message: dict[str, Any]) -> None:
        client = self._client()
        with unavailable():
            await client.execute_command(self.publish_command, self._control, _dumps(message))

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
        offset, epoch, items = await self._eval_once(
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
            fenced=True,
        )
        publications = [Publication.from_dict(json.loads(item)) for item in items]
        return HistoryResult(publications, StreamPosition(int(offset), epoch.decode()))

    async def remove_history(self, channel: str) -> None:
        """Drop the kept publications; the stream's offset and epoch stay."""
        client = self._client()
        with unavailable():
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
        if node and self._indexed.due(node, channel):
            # The index is another key (another slot in a Cluster): a second call, made once
            # a third of the ttl per channel, not on every refresh, and made first: should
            # the entry then fail to be written, the index only names a channel where a
            # dead-node cleanup finds nothing; the other way round, a failure would leave an
            # entry no cleanup finds. A failure here fails the add (nothing written).
            await self._script(
                "node_index",
                [self._node_key(node)],
                [channel, _ms(IndexedChannels.INDEX_TTL_FACTOR * ttl)],
            )
            self._indexed.written(node, channel, ttl)
        outcome = await self._script(
            "presence_add",
            self._presence_keys(channel),
            [info.client, _dumps(info.to_dict()), _ms(ttl), node],
        )
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
