"""The PushTokenStore facet of the PostgreSQL store."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from tidings.core.ids import new_id
from tidings.core.models import PushReceipt, PushToken, utcnow
from tidings.storage.postgres.engine import PostgresEngine

COLUMNS = "token_id, user_id, platform, token, app_id, created_at, last_used_at"


def push_token(row: Any) -> PushToken:
    return PushToken(row[0], row[1], row[2], row[3], row[4], row[5], row[6])


class PostgresPushTokens(PostgresEngine):
    """The PushTokenStore facet on PostgreSQL."""

    async def register_push_token(
        self,
        user_id: str,
        platform: str,
        token: str,
        app_id: str | None,
        *,
        max_per_user: int,
    ) -> tuple[PushToken, bool]:
        async with self.connection(transaction=True) as conn:
            # One registration of a (platform, token) at a time, across users and nodes.
            await conn.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", f"{platform}:{token}"
            )
            row = await conn.fetchrow(
                f"SELECT {COLUMNS} FROM push_tokens WHERE platform = $1 AND token = $2",
                platform,
                token,
            )
            if row is not None and row["user_id"] == user_id:
                await conn.execute(
                    "UPDATE push_tokens SET app_id = $1 WHERE token_id = $2", app_id, row[0]
                )
                return push_token((*tuple(row)[:4], app_id, *tuple(row)[5:])), False
            if row is not None:  # another user's: it moves, under a new id
                await conn.execute("DELETE FROM push_tokens WHERE token_id = $1", row[0])
            await conn.execute(
                "DELETE FROM push_tokens WHERE token_id IN (SELECT token_id FROM push_tokens "
                "WHERE user_id = $1 ORDER BY coalesce(last_used_at, created_at) DESC, "
                "created_at DESC OFFSET $2)",
                user_id,
                max(max_per_user - 1, 0),
            )
            made = PushToken(new_id(), user_id, platform, token, app_id, utcnow())
            await conn.execute(
                f"INSERT INTO push_tokens ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, NULL)",
                made.token_id,
                user_id,
                platform,
                token,
                app_id,
                made.created_at,
            )
        return made, True

    async def push_tokens(self, user_id: str, platform: str | None = None) -> list[PushToken]:
        async with self.connection() as conn:
            rows = await conn.fetch(
                f"SELECT {COLUMNS} FROM push_tokens WHERE user_id = $1 "
                "AND ($2::text IS NULL OR platform = $2) ORDER BY created_at, token_id",
                user_id,
                platform,
            )
        return [push_token(row) for row in rows]

    async def push_tokens_of(
        self, user_ids: Sequence[str], platform: str
    ) -> dict[str, list[PushToken]]:
        found: dict[str, list[PushToken]] = {user_id: [] for user_id in user_ids}
        async with self.connection() as conn:
            rows = await conn.fetch(
                f"SELECT {COLUMNS} FROM push_tokens WHERE platform = $1 "
                "AND user_id = ANY($2::text[]) ORDER BY created_at, token_id",
                platform,
                list(found),
            )
        for row in rows:
            found[row[1]].append(push_token(row))
        return found

    async def delete_push_token(self, user_id: str, token_id: str) -> bool:
        async with self.connection() as conn:
            status = await conn.execute(
                "DELETE FROM push_tokens WHERE token_id = $1 AND user_id = $2", token_id, user_id
            )
        return bool(status != "DELETE 0")

    async def remove_push_token(self, platform: str, token: str) -> bool:
        async with self.connection() as conn:
            status = await conn.execute(
                "DELETE FROM push_tokens WHERE platform = $1 AND token = $2", platform, token
            )
        return bool(status != "DELETE 0")

    async def touch_push_tokens(self, token_ids: Sequence[str]) -> None:
        if not token_ids:
            return
        async with self.connection() as conn:
            await conn.execute(
                "UPDATE push_tokens SET last_used_at = now() WHERE token_id = ANY($1::text[])",
                list(token_ids),
            )

    async def add_push_receipts(
        self, platform: str, receipts: Sequence[PushReceipt], due_at: datetime
    ) -> None:
        if not receipts:
            return
        async with self.connection() as conn:
            await conn.execute(
                "INSERT INTO push_receipts (receipt_id, platform, user_id, token, due_at, "
                "keep_until) SELECT r, $1, u, t, $2, k FROM unnest($3::text[], $4::text[], "
                "$5::text[], $6::timestamptz[]) AS x(r, u, t, k) "
                "ON CONFLICT (receipt_id) DO NOTHING",
                platform,
                due_at,
                [r.receipt_id for r in receipts],
                [r.user_id for r in receipts],
                [r.token for r in receipts],
                [r.keep_until for r in receipts],
            )

    async def due_push_receipts(self, platform: str, limit: int, lease: float) -> list[PushReceipt]:
        now = utcnow()
        async with self.connection() as conn:
            # Rows another node is taking are skipped, not waited for.
            rows = await conn.fetch(
                "UPDATE push_receipts SET lease_until = $4 WHERE receipt_id IN ("
                "SELECT receipt_id FROM push_receipts WHERE platform = $1 AND due_at <= $2 "
                "AND (lease_until IS NULL OR lease_until < $2) ORDER BY due_at LIMIT $3 "
                "FOR UPDATE SKIP LOCKED) RETURNING receipt_id, user_id, token, keep_until, due_at",
                platform,
                now,
                limit,
                now + timedelta(seconds=lease),
            )
        rows = sorted(rows, key=lambda row: row[4])
        return [PushReceipt(row[0], row[1], row[2], row[3]) for row in rows]

    async def drop_push_receipts(self, receipt_ids: Sequence[str]) -> None:
        if not receipt_ids:
            return
        async with self.connection() as conn:
            await conn.execute(
                "DELETE FROM push_receipts WHERE receipt_id = ANY($1::text[])", list(receipt_ids)
            )
