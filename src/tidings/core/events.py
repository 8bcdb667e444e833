"""Events carried by the bus between nodes, and their compact encoding."""

from __future__ import annotations

import time
from typing import Any

import orjson

from tidings.core.models import TopicMessage, UnseenCount, isoformat, parse_iso

#: The seeds' ``unseen-notification-count-changed`` event.
COUNT_CHANGED = "unseen-notification-count-changed"


def encode_count(count: UnseenCount, origin: str, seq: int = 0) -> bytes:
    """The event that carries a user's new count, so that no node has to re-count.

    ``seq`` is the log position of the notification that caused it (0 for other changes):
    nodes with devices in deliver mode read the device queues only when it is new to them.
    """
    return orjson.dumps(
        {
            "type": COUNT_CHANGED,
            "user_id": count.user_id,
            "count": count.count,
            "version": count.version,
            "unread": count.unread,
            "categories": count.categories,
            "seq": seq,
            "node": origin,
            # when it was sent, for the receivers' lag metric (nodes' clocks must agree)
            "t": time.time(),
        }
    )


def decode(payload: bytes) -> dict[str, Any] | None:
    """The event in ``payload``, or ``None`` if it is not one this version understands."""
    try:
        event = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    return event if isinstance(event, dict) and isinstance(event.get("type"), str) else None


def decode_count(event: dict[str, Any]) -> tuple[UnseenCount, int] | None:
    """``(count, seq)`` of a count event, or ``None`` if malformed."""
    user_id, count, version = event.get("user_id"), event.get("count"), event.get("version")
    seq, unread = event.get("seq", 0), event.get("unread", 0)
    categories = event.get("categories") or None
    if (
        isinstance(user_id, str)
        and isinstance(count, int)
        and isinstance(version, int)
        and isinstance(seq, int)
        and isinstance(unread, int)
        and (categories is None or _category_counts(categories))
    ):
        return UnseenCount(user_id, count, version, unread, categories), seq
    return None


def _category_counts(value: Any) -> bool:
    """Whether ``value`` is ``{category: count}``."""
    return isinstance(value, dict) and all(
        isinstance(k, str) and isinstance(n, int) for k, n in value.items()
    )


#: A device was logged out: every node closes its sockets.
DEVICE_FORGOTTEN = "device-forgotten"


def encode_device_forgotten(user_id: str, connection_id: str, origin: str) -> bytes:
    return orjson.dumps(
        {
            "type": DEVICE_FORGOTTEN,
            "user_id": user_id,
            "connection_id": connection_id,
            "node": origin,
        }
    )


#: A user was erased: every node closes the user's sockets.
USER_ERASED = "user-erased"


def encode_user_erased(user_id: str, origin: str, version: int) -> bytes:
    """``version``: the user's count version after the erasure; sockets that already had it
    (or a later one) were opened after the erasure and stay."""
    return orjson.dumps(
        {"type": USER_ERASED, "user_id": user_id, "node": origin, "version": version}
    )


#: A message published to a topic.
TOPIC_MESSAGE = "topic-message"


def encode_topic_message(
    message: TopicMessage, origin: str, *, by_reference: bool = False
) -> bytes:
    """The event of a topic message; ``by_reference`` leaves the data out (receivers read it
    from the store) for buses with small payload limits."""
    event: dict[str, Any] = {
        "type": TOPIC_MESSAGE,
        "topic": message.topic,
        "seq": message.seq,
        "creation_date": isoformat(message.creation_date),
        "origin_session_id": message.origin_session_id,
        "node": origin,
    }
    if not by_reference:
        event["data"] = message.data
    return orjson.dumps(event)


def decode_topic_message(event: dict[str, Any]) -> tuple[TopicMessage, bool] | None:
    """``(message, complete)``: when not complete, its data must be read from the store."""
    topic, seq, created = event.get("topic"), event.get("seq"), event.get("creation_date")
    origin = event.get("origin_session_id")
    if not (isinstance(topic, str) and isinstance(seq, int) and isinstance(created, str)):
        return None
    if origin is not None and not isinstance(origin, str):
        return None
    message = TopicMessage(topic, seq, event.get("data"), parse_iso(created), origin)
    return message, "data" in event


#: Frames a device POSTed for its event stream, taken by a node that does not hold it.
SSE_FRAMES = "sse-frames"


def encode_sse_frames(user_id: str, connection_id: str, frames: list[str], origin: str) -> bytes:
    return orjson.dumps(
        {
            "type": SSE_FRAMES,
            "user_id": user_id,
            "connection_id": connection_id,
            "frames": frames,
            "node": origin,
        }
    )


def decode_sse_frames(event: dict[str, Any]) -> tuple[str, str, list[str], str] | None:
    """``(user_id, connection_id, frames, origin)`` of a frames event, or None if malformed."""
    user_id, connection_id = event.get("user_id"), event.get("connection_id")
    frames, origin = event.get("frames"), event.get("node")
    if (
        isinstance(user_id, str)
        and isinstance(connection_id, str)
        and isinstance(origin, str)
        and isinstance(frames, list)
        and all(isinstance(frame, str) for frame in frames)
    ):
        return user_id, connection_id, frames, origin
    return None
