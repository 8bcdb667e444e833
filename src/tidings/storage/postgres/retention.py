"""The RetentionStore facet of the PostgreSQL store."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from tidings.core.models import Removed, RetentionScope
from tidings.storage._common import REMOVED_COLUMNS, bisect_log, scope_where
from tidings.storage.counts import counted, lower_counts_sql, removals, removed_seqs
from tidings.storage.postgres.engine import PostgresEngine


class PostgresRetention(PostgresEngine):
    """The RetentionStore facet on PostgreSQL."""

    async def log_position_before(self, when: datetime) -> int:
        async with self.connection() as conn:
            top = await conn.fetchval("SELECT coalesce(max(seq), 0) FROM notifications")
            steps = bisect_log(top)
            try:
                probe = next(steps)
                while True:
                    row = await conn.fetchrow(
                        "SELECT seq, creation_date < $1 FROM notifications WHERE seq >= $2 "
                        "ORDER BY seq LIMIT 1",
                        when,
                        probe,
                    )
                    probe = steps.send((row[0], row[1]) if row else None)
            except StopIteration as done:
                return int(done.value)

    async def remove_in_range(
        self, scope: RetentionScope, after: int, upto: int, limit: int
    ) -> Removed:
        where, params = scope_where(scope, "$4", "postgres")
        chosen = (
            f"SELECT seq FROM notifications WHERE seq > $1 AND seq <= $2 AND {where} "
            "ORDER BY seq LIMIT $3"
        )
        return await self._remove(chosen, [after, upto, limit, *params])

    async def users_notified_after(self, position: int, limit: int) -> tuple[list[str], int]:
        async with self.connection() as conn:
            rows = await conn.fetch(
                "SELECT user_id, seq FROM notifications WHERE seq > $1 ORDER BY seq LIMIT $2",
                position,
                limit,
            )
        return list(dict.fromkeys(r[0] for r in rows)), rows[-1][1] if rows else position

    async def remove_beyond(
        self, user_id: str, scope: RetentionScope, keep: int, limit: int
    ) -> Removed:
        where, params = scope_where(scope, "$4", "postgres")
        chosen = (
            f"SELECT seq FROM notifications WHERE user_id = $1 AND {where} "
            "ORDER BY seq DESC LIMIT $2 OFFSET $3"
        )
        return await self._remove(chosen, [user_id, limit, keep, *params])

    async def _remove(self, chosen: str, params: list[Any]) -> Removed:
        """Remove the notifications ``chosen`` selects (by seq) and lower their users'
        counts, in one transaction."""
        async with self.connection(transaction=True) as conn:
            # The users' locks first, in the order creations take them: a change of state
            # under way finishes before these rows go.
            await conn.execute(
                "SELECT pg_advisory_xact_lock(k) FROM (SELECT DISTINCT "
                f"hashtextextended(user_id, 7) AS k FROM notifications WHERE seq IN ({chosen}) "
                "ORDER BY k) AS locks",
                *params,
            )
            rows = await conn.fetch(
                f"DELETE FROM notifications WHERE seq IN ({chosen}) RETURNING {REMOVED_COLUMNS}",
                *params,
            )
            counts = []
            for user, (unseen, unread, categories) in sorted(removals(rows).items()):
                row = await conn.fetchrow(
                    lower_counts_sql("postgres"), user, unseen, unread, categories
                )
                counts.append(counted(user, row))
            for user, seqs in sorted(removed_seqs(rows).items()):
                await conn.execute(
                    "UPDATE devices AS d SET retained = d.retained + (SELECT count(*) "
                    "FROM unnest($2::bigint[]) AS r(seq) WHERE r.seq > d.cursor AND NOT EXISTS "
                    "(SELECT 1 FROM device_acks AS a WHERE a.connection_id = d.connection_id "
                    "AND a.seq = r.seq)) WHERE d.user_id = $1 AND d.cursor < $3",
                    user,
                    seqs,
                    seqs[-1],
                )
        return Removed(len(rows), counts, max((r[4] for r in rows), default=0))
