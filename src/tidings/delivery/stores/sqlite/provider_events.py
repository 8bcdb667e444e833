"""What an email or SMS provider reports after it took a message (delivered, bounced,
complained about), recorded on SQLite: :class:`SqliteProviderEvents` is the
:meth:`~tidings.delivery.stores.base.MessageStore.record_provider_event` of the pipeline's
store."""

from __future__ import annotations

import sqlite3

from tidings.core.models import isoformat, utcnow
from tidings.delivery.models import FAILED, SENT
from tidings.delivery.stores.rows import HistoryRow
from tidings.delivery.stores.sqlite.common import SqliteTables, write_history


class SqliteProviderEvents(SqliteTables):
    async def record_provider_event(
        self, channel: str, provider_id: str, reason: str, detail: str, *, fail: bool
    ) -> list[tuple[str, str, bool]]:
        return await self.store.write(
            lambda conn: record(conn, channel, provider_id, reason, detail, fail)
        )


def record(
    conn: sqlite3.Connection, channel: str, provider_id: str, reason: str, detail: str, fail: bool
) -> list[tuple[str, str, bool]]:
    """The event on every delivery of ``channel`` the provider knows as ``provider_id``: a
    history entry, and a ``sent`` delivery ends ``failed`` when the event ``fail`` s; an event
    already recorded (the provider sent it again) changes nothing. (delivery id, user id,
    whether it was recorded now) per delivery found."""
    stamp = isoformat(utcnow())
    found = conn.execute(
        "SELECT delivery_id, user_id, state FROM pipeline_deliveries "
        "WHERE provider_id = ? AND channel = ? ORDER BY delivery_id",
        (provider_id, channel),
    ).fetchall()
    entries: list[HistoryRow] = []
    recorded: list[tuple[str, str, bool]] = []
    for delivery_id, user_id, state in found:
        seen = conn.execute(
            "SELECT 1 FROM pipeline_history WHERE delivery_id = ? AND reason = ? AND detail IS ?",
            (delivery_id, reason, detail),
        ).fetchone()
        recorded.append((delivery_id, user_id, seen is None))
        if seen is not None:
            continue
        if fail and state == SENT:
            conn.execute(
                "UPDATE pipeline_deliveries SET state = ?, reason = ?, last_error = ?, "
                "updated_at = ? WHERE delivery_id = ?",
                (FAILED, reason, detail, stamp, delivery_id),
            )
            state = FAILED
        entries.append((delivery_id, state, reason, detail))
    write_history(conn, entries, stamp)
    return recorded
