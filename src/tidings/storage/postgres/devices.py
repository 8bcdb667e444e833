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
    NotificationState,
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
    _notification,
)

# The queues of a group of devices: ``(i, cursor, notification...)`` rows, a row with a null
# cursor for an unknown device and one with a null notification for an empty page.
# Parameters: connection ids, user ids, after-seqs, limits.
QUEUES = (
    "SELECT t.i, d.cursor, n.* FROM unnest($1::text[], $2::text[], $3::bigint[], $4::int[]) "
    "WITH ORDINALITY AS t(connection_id, user_id, after, most, i) "
    "LEFT JOIN devices AS d ON d.connection_id = t.connection_id AND d.user_id = t.user_id "
    f"LEFT JOIN LATERAL (SELECT {NOTIFICATION_COLUMNS} FROM notifications AS q "
    "WHERE q.user_id = t.user_id AND q.seq > greatest(t.after, d.cursor) AND NOT EXISTS "
    "(SELECT 1 FROM device_acks AS a WHERE a.connection_id = t.connection_id AND a.seq = q.seq) "
    "ORDER BY q.seq LIMIT t.most) AS n ON d.cursor IS NOT NULL ORDER BY t.i, n.seq"
)

# Where one notification stands: seen, read, acknowledged by a device of its user that existed
# when it was created. Parameters: notification id, user id.
NOTIFICATION_STATE = (
    "SELECT n.seen_date, n.read_date, EXISTS (SELECT 1 FROM devices d "
    "WHERE d.user_id = n.user_id AND d.created_at <= n.creation_date AND (d.cursor >= n.seq "
    "OR EXISTS (SELECT 1 FROM device_acks a WHERE a.connection_id = d.connection_id "
    "AND a.seq = n.seq))) FROM notifications n WHERE n.notification_id = $1 AND n.user_id = $2"
)

# Acknowledgements of a group of distinct devices, locked beforehand: per item (in order)
# whether the device is the user's, the ids found among the user's notifications, and the
# cursor after. An item whose device is unknown or whose ids are not all the user's writes
# nothing. The acknowledged seqs above the cursor (the stored ones and the new ones) are
# folded into it up to the first notification not acknowledged; the rest are stored.
# Parameters: connection ids, user ids, then the ids asked as (item number, id) pairs.
ACK = (
    "WITH item AS (SELECT * FROM unnest($1::text[], $2::text[]) WITH ORDINALITY "
    "AS t(connection_id, user_id, i)), "
    "asked AS (SELECT * FROM unnest($3::bigint[], $4::text[]) AS a(i, notification_id)), "
    "tally AS (SELECT i, count(*) AS n FROM asked GROUP BY i), "
    "found AS (SELECT asked.i, count(*) AS n, array_agg(n.notification_id) AS ids, "
    "array_agg(n.seq) AS seqs FROM asked JOIN item USING (i) "
    "JOIN notifications AS n ON n.notification_id = asked.notification_id "
    "AND n.user_id = item.user_id GROUP BY asked.i), "
    "ok AS (SELECT item.*, d.cursor, coalesce(found.seqs, '{}') AS new "
    "FROM item JOIN devices AS d USING (connection_id, user_id) "
    "LEFT JOIN tally USING (i) LEFT JOIN found USING (i) "
    "WHERE coalesce(tally.n, 0) = coalesce(found.n, 0)), "
    "acked AS (SELECT ok.*, ARRAY(SELECT s FROM unnest(ok.new) AS s WHERE s > ok.cursor "
    "UNION SELECT a.seq FROM device_acks AS a "
    "WHERE a.connection_id = ok.connection_id AND a.seq > ok.cursor) AS seqs FROM ok), "
    "gap AS (SELECT acked.*, (SELECT min(n.seq) FROM notifications AS n "
    "WHERE n.user_id = acked.user_id AND n.seq > acked.cursor "
    "AND NOT n.seq = ANY(acked.seqs)) AS first FROM acked), "
    "moved AS (SELECT gap.*, coalesce((SELECT max(s) FROM unnest(gap.seqs) AS s "
    "WHERE gap.first IS NULL OR s < gap.first), gap.cursor) AS upto FROM gap), "
    "stepped AS (UPDATE devices AS d SET cursor = moved.upto FROM moved "
    "WHERE d.connection_id = moved.connection_id AND moved.upto > moved.cursor), "
    "dropped AS (DELETE FROM device_acks AS a USING moved "
    "WHERE a.connection_id = moved.connection_id AND a.seq <= moved.upto "
    "AND moved.upto > moved.cursor), "
    "stored AS (INSERT INTO device_acks SELECT moved.connection_id, s "
    "FROM moved, unnest(moved.new) AS s WHERE s > moved.upto ON CONFLICT DO NOTHING) "
    "SELECT EXISTS (SELECT 1 FROM devices AS d WHERE d.connection_id = item.connection_id "
    "AND d.user_id = item.user_id), found.ids, moved.upto "
    "FROM item LEFT JOIN found USING (i) LEFT JOIN moved USING (i) ORDER BY item.i"
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
        page: list[Notification] = await self._reads.submit(
            (connection_id, user_id, after_seq, limit)
        )
        return page

    async def _pending_batch(self, batch: list[tuple[str, str, int, int]]) -> list[Any]:
        """Every queue of the group in one statement: a page per item, or NotFound."""
        async with self.connection() as conn:
            rows = await conn.fetch(QUEUES, *map(list, zip(*batch, strict=True)))
        pages: list[Any] = [[] for _ in batch]
        for row in rows:
            index = row[0] - 1
            if row[1] is None:
                pages[index] = NotFound("unknown device", [batch[index][0]])
            elif row[2] is not None:
                pages[index].append(_notification(row[2:]))
        return pages

    async def ack(
        self, connection_id: str, user_id: str, notification_ids: Sequence[str]
    ) -> AckResult:
        ids = list(dict.fromkeys(notification_ids))
        result: AckResult = await self._acks.submit((connection_id, user_id, ids))
        return result

    async def _ack_batch(self, batch: list[tuple[str, str, list[str]]]) -> list[Any]:
        """The group's acknowledgements in one transaction: its devices locked (in one order,
        so groups on several nodes cannot deadlock), then one statement per round of distinct
        devices (a device acknowledging twice in the group takes a second round, which sees
        the first's writes)."""
        outcomes: list[Any] = [None] * len(batch)
        # A device's n-th acknowledgement in the group goes in round n.
        times: dict[str, int] = {}
        rounds: list[list[int]] = []
        for index, (connection_id, _, _) in enumerate(batch):
            n = times[connection_id] = times.get(connection_id, -1) + 1
            if n == len(rounds):
                rounds.append([])
            rounds[n].append(index)

        async def run() -> None:
            async with self.connection(transaction=True) as conn:
                await conn.execute(
                    "SELECT 1 FROM devices WHERE connection_id = ANY($1::text[]) "
                    "ORDER BY connection_id FOR UPDATE",
                    sorted(times),
                )
                for members in rounds:
                    rows = await conn.fetch(
                        ACK,
                        [batch[i][0] for i in members],
                        [batch[i][1] for i in members],
                        [n for n, i in enumerate(members, 1) for _ in batch[i][2]],
                        [nid for i in members for nid in batch[i][2]],
                    )
                    for i, (known, found, cursor) in zip(members, rows, strict=True):
                        connection_id, _, ids = batch[i]
                        have = set(found or ())
                        missing = [nid for nid in ids if nid not in have]
                        if not known:
                            outcomes[i] = NotFound("unknown device", [connection_id])
                        elif missing:
                            outcomes[i] = NotFound("unknown notification ids", missing)
                        else:
                            outcomes[i] = AckResult(ids, cursor)

        await self.retrying(run)
        return outcomes

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

    async def notification_state(
        self, user_id: str, notification_id: str
    ) -> NotificationState | None:
        async with self.connection() as conn:
            row = await conn.fetchrow(NOTIFICATION_STATE, notification_id, user_id)
        return None if row is None else NotificationState(row[0], row[1], bool(row[2]))

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
