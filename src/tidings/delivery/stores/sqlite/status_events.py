"""The :class:`~tidings.delivery.stores.base.StatusEventStore` facet of the pipeline on SQLite:
the outbox of delivery-status webhooks. Its events are written by ``write_history``
(``common.py``); a claim is one transaction on the only writing connection."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from datetime import datetime, timedelta

from tidings.core.models import isoformat, parse_iso, utcnow
from tidings.delivery.status_types import (
    ENDPOINT_REMOVED,
    EVENT_DELIVERED,
    EVENT_FAILED,
    EVENT_PENDING,
    StatusEvent,
    StatusResult,
)
from tidings.delivery.stores.base import StatusEventStore
from tidings.delivery.stores.sqlite.common import SqliteTables, marks
from tidings.delivery.stores.status_rows import EVENT_COLUMNS, PRUNE_BATCH, event_of


class SqliteStatusEvents(SqliteTables, StatusEventStore):
    """Delivery-status events on SQLite."""

    async def set_status_endpoints(self, urls: Sequence[str]) -> None:
        def run(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM pipeline_status_endpoints")
            conn.executemany(
                "INSERT OR IGNORE INTO pipeline_status_endpoints (url) VALUES (?)",
                [(url,) for url in urls],
            )
            conn.execute(
                "UPDATE pipeline_status_events SET state = ?, last_error = ?, "
                "lease_owner = NULL, lease_until = NULL WHERE state = ? "
                "AND endpoint NOT IN (SELECT url FROM pipeline_status_endpoints)",
                (EVENT_FAILED, ENDPOINT_REMOVED, EVENT_PENDING),
            )

        await self.store.write(run)

    async def claim_status_events(self, owner: str, limit: int, lease: float) -> list[StatusEvent]:
        def run(conn: sqlite3.Connection) -> list[StatusEvent]:
            moment = utcnow()
            now, until = isoformat(moment), isoformat(moment + timedelta(seconds=lease))
            ids = [
                row[0]
                for row in conn.execute(
                    "SELECT e.id FROM pipeline_status_events e WHERE e.state = ?1 "
                    "AND e.available_at <= ?2 AND (e.lease_until IS NULL OR e.lease_until < ?2) "
                    "AND NOT EXISTS (SELECT 1 FROM pipeline_status_events p WHERE p.state = ?1 "
                    "AND p.endpoint = e.endpoint AND p.delivery_id = e.delivery_id "
                    "AND p.id < e.id) ORDER BY e.available_at, e.id LIMIT ?3",
                    (EVENT_PENDING, now, limit),
                )
            ]
            if not ids:
                return []
            rows = conn.execute(
                "UPDATE pipeline_status_events SET lease_owner = ?, lease_until = ?, "
                f"attempts = attempts + 1 WHERE id IN ({marks(ids)}) RETURNING {EVENT_COLUMNS}",
                (owner, until, *ids),
            ).fetchall()
            return sorted((event_of(row, parse_iso) for row in rows), key=lambda e: e.id)

        return await self.store.write(run)

    async def complete_status_events(self, owner: str, results: Sequence[StatusResult]) -> int:
        def run(conn: sqlite3.Connection) -> int:
            now = isoformat(utcnow())
            recorded = 0
            for result in results:
                retry = isoformat(result.retry_at) if result.retry_at is not None else None
                row = conn.execute(
                    "UPDATE pipeline_status_events SET state = ?, last_status = ?, "
                    "last_error = ?, last_attempt_at = ?, available_at = COALESCE(?, "
                    "available_at), delivered_at = CASE WHEN ? = ? THEN ? END, "
                    "lease_owner = NULL, lease_until = NULL WHERE id = ? AND lease_owner = ? "
                    "AND attempts = ? AND state = ? RETURNING endpoint, delivery_id",
                    (
                        result.state,
                        result.status,
                        result.error,
                        now,
                        retry,
                        result.state,
                        EVENT_DELIVERED,
                        now,
                        result.id,
                        owner,
                        result.attempts,
                        EVENT_PENDING,
                    ),
                ).fetchone()
                if row is None:
                    continue
                recorded += 1
                if retry is not None:  # the delivery's later events cannot go before it
                    conn.execute(
                        "UPDATE pipeline_status_events SET available_at = ? WHERE state = ? "
                        "AND endpoint = ? AND delivery_id = ? AND id > ? AND available_at < ?",
                        (retry, EVENT_PENDING, row[0], row[1], result.id, retry),
                    )
            return recorded

        return await self.store.write(run)

    async def list_status_events(self, state: str | None, limit: int) -> list[StatusEvent]:
        def run(conn: sqlite3.Connection) -> list[StatusEvent]:
            where = "" if state is None else "WHERE state = ? "
            rows = conn.execute(
                f"SELECT {EVENT_COLUMNS} FROM pipeline_status_events {where}"
                "ORDER BY id DESC LIMIT ?",
                (limit,) if state is None else (state, limit),
            ).fetchall()
            return [event_of(row, parse_iso) for row in rows]

        return await self.store.read(run)

    async def status_event_counts(self) -> dict[str, int]:
        def run(conn: sqlite3.Connection) -> dict[str, int]:
            return {
                state: conn.execute(
                    "SELECT COUNT(*) FROM pipeline_status_events WHERE state = ?", (state,)
                ).fetchone()[0]
                for state in (EVENT_PENDING, EVENT_FAILED)
            }

        return await self.store.read(run)

    async def prune_status_events(self, before: datetime, limit: int = PRUNE_BATCH) -> int:
        def run(conn: sqlite3.Connection) -> int:
            pruned = 0
            for state in (EVENT_DELIVERED, EVENT_FAILED):
                pruned += conn.execute(
                    "DELETE FROM pipeline_status_events WHERE id IN (SELECT id FROM "
                    "pipeline_status_events WHERE state = ? AND at < ? ORDER BY id LIMIT ?)",
                    (state, isoformat(before), limit - pruned),
                ).rowcount
            return pruned

        return await self.store.write(run)
