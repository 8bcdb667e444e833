"""What the PostgreSQL facets of the pipeline share: the node's store, the column lists as
PostgreSQL reads them, the history and the recipients the planner is given."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from tidings.delivery.planner import Recipient
from tidings.delivery.stores.rows import HISTORY_COLUMNS, HistoryRow, json_as_text, recipients_of
from tidings.delivery.stores.rows import MESSAGE_COLUMNS as STORED_MESSAGE_COLUMNS
from tidings.storage.postgres import PostgresStore

#: :data:`~tidings.delivery.stores.rows.MESSAGE_COLUMNS` with its ``jsonb`` columns as text
MESSAGE_COLUMNS = json_as_text(STORED_MESSAGE_COLUMNS)


class PostgresTables:
    """The pipeline's tables in the database of a :class:`PostgresStore`, on connections of
    its pool (:meth:`PostgresStore.connection`)."""

    def __init__(self, store: PostgresStore) -> None:
        self.store = store


async def write_history(conn: Any, entries: list[HistoryRow], at: datetime) -> None:
    """Append history entries, all ``at`` one time."""
    if not entries:
        return
    await conn.execute(
        f"INSERT INTO pipeline_history ({HISTORY_COLUMNS}) "
        "SELECT i, s, r, d, $5 FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) "
        "AS t(i, s, r, d)",
        [e[0] for e in entries],
        [e[1] for e in entries],
        [e[2] for e in entries],
        [e[3] for e in entries],
        at,
    )


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
