"""The DeviceStore facet of the SQLite store."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from datetime import timedelta

from tidings.core.models import (
    AckResult,
    Device,
    Notification,
    NotificationState,
    QueueGap,
    isoformat,
    parse_iso,
    utcnow,
)
from tidings.errors import (
    InvalidArgument,
    NotFound,
)
from tidings.storage.sqlite.engine import SqliteEngine
from tidings.storage.sqlite.rows import (
    DEVICE_COLUMNS,
    NOTE_COLUMNS,
    QUEUE,
    _advance_cursor,
    _bind,
    _cursor,
    _device,
    _notification,
    _owned,
    _queue_page,
)


class SqliteDevices(SqliteEngine):
    """The DeviceStore facet on SQLite."""

    # Devices

    async def bind_device(self, user_id: str, connection_id: str | None) -> Device:
        now = isoformat(utcnow())
        return await self.write(lambda conn: _bind(conn, user_id, connection_id, now))

    async def pending(
        self, connection_id: str, user_id: str, after_seq: int, limit: int
    ) -> list[Notification]:
        def run(conn: sqlite3.Connection) -> list[Notification]:
            cursor = _cursor(conn, connection_id, user_id)
            if cursor is None:
                raise NotFound("unknown device", [connection_id])
            return _queue_page(conn, connection_id, user_id, max(after_seq, cursor), limit)

        return await self.read(run)

    async def ack(
        self, connection_id: str, user_id: str, notification_ids: Sequence[str]
    ) -> AckResult:
        ids = list(dict.fromkeys(notification_ids))

        def run(conn: sqlite3.Connection) -> AckResult:
            cursor = _cursor(conn, connection_id, user_id)
            if cursor is None:
                raise NotFound("unknown device", [connection_id])
            conn.executemany(
                "INSERT OR IGNORE INTO device_acks VALUES (?, ?)",
                [(connection_id, row[1]) for row in _owned(conn, user_id, ids) if row[1] > cursor],
            )
            cursor = _advance_cursor(conn, connection_id, user_id, cursor)
            return AckResult(ids, cursor)

        return await self.write(run)

    async def trim_queue(
        self,
        connection_id: str,
        user_id: str,
        *,
        max_length: int | None,
        max_age: float | None,
    ) -> QueueGap | None:
        cutoff = isoformat(utcnow() - timedelta(seconds=max_age)) if max_age else None

        def run(conn: sqlite3.Connection) -> QueueGap | None:
            found = _cursor(conn, connection_id, user_id)
            if found is None:
                return None
            cursor = start = found
            pending = QUEUE
            skipped, reason = 0, ""
            if cutoff is not None:
                old = conn.execute(
                    f"SELECT count(*), max(seq) {pending} AND creation_date < ?",
                    (user_id, cursor, connection_id, cutoff),
                ).fetchone()
                if old[0]:
                    skipped, reason, cursor = old[0], "max_age", old[1]
            if max_length is not None:
                (total,) = conn.execute(
                    f"SELECT count(*) {pending}",
                    (user_id, cursor, connection_id),
                ).fetchone()
                if total > max_length:
                    (cursor,) = conn.execute(
                        f"SELECT seq {pending} ORDER BY seq LIMIT 1 OFFSET ?",
                        (user_id, cursor, connection_id, total - max_length - 1),
                    ).fetchone()
                    skipped, reason = skipped + total - max_length, reason or "max_length"
            if cursor == start:
                return None
            conn.execute(
                "UPDATE devices SET cursor = ? WHERE connection_id = ?", (cursor, connection_id)
            )
            conn.execute(
                "DELETE FROM device_acks WHERE connection_id = ? AND seq <= ?",
                (connection_id, cursor),
            )
            return QueueGap(reason, skipped, cursor)

        return await self.write(run)

    async def devices_of(self, user_id: str, limit: int = 100) -> list[Device]:
        def run(conn: sqlite3.Connection) -> list[Device]:
            rows = conn.execute(
                f"SELECT {DEVICE_COLUMNS} FROM devices WHERE user_id = ? "
                "ORDER BY last_seen_at DESC LIMIT ?",
                (user_id, limit),
            ).fetchall()
            return [_device(row) for row in rows]

        return await self.read(run)

    async def take_retained(self, connection_id: str, user_id: str) -> int:
        def run(conn: sqlite3.Connection) -> int:
            row = conn.execute(
                "SELECT retained FROM devices WHERE connection_id = ? AND user_id = ?",
                (connection_id, user_id),
            ).fetchone()
            if not row or not row[0]:
                return 0
            conn.execute(
                "UPDATE devices SET retained = 0 WHERE connection_id = ?", (connection_id,)
            )
            return int(row[0])

        return await self.write(run)

    async def forget_device(self, user_id: str, connection_id: str) -> bool:
        def run(conn: sqlite3.Connection) -> bool:
            cursor = conn.execute(
                "DELETE FROM devices WHERE connection_id = ? AND user_id = ?",
                (connection_id, user_id),
            )
            if not cursor.rowcount:
                return False
            conn.execute("DELETE FROM device_acks WHERE connection_id = ?", (connection_id,))
            return True

        return await self.write(run)

    async def notification_log(self, after: str, limit: int) -> tuple[list[Notification], str]:
        # One writer: seq order is commit order, so the seq is the position.
        if after and not after.isdigit():
            raise InvalidArgument(f"not a log position of this store: {after!r}")
        start = int(after or 0)

        def run(conn: sqlite3.Connection) -> list[Notification]:
            rows = conn.execute(
                f"SELECT {NOTE_COLUMNS} FROM notifications WHERE seq > ? ORDER BY seq LIMIT ?",
                (start, limit),
            ).fetchall()
            return [_notification(r, answered=True) for r in rows]

        notes = await self.read(run)
        return notes, str(notes[-1].seq if notes else start)

    async def recent_notifications(self, limit: int) -> list[Notification]:
        def run(conn: sqlite3.Connection) -> list[Notification]:
            rows = conn.execute(
                f"SELECT {NOTE_COLUMNS} FROM notifications ORDER BY seq DESC LIMIT ?",
                (limit,),
            ).fetchall()
            return [_notification(r, answered=True) for r in rows]

        return await self.read(run)

    async def notification_state(
        self, user_id: str, notification_id: str
    ) -> NotificationState | None:
        def run(conn: sqlite3.Connection) -> NotificationState | None:
            row = conn.execute(
                "SELECT n.seen_date, n.read_date, EXISTS (SELECT 1 FROM devices d "
                "WHERE d.user_id = n.user_id AND d.created_at <= n.creation_date "
                "AND (d.cursor >= n.seq OR EXISTS (SELECT 1 FROM device_acks a "
                "WHERE a.connection_id = d.connection_id AND a.seq = n.seq))) "
                "FROM notifications n WHERE n.notification_id = ? AND n.user_id = ?",
                (notification_id, user_id),
            ).fetchone()
            if row is None:
                return None
            seen, read = (
                (parse_iso(row[0]) if row[0] else None),
                (parse_iso(row[1]) if row[1] else None),
            )
            return NotificationState(seen, read, bool(row[2]))

        return await self.read(run)

    async def queue_depths(self, devices: Sequence[tuple[str, str]]) -> dict[str, int]:
        def run(conn: sqlite3.Connection) -> dict[str, int]:
            depths = {}
            for connection_id, user_id in devices:  # one thread hop for the whole list
                cursor = _cursor(conn, connection_id, user_id)
                if cursor is not None:
                    (depths[connection_id],) = conn.execute(
                        f"SELECT count(*) {QUEUE}",
                        (user_id, cursor, connection_id),
                    ).fetchone()
            return depths

        return await self.read(run)
