"""The :class:`~tidings.delivery.stores.base.ClaimStore` facet of the pipeline on SQLite."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import orjson

from tidings.core.models import isoformat, utcnow
from tidings.delivery.models import ACTIVE, PENDING, SENT, STALE, Claim, Outcome
from tidings.delivery.stores.base import Backoff, ClaimStore
from tidings.delivery.stores.rows import LEASE_EXPIRED, claim_of, history_of, retry_at
from tidings.delivery.stores.sqlite.common import SqliteTables, chunks, marks, write_history
from tidings.delivery.stores.sqlite.digests import digest_data, follow_digests


class SqliteClaims(SqliteTables, ClaimStore):
    """The outbox on SQLite: a claim is one transaction on the only writing connection."""

    async def claim(
        self, channels: Sequence[str], owner: str, limit: int, lease: float
    ) -> list[Claim]:
        def run(conn: sqlite3.Connection) -> list[Claim]:
            now = utcnow()
            stamp, until = isoformat(now), isoformat(now + timedelta(seconds=lease))
            ids = [
                row[0]
                for row in conn.execute(
                    f"SELECT delivery_id FROM pipeline_outbox WHERE channel IN "
                    f"({marks(channels)}) AND available_at <= ? AND lease_owner IS NULL "
                    "ORDER BY available_at LIMIT ?",
                    (*channels, stamp, limit),
                )
            ]
            if not ids:
                return []
            listed = marks(ids)
            conn.execute(
                f"UPDATE pipeline_outbox SET lease_owner = ?, lease_until = ?, "
                f"attempt = attempt + 1 WHERE delivery_id IN ({listed})",
                (owner, until, *ids),
            )
            conn.execute(
                f"UPDATE pipeline_deliveries SET state = ?, reason = 'claimed', "
                f"attempts = attempts + 1, updated_at = ? WHERE delivery_id IN ({listed})",
                (ACTIVE, stamp, *ids),
            )
            rows = conn.execute(
                "SELECT d.delivery_id, d.message_id, d.user_id, d.channel, d.address, "
                "o.attempt, m.template_id, m.content, m.data, m.critical, m.escalate, "
                "CASE WHEN m.escalate IS NOT NULL THEN (SELECT x.delivery_id FROM "
                "pipeline_deliveries x WHERE x.message_id = d.message_id AND x.user_id = d.user_id "
                "AND x.channel = 'in_app' LIMIT 1) END, "
                "EXISTS (SELECT 1 FROM pipeline_digest_items i WHERE i.digest_id = d.delivery_id), "
                "m.digest IS NOT NULL, "
                "(SELECT l.locale FROM pipeline_user_locales l WHERE l.user_id = d.user_id), "
                "m.category, m.transactional "
                "FROM pipeline_outbox o JOIN pipeline_deliveries d USING (delivery_id) "
                f"JOIN pipeline_messages m USING (message_id) WHERE o.delivery_id IN ({listed}) "
                "ORDER BY o.available_at",
                ids,
            ).fetchall()
            claims = [claim_of(row) for row in rows]
            write_history(
                conn,
                [(c.delivery_id, ACTIVE, "claimed", f"try {c.attempt} by {owner}") for c in claims],
                stamp,
            )
            return claims

        return await self.store.write(run)

    async def renew(self, owner: str, claims: Sequence[Claim], lease: float) -> set[str]:
        def run(conn: sqlite3.Connection) -> set[str]:
            until = isoformat(utcnow() + timedelta(seconds=lease))
            held: set[str] = set()
            for claim in claims:
                row = conn.execute(
                    "UPDATE pipeline_outbox SET lease_until = ? WHERE delivery_id = ? "
                    "AND lease_owner = ? AND attempt = ? RETURNING delivery_id",
                    (until, claim.delivery_id, owner, claim.attempt),
                ).fetchone()
                if row is not None:
                    held.add(row[0])
            return held

        return await self.store.write(run)

    async def complete_many(self, owner: str, done: Sequence[tuple[Claim, Outcome]]) -> list[bool]:
        def run(conn: sqlite3.Connection) -> list[bool]:
            held = {
                delivery_id: (lease_owner, attempt)
                for chunk in chunks([claim.delivery_id for claim, _ in done])
                for delivery_id, lease_owner, attempt in conn.execute(
                    "SELECT delivery_id, lease_owner, attempt FROM pipeline_outbox "
                    f"WHERE delivery_id IN ({marks(chunk)})",
                    chunk,
                )
            }
            mine = [
                (claim, outcome)
                for claim, outcome in done
                if held.get(claim.delivery_id) == (owner, claim.attempt)
            ]
            now = isoformat(utcnow())
            conn.executemany(
                "UPDATE pipeline_outbox SET lease_owner = NULL, lease_until = NULL, "
                "available_at = ? WHERE delivery_id = ?",
                [
                    (isoformat(retry_at(outcome)), claim.delivery_id)
                    for claim, outcome in mine
                    if outcome.state == PENDING
                ],
            )
            conn.executemany(
                "DELETE FROM pipeline_outbox WHERE delivery_id = ?",
                [(claim.delivery_id,) for claim, outcome in mine if outcome.state != PENDING],
            )
            conn.executemany(
                "UPDATE pipeline_deliveries SET state = ?, reason = ?, "
                "last_error = COALESCE(?, last_error), provider_id = COALESCE(?, provider_id), "
                "updated_at = ?, sent_at = ? WHERE delivery_id = ?",
                [
                    (
                        outcome.state,
                        outcome.reason,
                        outcome.error,
                        outcome.provider_id,
                        now,
                        now if outcome.state == SENT else None,
                        claim.delivery_id,
                    )
                    for claim, outcome in mine
                ],
            )
            write_history(conn, [e for c, o in mine for e in history_of(c, o)], now)
            follow_digests(
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

        return await self.store.write(run)

    async def requeue_stale(self, backoff: Backoff | None = None) -> int:
        def run(conn: sqlite3.Connection) -> int:
            moment = utcnow()
            now = isoformat(moment)
            expired = conn.execute(
                "UPDATE pipeline_outbox SET lease_owner = NULL, lease_until = NULL, "
                "available_at = ? WHERE lease_until < ? RETURNING delivery_id, attempt",
                (now, now),
            ).fetchall()
            ids = [row[0] for row in expired]
            if backoff is not None:
                conn.executemany(
                    "UPDATE pipeline_outbox SET available_at = ? WHERE delivery_id = ?",
                    [
                        (isoformat(moment + timedelta(seconds=backoff(attempt))), delivery_id)
                        for delivery_id, attempt in expired
                    ],
                )
            for chunk in chunks(ids):
                conn.execute(
                    f"UPDATE pipeline_deliveries SET state = ?, reason = 'lease_expired', "
                    f"updated_at = ? WHERE delivery_id IN ({marks(chunk)})",
                    (STALE, now, *chunk),
                )
            write_history(conn, [(i, STALE, "lease_expired", LEASE_EXPIRED) for i in ids], now)
            return len(ids)

        return await self.store.write(run)

    async def digest_items(self, digest_ids: Sequence[str]) -> dict[str, list[Any]]:
        if not digest_ids:
            return {}
        found = await self.store.read(lambda conn: digest_data(conn, digest_ids))
        return {digest: [orjson.loads(data) for data in items] for digest, items in found.items()}

    async def depths(self) -> dict[str, dict[str, int]]:
        def run(conn: sqlite3.Connection) -> dict[str, dict[str, int]]:
            found: dict[str, dict[str, int]] = {}
            for channel, state, n in conn.execute(
                "SELECT o.channel, d.state, COUNT(*) FROM pipeline_outbox o "
                "JOIN pipeline_deliveries d USING (delivery_id) GROUP BY o.channel, d.state"
            ):
                found.setdefault(channel, {})[state] = n
            return found

        return await self.store.read(run)
