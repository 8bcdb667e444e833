"""The domain's value types."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any


def utcnow() -> datetime:
    return datetime.now(UTC)


def isoformat(moment: datetime) -> str:
    """ISO 8601 in UTC with microseconds and a ``Z``: sorts as text, parses everywhere."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_iso(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@dataclass(frozen=True, slots=True)
class Notification:
    """One notification addressed to one user."""

    notification_id: str
    user_id: str
    data: Any
    creation_date: datetime
    seen_date: datetime | None = None
    #: position in the store's log (creation order); not part of the wire form
    seq: int = 0

    def to_dict(self) -> dict[str, Any]:
        """The wire form of the notification (wire contract v1)."""
        return {
            "notification_id": self.notification_id,
            "user_id": self.user_id,
            "data": self.data,
            "creation_date": isoformat(self.creation_date),
            "seen_date": isoformat(self.seen_date) if self.seen_date else None,
        }


@dataclass(frozen=True, slots=True)
class UnseenCount:
    """A user's unseen count; ``version`` strictly increases with every change."""

    user_id: str
    count: int
    version: int


@dataclass(frozen=True, slots=True)
class NewNotification:
    """One item of a batch for :meth:`Store.create_notifications`."""

    user_id: str
    data: Any
    notification_id: str | None = None


@dataclass(frozen=True, slots=True)
class NotifyResult:
    """What :meth:`Store.create_notification` did."""

    notification: Notification
    created: bool
    #: the count after the insert; ``None`` when the notification already existed
    count: UnseenCount | None = None


@dataclass(frozen=True, slots=True)
class MarkSeenResult:
    """What :meth:`Store.mark_seen` did."""

    marked: list[str] = field(default_factory=list)
    #: the count after the change; ``None`` when nothing changed
    count: UnseenCount | None = None


@dataclass(frozen=True, slots=True)
class ServiceClient:
    """An OAuth2 client allowed to call the service API."""

    client_id: str
    name: str
    scopes: frozenset[str]
    created_at: datetime
    secret_hash: str = field(repr=False, default="")


@dataclass(frozen=True, slots=True)
class Device:
    """A device: one ``connection_id`` bound to one user, with its queue's cursor."""

    connection_id: str
    user_id: str
    created_at: datetime
    last_seen_at: datetime
    #: every notification of the user up to this seq has left the device's queue
    cursor: int = 0


@dataclass(frozen=True, slots=True)
class AckResult:
    """What :meth:`Store.ack` did."""

    acked: list[str]
    cursor: int


@dataclass(frozen=True, slots=True)
class QueueGap:
    """Notifications dropped from a device's queue by an operator's limit."""

    reason: str  # "max_length" or "max_age"
    skipped: int
    cursor: int


@dataclass(frozen=True, slots=True)
class Presence:
    """One open WebSocket of a device: a row of the cluster's ``notification_registry``."""

    socket_id: str
    connection_id: str
    user_id: str
    session_id: str
    node_id: str
    connected_since: datetime


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """A node of the cluster and its last heartbeat."""

    node_id: str
    uri: str
    started_at: datetime
    heartbeat_at: datetime


@dataclass(frozen=True, slots=True)
class TopicMessage:
    """A message published to a topic, kept for the topic's TTL."""

    topic: str
    seq: int
    data: Any
    creation_date: datetime
    origin_session_id: str | None = None

    def to_frame(self) -> dict[str, Any]:
        """The ``topicMessage`` frame of wire contract v1."""
        return {
            "type": "topicMessage",
            "topic": self.topic,
            "seq": self.seq,
            "data": self.data,
            "creation_date": isoformat(self.creation_date),
        }


@dataclass(frozen=True, slots=True)
class Replay:
    """Messages of a topic after a sequence, and whether nothing was lost to retention."""

    messages: list[TopicMessage]
    recovered: bool
    last_seq: int
