"""Demo mode's server-side producer: live metrics for the dashboard demo (``/demo/dashboard/``).

:func:`start_demo_producers` starts a task in the ``pulsewire serve --demo`` process that
publishes a sample to ``dashboard:metrics`` several times a second (the ``dashboard``
namespace keeps the last 50 as history, so a page starts with a full chart)::

    {"t": 1764270000.25,                # Unix time of the sample
     "load": 0.42,                      # this machine's 1-minute load average
     "sessions": 3,                     # the hub's open sessions
     "publications_per_s": 4.0,         # publications accepted by the hub, per second
     "deliveries_per_s": 12.0,          # publication pushes written to subscribers, per second
     "sine": 0.71, "walk": 48.2}        # synthetic series: a sine wave, a random walk

The tasks end by themselves once the hub is closing; :func:`stop_demo_producers` cancels
them and waits (call it on shutdown, before closing the hub).
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import random
import time
import weakref
from collections import deque
from typing import Any

from ..hub.errors import HubError
from ..hub.hub import Hub

__all__ = [
    "METRICS_CHANNEL",
    "MetricsSampler",
    "start_demo_producers",
    "stop_demo_producers",
]

logger = logging.getLogger("pulsewire.demo")

METRICS_CHANNEL = "dashboard:metrics"
INTERVAL = 0.25
"""Seconds between two samples (4 per second)."""
SINE_PERIOD = 6.0
"""Seconds per period of the synthetic sine wave."""
RATE_WINDOW = 2.0
"""Seconds over which the per-second rates are averaged."""

_running: weakref.WeakKeyDictionary[Hub, list[asyncio.Task[None]]] = weakref.WeakKeyDictionary()


def _load_average() -> float:
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):  # not on every platform
        return 0.0


class MetricsSampler:
    """Builds one sample from the hub's own metrics, the load average and synthetic series."""

    def __init__(self, hub: Hub, *, seed: int | None = None) -> None:
        self.hub = hub
        self.random = random.Random(seed)
        self.started = time.monotonic()
        self.walk = 50.0
        self._counts: deque[tuple[float, float, float]] = deque()

    def _counter(self, name: str) -> float:
        value = self.hub.metrics.registry.get_sample_value(name)
        return 0.0 if value is None else value

    def _rates(self, now: float) -> tuple[float, float]:
        """Publications and deliveries per second over the last RATE_WINDOW seconds."""
        publications = self._counter("pulsewire_publications_total")
        deliveries = self._counter("pulsewire_deliveries_total")
        self._counts.append((now, publications, deliveries))
        while len(self._counts) > 2 and now - self._counts[1][0] >= RATE_WINDOW:
            self._counts.popleft()
        then, old_publications, old_deliveries = self._counts[0]
        elapsed = now - then
        if elapsed <= 0:
            return 0.0, 0.0
        return (
            round((publications - old_publications) / elapsed, 2),
            round((deliveries - old_deliveries) / elapsed, 2),
        )

    def _step_walk(self) -> float:
        """A random walk kept within [0, 100] (reflected at the edges)."""
        self.walk += self.random.gauss(0.0, 2.0)
        if self.walk < 0:
            self.walk = -self.walk
        if self.walk > 100:
            self.walk = 200 - self.walk
        return round(self.walk, 2)

    def sample(self) -> dict[str, Any]:
        now = time.monotonic()
        publications_per_s, deliveries_per_s = self._rates(now)
        return {
            "t": round(time.time(), 3),
            "load": _load_average(),
            "sessions": len(self.hub.sessions),
            "publications_per_s": publications_per_s,
            "deliveries_per_s": deliveries_per_s,
            "sine": round(math.sin((now - self.started) * 2 * math.pi / SINE_PERIOD), 4),
            "walk": self._step_walk(),
        }


async def _publish_metrics(hub: Hub, interval: float) -> None:
    """Publish a sample every ``interval`` seconds until the hub closes."""
    sampler = MetricsSampler(hub)
    failing = False
    while not hub.closing:
        try:
            await hub.publish(METRICS_CHANNEL, sampler.sample())
            failing = False
        except HubError as exc:  # e.g. the engine is down: try again at the next tick
            if not failing:
                logger.warning("dashboard producer: cannot publish: %s", exc)
            failing = True
        await asyncio.sleep(interval)


def start_demo_producers(hub: Hub, *, interval: float = INTERVAL) -> list[asyncio.Task[None]]:
    """Start the demo producers for ``hub`` (a started hub) in the running event loop.

    Calling it again for the same hub while they run returns the same tasks.
    """
    running = [task for task in _running.get(hub, []) if not task.done()]
    if running:
        return running
    tasks = [asyncio.create_task(_publish_metrics(hub, interval), name="demo-dashboard")]
    _running[hub] = tasks
    return tasks


async def stop_demo_producers(tasks: list[asyncio.Task[None]]) -> None:
    """Cancel the producers and wait until they are done."""
    for task in tasks:
        task.cancel()
    for outcome in await asyncio.gather(*tasks, return_exceptions=True):
        if isinstance(outcome, Exception):
            logger.error("demo producer failed", exc_info=outcome)
