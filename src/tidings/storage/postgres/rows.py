"""PostgreSQL rows: column lists, decoders and the statements several facets share."""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Any

from tidings.core.models import (
    Notification,
    ServiceClient,
)
from tidings.errors import (
    NotFound,
)
from tidings.storage._common import (
    answerable,
    load_data,
)

MIGRATION_LOCK = zlib.crc32(b"tidings-migrations")
#: a notification with its inbox fields, as :func:`_notification` reads it
NOTIFICATION_COLUMNS = (
    "notification_id, user_id, data::text, creation_date, seen_date, seq, category, read_date, "
    "archived_date"
)
# The user's oldest unseen notifications up to a count and about a number of bytes of data
# (at least one): sizes are summed in the database, so a page of large notifications costs
# the node (and the wire) no more than the budget. Parameters: user_id, limit, bytes.
UNSEEN_WITHIN = (
    "WITH page AS (SELECT seq, octet_length(data::text) AS size FROM notifications "
    "WHERE user_id = $1 AND seen_date IS NULL ORDER BY seq LIMIT $2), "
    "sized AS (SELECT seq, size, sum(size) OVER (ORDER BY seq) AS upto FROM page) "
    "SELECT n.notification_id, n.user_id, n.data::text, n.creation_date, n.seen_date, n.seq, "
    "n.category, n.read_date, n.archived_date FROM sized JOIN notifications n ON n.seq = sized.seq "
    "WHERE sized.upto <= $3 OR sized.upto = sized.size ORDER BY n.seq"
)


async def _no_reset(connection: Any) -> None:
    """Skip asyncpg's per-release reset: we use no session state (measured +15 %)."""


def _notification(row: Any, *, answered: bool = False) -> Notification:
    """A notification row (``NOTIFICATION_COLUMNS``); ``answered`` for readers whose pages
    are written in one answer (see :func:`answerable`)."""
    data = load_data(row[2], f"notification {row[0]!r}")
    if answered:
        data = answerable(data, row[2], f"notification {row[0]!r}")
    return Notification(
        notification_id=row[0],
        user_id=row[1],
        data=data,
        creation_date=row[3],
        seen_date=row[4],
        seq=row[5],
        category=row[6],
        read_date=row[7],
        archived_date=row[8],
    )


# A device's queue: its user's notifications after the cursor that it has not acknowledged.
# Parameters: $1 user_id, $2 cursor, $3 connection_id.
QUEUE = (
    "FROM notifications n WHERE user_id = $1 AND seq > $2 AND NOT EXISTS "
    "(SELECT 1 FROM device_acks a WHERE a.connection_id = $3 AND a.seq = n.seq)"
)


async def _owned(conn: Any, user_id: str, ids: Sequence[str]) -> list[Any]:
    """``(notification_id, seq)`` rows of the user's notifications among ``ids``.

    Raises:
        NotFound: some ids are unknown or another user's.
    """
    rows = await conn.fetch(
        "SELECT notification_id, seq FROM notifications "
        "WHERE user_id = $1 AND notification_id = ANY($2::text[])",
        user_id,
        list(ids),
    )
    found = {row[0] for row in rows}
    missing = [nid for nid in ids if nid not in found]
    if missing:
        raise NotFound("unknown notification ids", missing)
    return list(rows)


def _client(row: Any) -> ServiceClient:
    return ServiceClient(
        client_id=row[0],
        name=row[1],
        scopes=frozenset(row[2].split()),
        created_at=row[3],
        secret_hash=row[4],
    )
