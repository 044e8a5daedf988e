"""The in-memory engine: one process, nothing to run beside it (the default)."""

from __future__ import annotations

import collections
import hashlib
import secrets
import time
from dataclasses import dataclass, field, replace
from typing import Any

from ..types import ClientInfo, HistoryResult, Publication, PublishOptions, StreamPosition
from .base import Engine, IdempotencyKeysFull, PresenceAdd, PublishOnce

__all__ = ["MemoryEngine"]


@dataclass
class _Entry:
    info: ClientInfo
    expires_at: float
    node: str


@dataclass
class _Stream:
    epoch: str
    offset: int = 0
    items: collections.deque[Publication] = field(default_factory=collections.deque)
    expires_at: float = 0.0
    meta_expires_at: float = 0.0


class MemoryEngine(Engine):
    """History, presence and fan-out inside this process.

    Delivery is synchronous with publish, so offsets reach subscribers in order. Expiry is
    checked lazily on access (no timers per channel). Idempotency keys live in a map of at
    most ``max_idempotency_keys`` entries (~300 bytes each, whatever the key's length: 100,000
    keys are ~30 MiB); a keyed publish that finds it full of unexpired keys is refused with
    :class:`IdempotencyKeysFull`.
    """

    name = "memory"

    def __init__(self, clock: Any = time.monotonic, *, max_idempotency_keys: int = 100_000) -> None:
        super().__init__()
        if max_idempotency_keys < 1:
            raise ValueError("max_idempotency_keys must be at least 1")
        self._clock = clock
        self.max_idempotency_keys = max_idempotency_keys
        # digest of (channel, key) -> (expiry, first result), in insertion order, which is
        # expiry order as long as the window does not shrink (then expiry is also checked on
        # each hit).
        self._once: collections.OrderedDict[bytes, tuple[float, StreamPosition | None]] = (
            collections.OrderedDict()
        )
        self._streams: dict[str, _Stream] = {}
        self._presence: dict[str, dict[str, _Entry]] = {}
        self._left: dict[str, dict[str, float]] = {}  # tombstones: channel -> client -> expiry
        self._index: dict[str, dict[str, float]] = {}  # node -> channel -> expiry
        self._index_sweep_at = 1024
        self._subscribed: set[str] = set()

    async def subscribe(self, channel: str) -> None:
        self._subscribed.add(channel)

    async def unsubscribe(self, channel: str) -> None:
        self._subscribed.discard(channel)

    def _stream(self, channel: str, options: PublishOptions, create: bool) -> _Stream | None:
        now = self._clock()
        stream = self._streams.get(channel)
        if stream is not None:
            if stream.meta_expires_at and now >= stream.meta_expires_at:
                del self._streams[channel]
                stream = None
            elif stream.expires_at and now >= stream.expires_at:
                stream.items.clear()
        if stream is None and create:
            stream = self._streams[channel] = _Stream(epoch=secrets.token_hex(4))
        return stream

    async def publish(
        self, channel: str, publication: Publication, options: PublishOptions
    ) -> StreamPosition | None:
        position = None
        if options.history:
            stream = self._stream(channel, options, create=True)
            assert stream is not None
            prev = stream.offset
            stream.offset += 1
            publication = replace(publication, offset=stream.offset, prev=prev, epoch=stream.epoch)
            stream.items.append(publication)
            while len(stream.items) > options.history_size:
                stream.items.popleft()
            now = self._clock()
            stream.expires_at = now + options.history_ttl
            stream.meta_expires_at = now + max(options.history_meta_ttl, options.history_ttl)
            position = StreamPosition(stream.offset, stream.epoch)
        if channel in self._subscribed and self.handler is not None:
            self.handler.on_publication(channel, publication)
        return position

    async def publish_once(
        self,
        channel: str,
        publication: Publication,
        options: PublishOptions,
        key: str,
        window: float,
    ) -> PublishOnce:
        now = self._clock()
        once = self._once
        while once and next(iter(once.values()))[0] <= now:
            once.popitem(last=False)
        # A fixed-size digest: the map's memory does not depend on key or channel length.
        digest = hashlib.blake2b(channel.encode() + b"\0" + key.encode(), digest_size=16).digest()
        seen = once.get(digest)
        if seen is not None and seen[0] > now:
            return PublishOnce(seen[1], duplicate=True)
        if seen is None and len(once) >= self.max_idempotency_keys:
            raise IdempotencyKeysFull(
                f"{len(once)} idempotency keys within the window: the most this engine keeps"
            )
        # publish() never suspends here: nothing can slip in between the check and the write.
        position = await self.publish(channel, publication, options)
        once.pop(digest, None)
        once[digest] = (now + window, position)
        return PublishOnce(position, duplicate=False)

    async def publish_join(self, channel: str, info: ClientInfo, node: str = "") -> None:
        if channel in self._subscribed and self.handler is not None:
            self.handler.on_join(channel, info, node)

    async def publish_leave(self, channel: str, info: ClientInfo) -> None:
        if channel in self._subscribed and self.handler is not None:
            self.handler.on_leave(channel, info)

    async def publish_control(self, message: dict[str, Any]) -> None:
        if self.handler is not None:
            self.handler.on_control(message)

    async def history(
        self,
        channel: str,
        *,
        since: StreamPosition | None = None,
        limit: int | None = None,
        reverse: bool = False,
        options: PublishOptions,
    ) -> HistoryResult:
        stream = self._stream(channel, options, create=options.history)
        if stream is None:
            return HistoryResult([], StreamPosition(0, ""))
        items = list(stream.items)
        if since is not None:
            items = [p for p in items if p.offset > since.offset]
        if reverse:
            items.reverse()
        if limit is not None and limit >= 0:
            items = items[:limit]
        return HistoryResult(items, StreamPosition(stream.offset, stream.epoch))

    async def remove_history(self, channel: str) -> None:
        stream = self._streams.get(channel)
        if stream is not None:
            stream.items.clear()

    async def add_presence(
        self, channel: str, info: ClientInfo, ttl: float, node: str = ""
    ) -> PresenceAdd:
        now = self._clock()
        entries = self._presence.setdefault(channel, {})
        outcome = PresenceAdd.REFRESHED if info.client in entries else PresenceAdd.CREATED
        left = self._left.get(channel)
        if left is not None:
            if outcome is PresenceAdd.CREATED and left.pop(info.client, 0.0) > now:
                outcome = PresenceAdd.RESTORED
            if not left:
                del self._left[channel]
        entries[info.client] = _Entry(info, now + ttl, node)
        if node:
            index = self._index.setdefault(node, {})
            index[channel] = max(index.get(channel, 0.0), now + ttl)
            if len(index) > self._index_sweep_at:  # channels come and go: forget stale ones
                self._index[node] = index = {c: e for c, e in index.items() if e > now}
                self._index_sweep_at = max(1024, 2 * len(index))
        return outcome

    async def remove_presence(self, channel: str, client_id: str) -> bool:
        entries = self._presence.get(channel)
        removed = entries is not None and entries.pop(client_id, None) is not None
        if entries is not None and not entries:
            del self._presence[channel]
        left = self._left.get(channel)
        tombstone = left is not None and left.pop(client_id, None) is not None
        if left is not None and not left:
            del self._left[channel]
        return removed or not tombstone

    async def remove_node_presence(
        self, channel: str, node: str, ttl: float, *, leave: bool
    ) -> list[ClientInfo]:
        entries = self._presence.get(channel)
        if not entries:
            return []
        now = self._clock()
        left = self._left.setdefault(channel, {})
        for client, expires_at in list(left.items()):
            if expires_at <= now:
                del left[client]
        removed = [entry.info for entry in entries.values() if entry.node == node]
        for info in removed:
            del entries[info.client]
            left[info.client] = now + ttl
        if not entries:
            del self._presence[channel]
        if not left:
            del self._left[channel]
        if leave:
            for info in removed:
                await self.publish_leave(channel, info)
        return removed

    async def node_presence_channels(self, node: str) -> list[str]:
        index = self._index.get(node)
        if index is None:
            return []
        now = self._clock()
        live = {channel: exp for channel, exp in index.items() if exp > now}
        if live:
            self._index[node] = live
        else:
            del self._index[node]
        return list(live)

    async def presence(self, channel: str) -> dict[str, ClientInfo]:
        entries = self._presence.get(channel)
        if not entries:
            return {}
        now = self._clock()
        expired = [cid for cid, entry in entries.items() if entry.expires_at <= now]
        for cid in expired:
            del entries[cid]
        return {cid: entry.info for cid, entry in entries.items()}
