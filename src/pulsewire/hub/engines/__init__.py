"""Engines: in-memory (default), Redis (one server, sharded, or through Sentinel) and NATS.
:func:`create_engine` picks one by URL."""

from __future__ import annotations

from ...extras import needs_extra
from .base import (
    Broker,
    Engine,
    EngineHandler,
    EngineOutcomeUnknown,
    EngineUnavailable,
    IdempotencyKeysFull,
    PresenceManager,
    PublishOnce,
)
from .memory import MemoryEngine

__all__ = [
    "Broker",
    "Engine",
    "EngineHandler",
    "EngineOutcomeUnknown",
    "EngineUnavailable",
    "IdempotencyKeysFull",
    "MemoryEngine",
    "PresenceManager",
    "PublishOnce",
    "create_engine",
]


def create_engine(spec: str, *, prefix: str = "pulsewire") -> Engine:
    """``memory``, ``redis://host:port/db``, ``redis+shards://host:port,host:port/db``,
    ``redis+sentinel://host:port,.../master/db``, ``redis+cluster://host:port[,host:port...]``,
    ``nats://host:port`` or a NATS cluster's ``nats://h1:p1,h2:p2,h3:p3?replicas=3`` to an
    engine instance; ValueError for a bad or unknown URL."""
    if spec in ("", "memory"):
        return MemoryEngine()
    if spec.startswith("redis+shards://"):
        with needs_extra("redis", "the sharded redis engine"):
            from .redis_shards import ShardedRedisEngine

        return ShardedRedisEngine.from_url(spec, prefix=prefix)
    if spec.startswith("redis+sentinel://"):
        with needs_extra("redis", "the redis+sentinel engine"):
            from .redis_sentinel import RedisSentinelEngine

        return RedisSentinelEngine(spec, prefix=prefix)
    if spec.startswith("redis+cluster://"):
        with needs_extra("redis", "the redis cluster engine"):
            from .redis_cluster import RedisClusterEngine

        return RedisClusterEngine(spec, prefix=prefix)
    if spec.startswith(("redis://", "rediss://", "unix://")):
        with needs_extra("redis", "the redis engine"):
            from .redis import RedisEngine

        return RedisEngine(spec, prefix=prefix)
    if spec.startswith(("nats://", "tls://")):
        with needs_extra("nats", "the nats engine"):
            from .nats import NatsEngine

        return NatsEngine(spec, prefix=prefix)
    raise ValueError(
        f"unknown engine {spec!r}: use memory, redis://host:port/db, "
        "redis+shards://host:port,host:port/db, redis+sentinel://host:port/master, "
        "redis+cluster://host:port[,host:port...] or nats://host:port[,host:port...]"
    )
