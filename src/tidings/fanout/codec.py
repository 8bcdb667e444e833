"""Wire contract v1 as a sans-I/O codec: text in, typed frames out, and back.

Nothing here touches a socket, so the whole contract is testable without a server.
Every client frame is a UTF-8 JSON object with a ``type``; it may carry an ``id`` (a string of
at most 128 characters or an integer) that the server's direct answer repeats. Unknown fields
are ignored. A frame that breaks the contract raises :class:`~tidings.errors.ProtocolError`
whose ``code`` goes into the ``error`` frame; the connection stays up.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import orjson

from tidings.core.codes import CloseCode
from tidings.core.limits import (
    DEFAULT_UNSEEN_LIMIT as DEFAULT_UNSEEN_LIMIT,
)
from tidings.core.limits import MAX_CATEGORY_LENGTH, MAX_CURSOR_LENGTH, MAX_HISTORY_PAGE
from tidings.core.limits import (
    MAX_ID_LENGTH as MAX_ID_LENGTH,
)
from tidings.core.limits import (
    MAX_IDS_PER_FRAME as MAX_IDS_PER_FRAME,
)
from tidings.core.limits import (
    MAX_SEQ as MAX_SEQ,
)
from tidings.core.limits import (
    MAX_TOKEN_LENGTH as MAX_TOKEN_LENGTH,
)
from tidings.core.limits import (
    MAX_TOPIC_LENGTH as MAX_TOPIC_LENGTH,
)
from tidings.core.limits import (
    MAX_TOPICS_PER_FRAME as MAX_TOPICS_PER_FRAME,
)
from tidings.core.models import UNREADABLE_DATA, Notification, UnseenCount
from tidings.errors import ProtocolError

logger = logging.getLogger("tidings")

# Error codes sent in ``error`` frames.
INVALID_JSON = "invalid_json"
INVALID_FRAME = "invalid_frame"
UNKNOWN_TYPE = "unknown_type"
FRAME_TOO_LARGE = "frame_too_large"
BINARY_FRAME = "binary_frame"
NOT_AUTHENTICATED = "not_authenticated"
ALREADY_AUTHENTICATED = "already_authenticated"
NOT_FOUND = "not_found"
NOT_DELIVER_MODE = "not_deliver_mode"
FORBIDDEN_TOPIC = "forbidden_topic"
UNAVAILABLE = "unavailable"
RATE_LIMITED = "rate_limited"
INTERNAL = "internal_error"

# Close codes (named in tidings.core.codes; these aliases are kept for one release).
CLOSE_NORMAL = CloseCode.NORMAL
CLOSE_GOING_AWAY = CloseCode.GOING_AWAY
CLOSE_MESSAGE_TOO_BIG = CloseCode.MESSAGE_TOO_BIG
CLOSE_INTERNAL_ERROR = CloseCode.INTERNAL_ERROR
CLOSE_TRY_AGAIN_LATER = CloseCode.TRY_AGAIN_LATER
CLOSE_POLICY_VIOLATION = CloseCode.POLICY_VIOLATION
CLOSE_UNAUTHORIZED = CloseCode.UNAUTHORIZED
CLOSE_TOO_MANY_CONNECTIONS = CloseCode.TOO_MANY_CONNECTIONS
CLOSE_AUTH_TIMEOUT = CloseCode.AUTH_TIMEOUT


@dataclass(frozen=True, slots=True)
class Authenticate:
    id: str | int | None
    token: str
    session_id: str | None
    deliver: bool = False


@dataclass(frozen=True, slots=True)
class GetUnseen:
    id: str | int | None
    limit: int


@dataclass(frozen=True, slots=True)
class MarkSeen:
    id: str | int | None
    notification_ids: list[str]


@dataclass(frozen=True, slots=True)
class MarkAllSeen:
    id: str | int | None


@dataclass(frozen=True, slots=True)
class ChangeState:
    """``markRead``, ``archive``, ``unarchive`` (listed ids) and ``markAllRead`` (ids None)."""

    id: str | int | None
    change: str
    notification_ids: list[str] | None


@dataclass(frozen=True, slots=True)
class Ack:
    id: str | int | None
    notification_ids: list[str]


@dataclass(frozen=True, slots=True)
class ForgetDevice:
    id: str | int | None


@dataclass(frozen=True, slots=True)
class Subscribe:
    id: str | int | None
    topics: list[str]


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    id: str | int | None
    topics: list[str]


@dataclass(frozen=True, slots=True)
class ReadNotifications:
    id: str | int | None
    topic: str
    since: int


@dataclass(frozen=True, slots=True)
class GetNotifications:
    id: str | int | None
    state: str
    category: str | None
    cursor: str | None
    limit: int


ClientFrame = (
    Authenticate
    | GetUnseen
    | MarkSeen
    | MarkAllSeen
    | ChangeState
    | Ack
    | ForgetDevice
    | Subscribe
    | Unsubscribe
    | ReadNotifications
    | GetNotifications
)


def parse_frame(text: str, *, max_unseen_page: int = 1000) -> ClientFrame:
    """Decode one client text frame.

    Raises:
        ProtocolError: the frame is not JSON, not an object, has an unknown ``type`` or a
            field of the wrong shape.
    """
    try:
        raw = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(INVALID_JSON, f"frame is not valid JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise ProtocolError(INVALID_FRAME, "frame must be a JSON object")
    frame_id = raw.get("id")
    if frame_id is not None and not _valid_id(frame_id):
        raise ProtocolError(
            INVALID_FRAME, f"'id' must be a string of at most {MAX_ID_LENGTH} chars or an integer"
        )
    kind = raw.get("type")
    if not isinstance(kind, str):
        raise ProtocolError(INVALID_FRAME, "frame needs a string 'type'", frame_id)
    parser = _PARSERS.get(kind)
    if parser is None:
        raise ProtocolError(UNKNOWN_TYPE, f"unknown frame type {kind[:64]!r}", frame_id)
    return parser(raw, frame_id, max_unseen_page)


def _valid_id(value: object) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return -(2**53) < value < 2**53
    return isinstance(value, str) and len(value) <= MAX_ID_LENGTH


def _identifier(raw: dict[str, Any], key: str, frame_id: Any, *, required: bool) -> str | None:
    value = raw.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not 0 < len(value) <= MAX_ID_LENGTH or "\x00" in value:
        raise ProtocolError(
            INVALID_FRAME, f"'{key}' must be a string of 1 to {MAX_ID_LENGTH} chars", frame_id
        )
    return value


def _parse_authenticate(raw: dict[str, Any], frame_id: Any, _: int) -> Authenticate:
    token = raw.get("token")
    if not isinstance(token, str) or not 0 < len(token) <= MAX_TOKEN_LENGTH:
        raise ProtocolError(INVALID_FRAME, "'token' must be a non-empty string", frame_id)
    session_id = _identifier(raw, "session_id", frame_id, required=False)
    deliver = raw.get("deliver", False)
    if not isinstance(deliver, bool):
        raise ProtocolError(INVALID_FRAME, "'deliver' must be true or false", frame_id)
    return Authenticate(frame_id, token, session_id, deliver)


def _parse_get_unseen(raw: dict[str, Any], frame_id: Any, max_page: int) -> GetUnseen:
    limit = raw.get("limit", DEFAULT_UNSEEN_LIMIT)
    if isinstance(limit, bool) or not isinstance(limit, int) or not 0 < limit <= max_page:
        raise ProtocolError(
            INVALID_FRAME, f"'limit' must be an integer from 1 to {max_page}", frame_id
        )
    return GetUnseen(frame_id, limit)


def _valid_notification_id(value: object) -> bool:
    return isinstance(value, str) and 0 < len(value) <= MAX_ID_LENGTH and "\x00" not in value


def _notification_ids(raw: dict[str, Any], frame_id: Any) -> list[str]:
    ids = raw.get("notification_ids")
    if (
        not isinstance(ids, list)
        or not 0 < len(ids) <= MAX_IDS_PER_FRAME
        or not all(_valid_notification_id(i) for i in ids)
    ):
        raise ProtocolError(
            INVALID_FRAME,
            f"'notification_ids' must be a list of 1 to {MAX_IDS_PER_FRAME} non-empty strings",
            frame_id,
        )
    return ids


def _parse_mark_seen(raw: dict[str, Any], frame_id: Any, _: int) -> MarkSeen:
    return MarkSeen(frame_id, _notification_ids(raw, frame_id))


def _parse_mark_all_seen(raw: dict[str, Any], frame_id: Any, _: int) -> MarkAllSeen:
    return MarkAllSeen(frame_id)


def _state_change(change: str) -> Callable[[dict[str, Any], Any, int], ChangeState]:
    def parse(raw: dict[str, Any], frame_id: Any, _: int) -> ChangeState:
        return ChangeState(frame_id, change, _notification_ids(raw, frame_id))

    return parse


def _parse_mark_all_read(raw: dict[str, Any], frame_id: Any, _: int) -> ChangeState:
    return ChangeState(frame_id, "read", None)


def _parse_ack(raw: dict[str, Any], frame_id: Any, _: int) -> Ack:
    return Ack(frame_id, _notification_ids(raw, frame_id))


def _parse_forget_device(raw: dict[str, Any], frame_id: Any, _: int) -> ForgetDevice:
    return ForgetDevice(frame_id)


def _topics(raw: dict[str, Any], frame_id: Any) -> list[str]:
    topics = raw.get("topics")
    if (
        not isinstance(topics, list)
        or not 0 < len(topics) <= MAX_TOPICS_PER_FRAME
        or not all(_valid_topic(t) for t in topics)
    ):
        raise ProtocolError(
            INVALID_FRAME,
            f"'topics' must be a list of 1 to {MAX_TOPICS_PER_FRAME} topic names "
            f"(1 to {MAX_TOPIC_LENGTH} characters, no control characters)",
            frame_id,
        )
    return list(dict.fromkeys(topics))


def _valid_topic(value: object) -> bool:
    return (
        isinstance(value, str)
        and 0 < len(value) <= MAX_TOPIC_LENGTH
        and not any(ord(c) < 32 for c in value)
    )


def _parse_subscribe(raw: dict[str, Any], frame_id: Any, _: int) -> Subscribe:
    return Subscribe(frame_id, _topics(raw, frame_id))


def _parse_unsubscribe(raw: dict[str, Any], frame_id: Any, _: int) -> Unsubscribe:
    return Unsubscribe(frame_id, _topics(raw, frame_id))


def _parse_read_notifications(raw: dict[str, Any], frame_id: Any, _: int) -> ReadNotifications:
    topic = raw.get("topic")
    if not _valid_topic(topic):
        raise ProtocolError(INVALID_FRAME, "'topic' must be a topic name", frame_id)
    since = raw.get("since", 0)
    if isinstance(since, bool) or not isinstance(since, int) or not 0 <= since <= MAX_SEQ:
        raise ProtocolError(INVALID_FRAME, "'since' must be an integer from 0 to 2**63-1", frame_id)
    assert isinstance(topic, str)
    return ReadNotifications(frame_id, topic, since)


def _parse_get_notifications(raw: dict[str, Any], frame_id: Any, _: int) -> GetNotifications:
    state = raw.get("state", "all")
    if not isinstance(state, str) or len(state) > 16:
        raise ProtocolError(
            INVALID_FRAME, "'state' must be all, unseen, unread or archived", frame_id
        )
    category = _bounded(raw, "category", MAX_CATEGORY_LENGTH, frame_id)
    cursor = _bounded(raw, "cursor", MAX_CURSOR_LENGTH, frame_id)
    limit = raw.get("limit", 50)
    if isinstance(limit, bool) or not isinstance(limit, int) or not 0 < limit <= MAX_HISTORY_PAGE:
        raise ProtocolError(
            INVALID_FRAME, f"'limit' must be an integer from 1 to {MAX_HISTORY_PAGE}", frame_id
        )
    return GetNotifications(frame_id, state, category, cursor, limit)


def _bounded(raw: dict[str, Any], key: str, max_length: int, frame_id: Any) -> str | None:
    value = raw.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not 0 < len(value) <= max_length or "\x00" in value:
        raise ProtocolError(
            INVALID_FRAME, f"'{key}' must be a string of 1 to {max_length} chars", frame_id
        )
    return value


_PARSERS: dict[str, Callable[[dict[str, Any], Any, int], ClientFrame]] = {
    "authenticate": _parse_authenticate,
    "getUnseen": _parse_get_unseen,
    "markSeen": _parse_mark_seen,
    "markAllSeen": _parse_mark_all_seen,
    "markRead": _state_change("read"),
    "archive": _state_change("archive"),
    "unarchive": _state_change("unarchive"),
    "markAllRead": _parse_mark_all_read,
    "ack": _parse_ack,
    "forgetDevice": _parse_forget_device,
    "subscribe": _parse_subscribe,
    "unsubscribe": _parse_unsubscribe,
    "readNotifications": _parse_read_notifications,
    "getNotifications": _parse_get_notifications,
}


# Server → client. Each returns the frame's text, ready for ``websocket.send``.


def _encode(frame: dict[str, Any]) -> str:
    return orjson.dumps(frame).decode()


def welcome(*, connection_id: str, session_id: str, user_id: str, node: str) -> str:
    return _encode(
        {
            "type": "welcome",
            "connection_id": connection_id,
            "session_id": session_id,
            "user_id": user_id,
            "node": node,
        }
    )


def count_changed(
    count: int, version: int, unread: int = 0, categories: dict[str, int] | None = None
) -> str:
    """The counts frame; ``categories`` only when some category has unseen notifications."""
    frame: dict[str, Any] = {
        "type": "newNotificationCountChanged",
        "count": count,
        "version": version,
        "unread": unread,
    }
    if categories:
        frame["categories"] = categories
    return _encode(frame)


def counts_frame(count: UnseenCount) -> str:
    """The counts frame of ``count``."""
    return count_changed(count.count, count.version, count.unread, count.categories)


def notification_data(
    frame_id: Any, notifications: Iterable[Notification], *, max_bytes: int | None = None
) -> str:
    """The answer to ``getUnseen``; with ``max_bytes``, notifications past that size are left
    for the next ``getUnseen`` (the first one is always included)."""
    items: list[bytes] = []
    size = 0
    for note in notifications:
        try:
            encoded = orjson.dumps(note.to_dict())
        except orjson.JSONEncodeError as exc:
            encoded = orjson.dumps(_unwritable(note, exc).to_dict())
        if max_bytes is not None and items and size + len(encoded) > max_bytes:
            break
        items.append(encoded)
        size += len(encoded) + 1
    head = orjson.dumps({"type": "newNotificationData", "id": frame_id})
    return (head[:-1] + b',"notifications":[' + b",".join(items) + b"]}").decode()


def notification(note: Notification) -> str:
    """A notification pushed to a device in deliver mode (answer with ``ack``)."""
    try:
        return _encode({"type": "notification", "notification": note.to_dict()})
    except orjson.JSONEncodeError as exc:
        return _encode({"type": "notification", "notification": _unwritable(note, exc).to_dict()})


def _unwritable(note: Notification, exc: Exception) -> Notification:
    """``note`` with the marker for data no frame can carry (stored before the node refused
    such data, or by other means): it is still sent, so it never blocks the ones after it."""
    logger.warning(
        "notification %s of %s: data cannot be sent (%s); sent with %r instead",
        note.notification_id,
        note.user_id,
        exc,
        UNREADABLE_DATA,
    )
    return note.unreadable(f"the stored data cannot be written in a frame: {exc}")


def queue_gap(reason: str, skipped: int) -> str:
    """Told to a device whose queue an operator's limit cut: never a silent partial history."""
    return _encode({"type": "queueGap", "reason": reason, "skipped": skipped})


def reply(frame_id: Any, **fields: Any) -> str:
    return _encode({"type": "reply", "id": frame_id, **fields})


def error(frame_id: Any, code: str, message: str, **fields: Any) -> str:
    return _encode({"type": "error", "id": frame_id, "code": code, "message": message, **fields})
