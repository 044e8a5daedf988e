"""The Redis engine on a master found through Redis Sentinel.

``redis+sentinel://[:PASSWORD@]HOST:PORT[,HOST:PORT...]/MASTER_NAME[/DB]`` with the optional
query parameters ``password`` (the master's) and ``sentinel_password``. It is the
:class:`~.redis.RedisEngine` on a redis-py :class:`SentinelConnectionPool`: a connection that
is (re)made asks the sentinels for the current master, so after a failover the commands and
the pub/sub connection reach the promoted replica, never the dead address again. While the
sentinels name no usable master (it is down and not yet replaced) calls fail fast with
:class:`~.base.EngineUnavailable`. A master that stays up while demoted (a planned failover,
a partition healing) would keep the connections already open to it: the engine listens to
the sentinels' ``+switch-master`` announcements and then drops every connection.
Publications the old master acknowledged but did not replicate are caught by the fencing of
:mod:`.redis_scripts` (a new epoch per channel).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import (
    MasterNotFoundError,
    Sentinel,
    SentinelConnectionPool,
    SentinelManagedConnection,
)
from redis.backoff import NoBackoff
from redis.exceptions import ReadOnlyError

from .base import EngineUnavailable
from .redis import RedisEngine
from .redis_connection import fenced_connection_class
from .redis_pubsub import REDIS_ERRORS

__all__ = [
    "SCHEME",
    "RedisSentinelEngine",
    "SentinelConnection",
    "SentinelURL",
    "parse_sentinel_url",
]

logger = logging.getLogger(__name__)

SCHEME = "redis+sentinel://"
DEFAULT_SENTINEL_PORT = 26379
_QUERY = ("password", "sentinel_password")
_WHAT = "redis+sentinel engine URL"  # errors do not echo the URL: it may hold passwords


@dataclass(frozen=True)
class SentinelURL:
    """What a ``redis+sentinel://`` URL says."""

    sentinels: tuple[tuple[str, int], ...]
    master: str
    db: int = 0
    password: str | None = None
    sentinel_password: str | None = None


def _host_port(item: str) -> tuple[str, int]:
    """``HOST``, ``HOST:PORT`` or ``[IPV6]:PORT`` (the port defaults to Sentinel's 26379)."""
    if item.startswith("["):
        host, _, rest = item[1:].partition("]")
        port_text = rest.removeprefix(":")
        if rest and not rest.startswith(":"):
            port_text = rest
    else:
        host, _, port_text = item.partition(":")
    if not host:
        raise ValueError(f"{_WHAT}: empty sentinel host in {item!r}")
    if not port_text:
        return host, DEFAULT_SENTINEL_PORT
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"{_WHAT}: bad sentinel port {port_text!r} (1-65535)")
    return host, int(port_text)


def parse_sentinel_url(url: str) -> SentinelURL:
    """Parse ``redis+sentinel://...``; ValueError naming the problem (no hosts, no master
    name, a bad port or database, an unknown query parameter)."""
    if not url.startswith(SCHEME):
        raise ValueError(f"{_WHAT}: a sentinel URL starts with {SCHEME}")
    parts = urlsplit(url)
    userinfo, _, hosts = parts.netloc.rpartition("@")
    password = (unquote(userinfo.partition(":")[2]) or None) if userinfo else None
    items = [item for item in hosts.split(",") if item]
    if not items:
        raise ValueError(f"{_WHAT}: no sentinel HOST:PORT")
    sentinels = tuple(_host_port(item) for item in items)
    path = [unquote(segment) for segment in parts.path.split("/")[1:]]
    if not path or not path[0]:
        raise ValueError(f"{_WHAT}: no master name (redis+sentinel://H:P/MASTER_NAME)")
    if len(path) > 2 or (len(path) == 2 and not path[1].isdigit()):
        raise ValueError(f"{_WHAT}: the database after the master name is a number")
    db = int(path[1]) if len(path) == 2 else 0
    query = parse_qs(parts.query, keep_blank_values=True)
    unknown = sorted(set(query) - set(_QUERY))
    if unknown:
        raise ValueError(
            f"{_WHAT}: unknown parameter {unknown[0]!r} (use password or sentinel_password)"
        )
    if "password" in query:
        password = query["password"][-1] or None
    sentinel_password = query.get("sentinel_password", [""])[-1] or None
    return SentinelURL(sentinels, path[0], db, password, sentinel_password)


class SentinelConnection(SentinelManagedConnection):
    """A connection to the master Sentinel names, on which a ``READONLY`` error reply stays
    an error reply.

    redis-py's :class:`SentinelManagedConnection` drops the connection on ``READONLY`` (the
    master it reached was demoted: the next connection asks the sentinels again) and raises
    ``ConnectionError``, which the engine must read as "sent, no answer" (114, the outcome
    unknown). But ``READONLY`` is a refusal: the server ran nothing. This class drops the
    connection the same way and raises the :class:`ReadOnlyError` itself, which the engine
    reads as "refused, not published" (108), so a publisher knows it can retry at once."""

    async def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            # Past SentinelManagedConnection's own read_response, to the plain connection's.
            return await super(SentinelManagedConnection, self).read_response(*args, **kwargs)
        except ReadOnlyError:
            if self.connection_pool.is_master:
                await self.disconnect()
            raise


class _BlockingSentinelPool(SentinelConnectionPool, aioredis.BlockingConnectionPool):
    """A Sentinel pool that waits for a free connection when all are in use, like the
    plain engine's (redis-py has the two behaviours only in separate classes)."""


#: Where each sentinel announces a failover: ``<master name> <old ip> <old port> <new ip>
#: <new port>``.
SWITCH_CHANNEL = "+switch-master"
#: How long to wait, after an announcement, for the sentinels asked first to agree with it.
SWITCH_AGREE_TIMEOUT = 5.0


class _SwitchWatcher:
    """Listens to one sentinel at a time (the next one when it fails or stays silent) for
    ``+switch-master`` announcements of our master, and awaits ``on_switch`` for each.

    Why: a master demoted by a planned failover (or one that comes back after a partition)
    stays up and keeps taking writes on the connections already open to it until Sentinel
    reconfigures it, seconds later; those writes are then lost. The announcement moves the
    engine to the new master at once. Written by hand because redis-py's Sentinel support
    only asks the sentinels when a connection is made.
    """

    def __init__(
        self,
        config: SentinelURL,
        *,
        connect_timeout: float,
        ping_interval: float,
        on_switch: Callable[[str], Awaitable[None]],
    ) -> None:
        self._config = config
        self._connect_timeout = connect_timeout
        self._ping_interval = ping_interval
        self._on_switch = on_switch
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"sentinel-watch-{self._config.master}")

    async def close(self) -> None:
        task, self._task = self._task, None
        self._closed = True
        # Cancelled again until done: redis-py's timeouts can turn a cancellation into a
        # TimeoutError, which _run takes for a failed sentinel (it then sees _closed).
        while task is not None and not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=0.1)

    async def _run(self) -> None:
        sentinels = self._config.sentinels
        for attempt in itertools.count():
            if self._closed:
                return
            host, port = sentinels[attempt % len(sentinels)]
            try:
                await self._listen(host, port)
            except REDIS_ERRORS as exc:
                logger.debug("redis+sentinel: sentinel %s:%s: %s", host, port, exc)
            except Exception:
                logger.exception("redis+sentinel: watching sentinel %s:%s failed", host, port)
            if attempt % len(sentinels) == len(sentinels) - 1:
                await asyncio.sleep(self._ping_interval)  # all tried: do not spin

    async def _listen(self, host: str, port: int) -> None:
        make_client: Any = aioredis.Redis  # untyped in redis-py
        client = make_client(
            host=host,
            port=port,
            password=self._config.sentinel_password,
            socket_connect_timeout=self._connect_timeout,
            socket_timeout=self._ping_interval * 2,
            retry=Retry(NoBackoff(), 0),
            protocol=2,
        )
        pubsub: Any = client.pubsub()
        try:
            await pubsub.subscribe(SWITCH_CHANNEL)
            awaiting_reply = False
            while True:
                message = await pubsub.get_message(timeout=self._ping_interval)
                if message is None:
                    if awaiting_reply:
                        raise EngineUnavailable("sentinel silent")
                    awaiting_reply = True
                    await pubsub.ping()
                    continue
                awaiting_reply = False
                if message["type"] != "message":
                    continue
                announcement = bytes(message["data"]).decode(errors="replace")
                name, _, addresses = announcement.partition(" ")
                if name == self._config.master:
                    await self._on_switch(addresses)
        finally:
            with contextlib.suppress(*REDIS_ERRORS):
                await pubsub.aclose()
            with contextlib.suppress(*REDIS_ERRORS):
                await client.aclose()


class RedisSentinelEngine(RedisEngine):
    """:class:`~.redis.RedisEngine` on the master that Redis Sentinel names (see the module
    doc); the keyword options are the Redis engine's. ``backoff_max`` defaults to 0.5 s
    (2 s for one server): each pub/sub reconnection attempt asks the sentinels, which answer
    the new master as soon as it is promoted, so retrying often shortens the time a node
    spends without fan-out after a failover."""

    name = "redis+sentinel"

    def __init__(
        self,
        url: str,
        prefix: str = "pulsewire",
        *,
        backoff_max: float = 0.5,
        connect_timeout: float = 1.0,
        ping_interval: float = 1.0,
        **options: Any,
    ) -> None:
        self.sentinel_url = parse_sentinel_url(url)
        self._sentinel: Sentinel | None = None
        self._watcher = _SwitchWatcher(
            self.sentinel_url,
            connect_timeout=connect_timeout,
            ping_interval=ping_interval,
            on_switch=self._switched,
        )
        super().__init__(
            url,
            prefix,
            pool_factory=self._create_pool,
            backoff_max=backoff_max,
            connect_timeout=connect_timeout,
            ping_interval=ping_interval,
            **options,
        )

    async def _switched(self, addresses: str) -> None:
        """A sentinel announced a new master (``old_ip old_port new_ip new_port``): once the
        sentinels asked first name it too (the others learn it within seconds; reconnecting
        earlier could land on the old master again), drop every connection."""
        logger.warning(
            "redis+sentinel: master %r moved (%s): reconnecting",
            self.sentinel_url.master,
            addresses,
        )
        parts = addresses.split()
        announced = (parts[2], parts[3]) if len(parts) == 4 else None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SWITCH_AGREE_TIMEOUT
        while self._sentinel is not None and announced is not None and loop.time() < deadline:
            try:
                host, port = await self._sentinel.discover_master(self.sentinel_url.master)
            except REDIS_ERRORS:
                host, port = None, None
            if (str(host), str(port)) == announced:
                break
            await asyncio.sleep(0.05)
        await self.reconnect()

    async def start(self) -> None:
        try:
            await super().start()
            self._watcher.start()
        except EngineUnavailable as exc:
            if not isinstance(exc.__cause__, MasterNotFoundError):
                raise
            # redis-py's message embeds the repr of every sentinel client: say it in a line.
            hosts = ",".join(f"{host}:{port}" for host, port in self.sentinel_url.sentinels)
            raise EngineUnavailable(
                f"redis+sentinel: no sentinel of {hosts} names a usable master "
                f"{self.sentinel_url.master!r} (sentinels unreachable, or the master is down)"
            ) from None

    def _create_pool(self, **options: Any) -> aioredis.ConnectionPool:
        config = self.sentinel_url
        # The sentinels are asked on every new connection: the same bounded timeouts, and no
        # retries (redis-py's default would back off for seconds per unreachable sentinel).
        make_sentinel: Any = Sentinel  # untyped in redis-py
        self._sentinel = make_sentinel(
            list(config.sentinels),
            sentinel_kwargs={
                "socket_timeout": options["socket_timeout"],
                "socket_connect_timeout": options["socket_connect_timeout"],
                "retry": Retry(NoBackoff(), 0),
                "password": config.sentinel_password,
                "protocol": 2,
            },
        )
        make_pool: Any = _BlockingSentinelPool  # untyped in redis-py
        pool: aioredis.ConnectionPool = make_pool(
            config.master,
            self._sentinel,
            connection_class=fenced_connection_class(SentinelConnection),
            db=config.db,
            password=config.password,
            **options,
        )
        return pool

    async def close(self) -> None:
        await self._watcher.close()
        await super().close()
        sentinel, self._sentinel = self._sentinel, None
        if sentinel is not None:
            with contextlib.suppress(*REDIS_ERRORS):
                await sentinel.aclose()
