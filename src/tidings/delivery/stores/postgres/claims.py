"""The :class:`~tidings.delivery.stores.base.ClaimStore` facet of the pipeline on PostgreSQL.

Workers on many nodes claim with ``FOR UPDATE SKIP LOCKED``: each takes rows no other
transaction holds, so two workers never get one delivery, and neither waits for the other.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import orjson

from tidings.core.models import utcnow
from tidings.delivery.models import ACTIVE, PENDING, SENT, STALE, Claim, Outcome
from tidings.delivery.stores.base import Backoff, ClaimStore
from tidings.delivery.stores.postgres.common import PostgresTables, write_history
from tidings.delivery.stores.postgres.digests import digest_data, follow_digests
from tidings.delivery.stores.rows import LEASE_EXPIRED, claim_of, history_of, retry_at


class PostgresClaims(PostgresTables, ClaimStore):
    """The outbox on PostgreSQL."""

    async def claim(
        self, channels: Sequence[str], owner: str, limit: int, lease: float
    ) -> list[Claim]:
        now = utcnow()
        async with self.store.connection(transaction=True) as conn:
            rows = await conn.fetch(
                "WITH due AS (SELECT delivery_id FROM pipeline_outbox "
                "WHERE channel = ANY($1::text[]) AND available_at <= $2 AND lease_owner IS NULL "
                "ORDER BY available_at LIMIT $3 FOR UPDATE SKIP LOCKED), "
                "taken AS (UPDATE pipeline_outbox o SET lease_owner = $4, lease_until = $5, "
                "attempt = o.attempt + 1 FROM due WHERE o.delivery_id = due.delivery_id "
                "RETURNING o.delivery_id, o.attempt, o.available_at), "
                "marked AS (UPDATE pipeline_deliveries d SET state = $6, reason = 'claimed', "
                "attempts = d.attempts + 1, updated_at = $2 FROM taken "
                "WHERE d.delivery_id = taken.delivery_id "
                "RETURNING d.delivery_id, d.message_id, d.user_id, d.channel, d.address::text) "
                "SELECT m.delivery_id, m.message_id, m.user_id, m.channel, m.address, t.attempt, "
                "g.template_id, g.content::text, g.data::text, g.critical, g.escalate::text, "
                "CASE WHEN g.escalate IS NOT NULL THEN (SELECT x.delivery_id FROM "
                "pipeline_deliveries x WHERE x.message_id = m.message_id AND x.user_id = m.user_id "
                "AND x.channel = 'in_app' LIMIT 1) END, "
                "EXISTS (SELECT 1 FROM pipeline_digest_items i WHERE i.digest_id = m.delivery_id), "
                "g.digest IS NOT NULL, "
                "(SELECT l.locale FROM pipeline_user_locales l WHERE l.user_id = m.user_id), "
                "g.category, g.transactional "
                "FROM marked m JOIN taken t USING (delivery_id) "
                "JOIN pipeline_messages g ON g.message_id = m.message_id "
                "ORDER BY t.available_at",
                list(channels),
                now,
                limit,
                owner,
                now + timedelta(seconds=lease),
                ACTIVE,
            )
            claims = [claim_of(row) for row in rows]
            await write_history(
                conn,
                [(c.delivery_id, ACTIVE, "claimed", f"try {c.attempt} by {owner}") for c in claims],
                now,
            )
        return claims

    async def renew(self, owner: str, claims: Sequence[Claim], lease: float) -> set[str]:
        if not claims:
            return set()
        async with self.store.connection() as conn:
            rows = await conn.fetch(
                "UPDATE pipeline_outbox o SET lease_until = $1 "
                "FROM unnest($2::text[], $3::int[]) AS t(i, a) "
                "WHERE o.delivery_id = t.i AND o.attempt = t.a AND o.lease_owner = $4 "
                "RETURNING o.delivery_id",
                utcnow() + timedelta(seconds=lease),
                [c.delivery_id for c in claims],
                [c.attempt for c in claims],
                owner,
            )
        return {row[0] for row in rows}

    async def complete_many(self, owner: str, done: Sequence[tuple[Claim, Outcome]]) -> list[bool]:
        async with self.store.connection(transaction=True) as conn:
            # Rows locked in one order, so two completing workers never deadlock.
            held = {
                row[0]: (row[1], row[2])
                for row in await conn.fetch(
                    "SELECT delivery_id, lease_owner, attempt FROM pipeline_outbox "
                    "WHERE delivery_id = ANY($1::text[]) ORDER BY delivery_id FOR UPDATE",
                    [claim.delivery_id for claim, _ in done],
                )
            }
            mine = [
                (claim, outcome)
                for claim, outcome in done
                if held.get(claim.delivery_id) == (owner, claim.attempt)
            ]
            now = utcnow()
            retried = [(c.delivery_id, retry_at(o)) for c, o in mine if o.state == PENDING]
            if retried:
                await conn.execute(
                    "UPDATE pipeline_outbox o SET lease_owner = NULL, lease_until = NULL, "
                    "available_at = t.a FROM unnest($1::text[], $2::timestamptz[]) AS t(i, a) "
                    "WHERE o.delivery_id = t.i",
                    [i for i, _ in retried],
                    [a for _, a in retried],
                )
            await conn.execute(
                "DELETE FROM pipeline_outbox WHERE delivery_id = ANY($1::text[])",
                [c.delivery_id for c, o in mine if o.state != PENDING],
            )
            await conn.execute(
                "UPDATE pipeline_deliveries d SET state = t.s, reason = t.r, "
                "last_error = COALESCE(t.e, d.last_error), "
                "provider_id = COALESCE(t.p, d.provider_id), updated_at = $6::timestamptz, "
                "sent_at = CASE WHEN t.s = $7::text THEN $6::timestamptz END "
                "FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[]) "
                "AS t(i, s, r, e, p) WHERE d.delivery_id = t.i",
                [c.delivery_id for c, _ in mine],
                [o.state for _, o in mine],
                [o.reason for _, o in mine],
                [o.error for _, o in mine],
                [o.provider_id for _, o in mine],
                now,
                SENT,
            )
            await write_history(conn, [e for c, o in mine for e in history_of(c, o)], now)
            await follow_digests(
                conn,
                [
                    (c.delivery_id, o.state, o.reason)
                    for c, o in mine
                    if c.digest and o.state != PENDING
                ],
                now,
            )
        recorded = {claim.delivery_id for claim, _ in mine}
        return [claim.delivery_id in recorded for claim, _ in done]

    async def requeue_stale(self, backoff: Backoff | None = None) -> int:
        now = utcnow()
        async with self.store.connection(transaction=True) as conn:
            expired = await conn.fetch(
                "UPDATE pipeline_outbox SET lease_owner = NULL, lease_until = NULL, "
                "available_at = $1 WHERE delivery_id IN (SELECT delivery_id FROM "
                "pipeline_outbox WHERE lease_until < $1 FOR UPDATE SKIP LOCKED) "
                "RETURNING delivery_id, attempt",
                now,
            )
            ids = [row[0] for row in expired]
            if ids and backoff is not None:
                await conn.execute(
                    "UPDATE pipeline_outbox o SET available_at = t.a "
                    "FROM unnest($1::text[], $2::timestamptz[]) AS t(i, a) "
                    "WHERE o.delivery_id = t.i",
                    ids,
                    [now + timedelta(seconds=backoff(row[1])) for row in expired],
                )
            if ids:
                await conn.execute(
                    "UPDATE pipeline_deliveries SET state = $1, reason = 'lease_expired', "
                    "updated_at = $2 WHERE delivery_id = ANY($3::text[])",
                    STALE,
                    now,
                    ids,
                )
                await write_history(
                    conn, [(i, STALE, "lease_expired", LEASE_EXPIRED) for i in ids], now
                )
        return len(ids)

    async def digest_items(self, digest_ids: Sequence[str]) -> dict[str, list[Any]]:
        if not digest_ids:
            return {}
        async with self.store.connection() as conn:
            found = await digest_data(conn, digest_ids)
        return {digest: [orjson.loads(data) for data in items] for digest, items in found.items()}

    async def depths(self) -> dict[str, dict[str, int]]:
        found: dict[str, dict[str, int]] = {}
        async with self.store.connection() as conn:
            for channel, state, n in await conn.fetch(
                "SELECT o.channel, d.state, COUNT(*) FROM pipeline_outbox o "
                "JOIN pipeline_deliveries d USING (delivery_id) GROUP BY o.channel, d.state"
            ):
                found.setdefault(channel, {})[state] = n
        return found
