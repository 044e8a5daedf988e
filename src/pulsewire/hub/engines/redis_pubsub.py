"""The Redis engine's pub/sub connection: one dedicated connection per engine.

SUBSCRIBE/UNSUBSCRIBE calls made in the same loop tick go out as one batch, followed by a
``PING`` used as a barrier: replies come in order, so its ``pong`` proves the batch was
applied and :meth:`RedisPubSub.subscribe` returns only then. A reader task dispatches the
messages, pings an idle connection, reconnects with exponential backoff and jitter,
resubscribes and only then reports the connection available again.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

import redis.asyncio as aioredis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import RedisError

from .base import EngineUnavailable

__all__ = ["REDIS_ERRORS", "PubSubLike", "RedisPubSub", "unavailable"]

logger = logging.getLogger(__name__)

#: What a failed Redis call raises (and what the engine turns into EngineUnavailable).
REDIS_ERRORS = (RedisError, OSError, asyncio.TimeoutError, EngineUnavailable)


@contextlib.contextmanager
def unavailable() -> Iterator[None]:
    """Turn connection-level failures into EngineUnavailable."""
    try:
        yield
    except EngineUnavailable:
        raise
    except (RedisError, OSError, asyncio.TimeoutError) as exc:
        raise EngineUnavailable(f"redis: {exc}") from exc


class PubSubLike(Protocol):
    """What the Redis engine needs from its pub/sub side (one server, or a Cluster's shards)."""

    wanted: set[str]

    @property
    def available(self) -> bool: ...

    async def start(self, client: Any, name: str) -> None: ...

    async def close(self) -> None: ...

    async def reconnect(self) -> None: ...

    async def subscribe(self, channel: str) -> None: ...

    async def unsubscribe(self, channel: str) -> None: ...


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


class RedisPubSub:
    """The pub/sub connection: wanted channels (``{ch_prefix}<channel>``) and ``control``.

    ``on_message(name, data)`` gets every message; ``on_state(available)`` is called when
    the connection is lost, and when it is back with every wanted channel subscribed again
    (not by :meth:`start` or :meth:`close`).
    """

    def __init__(
        self,
        *,
        control: str,
        ch_prefix: str,
        command_timeout: float,
        ping_interval: float,
        backoff_min: float,
        backoff_max: float,
        on_message: Callable[[bytes, bytes], None],
        on_state: Callable[[bool], None],
    ) -> None:
        self._control = control
        self._ch_prefix = ch_prefix
        self._command_timeout = command_timeout
        self._ping_interval = ping_interval
        self._backoff_min = backoff_min
        self._backoff_max = backoff_max
        self._on_message = on_message
        self._on_state = on_state
        self._pool: aioredis.ConnectionPool | None = None
        self._session: _Session | None = None
        self._available = False
        self._reader: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        #: Channels this node wants (delivery stops at once when one is dropped).
        self.wanted: set[str] = set()
        self._dirty: set[str] = set()  # channels whose subscription changed since the flush
        self._sub_waiters: list[asyncio.Future[None]] = []
        self._flush_scheduled = False

    def _name(self, channel: str) -> str:
        return self._ch_prefix + channel

    @property
    def available(self) -> bool:
        """Connected and every wanted channel subscribed."""
        return self._available

    async def start(self, client: aioredis.Redis, name: str) -> None:
        """Connect (with ``client``'s settings), subscribe, and start the reader task
        (``name`` names it); raises when the connection or the subscriptions fail (call
        :meth:`close` then)."""
        self._pool = client.connection_pool
        session = await self._open_session()
        await asyncio.wait_for(self._serve(session, until_synced=True), self._command_timeout)
        self._reader = asyncio.create_task(self._run(session), name=f"redis-engine-{name}")

    async def close(self) -> None:
        """Stop the reader, fail pending subscribes, close the connection."""
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

    async def reconnect(self) -> None:
        """Close the connection: the reader reconnects (with its backoff) and resubscribes,
        reporting the connection lost, then back."""
        session = self._session
        if session is not None:
            with contextlib.suppress(*REDIS_ERRORS):
                await session.conn.disconnect(nowait=True)

    async def _open_session(self) -> _Session:
        """Connect the pub/sub connection and (re)subscribe to every wanted channel."""
        pool = self._pool
        assert pool is not None
        # RESP2 whatever the URL says: pub/sub messages are then plain replies, not pushes.
        conn: AbstractConnection = pool.connection_class(
            **{**pool.connection_kwargs, "protocol": 2}
        )
        try:
            await cast(Any, conn).connect()
            session = _Session(conn)
            names = [self._control, *(self._name(c) for c in self.wanted)]
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
        with contextlib.suppress(*REDIS_ERRORS):
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
            except REDIS_ERRORS as exc:
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
                    self._on_message(response[1], response[2])
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
        try:
            self._on_state(available)
        except Exception:
            logger.exception("redis engine: on_engine_state handler failed")

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
        subs = [self._name(c) for c in dirty if c in self.wanted]
        unsubs = [self._name(c) for c in dirty if c not in self.wanted]
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
        except REDIS_ERRORS as exc:
            barrier.fail(f"redis: {exc}")

    async def subscribe(self, channel: str) -> None:
        """Subscribe; returns once Redis applied it. On failure (EngineUnavailable) the
        channel stays wanted and is subscribed on reconnection: unsubscribe to drop it."""
        self.wanted.add(channel)
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
        if channel in self.wanted:
            self.wanted.discard(channel)
            self._dirty.add(channel)
            self._schedule_flush()
