"""Connections of the Redis engines: pools that know which Redis server they talk to.

Fencing needs the ``run_id`` of the server that runs each history script: it is new every
time a Redis process starts, and a replica promoted by a failover has its own. A channel's
meta hash records the run_id that last wrote it; the scripts start a new epoch when the
server running them has another one (see :mod:`.redis_scripts`). Each connection learns
the run_id once, with ``INFO server`` right after connecting (a TCP connection reaches one
server process for its whole life), so the publish path pays nothing for it: reading INFO
inside every script instead halved Redis's script throughput when measured.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, cast

import redis.asyncio as aioredis
from redis.asyncio.connection import AbstractConnection, Connection, parse_url

__all__ = [
    "PoolFactory",
    "fenced_connection_class",
    "get_connection",
    "parse_run_id",
    "server_run_id",
    "url_pool_factory",
]

#: Builds an engine's command pool from the options the engine sets (timeouts, retry,
#: client name, protocol, ``max_connections`` and ``timeout`` for a blocking pool). The
#: pool's connection class must come from :func:`fenced_connection_class`.
PoolFactory = Callable[..., aioredis.ConnectionPool]


def parse_run_id(info: Any) -> str:
    """The ``run_id`` in an ``INFO server`` reply (bytes or str); '' when there is none."""
    text = info.decode() if isinstance(info, bytes) else str(info)
    for line in text.splitlines():
        if line.startswith("run_id:"):
            return line[len("run_id:") :].strip()
    return ""


class _RunIdMixin(AbstractConnection):
    """Reads the server's run_id on every (re)connection, before the connection is used."""

    server_run_id: str = ""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # redis-py runs connect callbacks after the handshake (AUTH, SELECT...) of every
        # connection, the first one and each reconnection.
        register: Any = self.register_connect_callback  # untyped in redis-py
        register(self._learn_run_id)

    async def _learn_run_id(self, _conn: AbstractConnection) -> None:
        self.server_run_id = ""
        try:
            await self.send_command("INFO", "server", check_health=False)
            run_id = parse_run_id(await self.read_response())
        except BaseException:
            await self.disconnect(nowait=True)
            raise
        if not run_id:
            await self.disconnect(nowait=True)
            raise aioredis.ConnectionError("redis: INFO server has no run_id")
        self.server_run_id = run_id


_FENCED: dict[type[AbstractConnection], type[AbstractConnection]] = {}


def fenced_connection_class(base: type[AbstractConnection]) -> type[AbstractConnection]:
    """``base`` (plain, TLS, Unix socket, Sentinel-managed...) that also learns the run_id of
    the server on every connection (:func:`server_run_id`)."""
    cls = _FENCED.get(base)
    if cls is None:
        cls = _FENCED[base] = cast(
            type[AbstractConnection], type(f"Fenced{base.__name__}", (_RunIdMixin, base), {})
        )
    return cls


def server_run_id(conn: AbstractConnection) -> str:
    """The run_id of the server ``conn`` is connected to ('' for a connection class not made
    by :func:`fenced_connection_class`)."""
    return conn.server_run_id if isinstance(conn, _RunIdMixin) else ""


def url_pool_factory(url: str) -> PoolFactory:
    """A factory of blocking pools to the one server of ``url`` (``redis://``, ``rediss://``,
    ``unix://``): a burst of calls waits for a connection instead of opening hundreds."""
    url_options: dict[str, Any] = dict(parse_url(url))
    base = url_options.pop("connection_class", Connection)

    def create(**options: Any) -> aioredis.ConnectionPool:
        return aioredis.BlockingConnectionPool(
            connection_class=fenced_connection_class(base), **{**options, **url_options}
        )

    return create


_NAMED_GET: dict[type, bool] = {}


async def get_connection(pool: aioredis.ConnectionPool) -> AbstractConnection:
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
