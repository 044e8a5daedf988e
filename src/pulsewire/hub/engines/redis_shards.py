"""Sharding over several independent Redis servers: one :class:`RedisEngine` per shard.

Each channel lives on exactly one shard (:func:`.sharding.shard_index`, jump consistent
hashing of its name): its publications, history, presence, idempotency keys and pub/sub
subscription all go to that shard's engine, so one shard's outage affects only its channels.
A node's presence index is kept by each shard for its own channels, and
:meth:`ShardedRedisEngine.node_presence_channels` merges the shards that answer.

Control messages must reach every node while any shard is up: they are published on every
shard, wrapped with a random id, and each node hands a message to the hub once (the first
copy to arrive; later copies within ``control_dedup_window`` seconds are dropped). When
two control messages are published one after the other by a node, the first copy of the
first arrives before the first copy of the second as long as every shard that was up carried
both (each shard's connection delivers in order).

Availability is reported per shard, through the contract's ``channels`` predicate of
:meth:`EngineHandler.on_engine_state`: only the channels of the shard that went away (or
came back) are concerned, and the hub fills only their gaps. :attr:`available` is True
while any shard is up (control messages still flow). A node starts while any shard answers;
the others are started in the background once they do.
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
import time
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

from ..types import ClientInfo, HistoryResult, Publication, PublishOptions, StreamPosition
from .base import ChannelFilter, Engine, EngineUnavailable, PresenceAdd, PublishOnce
from .redis import RedisEngine
from .sharding import parse_shards_url, shard_index

__all__ = ["ShardedRedisEngine"]

logger = logging.getLogger(__name__)

_CONTROL_ID = "shard_control"
_CONTROL_BODY = "m"


def _address(url: str) -> str:
    """``host:port`` of a Redis URL, without credentials."""
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port or 6379}"


class _SeenIds:
    """Ids seen in the last ``window`` seconds (insertion-ordered: oldest pruned first)."""

    def __init__(self, window: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._window = window
        self._clock = clock
        self._seen: dict[str, float] = {}

    def first(self, key: str) -> bool:
        """True the first time ``key`` is seen within the window."""
        now = self._clock()
        seen = self._seen
        while seen:
            oldest = next(iter(seen))
            if seen[oldest] > now - self._window:
                break
            del seen[oldest]
        if key in seen:
            return False
        seen[key] = now
        return True


class _ShardHandler:
    """What one shard's engine calls back: forwards to the sharded engine's handler, which
    is read at call time (it is bound before start, after this is built)."""

    def __init__(self, owner: ShardedRedisEngine, index: int) -> None:
        self._owner = owner
        self._index = index

    def on_publication(self, channel: str, publication: Publication) -> None:
        if (handler := self._owner.handler) is not None:
            handler.on_publication(channel, publication)

    def on_join(self, channel: str, info: ClientInfo, node: str = "") -> None:
        if (handler := self._owner.handler) is not None:
            handler.on_join(channel, info, node)

    def on_leave(self, channel: str, info: ClientInfo) -> None:
        if (handler := self._owner.handler) is not None:
            handler.on_leave(channel, info)

    def on_control(self, message: dict[str, Any]) -> None:
        self._owner.control_received(message)

    def on_engine_state(self, available: bool, channels: ChannelFilter | None = None) -> None:
        self._owner.shard_state(self._index, available)


class ShardedRedisEngine(Engine):
    """Channels spread over independent Redis servers (``redis+shards://H:P,H:P/DB``).

    ``urls`` are ``redis://`` URLs, one per shard, in placement order (appending one moves
    about ``1/n`` of the channels to it; reordering moves most). ``redis_options`` go to
    every shard's :class:`RedisEngine` (timeouts, backoff, pool size).
    """

    name = "redis+shards"

    def __init__(
        self,
        urls: Sequence[str],
        prefix: str = "pulsewire",
        *,
        control_dedup_window: float = 60.0,
        **redis_options: Any,
    ) -> None:
        super().__init__()
        if not urls:
            raise ValueError("a sharded engine needs at least one shard")
        self.prefix = prefix
        self.urls = list(urls)
        #: ``host:port`` of each shard, for logs and errors (the URLs may hold a password).
        self.addresses = [_address(url) for url in self.urls]
        self.shards = [RedisEngine(url, prefix, **redis_options) for url in self.urls]
        self._seen = _SeenIds(control_dedup_window)
        # The same backoff as the shards' own reconnection (RedisEngine's defaults).
        self._backoff_min = float(redis_options.get("backoff_min", 0.05))
        self._backoff_max = float(redis_options.get("backoff_max", 2.0))
        self._starting: set[asyncio.Task[None]] = set()

    @classmethod
    def from_url(cls, spec: str, prefix: str = "pulsewire", **options: Any) -> ShardedRedisEngine:
        """An engine for ``redis+shards://H:P[,H:P...][/DB]``; ValueError for a bad URL."""
        return cls(parse_shards_url(spec), prefix, **options)

    # -- placement -------------------------------------------------------------------------

    def shard_of(self, channel: str) -> int:
        """The index (in :attr:`urls`) of the shard holding ``channel``."""
        return shard_index(channel, len(self.shards))

    def _engine(self, channel: str) -> RedisEngine:
        return self.shards[self.shard_of(channel)]

    # -- life cycle ------------------------------------------------------------------------

    @property
    def available(self) -> bool:
        """True while any shard is up (control messages flow; that shard's channels work)."""
        return any(shard.available for shard in self.shards)

    async def start(self) -> None:
        """Start every shard. A shard that cannot be reached is retried in the background
        (with the shards' backoff) while the others serve: its channels fail with
        EngineUnavailable until it answers, then it is reported back. Raises
        EngineUnavailable only when no shard can be reached (nothing is left running)."""
        if not self.node_id:
            self.node_id = secrets.token_hex(6)
        for index, shard in enumerate(self.shards):
            shard.bind(_ShardHandler(self, index), self.node_id)
        results = await asyncio.gather(
            *(shard.start() for shard in self.shards), return_exceptions=True
        )
        failed: list[tuple[int, EngineUnavailable]] = []
        for index, result in enumerate(results):
            if isinstance(result, EngineUnavailable):
                failed.append((index, result))
            elif isinstance(result, BaseException):
                await self.close()
                raise result
        if len(failed) == len(self.shards):
            await self.close()
            index, error = failed[0]
            raise EngineUnavailable(f"no shard can be reached: {self.addresses[index]}: {error}")
        for index, error in failed:
            logger.warning(
                "redis shard %s cannot be reached, retrying: %s", self.addresses[index], error
            )
            task = asyncio.create_task(self._start_later(index))
            self._starting.add(task)
            task.add_done_callback(self._starting.discard)

    async def _start_later(self, index: int) -> None:
        """Retry starting shard ``index`` until it answers, then report it available (its
        engine subscribes the channels wanted meanwhile as it starts)."""
        backoff = self._backoff_min
        while True:
            await asyncio.sleep(random.uniform(backoff / 2, backoff))
            backoff = min(backoff * 2, self._backoff_max)
            try:
                await self.shards[index].start()
            except EngineUnavailable as exc:
                logger.debug("redis shard %s: still unreachable: %s", self.addresses[index], exc)
                continue
            self.shard_state(index, True)
            return

    async def close(self) -> None:
        starting, self._starting = self._starting, set()
        for task in starting:
            task.cancel()
        await asyncio.gather(*starting, return_exceptions=True)
        await asyncio.gather(*(shard.close() for shard in self.shards))

    def shard_state(self, index: int, available: bool) -> None:
        """Shard ``index`` was lost or is back (every channel of it subscribed again)."""
        handler = self.handler
        if handler is None:
            return
        count = len(self.shards)
        logger.log(
            logging.INFO if available else logging.WARNING,
            "redis shard %d (%s) is %s",
            index,
            self.addresses[index],
            "back" if available else "unavailable",
        )
        handler.on_engine_state(available, lambda channel: shard_index(channel, count) == index)

    # -- control ---------------------------------------------------------------------------

    def control_received(self, wrapped: dict[str, Any]) -> None:
        """A control message from one shard: handed to the hub the first time it is seen."""
        handler = self.handler
        ident, message = wrapped.get(_CONTROL_ID), wrapped.get(_CONTROL_BODY)
        if handler is None or not isinstance(ident, str) or not isinstance(message, dict):
            if handler is not None:
                logger.warning("redis shards: a control message without an id was dropped")
            return
        if self._seen.first(ident):
            handler.on_control(message)

    async def publish_control(self, message: dict[str, Any]) -> None:
        """Publish on every shard (each node gets it once); raises EngineUnavailable only
        when no shard took it."""
        wrapped = {_CONTROL_ID: secrets.token_hex(8), _CONTROL_BODY: message}
        results = await asyncio.gather(
            *(shard.publish_control(wrapped) for shard in self.shards), return_exceptions=True
        )
        failures = [r for r in results if isinstance(r, BaseException)]
        for failure in failures:
            if not isinstance(failure, EngineUnavailable):
                raise failure
        if len(failures) == len(results):
            raise EngineUnavailable(f"no shard took the control message: {failures[0]}")

    # -- fan-out and history: the channel's shard ------------------------------------------

    async def subscribe(self, channel: str) -> None:
        await self._engine(channel).subscribe(channel)

    async def unsubscribe(self, channel: str) -> None:
        await self._engine(channel).unsubscribe(channel)

    async def publish(
        self, channel: str, publication: Publication, options: PublishOptions
    ) -> StreamPosition | None:
        return await self._engine(channel).publish(channel, publication, options)

    async def publish_once(
        self,
        channel: str,
        publication: Publication,
        options: PublishOptions,
        key: str,
        window: float,
    ) -> PublishOnce:
        return await self._engine(channel).publish_once(channel, publication, options, key, window)

    async def publish_join(self, channel: str, info: ClientInfo, node: str = "") -> None:
        await self._engine(channel).publish_join(channel, info, node)

    async def publish_leave(self, channel: str, info: ClientInfo) -> None:
        await self._engine(channel).publish_leave(channel, info)

    async def history(
        self,
        channel: str,
        *,
        since: StreamPosition | None = None,
        limit: int | None = None,
        reverse: bool = False,
        options: PublishOptions,
    ) -> HistoryResult:
        return await self._engine(channel).history(
            channel, since=since, limit=limit, reverse=reverse, options=options
        )

    async def remove_history(self, channel: str) -> None:
        await self._engine(channel).remove_history(channel)

    # -- presence --------------------------------------------------------------------------

    async def add_presence(
        self, channel: str, info: ClientInfo, ttl: float, node: str = ""
    ) -> PresenceAdd:
        """Also indexes ``channel`` under ``node`` on the channel's shard."""
        return await self._engine(channel).add_presence(channel, info, ttl, node)

    async def remove_presence(self, channel: str, client_id: str) -> bool:
        return await self._engine(channel).remove_presence(channel, client_id)

    async def remove_node_presence(
        self, channel: str, node: str, ttl: float, *, leave: bool
    ) -> list[ClientInfo]:
        return await self._engine(channel).remove_node_presence(channel, node, ttl, leave=leave)

    async def node_presence_channels(self, node: str) -> list[str]:
        """The union of every shard's index that answers (a shard that is down holds only
        its own channels, which cannot be cleaned up before it is back anyway); raises
        EngineUnavailable when none answers."""
        results = await asyncio.gather(
            *(shard.node_presence_channels(node) for shard in self.shards),
            return_exceptions=True,
        )
        channels: list[str] = []
        failures: list[BaseException] = []
        for result in results:
            if isinstance(result, BaseException):
                if not isinstance(result, EngineUnavailable):
                    raise result
                failures.append(result)
            else:
                channels.extend(result)
        if len(failures) == len(results):
            raise EngineUnavailable(f"no shard answered: {failures[0]}")
        return channels

    async def presence(self, channel: str) -> dict[str, ClientInfo]:
        return await self._engine(channel).presence(channel)

    async def presence_stats(self, channel: str) -> tuple[int, int]:
        return await self._engine(channel).presence_stats(channel)
