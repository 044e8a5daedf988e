"""Sharded pub/sub on a Redis Cluster: one connection per master owning a subscribed slot.

Each shard channel (``SSUBSCRIBE``) lives on the master that serves its hash slot, so a
publication (``SPUBLISH``) reaches that shard only instead of every node. This module keeps
one pub/sub connection per such master and places every wanted shard channel on its slot's
owner. A ``SSUBSCRIBE`` is sent with a ``PING`` barrier: replies come in order, so the
``pong`` (or an error reply before it, such as ``MOVED``) says whether it was applied.

Written by hand rather than with redis-py's ``RedisCluster.pubsub()``: that one reconnects
silently (publications missed meanwhile would go unnoticed: the hub must be told, to fill
the gap from history), makes the caller poll every node's connection in turn for messages,
and does not say when an ``SSUBSCRIBE`` is applied (the engine contract returns only then).

When a shard's connection drops (its master died, a replica is being promoted) or the server
sends ``sunsubscribe`` for a channel we still want (its slot migrated), the channels lost
are reported unavailable (``on_state(False, channels)``: only those, unless the control
channel is among them: then the whole engine), the slot map is refreshed, the channels are
subscribed again on their slots' current owners (with backoff while the cluster heals), and
only then are they reported available: the hub then fills their gaps from history.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, cast

from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import MovedError, ResponseError

from .base import ChannelFilter, EngineUnavailable
from .redis_pubsub import REDIS_ERRORS

__all__ = ["ShardedPubSub"]

logger = logging.getLogger(__name__)

#: The longest pause between two attempts to subscribe lost channels again (seconds).
_REPAIR_BACKOFF_MAX = 0.5


@dataclass(eq=False)
class _Barrier:
    """Resolved by the ``pong`` that follows a command; failed by an error reply before it."""

    future: asyncio.Future[None] | None
    error: ResponseError | None = None


@dataclass(eq=False)
class _Shard:
    """One pub/sub connection to one master (``node``: its ``host:port``)."""

    node: str
    conn: AbstractConnection
    barriers: collections.deque[_Barrier] = field(default_factory=collections.deque)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    #: SUNSUBSCRIBEs sent and not confirmed yet, per shard channel: a ``sunsubscribe``
    #: beyond these comes from the server (the slot moved away).
    unsubscribing: collections.Counter[bytes] = field(default_factory=collections.Counter)
    awaiting_reply: bool = False
    reader: asyncio.Task[None] | None = None


class ShardedPubSub:
    """Wanted channels (shard channel ``name_of(channel)``) and ``control``, each subscribed
    on the master serving its slot; same interface as :class:`.RedisPubSub`.

    ``on_message(name, data)`` gets every message; ``on_state(available, channels)`` is
    called when subscriptions are lost, and when every wanted channel is subscribed again
    (not by :meth:`start` or :meth:`close`): ``channels`` says which are concerned (None:
    all of them and the control messages). :attr:`available` is False only while the control
    channel's subscription is lost.
    """

    def __init__(
        self,
        *,
        control: str,
        name_of: Callable[[str], str],
        command_timeout: float,
        ping_interval: float,
        backoff_min: float,
        backoff_max: float,
        on_message: Callable[[bytes, bytes], None],
        on_state: Callable[[bool, ChannelFilter | None], None],
    ) -> None:
        self._control = control
        self._name_of = name_of
        self._command_timeout = command_timeout
        self._ping_interval = ping_interval
        self._backoff_min = backoff_min
        # A failover takes a few seconds and publishing resumes as soon as the slot map is
        # re-read: retry at least twice a second, so subscriptions do not lag far behind
        # (each retry is one CLUSTER SLOTS to one node and a few SSUBSCRIBEs).
        self._backoff_max = min(backoff_max, _REPAIR_BACKOFF_MAX)
        self._on_message = on_message
        self._on_state = on_state
        self._client: RedisCluster | None = None
        self._shards: dict[str, _Shard] = {}
        self._placed: dict[str, str] = {}  # shard channel -> node it is subscribed on
        self._available = False
        self._started = False
        self._repair: asyncio.Task[None] | None = None
        self._repair_again = False
        self._lost: set[str] = set()  # shard channels lost and not reported back yet
        self._lost_all = False  # the control channel was among them
        self._tasks: set[asyncio.Task[Any]] = set()
        #: Channels this node wants (delivery stops at once when one is dropped).
        self.wanted: set[str] = set()

    @property
    def available(self) -> bool:
        """The control channel is subscribed (some channels may be being moved)."""
        return self._available

    def _names(self) -> set[str]:
        return {self._control, *(self._name_of(c) for c in self.wanted)}

    async def start(self, client: RedisCluster, name: str) -> None:
        """Subscribe the control channel (and any wanted channel); raises when it fails (call
        :meth:`close` then). ``name`` is unused: the shards' connections carry the client's
        own CLIENT SETNAME."""
        self._client = client
        await asyncio.wait_for(self._place_all(), self._command_timeout)
        self._available = True
        self._started = True

    async def close(self) -> None:
        """Stop the readers and the repair, close every connection."""
        self._started = False
        self._available = False
        shards = list(self._shards.values())
        for shard in shards:  # its reader stops too, even if a cancel is lost (see _serve)
            await self._drop(shard, "engine closed")
        tasks = [t for t in (self._repair, *self._tasks) if t is not None]
        tasks += [s.reader for s in shards if s.reader is not None]
        self._repair = None
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._placed.clear()

    async def reconnect(self) -> None:
        """Close every connection: the channels are subscribed again on their slots'
        current owners, reported lost, then back."""
        lost: list[str] = []
        for shard in list(self._shards.values()):
            lost += await self._drop(shard, "reconnecting")
        self._start_repair(lost)

    # -- subscriptions ---------------------------------------------------------------------

    async def subscribe(self, channel: str) -> None:
        """Subscribe on the slot's owner; returns once it applied it. On failure
        (EngineUnavailable) the channel stays wanted and is placed by the repair."""
        self.wanted.add(channel)
        try:
            await asyncio.wait_for(self._place(self._name_of(channel)), self._command_timeout)
        except (asyncio.TimeoutError, *REDIS_ERRORS) as exc:
            logger.warning("redis cluster engine: cannot subscribe %r: %r", channel, exc)
            self._start_repair(())  # nothing was delivered for it: nothing to report
            raise EngineUnavailable(f"redis cluster: SSUBSCRIBE failed: {exc!r}") from exc

    async def unsubscribe(self, channel: str) -> None:
        """Stop delivering ``channel`` at once; the SUNSUBSCRIBE is sent in the background."""
        if channel not in self.wanted:
            return
        self.wanted.discard(channel)
        name = self._name_of(channel)
        shard = self._shards.get(self._placed.pop(name, ""))
        if shard is not None:
            shard.unsubscribing[name.encode()] += 1
            self._spawn(self._send_quietly(shard, ("SUNSUBSCRIBE", name)))

    async def _send_quietly(self, shard: _Shard, command: tuple[str, ...]) -> None:
        with contextlib.suppress(*REDIS_ERRORS):
            await self._send(shard, [command], _Barrier(None))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _cluster(self) -> RedisCluster:
        if self._client is None:
            raise EngineUnavailable("redis cluster engine is not started")
        return self._client

    async def _place(self, name: str) -> None:
        """SSUBSCRIBE ``name`` on its slot's owner (following one MOVED after refreshing
        the slot map); raises when it cannot."""
        client = self._cluster()
        for attempt in range(3):
            node = client.get_node_from_key(name)
            if node is None:
                raise EngineUnavailable(f"redis cluster: no master serves {name!r}")
            placed = self._placed.get(name)
            if placed == node.name and placed in self._shards:
                return
            if placed is not None and placed in self._shards:
                # Still subscribed on a former owner: leave it (it may be gone already).
                old = self._shards[placed]
                old.unsubscribing[name.encode()] += 1
                self._spawn(self._send_quietly(old, ("SUNSUBSCRIBE", name)))
            self._placed.pop(name, None)
            shard = await self._shard(node)
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            await self._send(shard, [("SSUBSCRIBE", name)], _Barrier(future))
            try:
                await future
            except MovedError:
                if attempt == 2:
                    raise
                await client.nodes_manager.initialize()
                continue
            if name not in self._names():  # unsubscribed meanwhile: undo
                shard.unsubscribing[name.encode()] += 1
                self._spawn(self._send_quietly(shard, ("SUNSUBSCRIBE", name)))
            elif self._shards.get(node.name) is shard:
                self._placed[name] = node.name
            return

    async def _place_all(self) -> None:
        names = self._names()
        await asyncio.gather(*(self._place(name) for name in names))
        # One connection per master that owns subscribed slots: drop the unused ones.
        used = set(self._placed.values())
        for shard in [s for s in self._shards.values() if s.node not in used and not s.barriers]:
            await self._drop(shard, "no subscription left on this master")

    # -- connections -----------------------------------------------------------------------

    async def _shard(self, node: ClusterNode) -> _Shard:
        """The connection to ``node`` (connected on first use)."""
        shard = self._shards.get(node.name)
        if shard is not None:
            return shard
        # RESP2 whatever the client says: pub/sub messages are then plain replies.
        conn: AbstractConnection = node.connection_class(
            **{**node.connection_kwargs, "protocol": 2}
        )
        try:
            await cast(Any, conn).connect()
        except BaseException:
            await conn.disconnect(nowait=True)
            raise
        shard = self._shards.get(node.name)
        if shard is not None:  # connected concurrently by another subscribe
            await conn.disconnect(nowait=True)
            return shard
        shard = self._shards[node.name] = _Shard(node.name, conn)
        shard.reader = asyncio.create_task(self._read(shard), name=f"redis-shard-{node.name}")
        return shard

    async def _drop(self, shard: _Shard, reason: str) -> list[str]:
        """Close ``shard``; returns the shard channels that were subscribed on it."""
        if self._shards.get(shard.node) is shard:
            del self._shards[shard.node]
        lost = [n for n, node in self._placed.items() if node == shard.node]
        for name in lost:
            del self._placed[name]
        while shard.barriers:
            future = shard.barriers.popleft().future
            if future is not None and not future.done():
                future.set_exception(EngineUnavailable(reason))
        if shard.reader is not None and shard.reader is not asyncio.current_task():
            shard.reader.cancel()
        with contextlib.suppress(*REDIS_ERRORS):
            await shard.conn.disconnect(nowait=True)
        return lost

    async def _send(
        self, shard: _Shard, commands: list[tuple[str, ...]], barrier: _Barrier
    ) -> None:
        """Send commands followed by the barrier's PING."""
        async with shard.lock:
            # Never let redis-py transparently reconnect a dropped pub/sub connection.
            if self._shards.get(shard.node) is not shard or not shard.conn.is_connected:
                raise EngineUnavailable(f"redis cluster: connection to {shard.node} lost")
            shard.barriers.append(barrier)
            packed = shard.conn.pack_commands([*commands, ("PING", "b")])
            await shard.conn.send_packed_command(packed, check_health=False)

    async def _read(self, shard: _Shard) -> None:
        """A shard's reader: dispatch messages, ping when idle; on failure drop the shard
        and repair."""
        try:
            await self._serve(shard)
            return  # dropped: closed, or no longer used
        except asyncio.CancelledError:
            raise
        except REDIS_ERRORS as exc:
            logger.warning("redis cluster engine: connection to %s lost: %s", shard.node, exc)
        except Exception:
            logger.exception("redis cluster engine: reader of %s failed", shard.node)
        lost = await self._drop(shard, f"redis cluster: connection to {shard.node} lost")
        if self._started:
            self._start_repair(lost)

    async def _serve(self, shard: _Shard) -> None:
        conn = shard.conn
        # Until the shard is dropped, not only until cancelled: redis-py turns a cancel that
        # lands as its read timeout expires into a timeout (None), losing the cancel.
        while self._shards.get(shard.node) is shard:
            try:
                response = await conn.read_response(timeout=self._ping_interval)
            except ResponseError as exc:
                # An error reply (MOVED...) to the command before the next barrier's PING.
                if shard.barriers:
                    shard.barriers[0].error = shard.barriers[0].error or exc
                continue
            if response is None:
                if shard.awaiting_reply:
                    raise EngineUnavailable("redis cluster: pub/sub connection silent")
                shard.awaiting_reply = True
                await self._send_ping(shard)
                continue
            shard.awaiting_reply = False
            if response == b"b":
                # PING's reply on a connection left without any subscription (every channel
                # of this master unsubscribed): a plain reply, not a pub/sub ``pong``.
                self._complete(shard)
                continue
            if not isinstance(response, list) or len(response) < 2:
                continue
            kind = response[0]
            if kind == b"smessage" and len(response) == 3:
                self._on_message(response[1], response[2])
            elif kind == b"sunsubscribe":
                self._unsubscribed(shard, response[1])
            elif kind == b"pong" and response[1] == b"b":
                self._complete(shard)

    @staticmethod
    def _complete(shard: _Shard) -> None:
        """The barrier PING of the oldest pending command was answered."""
        if not shard.barriers:
            return
        barrier = shard.barriers.popleft()
        if barrier.future is not None and not barrier.future.done():
            if barrier.error is not None:
                barrier.future.set_exception(barrier.error)
            else:
                barrier.future.set_result(None)

    async def _send_ping(self, shard: _Shard) -> None:
        async with shard.lock:
            await shard.conn.send_packed_command(
                shard.conn.pack_command("PING", "h"), check_health=False
            )

    def _unsubscribed(self, shard: _Shard, name: bytes) -> None:
        if shard.unsubscribing[name] > 0:
            shard.unsubscribing[name] -= 1
            if not shard.unsubscribing[name]:
                del shard.unsubscribing[name]
            return
        # Sent by the server: the slot moved to another master (migration, failover).
        text = name.decode()
        if self._placed.get(text) == shard.node:
            del self._placed[text]
        if text in self._names():
            logger.info("redis cluster engine: %s moved off %s", text, shard.node)
            self._start_repair([text])

    # -- repair ----------------------------------------------------------------------------

    def _start_repair(self, lost: Iterable[str]) -> None:
        """Report the subscriptions ``lost`` and (re)place every wanted channel in the
        background."""
        if not self._started:
            return
        self._report_lost(set(lost))
        if self._repair is not None and not self._repair.done():
            self._repair_again = True
            return
        self._repair = asyncio.create_task(self._run_repair(), name="redis-cluster-repair")

    async def _run_repair(self) -> None:
        backoff = self._backoff_min
        while True:
            self._repair_again = False
            await asyncio.sleep(random.uniform(backoff / 2, backoff))
            try:
                await self._cluster().nodes_manager.initialize()
                await asyncio.wait_for(self._place_all(), self._command_timeout)
            except asyncio.CancelledError:
                raise
            except (asyncio.TimeoutError, *REDIS_ERRORS) as exc:
                logger.debug("redis cluster engine: cannot resubscribe yet: %s", exc)
                backoff = min(backoff * 2, self._backoff_max)
                continue
            except Exception:
                logger.exception("redis cluster engine: resubscribing failed")
                backoff = min(backoff * 2, self._backoff_max)
                continue
            if not self._repair_again and self._names() <= self._placed.keys():
                self._repair = None
                self._report_back()
                return
            backoff = self._backoff_min

    def _channels(self, names: set[str]) -> ChannelFilter:
        channels = frozenset(c for c in self.wanted if self._name_of(c) in names)
        return channels.__contains__

    def _report_lost(self, names: set[str]) -> None:
        if self._lost_all or not names - self._lost:
            return
        if self._control in names:
            self._lost_all = True
            self._available = False
            self._state(False, None)
        else:
            self._state(False, self._channels(names - self._lost))
        self._lost |= names

    def _report_back(self) -> None:
        lost, self._lost = self._lost, set()
        if self._lost_all:
            self._lost_all = False
            self._available = True
            self._state(True, None)
        elif lost:
            self._state(True, self._channels(lost))

    def _state(self, available: bool, channels: ChannelFilter | None) -> None:
        logger.info(
            "redis cluster engine %s%s",
            "available" if available else "unavailable",
            "" if channels is None else " for the channels of one master",
        )
        try:
            self._on_state(available, channels)
        except Exception:
            logger.exception("redis cluster engine: on_engine_state handler failed")
