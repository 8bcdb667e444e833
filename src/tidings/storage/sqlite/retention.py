"""The RetentionStore facet of the SQLite store."""

from __future__ import annotations

import sqlite3
from datetime import datetime
from typing import Any

import orjson

from tidings.core.models import Removed, RetentionScope, isoformat
from tidings.storage._common import REMOVED_COLUMNS, bisect_log, scope_where
from tidings.storage.counts import counted, lower_counts_sql, removals, removed_seqs
from tidings.storage.sqlite.engine import SqliteEngine


class SqliteRetention(SqliteEngine):
    """The RetentionStore facet on SQLite."""

    async def log_position_before(self, when: datetime) -> int:
        stamp = isoformat(when)

        def run(conn: sqlite3.Connection) -> int:
            def first_from(seq: int) -> tuple[int, bool] | None:
                row = conn.execute(
                    "SELECT seq, creation_date < ? FROM notifications WHERE seq >= ? "
                    "ORDER BY seq LIMIT 1",
                    (stamp, seq),
                ).fetchone()
                return (row[0], bool(row[1])) if row else None

            (top,) = conn.execute("SELECT coalesce(max(seq), 0) FROM notifications").fetchone()
            steps = bisect_log(top)
            try:
                probe = next(steps)
                while True:
                    probe = steps.send(first_from(probe))
            except StopIteration as done:
                return int(done.value)

        return await self.read(run)

    async def remove_in_range(
        self, scope: RetentionScope, after: int, upto: int, limit: int
    ) -> Removed:
        where, params = scope_where(scope, "?", "sqlite")
        chosen = (
            f"SELECT seq FROM notifications WHERE seq > ? AND seq <= ? AND {where} "
            "ORDER BY seq LIMIT ?"
        )
        return await self.write(lambda conn: _remove(conn, chosen, [after, upto, *params, limit]))

    async def users_notified_after(self, position: int, limit: int) -> tuple[list[str], int]:
        def run(conn: sqlite3.Connection) -> tuple[list[str], int]:
            rows = conn.execute(
                "SELECT user_id, seq FROM notifications WHERE seq > ? ORDER BY seq LIMIT ?",
                (position, limit),
            ).fetchall()
            return list(dict.fromkeys(r[0] for r in rows)), rows[-1][1] if rows else position

        return await self.read(run)

    async def remove_beyond(
        self, user_id: str, scope: RetentionScope, keep: int, limit: int
    ) -> Removed:
        where, params = scope_where(scope, "?", "sqlite")
        chosen = (
            f"SELECT seq FROM notifications WHERE user_id = ? AND {where} "
            "ORDER BY seq DESC LIMIT ? OFFSET ?"
        )
        return await self.write(lambda conn: _remove(conn, chosen, [user_id, *params, limit, keep]))


def _remove(conn: sqlite3.Connection, chosen: str, params: list[Any]) -> Removed:
    """Remove the notifications ``chosen`` selects (by seq) and lower their users' counts."""
    rows = conn.execute(
        f"DELETE FROM notifications WHERE seq IN ({chosen}) RETURNING {REMOVED_COLUMNS}",
        params,
    ).fetchall()
    counts = [
        counted(user, conn.execute(lower_counts_sql("sqlite"), (*change, user)).fetchone())
        for user, change in removals(rows).items()
    ]
    for user, seqs in removed_seqs(rows).items():
        conn.execute(
            "UPDATE devices SET retained = retained + (SELECT count(*) FROM json_each(?1) AS r "
            "WHERE r.value > devices.cursor AND NOT EXISTS (SELECT 1 FROM device_acks AS a "
            "WHERE a.connection_id = devices.connection_id AND a.seq = r.value)) "
            "WHERE user_id = ?2 AND cursor < ?3",
            (orjson.dumps(seqs).decode(), user, seqs[-1]),
        )
    return Removed(len(rows), counts, max((r[4] for r in rows), default=0))
