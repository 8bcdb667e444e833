"""How a node's services are wired: each is given what it uses, from the node's settings,
store, bus, registry and counters."""

from __future__ import annotations

from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, Protocol

from tidings.auth.topics import TopicPolicy
from tidings.bus import Bus
from tidings.config import Settings
from tidings.core.counters import Counters
from tidings.core.models import UnseenCount
from tidings.fanout.registry import Registry
from tidings.node.metrics import Metrics
from tidings.services.cluster import Cluster
from tidings.services.counts import Counts
from tidings.services.events import BusEvents
from tidings.services.queues import Queues
from tidings.services.republish import Republisher
from tidings.services.retention import Retention, rules_from
from tidings.services.topics import Topics
from tidings.services.transactional import Transactional
from tidings.storage import Store


class Wired(Protocol):
    """What the services are made of."""

    @property
    def settings(self) -> Settings: ...

    @property
    def node_id(self) -> str: ...

    @property
    def node_uri(self) -> str: ...

    @property
    def store(self) -> Store: ...

    @property
    def bus(self) -> Bus: ...

    @property
    def registry(self) -> Registry: ...

    @property
    def counters(self) -> Counters: ...

    @property
    def metrics(self) -> Metrics: ...

    def count_committed(self, count: UnseenCount) -> None:
        """A count this node committed (the pipeline sends it to the user's phones)."""

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None: ...


@dataclass(frozen=True, slots=True)
class Services:
    """The services of one node."""

    republisher: Republisher
    queues: Queues
    counts: Counts
    topics: Topics
    cluster: Cluster
    events: BusEvents
    transactional: Transactional


def wire(node: Wired, topic_policy: TopicPolicy) -> Services:
    """The services of ``node``, each given what it uses."""
    settings, store, bus, registry = node.settings, node.store, node.bus, node.registry
    republisher = Republisher(bus)
    queues = Queues(
        store,
        bus,
        registry,
        node_id=node.node_id,
        max_length=settings.device_queue_max_length,
        max_age=settings.device_queue_max_age,
        retention=bool(settings.history_max or settings.history_max_age)
        or any(c.max or c.max_age for c in settings.history_categories.values()),
    )
    counts = Counts(
        store,
        bus,
        registry,
        queues,
        republisher,
        node.counters,
        node_id=node.node_id,
        max_data_size=settings.max_notification_size,
        max_batch_size=settings.max_batch_size,
        max_unseen_page=settings.max_unseen_page,
        max_unseen_bytes=settings.max_unseen_bytes,
        observe_notify=node.metrics.notify_seconds.observe,
        on_count=node.count_committed,
    )
    topics = Topics(
        store,
        bus,
        registry,
        topic_policy,
        republisher,
        node.spawn,
        node_id=node.node_id,
        ttl=settings.topic_ttl,
        ttls=settings.topic_ttls,
        max_data_size=settings.max_notification_size,
        max_topics_per_session=settings.max_topics_per_session,
        max_sessions_per_user=settings.max_sessions_per_user,
    )
    cluster = Cluster(
        store,
        registry,
        node_id=node.node_id,
        node_uri=node.node_uri,
        heartbeat_interval=settings.heartbeat_interval,
        node_timeout=settings.node_timeout,
        session_ttl=settings.session_ttl,
        retention=retention(store, counts, settings),
    )
    events = BusEvents(
        registry,
        counts,
        topics,
        queues,
        node.counters,
        node.spawn,
        node_id=node.node_id,
        observe_age=node.metrics.observe_event_age,
    )
    transactional = Transactional(store, counts, node.spawn, events.resync, node_id=node.node_id)
    return Services(republisher, queues, counts, topics, cluster, events, transactional)


def retention(store: Store, counts: Counts, settings: Settings) -> Retention | None:
    """The retention of history the settings ask for, if any."""
    rules = rules_from(settings.history_max, settings.history_max_age, settings.history_categories)
    return Retention(store, counts.publish_count, rules) if rules else None
