"""The :class:`~tidings.delivery.stores.base.StatusEventStore` facet of the pipeline on
PostgreSQL: the outbox of delivery-status webhooks. Its events are written by
``write_history`` (``common.py``) in the transaction of each change.

Dispatchers on many nodes claim with ``FOR UPDATE SKIP LOCKED`` and leases, as workers claim
deliveries; never by id order alone, since sequence values are not committed in order. An
event is claimed only while no older event of its delivery waits for its endpoint, so each
endpoint gets a delivery's events in the order of its changes (a delivery's changes are
serialised by its rows' locks, so their ids follow that order).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from tidings.core.models import utcnow
from tidings.delivery.status_types import (
    ENDPOINT_REMOVED,
    EVENT_DELIVERED,
    EVENT_FAILED,
    EVENT_PENDING,
    StatusEvent,
    StatusResult,
)
from tidings.delivery.stores.base import StatusEventStore
from tidings.delivery.stores.postgres.common import PostgresTables
from tidings.delivery.stores.rows import native
from tidings.delivery.stores.status_rows import EVENT_COLUMNS, PRUNE_BATCH, event_of


class PostgresStatusEvents(PostgresTables, StatusEventStore):
    """Delivery-status events on PostgreSQL."""

    async def set_status_endpoints(self, urls: Sequence[str]) -> None:
        async with self.store.connection(transaction=True) as conn:
            await conn.execute("LOCK TABLE pipeline_status_endpoints IN EXCLUSIVE MODE")
            await conn.execute(
                "DELETE FROM pipeline_status_endpoints WHERE NOT url = ANY($1::text[])",
                list(urls),
            )
            await conn.execute(
                "INSERT INTO pipeline_status_endpoints (url) SELECT unnest($1::text[]) "
                "ON CONFLICT DO NOTHING",
                list(urls),
            )
            # a table of a few rows is never analysed by autovacuum: without its size, the
            # planner would cost every write of history as if it held thousands (and JIT it)
            await conn.execute("ANALYZE pipeline_status_endpoints")
            await conn.execute(
                "UPDATE pipeline_status_events SET state = $1, last_error = $2, "
                "lease_owner = NULL, lease_until = NULL WHERE state = $3 "
                "AND NOT endpoint = ANY($4::text[])",
                EVENT_FAILED,
                ENDPOINT_REMOVED,
                EVENT_PENDING,
                list(urls),
            )

    async def claim_status_events(self, owner: str, limit: int, lease: float) -> list[StatusEvent]:
        now = utcnow()
        async with self.store.connection(transaction=True) as conn:
            rows = await conn.fetch(
                "WITH due AS (SELECT e.id FROM pipeline_status_events e WHERE e.state = $1 "
                "AND e.available_at <= $2 AND (e.lease_until IS NULL OR e.lease_until < $2) "
                "AND NOT EXISTS (SELECT 1 FROM pipeline_status_events p WHERE p.state = $1 "
                "AND p.endpoint = e.endpoint AND p.delivery_id = e.delivery_id AND p.id < e.id) "
                "ORDER BY e.available_at, e.id LIMIT $3 FOR UPDATE SKIP LOCKED) "
                "UPDATE pipeline_status_events e SET lease_owner = $4, lease_until = $5, "
                "attempts = e.attempts + 1 FROM due WHERE e.id = due.id RETURNING "
                + ", ".join(f"e.{column}" for column in EVENT_COLUMNS.split(", ")),
                EVENT_PENDING,
                now,
                limit,
                owner,
                now + timedelta(seconds=lease),
            )
        return sorted((event_of(row, native) for row in rows), key=lambda e: e.id)

    async def complete_status_events(self, owner: str, results: Sequence[StatusResult]) -> int:
        if not results:
            return 0
        now = utcnow()
        async with self.store.connection(transaction=True) as conn:
            done = await conn.fetch(
                "UPDATE pipeline_status_events e SET state = t.s, last_status = t.c, "
                "last_error = t.r, last_attempt_at = $7::timestamptz, available_at = COALESCE(t.a, "
                "e.available_at), delivered_at = CASE WHEN t.s = $8::text THEN $7::timestamptz "
                "END, "
                "lease_owner = NULL, lease_until = NULL "
                "FROM unnest($1::bigint[], $2::int[], $3::text[], $4::int[], $5::text[], "
                "$6::timestamptz[]) AS t(i, n, s, c, r, a) "
                "WHERE e.id = t.i AND e.attempts = t.n AND e.lease_owner = $9 AND e.state = $10 "
                "RETURNING e.id, e.endpoint, e.delivery_id, t.a",
                [r.id for r in results],
                [r.attempts for r in results],
                [r.state for r in results],
                [r.status for r in results],
                [r.error for r in results],
                [r.retry_at for r in results],
                now,
                EVENT_DELIVERED,
                owner,
                EVENT_PENDING,
            )
            retried = [row for row in done if row[3] is not None]
            if retried:  # the delivery's later events cannot go before it
                await conn.execute(
                    "UPDATE pipeline_status_events f SET available_at = t.a "
                    "FROM unnest($1::bigint[], $2::text[], $3::text[], $4::timestamptz[]) "
                    "AS t(i, u, d, a) WHERE f.state = $5 AND f.endpoint = t.u "
                    "AND f.delivery_id = t.d AND f.id > t.i AND f.available_at < t.a",
                    [row[0] for row in retried],
                    [row[1] for row in retried],
                    [row[2] for row in retried],
                    [row[3] for row in retried],
                    EVENT_PENDING,
                )
        return len(done)

    async def list_status_events(self, state: str | None, limit: int) -> list[StatusEvent]:
        where, args = ("", [limit]) if state is None else ("WHERE state = $2 ", [limit, state])
        async with self.store.connection() as conn:
            rows = await conn.fetch(
                f"SELECT {EVENT_COLUMNS} FROM pipeline_status_events {where}"
                "ORDER BY id DESC LIMIT $1",
                *args,
            )
        return [event_of(row, native) for row in rows]

    async def status_event_counts(self) -> dict[str, int]:
        async with self.store.connection() as conn:
            return {
                state: int(
                    await conn.fetchval(
                        "SELECT COUNT(*) FROM pipeline_status_events WHERE state = $1", state
                    )
                )
                for state in (EVENT_PENDING, EVENT_FAILED)
            }

    async def prune_status_events(self, before: datetime, limit: int = PRUNE_BATCH) -> int:
        pruned = 0
        async with self.store.connection() as conn:
            for state in (EVENT_DELIVERED, EVENT_FAILED):
                status = await conn.execute(
                    "DELETE FROM pipeline_status_events WHERE id IN (SELECT id FROM "
                    "pipeline_status_events WHERE state = $1 AND at < $2 ORDER BY id LIMIT $3)",
                    state,
                    before,
                    limit - pruned,
                )
                pruned += int(status.split()[-1])
        return pruned
