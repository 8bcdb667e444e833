"""The NotificationStore facet of the SQLite store."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

import orjson

from tidings.core.ids import new_sorted_id
from tidings.core.models import (
    HistoryState,
    MarkSeenResult,
    NewNotification,
    Notification,
    NotifyResult,
    StateChange,
    UnseenCount,
    isoformat,
    utcnow,
)
from tidings.errors import (
    Conflict,
)
from tidings.storage._common import (
    HISTORY_WHERE,
    STATE_CHANGES,
    canonical_json,
    prepare,
    repeated,
    state_update,
    with_counts,
)
from tidings.storage.counts import (
    COUNT_COLUMNS,
    add_unseen_sql,
    categories_json,
    counted,
    lower_counts_sql,
    lowered,
)
from tidings.storage.sqlite.engine import SqliteEngine
from tidings.storage.sqlite.rows import (
    NOTE_COLUMNS,
    UNSEEN_WITHIN,
    _insert_rows,
    _notification,
    _owned,
    chunked,
    marks,
)


class SqliteNotifications(SqliteEngine):
    """The NotificationStore facet on SQLite."""

    # Notifications and counts

    async def create_notification(
        self,
        user_id: str,
        data: Any,
        notification_id: str | None = None,
        category: str | None = None,
    ) -> NotifyResult:
        encoded = orjson.dumps(data)
        nid = notification_id or new_sorted_id()
        now = utcnow()

        def run(conn: sqlite3.Connection) -> NotifyResult:
            row = conn.execute(
                f"SELECT {NOTE_COLUMNS} FROM notifications WHERE notification_id = ?",
                (nid,),
            ).fetchone()
            if row is not None:
                existing = _notification(row)
                if existing.user_id != user_id or canonical_json(existing.data) != canonical_json(
                    data
                ):
                    raise Conflict(
                        f"notification_id {nid!r} is already used by another notification"
                    )
                return NotifyResult(existing, created=False)
            seq = conn.execute(
                "INSERT INTO notifications (notification_id, user_id, data, creation_date, "
                "category) VALUES (?, ?, ?, ?, ?)",
                (nid, user_id, encoded.decode(), isoformat(now), category),
            ).lastrowid
            row = conn.execute(
                add_unseen_sql("sqlite", "VALUES (?, 1, 1, 1, ?)"),
                (user_id, categories_json([category])),
            ).fetchone()
            return NotifyResult(
                Notification(nid, user_id, data, now, seq=seq or 0, category=category),
                created=True,
                count=counted(user_id, row[1:]),
            )

        return await self.write(run)

    async def create_notifications(
        self, items: Sequence[NewNotification]
    ) -> list[NotifyResult | Conflict]:
        """One transaction for the whole batch: a lookup of the ids already used, one insert
        per new notification, one count update per user."""
        now = utcnow()
        stamp = isoformat(now)
        prepared = prepare(items)

        # Only ids the callers chose can be known already; generated ones are new.
        ids = [item.notification_id for item in items if item.notification_id]

        def run(conn: sqlite3.Connection) -> list[NotifyResult | Conflict]:
            known: dict[str, Notification] = {}
            for chunk in chunked(ids):
                for row in conn.execute(
                    f"SELECT {NOTE_COLUMNS} FROM notifications WHERE notification_id IN "
                    f"({marks(chunk)})",
                    chunk,
                ):
                    known[row[0]] = _notification(row)
            outcomes: list[Notification | NotifyResult | Conflict] = []
            added: dict[str, list[str | None]] = {}
            rows: list[tuple[int, str, str, str, str, str | None]] = []
            # Seqs are handed out here (one writer, inside BEGIN IMMEDIATE) so the inserts can
            # run as one executemany; AUTOINCREMENT's counter follows the largest one.
            last = conn.execute(
                "SELECT max(coalesce((SELECT seq FROM sqlite_sequence "
                "WHERE name = 'notifications'), 0), "
                "coalesce((SELECT max(seq) FROM notifications), 0))"
            ).fetchone()[0]
            for user_id, data, encoded, nid, category in prepared:
                prior = known.get(nid)
                if prior is not None:
                    outcomes.append(repeated(prior, user_id, data))
                    continue
                last += 1
                rows.append((last, nid, user_id, encoded, stamp, category))
                note = Notification(nid, user_id, data, now, seq=last, category=category)
                known[nid] = note
                outcomes.append(note)
                added.setdefault(user_id, []).append(category)
            _insert_rows(conn, rows)
            # Every user's counts in one statement ("WHERE true" lets SQLite parse the upsert);
            # the version rises by one per notification, as if they had come one by one.
            each = {u: [len(cats), categories_json(cats)] for u, cats in added.items()}
            final = {
                row[0]: counted(row[0], row[1:])
                for row in conn.execute(
                    add_unseen_sql("sqlite", ADDED_ROWS), (orjson.dumps(each).decode(),)
                )
            }
            return with_counts(outcomes, final)

        return await self.write(run)

    async def unseen(
        self, user_id: str, limit: int, max_bytes: int | None = None
    ) -> list[Notification]:
        def run(conn: sqlite3.Connection) -> list[Notification]:
            if max_bytes is None:
                rows = conn.execute(
                    f"SELECT {NOTE_COLUMNS} "
                    "FROM notifications WHERE user_id = ? AND seen_date IS NULL "
                    "ORDER BY seq LIMIT ?",
                    (user_id, limit),
                ).fetchall()
            else:
                rows = conn.execute(UNSEEN_WITHIN, (user_id, limit, max_bytes)).fetchall()
            return [_notification(row) for row in rows]

        return await self.read(run)

    async def mark_seen(self, user_id: str, notification_ids: Sequence[str]) -> MarkSeenResult:
        ids = list(dict.fromkeys(notification_ids))
        if not ids:
            return MarkSeenResult()
        now = isoformat(utcnow())

        def run(conn: sqlite3.Connection) -> MarkSeenResult:
            fresh = [row[0] for row in _owned(conn, user_id, ids) if row[2] is None]
            if not fresh:
                return MarkSeenResult()
            seen = conn.execute(
                f"UPDATE notifications SET seen_date = ? WHERE user_id = ? AND seen_date IS NULL "
                f"AND notification_id IN ({marks(fresh)}) RETURNING notification_id, category",
                (now, user_id, *fresh),
            ).fetchall()
            return MarkSeenResult([r[0] for r in seen], _lower(conn, user_id, seen, 0))

        return await self.write(run)

    async def history(
        self,
        user_id: str,
        state: HistoryState,
        category: str | None,
        before: int | None,
        limit: int,
    ) -> list[Notification]:
        sql = (
            f"SELECT {NOTE_COLUMNS} FROM notifications WHERE user_id = ? AND seq < ? "
            f"AND {HISTORY_WHERE[state]}"
            + (" AND category = ?" if category is not None else "")
            + " ORDER BY seq DESC LIMIT ?"
        )
        bound = before if before is not None else 2**63 - 1
        params = (user_id, bound, *([category] if category is not None else []), limit)

        def run(conn: sqlite3.Connection) -> list[Notification]:
            return [_notification(row, answered=True) for row in conn.execute(sql, params)]

        return await self.read(run)

    async def mark_all_seen(self, user_id: str) -> MarkSeenResult:
        now = isoformat(utcnow())

        def run(conn: sqlite3.Connection) -> MarkSeenResult:
            seen = conn.execute(
                "UPDATE notifications SET seen_date = ? WHERE user_id = ? "
                "AND seen_date IS NULL RETURNING notification_id, category",
                (now, user_id),
            ).fetchall()
            if not seen:
                return MarkSeenResult()
            return MarkSeenResult([r[0] for r in seen], _lower(conn, user_id, seen, 0))

        return await self.write(run)

    async def change_state(
        self, user_id: str, change: StateChange, notification_ids: Sequence[str] | None
    ) -> MarkSeenResult:
        ids = None if notification_ids is None else list(dict.fromkeys(notification_ids))
        if ids == []:
            return MarkSeenResult()
        now = isoformat(utcnow())
        target = "" if ids is None else f" AND notification_id IN ({marks(ids)})"

        def run(conn: sqlite3.Connection) -> MarkSeenResult:
            if ids is not None:
                _owned(conn, user_id, ids)  # raises NotFound, nothing changed
            changed: dict[str, list[Any]] = {}
            for column, setting in STATE_CHANGES[change]:
                changed[column] = conn.execute(
                    f"UPDATE notifications {state_update(column, setting, '?')} "
                    f"AND user_id = ?{target} RETURNING notification_id, category",
                    (*([now] if setting else []), user_id, *(ids or [])),
                ).fetchall()
            marked = [row[0] for row in changed[column]]
            seen, read = changed.get("seen_date", []), len(changed.get("read_date", []))
            if not marked:  # asked again: nothing changed, no new version
                return MarkSeenResult()
            # A change the counts may not show (an archive of what was read, an unarchive)
            # is still one: the version rises, and every device hears of it.
            return MarkSeenResult(marked, _lower(conn, user_id, seen, read))

        return await self.write(run)

    async def count(self, user_id: str) -> UnseenCount:
        def run(conn: sqlite3.Connection) -> UnseenCount:
            row = conn.execute(
                f"SELECT {COUNT_COLUMNS} FROM user_counts WHERE user_id = ?", (user_id,)
            ).fetchone()
            return counted(user_id, row)

        return await self.read(run)

    async def counts(self, user_ids: Sequence[str]) -> dict[str, UnseenCount]:
        def run(conn: sqlite3.Connection) -> dict[str, UnseenCount]:
            found = {user_id: UnseenCount(user_id, 0, 0) for user_id in user_ids}
            for chunk in chunked(list(found)):
                for row in conn.execute(
                    f"SELECT user_id, {COUNT_COLUMNS} FROM user_counts WHERE user_id IN "
                    f"({marks(chunk)})",
                    chunk,
                ):
                    found[row[0]] = counted(row[0], row[1:])
            return found

        return await self.read(run)


#: the batch's counts per user, from ``{user_id: [n, categories JSON or null]}``
ADDED_ROWS = (
    "SELECT key, value ->> 0, value ->> 0, value ->> 0, value ->> 1 FROM json_each(?) WHERE true"
)


def _lower(conn: sqlite3.Connection, user_id: str, seen: Sequence[Any], read: int) -> UnseenCount:
    """The user's counts after ``seen`` (rows ``(notification_id, category)``) were seen and
    ``read`` notifications read: one change."""
    row = conn.execute(
        lower_counts_sql("sqlite"), (len(seen), read, lowered(r[1] for r in seen), user_id)
    ).fetchone()
    return counted(user_id, row)
