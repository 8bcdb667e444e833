"""The rows of delivery-status webhooks' tables in both dialects (migrations
``015_status_events.sql`` on SQLite, ``017_status_events.sql`` on PostgreSQL): column lists
and the decoder of an event."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from tidings.delivery.status_types import StatusEvent
from tidings.delivery.stores.rows import Time

#: what a history entry's event is written with (the rest has defaults)
EVENT_INSERT_COLUMNS = (
    "event_id, endpoint, type, delivery_id, message_id, user_id, channel, delivery_state, "
    "reason, detail, at, delivery_attempts, provider_id, available_at"
)
#: an event as :func:`event_of` reads it
EVENT_COLUMNS = (
    "id, event_id, endpoint, type, delivery_id, message_id, user_id, channel, delivery_state, "
    "reason, detail, at, delivery_attempts, provider_id, state, attempts, available_at, "
    "last_status, last_error, last_attempt_at, delivered_at"
)
#: done events deleted at most per prune
PRUNE_BATCH = 1000


def event_of(row: Any, time: Time) -> StatusEvent:
    """An event from a row of :data:`EVENT_COLUMNS`."""

    def maybe(value: Any) -> datetime | None:
        return None if value is None else time(value)

    return StatusEvent(
        id=row[0],
        event_id=row[1],
        endpoint=row[2],
        type=row[3],
        delivery_id=row[4],
        message_id=row[5],
        user_id=row[6],
        channel=row[7],
        delivery_state=row[8],
        reason=row[9],
        detail=row[10],
        at=time(row[11]),
        delivery_attempts=row[12],
        provider_id=row[13],
        state=row[14],
        attempts=row[15],
        available_at=time(row[16]),
        last_status=row[17],
        last_error=row[18],
        last_attempt_at=maybe(row[19]),
        delivered_at=maybe(row[20]),
    )
