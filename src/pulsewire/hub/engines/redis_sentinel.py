"""The Redis engine on a master found through Redis Sentinel.

``redis+sentinel://[:PASSWORD@]HOST:PORT[,HOST:PORT...]/MASTER_NAME[/DB]`` with the optional
query parameters ``password`` (the master's) and ``sentinel_password``. It is the
:class:`~.redis.RedisEngine` on a redis-py :class:`SentinelConnectionPool`: a connection that
is (re)made asks the sentinels for the current master, so after a failover the commands and
the pub/sub connection reach the promoted replica, never the dead address again. While the
sentinels name no usable master (it is down and not yet replaced) calls fail fast with
:class:`~.base.EngineUnavailable`. Publications the old master acknowledged but did not
replicate are caught by the fencing of :mod:`.redis_scripts` (a new epoch per channel).
"""

from __future__ import annotations

import contextlib
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

from .base import EngineUnavailable
from .redis import RedisEngine
from .redis_connection import fenced_connection_class
from .redis_pubsub import REDIS_ERRORS

__all__ = ["SCHEME", "RedisSentinelEngine", "SentinelURL", "parse_sentinel_url"]

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


class _BlockingSentinelPool(SentinelConnectionPool, aioredis.BlockingConnectionPool):
    """A Sentinel pool that waits for a free connection when all are in use, like the
    plain engine's (redis-py has the two behaviours only in separate classes)."""


class RedisSentinelEngine(RedisEngine):
    """:class:`~.redis.RedisEngine` on the master that Redis Sentinel names (see the module
    doc); the keyword options are the Redis engine's. ``backoff_max`` defaults to 0.5 s
    (2 s for one server): each pub/sub reconnection attempt asks the sentinels, which answer
    the new master as soon as it is promoted, so retrying often shortens the time a node
    spends without fan-out after a failover."""

    name = "redis+sentinel"

    def __init__(
        self, url: str, prefix: str = "pulsewire", *, backoff_max: float = 0.5, **options: Any
    ) -> None:
        self.sentinel_url = parse_sentinel_url(url)
        self._sentinel: Sentinel | None = None
        super().__init__(
            url, prefix, pool_factory=self._create_pool, backoff_max=backoff_max, **options
        )

    async def start(self) -> None:
        try:
            await super().start()
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
            connection_class=fenced_connection_class(SentinelManagedConnection),
            db=config.db,
            password=config.password,
            **options,
        )
        return pool

    async def close(self) -> None:
        await super().close()
        sentinel, self._sentinel = self._sentinel, None
        if sentinel is not None:
            with contextlib.suppress(*REDIS_ERRORS):
                await sentinel.aclose()
