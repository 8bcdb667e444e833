"""The facets of the :class:`~tidings.storage.Store` each service uses, and nothing more.

Every store backend has them all; a service is given the store as the facet it reads, so what
it may touch is written next to it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any, Protocol

from tidings.core.models import (
    AckResult,
    MarkSeenResult,
    NewNotification,
    Notification,
    NotifyResult,
    Presence,
    QueueGap,
    Removed,
    Replay,
    RetentionScope,
    StateChange,
    TopicMessage,
    UnseenCount,
)
from tidings.errors import Conflict


class NotificationStore(Protocol):
    """Notifications and unseen counts."""

    async def create_notifications(
        self, items: Sequence[NewNotification]
    ) -> list[NotifyResult | Conflict]: ...

    async def create_notification(
        self,
        user_id: str,
        data: Any,
        notification_id: str | None = None,
        category: str | None = None,
    ) -> NotifyResult: ...

    async def unseen(
        self, user_id: str, limit: int, max_bytes: int | None = None
    ) -> list[Notification]: ...

    async def mark_all_seen(self, user_id: str) -> MarkSeenResult: ...

    async def change_state(
        self, user_id: str, change: StateChange, notification_ids: Sequence[str] | None
    ) -> MarkSeenResult: ...

    async def mark_seen(self, user_id: str, notification_ids: Sequence[str]) -> MarkSeenResult: ...

    async def count(self, user_id: str) -> UnseenCount: ...


class RetentionStore(Protocol):
    """Removing old history (see :class:`tidings.storage.facets.RetentionStore`)."""

    async def log_position_before(self, when: datetime) -> int: ...

    async def remove_in_range(
        self, scope: RetentionScope, after: int, upto: int, limit: int
    ) -> Removed: ...

    async def users_notified_after(self, position: int, limit: int) -> tuple[list[str], int]: ...

    async def remove_beyond(
        self, user_id: str, scope: RetentionScope, keep: int, limit: int
    ) -> Removed: ...


class QueueStore(Protocol):
    """The durable queues of devices (and the count an erasure leaves)."""

    async def count(self, user_id: str) -> UnseenCount: ...

    async def take_retained(self, connection_id: str, user_id: str) -> int: ...

    async def pending(
        self, connection_id: str, user_id: str, after_seq: int, limit: int
    ) -> list[Notification]: ...

    async def ack(
        self, connection_id: str, user_id: str, notification_ids: Sequence[str]
    ) -> AckResult: ...

    async def trim_queue(
        self,
        connection_id: str,
        user_id: str,
        *,
        max_length: int | None,
        max_age: float | None,
    ) -> QueueGap | None: ...

    async def forget_device(self, user_id: str, connection_id: str) -> bool: ...

    async def erase_user(self, user_id: str) -> dict[str, int]: ...

    async def notification_log(self, after: str, limit: int) -> tuple[list[Notification], str]: ...


class TopicStore(Protocol):
    """Topic messages and the subscriptions of sessions."""

    async def append_topic_message(
        self, topic: str, data: Any, origin_session_id: str | None, ttl: float
    ) -> TopicMessage: ...

    async def topic_messages(self, topic: str, since: int, limit: int) -> Replay: ...

    async def topic_last_seqs(self, topics: Sequence[str]) -> dict[str, int]: ...

    async def session_topics(self, user_id: str, session_id: str) -> list[str]: ...

    async def subscribe_session(
        self,
        user_id: str,
        session_id: str,
        topics: Sequence[str],
        max_sessions: int | None = None,
    ) -> None: ...

    async def unsubscribe_session(
        self, user_id: str, session_id: str, topics: Sequence[str]
    ) -> None: ...


class ClusterStore(Protocol):
    """Nodes, the presence of their sockets, and the sweep of what expired."""

    async def heartbeat(self, node_id: str, uri: str) -> bool: ...

    async def reap_nodes(self, stale_after: float) -> list[str]: ...

    async def remove_node(self, node_id: str) -> None: ...

    async def add_presence(self, presences: Sequence[Presence]) -> None: ...

    async def remove_presence(self, socket_id: str) -> None: ...

    async def touch_sessions(self, sessions: Iterable[tuple[str, str]]) -> None: ...

    async def expire(self, session_idle: float) -> int: ...
