"""The Redis engine on a Redis Cluster (Redis 7 or later): ``redis+cluster://H:P[,H:P...]``.

The same engine as :class:`.RedisEngine` (keys, scripts, guarantees), with:

* Commands and scripts through ``redis.asyncio.cluster.RedisCluster``, which routes each one
  to its slot's master, follows ``MOVED``/``ASK`` and refreshes the slot map. Every key of a
  channel (stream, meta, presence, idempotency keys) carries the hash tag ``{<channel>}``, so
  each script touches one slot. The node presence index (``...:node:{<instance>}:channels``,
  another slot) is written by a separate call (see :meth:`.RedisEngine.add_presence`).
* Fan-out with sharded pub/sub: ``SPUBLISH`` (also inside the scripts) to the shard channel
  ``{prefix}.ch.{<channel>}``, in the slot of the channel's keys, so a publication goes to
  one shard only and every node still receives a channel's publications in offset order;
  control messages on the shard channel ``{prefix}.control``. See
  :mod:`.redis_cluster_pubsub` for subscriptions across shards, slot migration and failover.
* Publishes sent once, as on one server (:meth:`_send_once`), following redirections by
  hand (a ``MOVED``/``ASK``/``TRYAGAIN`` reply means the command did not run).
"""

from __future__ import annotations

import asyncio
import re
from typing import Any, cast
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import Connection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import (
    AskError,
    MovedError,
    NoScriptError,
    RedisError,
    ResponseError,
    TryAgainError,
)

from . import redis_scripts
from .base import EngineOutcomeUnknown, EngineUnavailable
from .redis import RedisEngine
from .redis_cluster_pubsub import ShardedPubSub
from .redis_connection import fenced_connection_class, server_run_id
from .redis_pubsub import PubSubLike

__all__ = ["RedisClusterEngine", "parse_cluster_url"]

SCHEME = "redis+cluster"
_HOST_PORT = re.compile(r"^(?:\[([0-9a-fA-F:.]+)\]|([\w.-]+)):(\d{1,5})$")
#: Redirections followed by one publish before giving up (a slot moving twice meanwhile).
_REDIRECTS = 5


def parse_cluster_url(url: str) -> list[tuple[str, int]]:
    """``redis+cluster://H:P[,H:P...]`` to its seed nodes; ValueError naming the problem."""
    parts = urlsplit(url)
    if parts.scheme != SCHEME:
        raise ValueError(f"redis cluster engine: {url!r} does not start with {SCHEME}://")
    if parts.path not in ("", "/") or parts.query or parts.fragment or "@" in parts.netloc:
        raise ValueError(
            f"redis cluster engine: {url!r}: only {SCHEME}://HOST:PORT[,HOST:PORT...] "
            "(no database, path, options or credentials)"
        )
    seeds: list[tuple[str, int]] = []
    for item in parts.netloc.split(","):
        match = _HOST_PORT.match(item.strip())
        if match is None or not 0 < int(match[3]) < 65536:
            raise ValueError(f"redis cluster engine: {item!r} in {url!r} is not HOST:PORT")
        seeds.append((match[1] or match[2], int(match[3])))
    return seeds


def _no_pool(**_options: Any) -> aioredis.ConnectionPool:
    raise TypeError("the redis cluster engine has no single-server pool")


class RedisClusterEngine(RedisEngine):
    """History, presence and sharded fan-out on a Redis Cluster; options as
    :class:`.RedisEngine` (``max_connections`` bounds the command connections per master)."""

    name = SCHEME
    publish_command = "SPUBLISH"

    def __init__(self, url: str, prefix: str = "pulsewire", **options: Any) -> None:
        self.seeds = parse_cluster_url(url)
        if "{" in prefix or "}" in prefix:
            raise ValueError(
                f"redis cluster engine: the prefix {prefix!r} must not contain braces "
                "(each channel's name is the hash tag of its keys)"
            )
        # No single-server pool: _make_client builds the cluster client instead.
        super().__init__(url, prefix, pool_factory=_no_pool, **options)
        self._ch_open = self._ch_prefix + "{"
        self._ch_open_b = self._ch_open.encode()
        self._refreshing: asyncio.Task[None] | None = None

    def _new_pubsub(
        self,
        *,
        command_timeout: float,
        ping_interval: float,
        backoff_min: float,
        backoff_max: float,
    ) -> PubSubLike:
        return ShardedPubSub(
            control=self._control,
            name_of=self._pubsub_name,
            command_timeout=command_timeout,
            ping_interval=ping_interval,
            backoff_min=backoff_min,
            backoff_max=backoff_max,
            on_message=self._dispatch,
            on_state=self._on_state,
        )

    def _pubsub_name(self, channel: str) -> str:
        # The channel as hash tag, as in the keys: the shard channel is in their slot.
        return f"{self._ch_prefix}{{{channel}}}"

    def _channel_of(self, name: bytes) -> str | None:
        if not (name.startswith(self._ch_open_b) and name.endswith(b"}")):
            return None
        return name[len(self._ch_open_b) : -1].decode()

    def _lua(self, source: str) -> str:
        return redis_scripts.sharded(source)

    def _make_client(self, name: str) -> RedisCluster:
        client = RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in self.seeds],
            max_connections=self._max_connections,
            socket_timeout=self._command_timeout,
            socket_connect_timeout=self._connect_timeout,
            socket_keepalive=True,
            # No retries: a failed call raises EngineUnavailable; after a connection error
            # RedisCluster refreshes its slot map before the next command.
            retry=Retry(NoBackoff(), 0),
            client_name=name,
            protocol=2,
        )
        # Fencing needs the run_id of the master each script runs on: connections that learn
        # it when they connect. RedisCluster takes no connection class, but builds every node
        # from these (public) connection kwargs: the seeds now, the others on discovery.
        fenced = cast(type[Connection], fenced_connection_class(Connection))
        client.nodes_manager.connection_kwargs["connection_class"] = fenced
        for node in client.nodes_manager.startup_nodes.values():
            node.connection_class = fenced
        return client

    async def close(self) -> None:
        if self._refreshing is not None:
            self._refreshing.cancel()
            self._refreshing = None
        await super().close()

    def _refresh_slots(self) -> None:
        """Re-read the slot map in the background (a master may have failed over)."""
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = asyncio.create_task(self._refresh())

    async def _refresh(self) -> None:
        try:
            await self._client().nodes_manager.initialize()
        except (RedisError, OSError, asyncio.TimeoutError, EngineUnavailable):
            pass  # the next failed publish tries again

    async def _send_once(self, *command: Any, fenced: bool = False) -> Any:
        """:meth:`.RedisEngine._send_once` on the master serving the command's slot (that of
        a script's first key, or of the shard channel of ``SPUBLISH``). Written by hand
        because RedisCluster cannot say whether a failed command was sent; error replies
        that mean "not run here" (MOVED, ASK, TRYAGAIN) are followed. ``fenced``: the run_id
        of the master that runs it is appended (each master is fenced on its own)."""
        route = command[3] if command[0] in ("EVAL", "EVALSHA") else command[1]
        client: RedisCluster = self._client()
        asking: ClusterNode | None = None
        for _ in range(_REDIRECTS):
            try:
                node = asking or client.get_node_from_key(route)
                if node is None:
                    raise EngineUnavailable(f"redis cluster: no master serves {route!r}")
                conn = node.acquire_connection()
            except RedisError as exc:
                raise EngineUnavailable(f"redis cluster: not sent: {exc}") from exc
            try:
                try:
                    if not conn.is_connected:
                        await cast(Any, conn).connect()
                except (RedisError, OSError, asyncio.TimeoutError) as exc:
                    self._refresh_slots()
                    raise EngineUnavailable(f"redis cluster: not sent: {exc}") from exc
                run_id = server_run_id(conn) if fenced else ""
                if fenced and not run_id:  # '' would make every script start a new epoch
                    raise EngineUnavailable("redis cluster: connection without its run_id")
                try:
                    # Both calls disconnect the connection when they fail or are cancelled.
                    sent = (*command, run_id) if fenced else command
                    commands = [("ASKING",), sent] if asking else [sent]
                    await conn.send_packed_command(conn.pack_commands(commands), False)
                    if asking is not None:
                        asking = None
                        await conn.read_response()
                    return await conn.read_response()
                except NoScriptError:
                    raise
                except MovedError as exc:
                    await client.nodes_manager.move_slot(exc)
                except AskError as exc:
                    asking = client.get_node(host=exc.host, port=exc.port)
                    if asking is None:
                        raise EngineUnavailable(f"redis cluster: refused: {exc}") from exc
                except TryAgainError:
                    await asyncio.sleep(0.05)
                except ResponseError as exc:
                    raise EngineUnavailable(f"redis cluster: refused: {exc}") from exc
                except (RedisError, OSError, asyncio.TimeoutError) as exc:
                    self._refresh_slots()
                    raise EngineOutcomeUnknown(f"redis cluster: sent, no answer: {exc}") from exc
            finally:
                node.release(conn)
        raise EngineUnavailable(f"redis cluster: more than {_REDIRECTS} redirections")
