"""Events carried by the bus between nodes, and their compact encoding."""

from __future__ import annotations

from typing import Any

import orjson

from tidings.core.models import UnseenCount

#: The seeds' ``unseen-notification-count-changed`` event.
COUNT_CHANGED = "unseen-notification-count-changed"


def encode_count(count: UnseenCount, origin: str) -> bytes:
    """The event that carries a user's new count, so that no node has to re-count."""
    return orjson.dumps(
        {
            "type": COUNT_CHANGED,
            "user_id": count.user_id,
            "count": count.count,
            "version": count.version,
            "node": origin,
        }
    )


def decode(payload: bytes) -> dict[str, Any] | None:
    """The event in ``payload``, or ``None`` if it is not one this version understands."""
    try:
        event = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    return event if isinstance(event, dict) and isinstance(event.get("type"), str) else None


def decode_count(event: dict[str, Any]) -> UnseenCount | None:
    user_id, count, version = event.get("user_id"), event.get("count"), event.get("version")
    if isinstance(user_id, str) and isinstance(count, int) and isinstance(version, int):
        return UnseenCount(user_id, count, version)
    return None
