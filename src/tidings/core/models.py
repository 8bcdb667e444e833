"""The domain's value types."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, NamedTuple

import msgspec
import orjson

from tidings.core.limits import MAX_DATA_DEPTH

#: Levels of arrays and objects one inside another that the ``data`` of a notification or a
#: topic message may have (``1`` has 0, ``[1]`` 1, ``{"a": [1]}`` 2). Deeper data is refused
#: before anything is written (``InvalidArgument``, HTTP 422): every encoder tidings writes
#: stored data with must carry it inside its frames and answers (orjson stops at 255 levels,
#: pydantic's JSON reader at 200, Rust's serde_json, a likely consumer of the log, at 128).


def _orjson_levels() -> int:
    """How many levels of lists orjson writes (254 in the orjson this was written with: 255
    raise "Recursion limit reached"); 0 for more than 4096. A fraction of a millisecond."""
    value: Any = None
    for level in range(1, 4097):
        value = [value]
        try:
            orjson.dumps(value)
        except orjson.JSONEncodeError:
            return level - 1
    return 0


#: levels of nesting orjson writes (254)
ORJSON_LEVELS = _orjson_levels()


#: past this length a count of brackets costs more than writing the value once more
_COUNTED_BYTES = 4096
_chains = threading.local()


def nests_deeper(value: Any, encoded: bytes, limit: int = MAX_DATA_DEPTH) -> bool:
    """Whether ``value`` (written by orjson as ``encoded``) has more than ``limit`` levels of
    arrays and objects. Its length, then for short values a count of brackets, decide for
    almost every value (nesting past the limit takes more than ``limit`` of each); past those,
    orjson writes it once more at the bottom of as many lists as leave it exactly ``limit``
    levels: it refuses the value if and only if it nests deeper."""
    size = len(encoded)
    if size <= 2 * limit + 1:
        return False
    if size <= _COUNTED_BYTES and encoded.count(b"[") + encoded.count(b"{") <= limit:
        return False
    if not limit < ORJSON_LEVELS:  # not the orjson this was written with: walk it
        return walk_nests_deeper(value, limit)
    outer, inner = _chain(ORJSON_LEVELS - limit)
    inner[0] = value
    try:
        orjson.dumps(outer)
    except orjson.JSONEncodeError:
        return True
    finally:
        inner[0] = None
    return False


def _chain(levels: int) -> tuple[list[Any], list[Any]]:
    """``levels`` lists one inside another, the outermost and the innermost, built once per
    thread (building them per call would cost more than writing most values)."""
    built: dict[int, tuple[list[Any], list[Any]]] = _chains.__dict__.setdefault("built", {})
    chain = built.get(levels)
    if chain is None:
        inner: list[Any] = [None]
        outer = inner
        for _ in range(levels - 1):
            outer = [outer]
        chain = built[levels] = (outer, inner)
    return chain


def walk_nests_deeper(value: Any, limit: int) -> bool:
    """:func:`nests_deeper` for any value, orjson's or not, by walking it (slowly)."""
    stack = [(value, 0)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            item = list(item.values())
        if isinstance(item, list | tuple):
            if level == limit:
                return True
            stack.extend((child, level + 1) for child in item)
    return False


def too_deep_message(what: str = "data", limit: int = MAX_DATA_DEPTH) -> str:
    """The refusal of a value that :func:`nests_deeper` than ``limit``."""
    return f"{what} nests arrays and objects more than {limit} levels deep; the limit is {limit}"


#: ``tidings_error`` of the marker that stands in for stored data the node cannot read or
#: write (an older version's, or written into the database by other means)
UNREADABLE_DATA = "unreadable_data"


def unreadable_data(reason: str) -> dict[str, str]:
    """The marker sent instead of data that cannot be read or written: the notification still
    comes, in its place, so it can be marked seen or acknowledged and blocks nothing."""
    return {"tidings_error": UNREADABLE_DATA, "reason": reason}


def utcnow() -> datetime:
    return datetime.now(UTC)


def isoformat(moment: datetime) -> str:
    """ISO 8601 in UTC with microseconds and a ``Z``: sorts as text, parses everywhere.
    (``datetime.isoformat`` rather than ``strftime``: faster, and a four-digit year also
    before 1000.)"""
    if moment.tzinfo is not UTC:
        moment = moment.astimezone(UTC)
    return moment.replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def parse_iso(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


# The hot value types (built per notification, several per item of a batch) are frozen,
# slotted ``msgspec`` structs: equal and hashed by their fields like frozen dataclasses, and
# built in C (``bench/values.py``; docs/benchmarks.md). ``gc=False``: they
# hold decoded JSON and other values, never a cycle back to themselves. Change a field with
# ``msgspec.structs.replace``; they are not dataclasses and orjson does not write them: write
# their ``to_dict``/``to_frame`` or their fields.


#: which of a user's notifications a page of history lists
HistoryState = Literal["all", "unseen", "unread", "archived"]
HISTORY_STATES: tuple[HistoryState, ...] = ("all", "unseen", "unread", "archived")
#: what a user may do to notifications beside seeing them: read implies seen; archive implies
#: seen and read; unarchive brings an archived one back to the inbox (still read)
StateChange = Literal["read", "archive", "unarchive"]


class Notification(msgspec.Struct, frozen=True, gc=False):
    """One notification addressed to one user."""

    notification_id: str
    user_id: str
    data: Any
    creation_date: datetime
    seen_date: datetime | None = None
    #: position in the store's log (creation order); not part of the wire form
    seq: int = 0
    #: the inbox's fields (wire contract v1.1): a category the sender gave, if any, and when
    #: the user read and archived it
    category: str | None = None
    read_date: datetime | None = None
    archived_date: datetime | None = None

    def to_dict(self) -> dict[str, Any]:
        """The wire form of the notification (wire contract v1, with v1.1's inbox fields)."""
        return {
            "notification_id": self.notification_id,
            "user_id": self.user_id,
            "data": self.data,
            "creation_date": isoformat(self.creation_date),
            "seen_date": isoformat(self.seen_date) if self.seen_date else None,
            "category": self.category,
            "read_date": isoformat(self.read_date) if self.read_date else None,
            "archived_date": isoformat(self.archived_date) if self.archived_date else None,
        }

    def unreadable(self, reason: str) -> Notification:
        """This notification with its data replaced by the :func:`unreadable_data` marker."""
        return Notification(
            self.notification_id,
            self.user_id,
            unreadable_data(reason),
            self.creation_date,
            self.seen_date,
            self.seq,
            self.category,
            self.read_date,
            self.archived_date,
        )


class UnseenCount(msgspec.Struct, frozen=True, gc=False):
    """A user's counts: ``count`` unseen, ``unread``, and the unseen count of each category
    that has any; ``version`` strictly increases with every change of any of them."""

    user_id: str
    count: int
    version: int
    unread: int = 0
    #: ``{category: unseen}``, without zero entries; None when no category has any
    categories: dict[str, int] | None = None


class NewNotification(msgspec.Struct, frozen=True, gc=False):
    """One item of a batch for :meth:`Store.create_notifications`."""

    user_id: str
    data: Any
    notification_id: str | None = None
    #: the inbox's category, if the sender gives one
    category: str | None = None


class NotifyResult(msgspec.Struct, frozen=True, gc=False):
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
class PushToken:
    """A phone's (or an app's) address at a push provider, registered for one user."""

    #: tidings' id of the registration (what ``DELETE …/push-tokens/{id}`` names)
    token_id: str
    user_id: str
    #: the provider, which is also the channel that sends to it: ``apns``, ``fcm`` or ``expo``
    platform: str
    #: the provider's token for the device
    token: str
    #: the application it belongs to (an APNs bundle id, an FCM app), if the app says
    app_id: str | None
    created_at: datetime
    #: when a send last used it (``None``: never yet)
    last_used_at: datetime | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.token_id,
            "platform": self.platform,
            "token": self.token,
            "app_id": self.app_id,
            "created_at": isoformat(self.created_at),
            "last_used_at": isoformat(self.last_used_at) if self.last_used_at else None,
        }


@dataclass(frozen=True, slots=True)
class PushReceipt:
    """A provider's receipt still to check (Expo): whether the push sent to ``token`` reached
    the phone's provider is told later, under ``receipt_id``."""

    receipt_id: str
    user_id: str
    token: str
    #: asked for until then; a receipt the provider never answers is given up after it
    keep_until: datetime


class Device(msgspec.Struct, frozen=True, gc=False):
    """A device: one ``connection_id`` bound to one user, with its queue's cursor."""

    connection_id: str
    user_id: str
    created_at: datetime
    last_seen_at: datetime
    #: every notification of the user up to this seq has left the device's queue
    cursor: int = 0


class AckResult(msgspec.Struct, frozen=True, gc=False):
    """What :meth:`Store.ack` did."""

    acked: list[str]
    cursor: int


@dataclass(frozen=True, slots=True)
class QueueGap:
    """Notifications dropped from a device's queue by an operator's limit."""

    reason: str  # "max_length" or "max_age"
    skipped: int
    cursor: int


class Presence(msgspec.Struct, frozen=True, gc=False):
    """One open WebSocket of a device: a row of the cluster's ``notification_registry``."""

    socket_id: str
    connection_id: str
    user_id: str
    session_id: str
    node_id: str
    connected_since: datetime


class NotificationState(NamedTuple):
    """Where one notification stands (:meth:`~tidings.storage.base.Store.notification_state`)."""

    seen_date: datetime | None
    read_date: datetime | None
    #: a device of the user that existed when it was created has acknowledged it (deliver mode)
    acked: bool


class Opened(NamedTuple):
    """What a socket's opening read (:meth:`~tidings.storage.base.Store.open_socket`)."""

    device: Device
    #: the user's counts
    counts: UnseenCount
    #: the session's topics, marked active
    topics: list[str]
    #: the first notifications of the device's queue, when asked for (else empty)
    queue: list[Notification]


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """A node of the cluster and its last heartbeat."""

    node_id: str
    uri: str
    started_at: datetime
    heartbeat_at: datetime


class TopicMessage(msgspec.Struct, frozen=True, gc=False):
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


class RetentionScope(msgspec.Struct, frozen=True):
    """Which notifications a retention rule covers: those of ``categories`` if given, else
    every one whose category is not in ``excluded`` (those follow rules of their own)."""

    categories: tuple[str, ...] | None = None
    excluded: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Removed:
    """What a retention step removed."""

    #: how many notifications went
    removed: int = 0
    #: the new counts of the users whose unseen or unread count fell (one change each)
    counts: list[UnseenCount] = field(default_factory=list)
    #: the highest log position among those removed (0: none)
    last: int = 0
