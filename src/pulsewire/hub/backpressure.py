"""Backpressure from delivery to publishers: a node behind on delivery holds publishers back.

Every node measures how far behind it is (:mod:`pulsewire.hub.overload`: the oldest
publication its fan-out has not yet handed to every local subscriber, and how late its event
loop runs) with a probe every :data:`PROBE_INTERVAL` seconds. Past ``overload_lag`` it is
*overloaded*: it tells the cluster at once through the engine's control channel
(:class:`~pulsewire.hub.control.NodeLoad`, with the channels it is behind on, or ``"all"``
when its loop is late), again every :data:`REFRESH_INTERVAL` while it stays so, and once more
when it has caught up (under half the bound). Every node keeps the cluster's load in a
:class:`~pulsewire.hub.overload.LoadTable` whose entries expire :data:`LOAD_TTL` seconds after
their last refresh plus the lag reported in it (at most :data:`LOAD_TTL` more), and at once
when their node is declared dead or says it is leaving: a lost "clear" or a dead node holds
nobody back for long. The node's own state counts directly, without a round trip (one node,
the memory engine: the same).

The gate, :meth:`Backpressure.admit`, runs in the hub's one publish path before the engine is
called: a publication to a channel that a node is behind on (or to any channel while a node
is behind on all) waits until that node has caught up, at most ``overload_wait`` seconds,
and is then refused with error 115 (``OVERLOADED``). A client publishing over a connection is
slowed by its reply coming later, an HTTP API publisher likewise.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from .config import HubConfig
from .control import NodeDead, NodeGone, NodeLoad
from .engines.base import Engine, EngineUnavailable
from .errors import ErrorCode, HubError
from .fanout import Fanout
from .metrics import HubMetrics
from .overload import ALL, DrainRate, LoadState, LoadTable, OverloadDetector, expected_lags

__all__ = [
    "LOAD_TTL",
    "MAX_CHANNELS",
    "PROBE_INTERVAL",
    "REFRESH_INTERVAL",
    "Backpressure",
]

logger = logging.getLogger("pulsewire.hub")

PROBE_INTERVAL = 0.05
"""Seconds between two measures of the node's lag (less when ``overload_lag`` is small)."""
REFRESH_INTERVAL = 1.0
"""Seconds between two reminders to the cluster that this node is still overloaded."""
LOAD_TTL = 3.0
"""Seconds another node's overload counts after its last message (plus the lag it reported,
up to as much again)."""
MAX_CHANNELS = 256
"""A node behind on more channels than this says ``"all"`` (the message stays small)."""


_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "pulsewire_publish_deadline", default=None
)


class Backpressure:
    """This node's overload state, the cluster's load and the publish gate (see the module
    docstring). Off (:attr:`enabled` False) when ``config.overload_lag`` is 0: the node then
    neither reports its lag nor holds its publishers back.

    ``instance`` gives the node's current instance id, ``is_own`` whether an instance id is
    this node's (current or past); ``clock`` is ``time.monotonic`` but in tests."""

    def __init__(
        self,
        config: HubConfig,
        engine: Engine,
        metrics: HubMetrics,
        fanout: Fanout,
        node_id: str,
        *,
        instance: Callable[[], str],
        is_own: Callable[[str], bool],
        spawn: Callable[[Awaitable[Any]], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._engine = engine
        self._metrics = metrics
        self._fanout = fanout
        self._node_id = node_id
        self._instance = instance
        self._is_own = is_own
        self._spawn = spawn
        self._clock = clock
        self._wait = config.overload_wait
        self.enabled = config.overload_lag > 0
        self.detector = OverloadDetector(config.overload_lag if self.enabled else 1.0)
        """This node's own state (:attr:`OverloadDetector.state`)."""
        self.table = LoadTable(LOAD_TTL)
        """The other nodes' overload, by instance id."""
        self.rate = DrainRate()
        """This node's delivery rate while behind (for the lag of what is queued)."""
        self.interval = min(PROBE_INTERVAL, config.overload_lag / 4) if self.enabled else 0.0
        """Seconds between two probes."""
        self._changed = asyncio.Event()
        self._sent_at = float("-inf")
        self._to_send: LoadState | None = None
        self._sending = False
        self._unsent = False
        self._task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------------ the node

    def start(self) -> None:
        """Start probing the node's lag (when enabled)."""
        if self.enabled and self._task is None:
            self._task = asyncio.create_task(self._probe_forever())

    def stop(self) -> None:
        """Stop probing (the node is closing)."""
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def _probe_forever(self) -> None:
        interval = self.interval
        while True:
            expected = self._clock() + interval
            await asyncio.sleep(interval)
            now = self._clock()
            self.probe(now, max(0.0, now - expected))

    def probe(self, now: float, loop_lag: float) -> None:
        """Measure the node at ``now`` (its clock) given how late the probe's timer fired:
        update the state and the metrics, tell the cluster what changed (and remind it every
        :data:`REFRESH_INTERVAL` while overloaded), forget expired entries."""
        delivered, backlog = self._fanout.delivery_backlog()
        self.rate.update(now, delivered, any(backlog.values()))
        lags = expected_lags(self._fanout.delivery_lags(now), backlog, self.rate.per_second)
        self._metrics.delivery_lag.set(max(lags.values(), default=0.0))
        self._metrics.loop_lag.set(loop_lag)
        detector = self.detector
        changed = detector.update(lags, loop_lag)
        state = detector.state
        if state.overloaded and state.channels != ALL and len(state.channels) > MAX_CHANNELS:
            state = detector.state = LoadState(True, state.lag, ALL)
        if changed:
            self._metrics.overloaded.set(1 if state.overloaded else 0)
            if state.overloaded:
                shown = "all channels" if state.channels == ALL else ", ".join(state.channels)
                logger.warning(
                    "delivery is %.3f s behind (%s): holding publishers", state.lag, shown
                )
            else:
                logger.info("delivery caught up: publishers go again")
            self._wake()
        due = now - self._sent_at >= REFRESH_INTERVAL
        if changed or (due and (state.overloaded or self._unsent)):
            self._sent_at = now
            self._send(state)
        if self.table.expire(now):
            self._wake()
        self._metrics.overloaded_nodes.set(len(self.table) + (1 if state.overloaded else 0))

    def _send(self, state: LoadState) -> None:
        """Tell the cluster ``state``: one message at a time, in order, the latest only."""
        self._to_send = state
        if not self._sending:
            self._sending = True
            self._spawn(self._sender())

    async def _sender(self) -> None:
        try:
            while self._to_send is not None:
                state, self._to_send = self._to_send, None
                control = NodeLoad(
                    self._node_id,
                    self._instance(),
                    state.overloaded,
                    round(state.lag, 3),
                    state.channels,
                )
                try:
                    await self._engine.publish_control(control.to_dict())
                except EngineUnavailable:
                    # Sent again at the next refresh (a lost "clear" would otherwise hold
                    # the others' publishers until its entry expires), unless newer is due.
                    self._metrics.engine_errors.inc()
                    self._unsent = True
                else:
                    self._unsent = False
        finally:
            self._sending = False

    # ---------------------------------------------------------------------- the others

    def on_control(self, control: NodeLoad | NodeDead | NodeGone) -> None:
        """A node's load message, or a node declared dead or leaving: its entry goes."""
        if not self.enabled:
            return
        now = self._clock()
        if isinstance(control, NodeLoad):
            if self._is_own(control.instance):
                return  # our own, counted directly
            state = LoadState(control.overloaded, control.lag, control.channels)
            changed = self.table.set(control.instance, control.sender, state, now)
        else:
            changed = self.table.drop([control.instance])
        if changed:
            self._wake()
        self._metrics.overloaded_nodes.set(len(self.table) + (1 if self.overloaded else 0))

    @property
    def overloaded(self) -> bool:
        """True while this node is behind on delivery by more than ``overload_lag``."""
        return self.detector.state.overloaded

    def _wake(self) -> None:
        """Publishers waiting look again."""
        self._changed.set()
        self._changed = asyncio.Event()

    # ---------------------------------------------------------------------- the gate

    def blocks(self, channel: str, now: float) -> bool:
        """True if a publication to ``channel`` should wait at ``now`` (this node's clock)."""
        return self.detector.state.covers(channel) or self.table.blocks(channel, now)

    @contextlib.contextmanager
    def one_wait(self) -> Iterator[None]:
        """The publishes made inside share one ``overload_wait`` (a broadcast to many held
        channels waits that long in all, not that long per channel)."""
        token = _DEADLINE.set(self._clock() + self._wait)
        try:
            yield
        finally:
            _DEADLINE.reset(token)

    @property
    def engaged(self) -> bool:
        """True while some node (this one included) is known to be overloaded: publishes
        must go through :meth:`admit` (the cheap check on the publish path)."""
        return self.enabled and (self.detector.state.overloaded or len(self.table) > 0)

    async def admit(self, channel: str) -> None:
        """Return when ``channel`` may be published to: at once unless a node is behind on
        it; else once no node is, or raise :class:`HubError` 115 after ``overload_wait``."""
        if not self.engaged:
            return
        now = started = self._clock()
        deadline = _DEADLINE.get()
        if deadline is None:
            deadline = now + self._wait
        while self.blocks(channel, now):
            remaining = deadline - now
            if remaining <= 0:
                self._metrics.publish_overloaded.inc()
                self._metrics.publish_wait.observe(now - started)
                raise HubError(ErrorCode.OVERLOADED, "the hub is behind on delivery: retry later")
            expiry = self.table.next_expiry()
            if expiry is not None:
                remaining = min(remaining, max(0.0, expiry - now))
            changed = self._changed
            try:
                await asyncio.wait_for(changed.wait(), remaining)
            except asyncio.TimeoutError:
                pass
            now = self._clock()
            if self.table.expire(now):
                self._wake()
        if now > started:
            self._metrics.publish_wait.observe(now - started)
