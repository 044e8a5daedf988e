"""Prometheus metrics of a hub (prometheus_client), in a registry of the hub's own.

Each hub gets its own ``CollectorRegistry`` so several hubs (tests, embedded apps) never
collide; the HTTP front door exposes it at ``/metrics``. Per-message paths touch
pre-resolved label children only.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["HubMetrics"]


class HubMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.connections = Gauge(
            "pulsewire_connections", "Open client sessions by transport", ["transport"], registry=r
        )
        self.connects = Counter(
            "pulsewire_connects",
            "Sessions that completed the connect command",
            ["transport"],
            registry=r,
        )
        self.disconnects = Counter(
            "pulsewire_disconnects", "Sessions ended, by disconnect code", ["code"], registry=r
        )
        self.commands = Counter(
            "pulsewire_commands", "Client commands by method", ["method"], registry=r
        )
        self.publications = Counter(
            "pulsewire_publications", "Publications accepted by this node", registry=r
        )
        self.deliveries = Counter(
            "pulsewire_deliveries", "Publication pushes written to local subscribers", registry=r
        )
        self.latency = Histogram(
            "pulsewire_publish_to_deliver_seconds",
            "Time from publish (on any node) to the push being queued to local subscribers",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=r,
        )
        self.engine_errors = Counter(
            "pulsewire_engine_errors", "Engine calls that failed (service unavailable)", registry=r
        )
        self.engine_up = Gauge(
            "pulsewire_engine_up", "1 while the engine's service is reachable", registry=r
        )
        self.engine_up.set(1)
        self.gap_fills = Counter(
            "pulsewire_history_gap_fills", "Live-delivery gaps filled from history", registry=r
        )
        self.queue_drops = Counter(
            "pulsewire_queue_drops", "Publications dropped for slow consumers", registry=r
        )
        self.slow_consumers = Counter(
            "pulsewire_slow_consumer_disconnects",
            "Sessions disconnected as slow consumers",
            registry=r,
        )
        self.rate_limited = Counter(
            "pulsewire_rate_limited",
            "Client messages over the rate limit, by policy",
            ["policy"],
            registry=r,
        )
        self.publish_duplicates = Counter(
            "pulsewire_publish_duplicates",
            "Publishes whose idempotency key was seen in the window: first result, not published",
            registry=r,
        )
        self.publish_outcome_unknown = Counter(
            "pulsewire_publish_outcome_unknown",
            "Publishes sent to the engine that got no answer (error 114): maybe published",
            registry=r,
        )
        self.idempotency_keys_full = Counter(
            "pulsewire_idempotency_keys_full",
            "Keyed publishes refused: the in-memory engine holds its maximum of keys (106)",
            registry=r,
        )
        self.dead_nodes = Counter(
            "pulsewire_dead_nodes",
            "Other nodes this node saw die (silent for 3 announce intervals, or declared dead"
            " by another node)",
            registry=r,
        )
        self.dead_node_presence_removed = Counter(
            "pulsewire_dead_node_presence_removed",
            "Presence entries of dead (or departed) nodes removed by this node",
            registry=r,
        )
        self.dead_node_leaves = Counter(
            "pulsewire_dead_node_leaves",
            "Leaves for clients of dead (or departed) nodes: published by this node (channels"
            " with presence) or pushed to its own subscribers (channels without)",
            registry=r,
        )
        self.node_rejoins = Counter(
            "pulsewire_node_rejoins",
            "Times this node learned it had been declared dead and rejoined under a new id",
            registry=r,
        )
        self.delivery_lag = Gauge(
            "pulsewire_delivery_lag_seconds",
            "How far behind delivery is: the oldest publication not yet handed to every local "
            "subscriber, or the time to deliver all that is queued when longer",
            registry=r,
        )
        self.loop_lag = Gauge(
            "pulsewire_loop_lag_seconds", "How late the event loop ran a periodic timer", registry=r
        )
        self.overloaded = Gauge(
            "pulsewire_overloaded",
            "1 while this node is behind on delivery by more than overload_lag (backpressure)",
            registry=r,
        )
        self.overloaded_nodes = Gauge(
            "pulsewire_overloaded_nodes",
            "Nodes of the cluster (this one included) known to be behind on delivery",
            registry=r,
        )
        self.publish_overloaded = Counter(
            "pulsewire_publish_overloaded",
            "Publishes refused with error 115: a node stayed behind for overload_wait",
            registry=r,
        )
        self.publish_wait = Histogram(
            "pulsewire_publish_wait_seconds",
            "Time publishes waited for a node behind on their channel (those that waited)",
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0),
            registry=r,
        )
        self.delivery_overflows = Counter(
            "pulsewire_delivery_overflows",
            "Channel queues over the delivery cap: their local subscribers were told to"
            " resubscribe (2500)",
            registry=r,
        )
        self.traffic: dict[str, list[int]] = {}
        """Per transport: [messages in, bytes in, messages out, bytes out], plain ints bumped
        on the per-message path and turned into counters only when /metrics is scraped."""
        r.register(_TrafficCollector(self.traffic))
        self.channels = Gauge("pulsewire_channels", "Channels with local subscribers", registry=r)
        self._commands = {}  # type: dict[str, Counter]
        self._connections = {}  # type: dict[str, Gauge]

    def traffic_of(self, transport: str) -> list[int]:
        counts = self.traffic.get(transport)
        if counts is None:
            counts = self.traffic[transport] = [0, 0, 0, 0]
        return counts

    def command(self, method: str) -> None:
        child = self._commands.get(method)
        if child is None:
            child = self._commands[method] = self.commands.labels(method)
        child.inc()

    def connection_gauge(self, transport: str) -> Gauge:
        child = self._connections.get(transport)
        if child is None:
            child = self._connections[transport] = self.connections.labels(transport)
        return child


class _TrafficCollector(Collector):
    _NAMES = (
        ("pulsewire_messages_in", "Messages received from clients"),
        ("pulsewire_bytes_in", "Bytes received from clients"),
        ("pulsewire_messages_out", "Messages queued to clients"),
        ("pulsewire_bytes_out", "Bytes queued to clients"),
    )

    def __init__(self, traffic: dict[str, list[int]]) -> None:
        self.traffic = traffic

    def collect(self) -> Iterator[Metric]:
        for index, (name, doc) in enumerate(self._NAMES):
            family = CounterMetricFamily(name, doc, labels=["transport"])
            for transport, counts in self.traffic.items():
                family.add_metric([transport], counts[index])
            yield family
