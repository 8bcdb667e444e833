"""The DeviceStore facet of the PostgreSQL store."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from tidings.core.ids import CONNECTION_ID, new_id
from tidings.core.models import (
    AckResult,
    Device,
    Notification,
    QueueGap,
    utcnow,
)
from tidings.errors import (
    InvalidArgument,
    NotFound,
)
from tidings.storage.postgres.engine import PostgresEngine
from tidings.storage.postgres.rows import (
    NOTIFICATION_COLUMNS,
    QUEUE,
    _advance_cursor,
    _notification,
    _owned,
)


class PostgresDevices(PostgresEngine):
    """The DeviceStore facet on PostgreSQL."""

    # Devices

    async def bind_device(self, user_id: str, connection_id: str | None) -> Device:
        now = utcnow()
        columns = "connection_id, user_id, created_at, last_seen_at, cursor"
        insert = (
            f"INSERT INTO devices ({columns}) VALUES ($1, $2, $3, $3, "
            "(SELECT coalesce(max(seq), 0) FROM notifications WHERE user_id = $2)) "
        )
        async with self.connection(transaction=True) as conn:
            # A new device's queue starts after the user's latest notification: read it while
            # none of the user's notifications is half-committed (see create_notification).
            await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 7))", user_id)
            if connection_id and CONNECTION_ID.match(connection_id):
                row = await conn.fetchrow(
                    "UPDATE devices SET last_seen_at = $3 WHERE connection_id = $1 "
                    f"AND user_id = $2 RETURNING {columns}",
                    connection_id,
                    user_id,
                    now,
                )
                if row is not None:
                    return Device(*row)
                row = await conn.fetchrow(
                    insert + f"ON CONFLICT DO NOTHING RETURNING {columns}",
                    connection_id,
                    user_id,
                    now,
                )
                if row is not None:
                    return Device(*row)
            row = await conn.fetchrow(insert + f"RETURNING {columns}", new_id(), user_id, now)
        return Device(*row)

    async def _cursor(self, conn: Any, connection_id: str, user_id: str, *, lock: bool) -> int:
        cursor = await conn.fetchval(
            "SELECT cursor FROM devices WHERE connection_id = $1 AND user_id = $2"
            + (" FOR UPDATE" if lock else ""),
            connection_id,
            user_id,
        )
        if cursor is None:
            raise NotFound("unknown device", [connection_id])
        return int(cursor)

    async def pending(
        self, connection_id: str, user_id: str, after_seq: int, limit: int
    ) -> list[Notification]:
        async with self.connection() as conn:
            cursor = await self._cursor(conn, connection_id, user_id, lock=False)
            rows = await conn.fetch(
                f"SELECT {NOTIFICATION_COLUMNS} {QUEUE} ORDER BY seq LIMIT $4",
                user_id,
                max(after_seq, cursor),
                connection_id,
                limit,
            )
        return [_notification(row) for row in rows]

    async def ack(
        self, connection_id: str, user_id: str, notification_ids: Sequence[str]
    ) -> AckResult:
        ids = list(dict.fromkeys(notification_ids))
        async with self.connection(transaction=True) as conn:
            cursor = await self._cursor(conn, connection_id, user_id, lock=True)
            above = [row[1] for row in await _owned(conn, user_id, ids) if row[1] > cursor]
            if above:
                await conn.execute(
                    "INSERT INTO device_acks SELECT $1, unnest($2::bigint[]) "
                    "ON CONFLICT DO NOTHING",
                    connection_id,
                    above,
                )
            cursor = await _advance_cursor(conn, connection_id, user_id, cursor)
        return AckResult(ids, cursor)

    async def trim_queue(
        self,
        connection_id: str,
        user_id: str,
        *,
        max_length: int | None,
        max_age: float | None,
    ) -> QueueGap | None:
        pending = QUEUE
        async with self.connection(transaction=True) as conn:
            try:
                cursor = start = await self._cursor(conn, connection_id, user_id, lock=True)
            except NotFound:
                return None
            skipped, reason = 0, ""
            if max_age:
                old = await conn.fetchrow(
                    f"SELECT count(*), max(seq) {pending} AND creation_date < $4",
                    user_id,
                    cursor,
                    connection_id,
                    utcnow() - timedelta(seconds=max_age),
                )
                if old[0]:
                    skipped, reason, cursor = old[0], "max_age", old[1]
            if max_length is not None:
                total = await conn.fetchval(
                    f"SELECT count(*) {pending}",
                    user_id,
                    cursor,
                    connection_id,
                )
                if total > max_length:
                    cursor = await conn.fetchval(
                        f"SELECT seq {pending} ORDER BY seq LIMIT 1 OFFSET $4",
                        user_id,
                        cursor,
                        connection_id,
                        total - max_length - 1,
                    )
                    skipped, reason = skipped + total - max_length, reason or "max_length"
            if cursor == start:
                return None
            await conn.execute(
                "UPDATE devices SET cursor = $2 WHERE connection_id = $1", connection_id, cursor
            )
            await conn.execute(
                "DELETE FROM device_acks WHERE connection_id = $1 AND seq <= $2",
                connection_id,
                cursor,
            )
        return QueueGap(reason, skipped, cursor)

    async def devices_of(self, user_id: str, limit: int = 100) -> list[Device]:
        async with self.connection() as conn:
            rows = await conn.fetch(
                "SELECT connection_id, user_id, created_at, last_seen_at, cursor FROM devices "
                "WHERE user_id = $1 ORDER BY last_seen_at DESC LIMIT $2",
                user_id,
                limit,
            )
        return [Device(*row) for row in rows]

    async def take_retained(self, connection_id: str, user_id: str) -> int:
        async with self.connection(transaction=True) as conn:
            taken = await conn.fetchval(
                "SELECT retained FROM devices WHERE connection_id = $1 AND user_id = $2 FOR UPDATE",
                connection_id,
                user_id,
            )
            if taken:
                await conn.execute(
                    "UPDATE devices SET retained = 0 WHERE connection_id = $1", connection_id
                )
        return int(taken or 0)

    async def forget_device(self, user_id: str, connection_id: str) -> bool:
        async with self.connection(transaction=True) as conn:
            status = await conn.execute(
                "DELETE FROM devices WHERE connection_id = $1 AND user_id = $2",
                connection_id,
                user_id,
            )
            if status == "DELETE 0":
                return False
            await conn.execute("DELETE FROM device_acks WHERE connection_id = $1", connection_id)
        return True

    async def notification_log(self, after: str, limit: int) -> tuple[list[Notification], str]:
        # Position "txid.seq": only transactions older than every running one are read, so a
        # row can never appear behind a consumer's position later (see migration 005).
        txid, _, seq = (after or "0.0").partition(".")
        if not (txid.isdigit() and seq.isdigit()):
            raise InvalidArgument(f"not a log position of this store: {after!r}")
        async with self.connection() as conn:
            rows = await conn.fetch(
                f"SELECT {NOTIFICATION_COLUMNS}, txid::text FROM notifications "
                "WHERE (txid, seq) > ($1::text::xid8, $2::bigint) "
                "AND txid < pg_snapshot_xmin(pg_current_snapshot()) "
                "ORDER BY txid, seq LIMIT $3",
                txid,
                int(seq),
                limit,
            )
        if not rows:
            return [], after or "0.0"
        notes = [_notification(row, answered=True) for row in rows]
        return notes, f"{rows[-1][9]}.{rows[-1][5]}"

    async def recent_notifications(self, limit: int) -> list[Notification]:
        async with self.connection() as conn:
            rows = await conn.fetch(
                f"SELECT {NOTIFICATION_COLUMNS} FROM notifications ORDER BY seq DESC LIMIT $1",
                limit,
            )
        return [_notification(row, answered=True) for row in rows]

    async def queue_depths(self, devices: Sequence[tuple[str, str]]) -> dict[str, int]:
        if not devices:
            return {}
        async with self.connection() as conn:
            rows = await conn.fetch(
                "SELECT d.connection_id, (SELECT count(*) FROM notifications n "
                "WHERE n.user_id = d.user_id AND n.seq > d.cursor AND NOT EXISTS "
                "(SELECT 1 FROM device_acks a WHERE a.connection_id = d.connection_id "
                "AND a.seq = n.seq)) FROM devices d JOIN unnest($1::text[], $2::text[]) "
                "AS t(connection_id, user_id) USING (connection_id, user_id)",
                [c for c, _ in devices],
                [u for _, u in devices],
            )
        return {row[0]: int(row[1]) for row in rows}
