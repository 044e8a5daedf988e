"""Nodes watching each other through the engine: announcements, the dead, rejoining.

Each node announces itself every ``node_announce_interval`` seconds (its stats and its
*instance* id, one per process run); one silent for 3 intervals is declared dead (see
:class:`~pulsewire.hub.nodes.NodeTracker`), and the others remove its presence entries and
push ``leave`` for its clients, each exactly once (the engine's removal is atomic). In
channels without presence, the joins seen from other nodes are remembered to push their
leaves too. A node that learns it was declared dead (it was frozen or cut off) comes back
under a new instance id, puts its presence back and pushes ``join`` again for what was left.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import random
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from .channels import parse_channel
from .config import HubConfig
from .control import NodeAnnounce, NodeDead, NodeGone
from .engines.base import Engine, EngineUnavailable, PresenceAdd
from .errors import HubError
from .fanout import Fanout
from .metrics import HubMetrics
from .nodes import NodeTracker, Peer
from .types import ClientInfo

__all__ = [
    "CLEANUP_CONCURRENCY",
    "DEAD_AFTER_INTERVALS",
    "MEMBERS_TRACKED_PER_CHANNEL",
    "NodeWatch",
]

logger = logging.getLogger("pulsewire.hub")

T = TypeVar("T")
#: Remote clients remembered per channel with join/leave but no presence (joins seen since the
#: channel's first local subscriber), to push their leave if their node dies; oldest dropped.
MEMBERS_TRACKED_PER_CHANNEL = 10_000
#: Missed announcements (plus one interval) before a node counts as dead.
DEAD_AFTER_INTERVALS = 3
#: Channels whose presence a survivor cleans at once after a node died.
CLEANUP_CONCURRENCY = 8


class NodeWatch:
    """This node among the others: its instance id, its announcements, the peers it hears,
    and the cleanup after dead ones (see the module docstring).

    ``stats`` gives the announced counts (sessions, users, channels); ``clean`` whether the
    node's own presence removals all went through; ``push_event(channel, kind, info)`` pushes
    a leave to local subscribers; ``closing`` says the node is closing.
    """

    def __init__(
        self,
        config: HubConfig,
        engine: Engine,
        metrics: HubMetrics,
        fanout: Fanout,
        node_id: str,
        *,
        spawn: Callable[[Awaitable[Any]], None],
        stats: Callable[[], dict[str, int]],
        clean: Callable[[], bool],
        push_event: Callable[[str, str, ClientInfo], None],
        closing: Callable[[], bool],
    ) -> None:
        self._config = config
        self._engine = engine
        self._metrics = metrics
        self._fanout = fanout
        self.node_id = node_id
        self._spawn = spawn
        self._stats = stats
        self._clean = clean
        self._push_event = push_event
        self._closing = closing
        self.instance = secrets.token_hex(8)
        """This process run's id among the nodes; presence entries are owned by it. Renewed
        when the node learns it was declared dead (it was frozen or cut off too long)."""
        self._past_instances: set[str] = set()  # the ones before, bounded by rejoins
        self._nodes: dict[str, dict[str, Any]] = {}
        self._peers = NodeTracker(DEAD_AFTER_INTERVALS * config.node_announce_interval)
        # channel (with join/leave, without presence) -> client -> (instance, info)
        self._members: dict[str, dict[str, tuple[str, ClientInfo]]] = {}
        self._cleanups: set[asyncio.Task[None]] = set()
        self._node_task: asyncio.Task[None] | None = None
        self._watch_task: asyncio.Task[None] | None = None
        self._rejoin_task: asyncio.Task[None] | None = None
        # (channel, client) whose presence a rejoin restored but whose join is not out yet:
        # a rejoin cancelled by the next one (declared dead again) leaves them to it.
        self._joins_owed: set[tuple[str, str]] = set()

    def start(self) -> None:
        """Start announcing this node and watching the others."""
        self._node_task = asyncio.create_task(self._announce_forever())
        self._watch_task = asyncio.create_task(self._watch_nodes_forever())
        if self._peers.timeout >= self._config.presence_ttl:
            logger.warning(
                "%d x node_announce_interval (%.1f s) is not under presence_ttl (%.1f s): a"
                " dead node's presence may expire before it is detected, without leaves",
                DEAD_AFTER_INTERVALS,
                self._peers.timeout,
                self._config.presence_ttl,
            )

    def stop(self) -> None:
        """Stop announcing, watching, rejoining and cleaning up (the node is closing)."""
        for task in (self._node_task, self._watch_task, self._rejoin_task):
            if task is not None:
                task.cancel()
        for task in self._cleanups:
            task.cancel()

    @property
    def nodes(self) -> dict[str, dict[str, Any]]:
        """Live nodes by name: their last announced stats, ``instance`` and ``expires``."""
        now = time.time()
        self._nodes = {k: v for k, v in self._nodes.items() if v.get("expires", 0) > now}
        return dict(self._nodes)

    @property
    def rejoining(self) -> bool:
        """True while a rejoin (after this node was declared dead) is in progress."""
        return self._rejoin_task is not None and not self._rejoin_task.done()

    def engine_state(self, available: bool) -> None:
        """While the engine is down this node hears nobody: nobody is judged; once it is
        back, everybody counts as just heard from."""
        if available:
            self._peers.grace()
        else:
            self._peers.pause()

    def member_left(self, channel: str, client: str) -> None:
        """A leave was pushed for ``client``: forget it."""
        members = self._members.get(channel)
        if members is not None:
            members.pop(client, None)

    def channel_closed(self, channel: str) -> None:
        """The channel's last local subscriber left: its remote members are not needed."""
        self._members.pop(channel, None)

    async def _announce(self) -> None:
        info = {"name": self.node_id, **self._stats(), "engine": self._engine.name}
        await self._try_control(NodeAnnounce(self.node_id, self.instance, info))

    async def _announce_forever(self) -> None:
        while True:
            await self._announce()
            await asyncio.sleep(self._config.node_announce_interval)

    async def _try_control(self, control: NodeAnnounce | NodeDead | NodeGone) -> None:
        """Send a node message (from this node); engine failures only counted."""
        message = control.to_dict()
        message["from"] = self.node_id
        try:
            await self._engine.publish_control(message)
        except EngineUnavailable:
            self._metrics.engine_errors.inc()

    async def say_gone(self) -> None:
        """Tell the others this instance is leaving; ``clean`` when its own leaves and
        presence removals all went through (else they remove what is left)."""
        message = NodeGone(self.instance, self._clean())
        try:
            await asyncio.wait_for(self._try_control(message), 2)
        except asyncio.TimeoutError:
            pass

    async def _watch_nodes_forever(self) -> None:
        """Declare dead the peers silent for 3 intervals, at their deadline (not at a
        periodic check): a peer that died right after announcing is seen dead 3 intervals
        after that announcement reached this node."""
        interval = self._config.node_announce_interval
        while True:
            now = time.monotonic()
            deadline = self._peers.next_deadline()
            wake = now + interval if deadline is None else min(deadline, now + interval)
            await asyncio.sleep(max(0.0, wake - now))
            late = time.monotonic() - wake
            if late > interval:
                # This loop did not run for that long, so announcements were not read either:
                # judging peers now would declare them all dead.
                logger.warning("event loop stalled %.1f s: node deadlines restarted", late)
                self._peers.grace()
                continue
            for peer in self._peers.expire():
                silent = time.monotonic() - peer.last_seen
                self._dead(peer, f"no announcement for {silent:.1f} s", tell=True)

    def on_control(self, control: NodeAnnounce | NodeDead | NodeGone) -> None:
        """A node message from the control channel."""
        sender = control.sender
        instance = control.instance
        if isinstance(control, NodeAnnounce):
            info = dict(control.info)
            # Without an instance id (an older version) a node is listed but not watched.
            watched = bool(instance) and not self.is_own(instance)
            if watched and not self._peers.seen(sender, instance, info):
                # Declared dead, yet speaking (it was frozen or cut off): tell it again, it
                # comes back under a new instance id.
                self._spawn(self._try_control(NodeDead(instance, sender)))
                return
            if instance:
                info["instance"] = instance
            info["expires"] = time.time() + self._peers.timeout
            self._nodes[sender] = info
        elif isinstance(control, NodeDead) and instance:
            if instance == self.instance:
                self.start_rejoin(sender or "another node")
                return
            if instance in self._past_instances:
                return  # we know, and rejoined already
            peer = self._peers.end(instance, control.node)
            if peer is not None:
                self._dead(peer, f"declared dead by {sender}", tell=False)
        elif isinstance(control, NodeGone) and instance and not self.is_own(instance):
            peer = self._peers.end(instance, sender)
            self._drop_node_info(sender, instance)
            if peer is not None:
                # Its own leaves went out as its sessions closed (or, not clean, partly).
                self._start_cleanup(peer, "left", presence=not control.clean, dead=False)

    def is_own(self, instance: str) -> bool:
        """True for this node's instance id, current or past."""
        return instance == self.instance or instance in self._past_instances

    def _drop_node_info(self, name: str, instance: str) -> None:
        info = self._nodes.get(name)
        if info is not None and info.get("instance") == instance:
            del self._nodes[name]

    def _dead(self, peer: Peer, reason: str, *, tell: bool) -> None:
        self._metrics.dead_nodes.inc()
        self._drop_node_info(peer.name, peer.instance)
        self._start_cleanup(peer, reason, presence=True, dead=True, tell=tell)

    def _start_cleanup(
        self, peer: Peer, reason: str, *, presence: bool, dead: bool, tell: bool = False
    ) -> None:
        if self._closing():
            return
        task = asyncio.ensure_future(self._clean_up_after(peer, reason, presence, dead, tell))
        self._cleanups.add(task)
        task.add_done_callback(self._cleanup_done)

    def _cleanup_done(self, task: asyncio.Task[None]) -> None:
        self._cleanups.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("dead-node cleanup failed", exc_info=task.exception())

    async def _clean_up_after(
        self, peer: Peer, reason: str, presence: bool, dead: bool, tell: bool
    ) -> None:
        """Push leave for a dead (or departed) instance's clients: from the engine's presence
        (each entry removed, and its leave published, by exactly one node) and, in channels
        without presence, for the joins this node saw. Idempotent: every survivor runs it,
        so a survivor dying halfway leaves nothing undone."""
        started = time.monotonic()
        if tell:  # first: the others start at once, and a node wrongly declared dead learns it
            await self._try_control(NodeDead(peer.instance, peer.name))
        leaves = self._push_member_leaves(peer.instance)
        removed = channels = 0
        if presence:
            removed, channels, published = await self._remove_node_presence(peer.instance)
            leaves += published
        name = peer.name or "?"
        elapsed = time.monotonic() - started
        if dead:
            logger.warning(
                "node %s (instance %s) is dead (%s): removed %d presence entries in %d"
                " channels, pushed %d leaves, in %.3f s",
                name, peer.instance, reason, removed, channels, leaves, elapsed,
            )  # fmt: skip
        elif removed or leaves:
            logger.info(
                "node %s (instance %s) left: removed %d presence entries it left behind in"
                " %d channels, pushed %d leaves",
                name, peer.instance, removed, channels, leaves,
            )  # fmt: skip

    def _push_member_leaves(self, instance: str) -> int:
        """Leaves for ``instance``'s clients in channels without presence, to local
        subscribers only (every node does it for its own)."""
        pushed = 0
        for channel, members in list(self._members.items()):
            gone = [info for node, info in members.values() if node == instance]
            for info in gone:
                del members[info.client]
                self._push_event(channel, "leave", info)
            if not members:
                del self._members[channel]
            pushed += len(gone)
        self._metrics.dead_node_leaves.inc(pushed)
        return pushed

    async def _remove_node_presence(self, instance: str) -> tuple[int, int, int]:
        """Remove ``instance``'s presence entries in every channel it had some, a few channels
        at a time, in an order of this node's own (survivors spread their first pass); retried
        while the engine is down, until its entries would have expired anyway. Returns
        (entries removed, channels, leaves published) by this node."""
        ttl = self._config.presence_ttl
        give_up = time.monotonic() + ttl
        counts = [0, 0]  # removed, leaves
        channels = await self._retrying(
            lambda: self._engine.node_presence_channels(instance), give_up
        )
        if channels is None:
            logger.warning("cannot read where instance %s had presence: engine down", instance)
            return 0, 0, 0
        random.shuffle(channels)
        pending = collections.deque(channels)

        async def worker() -> None:
            while pending:
                channel = pending.popleft()
                try:
                    leave = parse_channel(channel, self._config).options.join_leave
                except HubError:  # a namespace this node does not know
                    leave = False
                remove = functools.partial(
                    self._engine.remove_node_presence, channel, instance, ttl, leave=leave
                )
                infos = await self._retrying(remove, give_up)
                if infos is None:
                    logger.warning("gave up removing the presence of %s in %s", instance, channel)
                    continue
                counts[0] += len(infos)
                self._metrics.dead_node_presence_removed.inc(len(infos))
                if leave:
                    counts[1] += len(infos)
                    self._metrics.dead_node_leaves.inc(len(infos))

        await asyncio.gather(*(worker() for _ in range(min(CLEANUP_CONCURRENCY, len(pending)))))
        return counts[0], len(channels), counts[1]

    async def _retrying(self, call: Callable[[], Awaitable[T]], give_up: float) -> T | None:
        """``call()``, again with backoff while the engine is unavailable; None past
        ``give_up`` (time.monotonic())."""
        delay = 0.05
        while True:
            try:
                return await call()
            except EngineUnavailable:
                self._metrics.engine_errors.inc()
                if time.monotonic() + delay > give_up:
                    return None
                await asyncio.sleep(delay)
                delay = min(2 * delay, self._config.node_announce_interval)

    def track_member(self, channel: str, info: ClientInfo, node: str) -> None:
        """A join from another node's ``node`` instance, remembered (in channels without
        presence) to push its leave if that node dies."""
        chan = self._fanout.channel_of(channel)
        if chan is None:
            return
        options = chan.options
        if options.presence or not options.join_leave:
            return  # with presence, the engine's entries say who is there
        members = self._members.setdefault(channel, {})
        members.pop(info.client, None)
        members[info.client] = (node, info)
        if len(members) > MEMBERS_TRACKED_PER_CHANNEL:
            del members[next(iter(members))]

    def start_rejoin(self, by: str) -> None:
        """This instance was declared dead: take a new id, put presence back, push join."""
        if self._closing():
            return
        old, self.instance = self.instance, secrets.token_hex(8)
        if len(self._past_instances) < 4096:  # a node rejoining that often has other trouble
            self._past_instances.add(old)
        logger.warning(
            "this node (instance %s) was declared dead by %s: rejoining as instance %s",
            old,
            by,
            self.instance,
        )
        self._metrics.node_rejoins.inc()
        if self._rejoin_task is not None:
            self._rejoin_task.cancel()
        self._rejoin_task = asyncio.create_task(self._rejoin(self.instance))

    async def _rejoin(self, instance: str) -> None:
        await self._announce()  # the others learn the new instance id at once
        ttl = self._config.presence_ttl
        todo = [
            (sub.channel.name, session, sub)
            for session, sub in self._fanout.all()
            if sub.channel.options.presence or sub.channel.options.join_leave
        ]
        delay = 0.05
        join: bool | None = None  # for todo[0], once its presence is back
        while todo:
            name, session, sub = todo[0]
            if not self._fanout.is_current(session, sub):
                todo.pop(0)
                join = None
                continue
            options = sub.channel.options
            owed = (name, sub.info.client)
            try:
                if join is None:
                    join = options.join_leave
                    if options.presence:
                        outcome = await self._engine.add_presence(name, sub.info, ttl, instance)
                        # REFRESHED: still there (now ours under the new id), no leave was
                        # pushed for it. Otherwise a cleanup removed it (or it expired).
                        if outcome is not PresenceAdd.REFRESHED:
                            self._joins_owed.add(owed)
                        join = join and owed in self._joins_owed
                if join and self._fanout.is_current(session, sub):
                    await self._engine.publish_join(name, sub.info, instance)
                self._joins_owed.discard(owed)
            except EngineUnavailable:
                self._metrics.engine_errors.inc()
                await asyncio.sleep(delay)
                delay = min(2 * delay, self._config.node_announce_interval)
                continue
            todo.pop(0)
            join = None
        self._joins_owed.clear()  # the ones left belong to subscriptions that ended
