"""The NotificationStore facet of the PostgreSQL store."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tidings.core.models import (
    HistoryState,
    MarkSeenResult,
    NewNotification,
    Notification,
    NotifyResult,
    StateChange,
    UnseenCount,
    utcnow,
)
from tidings.errors import (
    Conflict,
    StoreUnavailable,
)
from tidings.storage._common import (
    HISTORY_WHERE,
    STATE_CHANGES,
    Prepared,
    prepare,
    repeated,
    state_update,
    with_counts,
)
from tidings.storage.counts import (
    COUNT_COLUMNS,
    add_unseen_sql,
    counted,
    lower_counts_sql,
    lowered,
)
from tidings.storage.postgres.engine import PostgresEngine
from tidings.storage.postgres.rows import (
    NOTIFICATION_COLUMNS,
    UNSEEN_WITHIN,
    _notification,
    _owned,
)


class PostgresNotifications(PostgresEngine):
    """The NotificationStore facet on PostgreSQL."""

    # Notifications and counts

    async def create_notification(
        self,
        user_id: str,
        data: Any,
        notification_id: str | None = None,
        category: str | None = None,
    ) -> NotifyResult:
        """Grouped with the notifications other callers create meanwhile into one transaction
        (:meth:`create_notifications`): one commit for a burst of concurrent requests, as the
        SQLite store's group commit does. Each caller still gets only its own result."""
        # Encoded here, so data that cannot be JSON fails this caller, not the whole group.
        item = prepare([NewNotification(user_id, data, notification_id, category)])[0]
        result: NotifyResult = await self._notifies.submit(item)
        return result  # raises the item's Conflict, or what failed its write

    async def _notify_batch(self, batch: list[Prepared]) -> list[Any]:
        try:
            return list(await self._write_batch(batch))
        except StoreUnavailable as exc:  # nothing of the batch was written
            return [exc] * len(batch)
        except Exception as exc:
            if len(batch) == 1:
                return [exc]
            # One item's value was refused and rolled the group back: write each alone, so
            # the refusal reaches its own caller and no other.
            return [await self._write_alone(item) for item in batch]

    async def _write_alone(self, item: Prepared) -> Any:
        try:
            return (await self._write_batch([item]))[0]
        except Exception as exc:
            return exc

    async def create_notifications(
        self, items: Sequence[NewNotification]
    ) -> list[NotifyResult | Conflict]:
        """One transaction and four statements for the whole batch: the users' locks (in one
        order, so concurrent batches cannot deadlock), the ids already used, a multi-row insert,
        and every user's count."""
        return await self._write_batch(prepare(items))

    async def _write_batch(self, prepared: list[Prepared]) -> list[NotifyResult | Conflict]:
        """The batch in its own transaction (one statement, :func:`write_notifications`)."""
        async with self.connection() as conn:
            return await write_notifications(conn, prepared)

    async def unseen(
        self, user_id: str, limit: int, max_bytes: int | None = None
    ) -> list[Notification]:
        async with self.connection() as conn:
            if max_bytes is None:
                rows = await conn.fetch(
                    f"SELECT {NOTIFICATION_COLUMNS} FROM notifications "
                    "WHERE user_id = $1 AND seen_date IS NULL ORDER BY seq LIMIT $2",
                    user_id,
                    limit,
                )
            else:
                rows = await conn.fetch(UNSEEN_WITHIN, user_id, limit, max_bytes)
        return [_notification(row) for row in rows]

    async def mark_seen(self, user_id: str, notification_ids: Sequence[str]) -> MarkSeenResult:
        ids = list(dict.fromkeys(notification_ids))
        if not ids:
            return MarkSeenResult()
        async with self.connection(transaction=True) as conn:
            await conn.execute(USER_LOCK, user_id)
            await _owned(conn, user_id, ids)
            # Rows locked by a concurrent markSeen are re-checked after its commit, so each
            # notification is counted down once.
            seen = await conn.fetch(
                "UPDATE notifications SET seen_date = $3 WHERE user_id = $1 "
                "AND notification_id = ANY($2::text[]) AND seen_date IS NULL "
                "RETURNING notification_id, category",
                user_id,
                ids,
                utcnow(),
            )
            if not seen:
                return MarkSeenResult()
            count = await _lower(conn, user_id, seen, 0)
        return MarkSeenResult([row[0] for row in seen], count)

    async def history(
        self,
        user_id: str,
        state: HistoryState,
        category: str | None,
        before: int | None,
        limit: int,
    ) -> list[Notification]:
        # The user as a range of one and the order of notifications_user: with "user_id =
        # $1" the planner may walk the log's key (seq) backwards and filter by user, fast
        # while the user's rows are the newest and a scan of every older row of everyone at
        # the end of the history (60-140 ms at 100,000, docs/benchmarks.md); a range cannot
        # give that order, so the user's own index is walked whatever the statistics say.
        sql = (
            f"SELECT {NOTIFICATION_COLUMNS} FROM notifications "
            f"WHERE user_id >= $1 AND user_id <= $1 AND seq < $2 AND {HISTORY_WHERE[state]}"
            + (" AND category = $4" if category is not None else "")
            + " ORDER BY user_id DESC, seq DESC LIMIT $3"
        )
        bound = before if before is not None else 2**63 - 1
        params = [user_id, bound, limit, *([category] if category is not None else [])]
        async with self.connection() as conn:
            rows = await conn.fetch(sql, *params)
        return [_notification(row, answered=True) for row in rows]

    async def mark_all_seen(self, user_id: str) -> MarkSeenResult:
        async with self.connection(transaction=True) as conn:
            await conn.execute(USER_LOCK, user_id)
            # Rows a concurrent markSeen holds are re-checked after its commit: each
            # notification is counted down once.
            seen = await conn.fetch(
                "UPDATE notifications SET seen_date = $2 WHERE user_id = $1 "
                "AND seen_date IS NULL RETURNING notification_id, category",
                user_id,
                utcnow(),
            )
            if not seen:
                return MarkSeenResult()
            count = await _lower(conn, user_id, seen, 0)
        return MarkSeenResult([row[0] for row in seen], count)

    async def change_state(
        self, user_id: str, change: StateChange, notification_ids: Sequence[str] | None
    ) -> MarkSeenResult:
        ids = None if notification_ids is None else list(dict.fromkeys(notification_ids))
        if ids == []:
            return MarkSeenResult()
        now = utcnow()
        async with self.connection(transaction=True) as conn:
            await conn.execute(USER_LOCK, user_id)
            if ids is not None:
                await _owned(conn, user_id, ids)  # raises NotFound, nothing changed
            changed: dict[str, list[Any]] = {}
            for column, setting in STATE_CHANGES[change]:
                # Rows a concurrent change holds are re-checked after its commit: each is
                # counted once.
                where = " AND notification_id = ANY($2::text[])" if ids is not None else ""
                args: list[Any] = [user_id, *([ids] if ids is not None else [])]
                sql = (
                    f"UPDATE notifications {state_update(column, setting, f'${len(args) + 1}')} "
                    f"AND user_id = $1{where} RETURNING notification_id, category"
                )
                changed[column] = await conn.fetch(sql, *args, *([now] if setting else []))
            marked = [row[0] for row in changed[column]]
            seen, read = changed.get("seen_date", []), len(changed.get("read_date", []))
            if not marked:  # asked again: nothing changed, no new version
                return MarkSeenResult()
            # A change the counts may not show (an archive of what was read, an unarchive)
            # is still one: the version rises, and every device hears of it.
            count = await _lower(conn, user_id, seen, read)
        return MarkSeenResult(marked, count)

    async def count(self, user_id: str) -> UnseenCount:
        async with self.connection() as conn:
            row = await conn.fetchrow(
                f"SELECT {COUNT_COLUMNS} FROM user_counts WHERE user_id = $1", user_id
            )
        return counted(user_id, row)

    async def counts(self, user_ids: Sequence[str]) -> dict[str, UnseenCount]:
        found = {user_id: UnseenCount(user_id, 0, 0) for user_id in user_ids}
        async with self.connection() as conn:
            rows = await conn.fetch(
                f"SELECT user_id, {COUNT_COLUMNS} FROM user_counts WHERE user_id = ANY($1::text[])",
                list(found),
            )
        for row in rows:
            found[row[0]] = counted(row[0], row[1:])
        return found


#: the batch's counts per user: ``$1`` users, ``$2`` how many each, ``$3`` their categories
# A batch of new notifications in one statement, so in one transaction: the users' locks,
# in the order of their keys (the same locks as every write of a user's notifications: seqs
# commit in order per user, and concurrent batches cannot deadlock), taken by the scalar
# subquery before the first row is inserted; the rows, their ids already taken left out; each
# user's counts raised by what was inserted (count rows in user order). A row per inserted
# notification: its id and seq, its user and the user's counts after the batch.
# Parameters: ids, user ids, data as JSON text, the creation date, categories.
WRITE = (
    "WITH locks AS (SELECT count(pg_advisory_xact_lock(k)) AS n FROM (SELECT DISTINCT "
    "hashtextextended(u, 7) AS k FROM unnest($2::text[]) AS u ORDER BY k) AS keys), "
    "added AS (INSERT INTO notifications (notification_id, user_id, data, creation_date, "
    "category) SELECT i, u, d::json, $4, c FROM unnest($1::text[], $2::text[], $3::text[], "
    "$5::text[]) WITH ORDINALITY AS t(i, u, d, c, o) WHERE (SELECT n FROM locks) >= 0 "
    "ORDER BY o ON CONFLICT (notification_id) DO NOTHING "
    "RETURNING notification_id, seq, user_id, category), "
    "shares AS (SELECT user_id, jsonb_object_agg(category, n) AS categories FROM "
    "(SELECT user_id, category, count(*) AS n FROM added WHERE category IS NOT NULL "
    "GROUP BY user_id, category) AS c GROUP BY user_id), "
    "counts AS ("
    + add_unseen_sql(
        "postgres",
        "SELECT a.user_id, a.n, a.n, a.n, shares.categories FROM (SELECT user_id, count(*) AS n "
        "FROM added GROUP BY user_id) AS a LEFT JOIN shares USING (user_id) ORDER BY a.user_id",
    )
    + ") SELECT added.notification_id, added.seq, counts.* FROM added JOIN counts USING (user_id)"
)


async def write_notifications(conn: Any, prepared: list[Prepared]) -> list[NotifyResult | Conflict]:
    """Write a batch on ``conn``: one statement (:data:`WRITE`) for its new ids, in the
    transaction ``conn`` is in (or its own); a second read only for ids that were already taken
    (a caller's id sent again). Each created notification's result carries the counts its user
    had right after it. Shared by the store's own writes and transactional notify
    (:mod:`tidings.storage.postgres.transactional`), which writes on the application's
    connection inside its transaction; the users' locks are then held until it ends."""
    now = utcnow()
    # An id twice in the batch: written once, its repeats answered from the first.
    fresh: dict[str, Prepared] = {}
    for item in prepared:
        fresh.setdefault(item[3], item)
    ids = list(fresh)
    final: dict[str, UnseenCount] = {}
    seqs: dict[str, int] = {}
    known: dict[str, Notification] = {}
    for row in await conn.fetch(
        WRITE,
        ids,
        [fresh[i][0] for i in ids],
        [fresh[i][2] for i in ids],
        now,
        [fresh[i][4] for i in ids],
    ):
        seqs[row[0]] = row[1]
        final[row[2]] = counted(row[2], row[3:])
    if taken := [nid for nid in ids if nid not in seqs]:
        known = {
            row[0]: _notification(row)
            for row in await conn.fetch(
                f"SELECT {NOTIFICATION_COLUMNS} FROM notifications "
                "WHERE notification_id = ANY($1::text[])",
                taken,
            )
        }
    outcomes: list[Notification | NotifyResult | Conflict] = []
    firsts: dict[str, Notification] = {}
    for item in prepared:
        user_id, data, _, nid, category = item
        if nid in seqs and fresh[nid] is item:
            first = Notification(nid, user_id, data, now, seq=seqs[nid], category=category)
            firsts[nid] = first
            outcomes.append(first)
        elif nid in firsts:  # a repeat, inside this batch, of an item it created
            outcomes.append(repeated(firsts[nid], user_id, data))
        elif nid in known:  # created before
            outcomes.append(repeated(known[nid], user_id, data))
        else:  # taken meanwhile by a transaction of another user, or refused with it
            outcomes.append(Conflict(f"notification_id {nid!r} is taken meanwhile"))
    return with_counts(outcomes, final)


async def _lower(conn: Any, user_id: str, seen: Sequence[Any], read: int) -> UnseenCount:
    """The user's counts after ``seen`` (rows ``(notification_id, category)``) were seen and
    ``read`` notifications read: one change."""
    row = await conn.fetchrow(
        lower_counts_sql("postgres"), user_id, len(seen), read, lowered(r[1] for r in seen)
    )
    return counted(user_id, row)


#: a user's changes of state one after another: two of them updating the same rows in other
#: orders (markAllRead and markAllSeen at once) would deadlock; creations take the same lock
USER_LOCK = "SELECT pg_advisory_xact_lock(hashtextextended($1, 7))"
