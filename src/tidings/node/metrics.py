"""Prometheus metrics of a node, served at ``GET /metrics``.

Hot paths (a frame sent, a frame received) only add to a plain integer in the node's
:class:`~tidings.core.counters.Counters`; a collector turns the integers and the node's live state
(connections, users, queued frames, unpublished events, pipeline queues, tasks) into metrics when
Prometheus scrapes. Adding to an int costs a few tens of nanoseconds, where a
``prometheus_client.Counter.inc()`` takes a lock.
"""

from __future__ import annotations

import asyncio
import time
from bisect import bisect_left
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.process_collector import ProcessCollector

from tidings.core.counters import Counters
from tidings.errors import TidingsError
from tidings.fanout.registry import Registry
from tidings.version import __version__

#: deliver-mode devices whose queues a scrape reads (one store call)
MAX_DEVICES = 10_000


class _DepthStore(Protocol):
    async def depths(self) -> dict[str, dict[str, int]]: ...
    async def status_event_counts(self) -> dict[str, int]: ...


class _Pipeline(Protocol):
    @property
    def store(self) -> _DepthStore: ...


class _QueueStore(Protocol):
    async def queue_depths(self, devices: Sequence[tuple[str, str]]) -> dict[str, int]: ...


class Observed(Protocol):
    """What the metrics read of a node at scrape time."""

    @property
    def node_id(self) -> str: ...

    @property
    def ready(self) -> bool: ...

    @property
    def unpublished(self) -> int: ...

    @property
    def registry(self) -> Registry: ...

    @property
    def store(self) -> _QueueStore: ...

    @property
    def pipeline(self) -> _Pipeline: ...


class Buckets:
    """A histogram kept in plain numbers: an observation is a bisect and two adds (a
    ``prometheus_client.Histogram`` takes a lock per observation, on the notify path)."""

    __slots__ = ("bounds", "count", "counts", "doc", "name", "total")

    def __init__(self, name: str, doc: str, bounds: tuple[float, ...]) -> None:
        self.name, self.doc, self.bounds = name, doc, bounds
        self.counts = [0] * (len(bounds) + 1)
        self.count = 0
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.count += 1
        self.total += value

    def family(self) -> HistogramMetricFamily:
        cumulative, buckets = 0, []
        for bound, n in zip((*map(str, self.bounds), "+Inf"), self.counts, strict=True):
            cumulative += n
            buckets.append((bound, cumulative))
        family = HistogramMetricFamily(self.name, self.doc)
        family.add_metric([], buckets, self.total)
        return family


class Metrics:
    """The metrics of one node: what its :class:`Counters` counted, and its live state."""

    def __init__(self, node: Observed, counters: Counters) -> None:
        self.node = node
        self.counters = counters
        self.registry = CollectorRegistry(auto_describe=True)
        self.notify_seconds = Buckets(
            "tidings_notify_seconds",
            "Time from a notify call to its commit and count event, in seconds.",
            (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
        )
        self.bus_lag = Buckets(
            "tidings_bus_lag_seconds",
            "Age of count events from other nodes when they arrive (clocks must agree).",
            (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0, 5.0),
        )
        self.registry.register(_Live(self))
        ProcessCollector(registry=self.registry)
        self.pipeline_depths: dict[str, dict[str, int]] = {}
        self.status_events: dict[str, int] = {}
        #: notifications waiting in the durable queues of this node's deliver-mode devices
        self.device_queues: list[int] = []
        self.store_up = 1

    async def render(self) -> bytes:
        """The exposition text; reads the pipeline's queue depths from the store first."""
        try:
            self.pipeline_depths = await asyncio.wait_for(
                self.node.pipeline.store.depths(), timeout=5
            )
            self.status_events = await asyncio.wait_for(
                self.node.pipeline.store.status_event_counts(), timeout=5
            )
            devices = {
                conn.connection_id: conn.user_id for conn in self.node.registry if conn.deliver
            }
            depths = await asyncio.wait_for(
                self.node.store.queue_depths(list(devices.items())[:MAX_DEVICES]), timeout=5
            )
            self.device_queues = list(depths.values())
            self.store_up = 1
        except (TidingsError, TimeoutError):
            self.store_up = 0
        return generate_latest(self.registry)

    def observe_event_age(self, sent_at: Any) -> None:
        if isinstance(sent_at, int | float):
            self.bus_lag.observe(max(0.0, time.time() - sent_at))


class _Live:
    """Reads the node's state at scrape time."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        node = self.metrics.node
        counters = self.metrics.counters
        registry = node.registry
        yield self.metrics.notify_seconds.family()
        yield self.metrics.bus_lag.family()
        info = GaugeMetricFamily("tidings_info", "This node.", labels=["version", "node"])
        info.add_metric([__version__, node.node_id], 1)
        yield info
        yield _gauge("tidings_ready", "1 while the node takes traffic.", int(node.ready))
        yield _gauge("tidings_store_up", "1 when the store answered.", self.metrics.store_up)
        yield _gauge("tidings_connections", "Open device sockets on this node.", len(registry))
        yield _gauge("tidings_users_connected", "Users with a socket here.", registry.user_count)
        yield _gauge("tidings_topics_followed", "Topics followed here.", registry.topic_count)
        queued = sum(conn.queued for conn in registry)
        yield _gauge("tidings_outbound_queued_frames", "Frames waiting to be written.", queued)
        waiting = self.metrics.device_queues
        yield _gauge(
            "tidings_device_queue_notifications",
            "Notifications waiting in the durable queues of deliver-mode devices connected here.",
            sum(waiting),
        )
        yield _gauge(
            "tidings_device_queue_longest",
            "The longest such queue.",
            max(waiting, default=0),
        )
        yield _gauge(
            "tidings_unpublished_events",
            "Events the bus refused, waiting to be published again.",
            node.unpublished,
        )
        yield _gauge("tidings_asyncio_tasks", "Tasks of the event loop.", len(asyncio.all_tasks()))
        yield _counter("tidings_frames_received", "Frames from devices.", counters.frames_in)
        yield _counter("tidings_frames_sent", "Frames to devices.", counters.frames_out)
        yield _counter(
            "tidings_connections_opened", "Device sockets accepted.", counters.connections_opened
        )
        yield _counter(
            "tidings_slow_connections_closed",
            "Sockets closed because their client did not keep up (1013).",
            counters.slow_closed,
        )
        yield _counter(
            "tidings_bus_reconnects", "Times the bus got its broker back.", counters.bus_reconnects
        )
        yield _counter(
            "tidings_bus_publish_failures",
            "Publishes the bus refused.",
            counters.bus_publish_failures,
        )
        failures = CounterMetricFamily("tidings_errors", "Errors by kind.", labels=["kind"])
        for kind, n in sorted(counters.errors.items()):
            failures.add_metric([kind], n)
        yield failures
        depth = GaugeMetricFamily(
            "tidings_pipeline_deliveries",
            "Pipeline deliveries not yet in an end state, per channel and state.",
            labels=["channel", "state"],
        )
        for channel, states in sorted(self.metrics.pipeline_depths.items()):
            for state, n in sorted(states.items()):
                depth.add_metric([channel, state], n)
        yield depth
        events = GaugeMetricFamily(
            "tidings_status_events",
            "Delivery-status webhook events waiting to be posted (pending) or given up (failed).",
            labels=["state"],
        )
        for state, n in sorted(self.metrics.status_events.items()):
            events.add_metric([state], n)
        yield events
        sent = CounterMetricFamily(
            "tidings_pipeline_sends", "Pipeline sends by outcome.", labels=["channel", "outcome"]
        )
        for (channel, outcome), n in sorted(counters.sends.items()):
            sent.add_metric([channel, outcome], n)
        yield sent


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)
