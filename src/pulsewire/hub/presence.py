"""Presence of this node's subscribers: written, refreshed, forgotten.

A subscription to a channel with presence writes an entry in the engine, owned by this node's
instance (see :mod:`pulsewire.hub.node_watch`) and refreshed every
``presence_update_interval`` seconds until the subscription ends; then the entry is removed
and, with join/leave, a ``leave`` is published. A refresh that finds its entry was removed by
a dead-node cleanup means this node was declared dead: it rejoins under a new instance id and
publishes the join again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from .config import HubConfig
from .engines.base import Engine, EngineUnavailable, PresenceAdd
from .errors import ErrorCode, HubError
from .fanout import Fanout, Subscription
from .metrics import HubMetrics
from .node_watch import NodeWatch
from .types import ClientInfo

__all__ = ["PresenceKeeper"]

logger = logging.getLogger("pulsewire.hub")


class PresenceKeeper:
    """Writes, refreshes and removes the presence entries of the node's subscribers."""

    def __init__(
        self,
        config: HubConfig,
        engine: Engine,
        metrics: HubMetrics,
        fanout: Fanout,
        watch: NodeWatch,
        *,
        spawn: Callable[[Awaitable[Any]], None],
    ) -> None:
        self._config = config
        self._engine = engine
        self._metrics = metrics
        self._fanout = fanout
        self._watch = watch
        self._spawn = spawn
        self._forgetting = 0  # presence removals of local clients in progress
        self._forget_failed_at = -float("inf")  # time.monotonic() of the last failed one

    @property
    def clean(self) -> bool:
        """True when every removal of a local client's presence (and its leave) went through:
        none in progress, none failed within a presence ttl."""
        return (
            self._forgetting == 0
            and time.monotonic() - self._forget_failed_at > self._config.presence_ttl
        )

    async def add(self, channel: str, info: ClientInfo) -> None:
        """Write a subscriber's presence entry (owned by this instance); 108 on failure."""
        ttl = self._config.presence_ttl
        try:
            await self._engine.add_presence(channel, info, ttl, self._watch.instance)
        except EngineUnavailable:
            self._metrics.engine_errors.inc()
            raise HubError(ErrorCode.NOT_AVAILABLE, "engine unavailable, try again") from None

    async def publish_join(self, channel: str, info: ClientInfo) -> None:
        """Push ``join`` for a subscriber on every node (engine failures only counted)."""
        try:
            await self._engine.publish_join(channel, info, self._watch.instance)
        except EngineUnavailable:
            self._metrics.engine_errors.inc()

    async def forget(self, sub: Subscription) -> None:
        """A subscription ended: remove its presence entry and push its leave, as configured
        (engine failures only counted)."""
        options = sub.channel.options
        name = sub.channel.name
        self._forgetting += 1
        try:
            left = True
            if options.presence:
                # False: a dead-node cleanup removed the entry and pushed the leave already.
                left = await self._engine.remove_presence(name, sub.info.client)
            if options.join_leave and left:
                await self._engine.publish_leave(name, sub.info)
        except EngineUnavailable:
            self._metrics.engine_errors.inc()
            self._forget_failed_at = time.monotonic()
        finally:
            self._forgetting -= 1

    async def refresh_forever(self) -> None:
        """Rewrite every local subscriber's entry each ``presence_update_interval``."""
        ttl = self._config.presence_ttl
        fanout = self._fanout
        while True:
            await asyncio.sleep(self._config.presence_update_interval)
            failed = None  # a channel whose write failed: skip the rest of it this round
            for session, sub in fanout.all():
                name = sub.channel.name
                if name == failed or not sub.channel.options.presence:
                    continue
                if not fanout.is_current(session, sub):
                    continue
                try:
                    outcome = await self._engine.add_presence(
                        name, sub.info, ttl, self._watch.instance
                    )
                except EngineUnavailable:
                    self._metrics.engine_errors.inc()
                    failed = name
                    continue
                if not fanout.is_current(session, sub):
                    # It left while we wrote: don't let the refresh bring it back.
                    if fanout.subscription(session, name) is None:
                        self._spawn(self._remove_stray(name, sub.info.client))
                elif outcome is PresenceAdd.RESTORED:
                    # A cleanup removed it and pushed its leave: this node was declared
                    # dead (unless it is rejoining already: a tombstone of its old id).
                    # Rejoin first, so that this join (the refresh took the tombstone, so
                    # it is this one's to push) carries the new id.
                    if not self._watch.rejoining:
                        self._watch.start_rejoin("a dead-node cleanup (found on refresh)")
                    if sub.channel.options.join_leave:
                        await self.publish_join(name, sub.info)

    async def _remove_stray(self, channel: str, client: str) -> None:
        try:
            await self._engine.remove_presence(channel, client)
        except EngineUnavailable:
            self._metrics.engine_errors.inc()
