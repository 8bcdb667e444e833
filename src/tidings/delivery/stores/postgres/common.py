"""What the PostgreSQL facets of the pipeline share: the node's store, the column lists as
PostgreSQL reads them, the history and the recipients the planner is given."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from tidings.delivery.planner import Recipient
from tidings.delivery.status_types import status_rows
from tidings.delivery.stores.rows import HISTORY_COLUMNS, HistoryRow, json_as_text, recipients_of
from tidings.delivery.stores.rows import MESSAGE_COLUMNS as STORED_MESSAGE_COLUMNS
from tidings.delivery.stores.status_rows import EVENT_INSERT_COLUMNS
from tidings.storage.postgres import PostgresStore

#: :data:`~tidings.delivery.stores.rows.MESSAGE_COLUMNS` with its ``jsonb`` columns as text
MESSAGE_COLUMNS = json_as_text(STORED_MESSAGE_COLUMNS)

#: history entries ($1-$4: delivery, state, reason, detail; $5 the time); answers whether
#: delivery-status webhooks have endpoints (no cost to speak of when they have none)
WRITE_HISTORY = (
    f"WITH h AS (INSERT INTO pipeline_history ({HISTORY_COLUMNS}) "
    "SELECT i, s, r, d, $5 FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) "
    "AS t(i, s, r, d)) SELECT EXISTS (SELECT FROM pipeline_status_endpoints)"
)
#: a history entry's event for each endpoint ($1-$6: rows of ``status_rows`` as columns, $7
#: the time), in their order; due no sooner than the delivery's latest event still waiting
#: for that endpoint
WRITE_EVENTS = (
    f"INSERT INTO pipeline_status_events ({EVENT_INSERT_COLUMNS}) "
    "SELECT t.v, e.url, t.y, d.delivery_id, d.message_id, d.user_id, d.channel, t.s, t.r, t.d, "
    "$7, d.attempts, d.provider_id, GREATEST($7::timestamptz, (SELECT p.available_at "
    "FROM pipeline_status_events p WHERE p.state = 'pending' AND p.endpoint = e.url "
    "AND p.delivery_id = d.delivery_id ORDER BY p.id DESC LIMIT 1)) "
    "FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[]) "
    "WITH ORDINALITY AS t(v, y, i, s, r, d, n) JOIN pipeline_deliveries d ON d.delivery_id = t.i "
    "CROSS JOIN pipeline_status_endpoints e ORDER BY t.n, e.url"
)


class PostgresTables:
    """The pipeline's tables in the database of a :class:`PostgresStore`, on connections of
    its pool (:meth:`PostgresStore.connection`)."""

    def __init__(self, store: PostgresStore) -> None:
        self.store = store


async def write_history(conn: Any, entries: list[HistoryRow], at: datetime) -> None:
    """Append history entries, all ``at`` one time, and the status events they make for each
    endpoint of delivery-status webhooks (none configured: nothing more)."""
    if not entries:
        return
    if not await conn.fetchval(
        WRITE_HISTORY,
        [e[0] for e in entries],
        [e[1] for e in entries],
        [e[2] for e in entries],
        [e[3] for e in entries],
        at,
    ):
        return
    rows = status_rows(entries)
    if rows:
        await conn.execute(WRITE_EVENTS, *(list(column) for column in zip(*rows, strict=True)), at)


async def recipients(
    conn: Any, users: list[str], counted: Sequence[str], since: dict[str, datetime]
) -> list[Recipient]:
    """Each of ``users`` with their switches, contacts, quiet hours and, per ``counted``
    channel, the deliveries counted since ``since[channel]``."""
    switches = await conn.fetch(
        "SELECT user_id, channel, enabled FROM pipeline_channel_prefs "
        "WHERE user_id = ANY($1::text[])",
        users,
    )
    contacts = await conn.fetch(
        "SELECT user_id, channel, address::text FROM pipeline_contacts "
        "WHERE user_id = ANY($1::text[])",
        users,
    )
    recent: list[tuple[str, str, int]] = []
    for channel in counted:
        recent += [
            (user, channel, n)
            for user, n in await conn.fetch(
                "SELECT user_id, COUNT(*) FROM pipeline_deliveries WHERE channel = $1 AND counted "
                "AND created_at >= $2 AND user_id = ANY($3::text[]) GROUP BY user_id",
                channel,
                since[channel],
                users,
            )
        ]
    quiet = await conn.fetch(
        "SELECT user_id, timezone, start_at, end_at FROM pipeline_quiet_hours "
        "WHERE user_id = ANY($1::text[])",
        users,
    )
    return recipients_of(users, switches, contacts, recent, quiet)
