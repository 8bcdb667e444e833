"""The PushTokenStore facet of the SQLite store."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from tidings.core.ids import new_id
from tidings.core.models import PushReceipt, PushToken, isoformat, parse_iso, utcnow
from tidings.storage.sqlite.engine import SqliteEngine
from tidings.storage.sqlite.rows import chunked, marks

COLUMNS = "token_id, user_id, platform, token, app_id, created_at, last_used_at"


def push_token(row: tuple[Any, ...]) -> PushToken:
    return PushToken(
        row[0], row[1], row[2], row[3], row[4], parse_iso(row[5]), row[6] and parse_iso(row[6])
    )


class SqlitePushTokens(SqliteEngine):
    """The PushTokenStore facet on SQLite."""

    async def register_push_token(
        self,
        user_id: str,
        platform: str,
        token: str,
        app_id: str | None,
        *,
        max_per_user: int,
    ) -> tuple[PushToken, bool]:
        def run(conn: sqlite3.Connection) -> tuple[PushToken, bool]:
            row = conn.execute(
                f"SELECT {COLUMNS} FROM push_tokens WHERE platform = ? AND token = ?",
                (platform, token),
            ).fetchone()
            if row is not None and row[1] == user_id:
                conn.execute(
                    "UPDATE push_tokens SET app_id = ? WHERE token_id = ?", (app_id, row[0])
                )
                return push_token((*row[:4], app_id, *row[5:])), False
            if row is not None:  # another user's: it moves, under a new id
                conn.execute("DELETE FROM push_tokens WHERE token_id = ?", (row[0],))
            # Make room: the user's least recently used tokens beyond the cap go.
            conn.execute(
                "DELETE FROM push_tokens WHERE token_id IN (SELECT token_id FROM push_tokens "
                "WHERE user_id = ? ORDER BY coalesce(last_used_at, created_at) DESC, "
                "created_at DESC LIMIT -1 OFFSET ?)",
                (user_id, max(max_per_user - 1, 0)),
            )
            made = PushToken(new_id(), user_id, platform, token, app_id, utcnow())
            conn.execute(
                f"INSERT INTO push_tokens ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, NULL)",
                (made.token_id, user_id, platform, token, app_id, isoformat(made.created_at)),
            )
            return made, True

        return await self.write(run)

    async def push_tokens(self, user_id: str, platform: str | None = None) -> list[PushToken]:
        def run(conn: sqlite3.Connection) -> list[PushToken]:
            rows = conn.execute(
                f"SELECT {COLUMNS} FROM push_tokens WHERE user_id = ? "
                "AND (? IS NULL OR platform = ?) ORDER BY created_at, token_id",
                (user_id, platform, platform),
            ).fetchall()
            return [push_token(row) for row in rows]

        return await self.read(run)

    async def push_tokens_of(
        self, user_ids: Sequence[str], platform: str
    ) -> dict[str, list[PushToken]]:
        def run(conn: sqlite3.Connection) -> dict[str, list[PushToken]]:
            found: dict[str, list[PushToken]] = {user_id: [] for user_id in user_ids}
            for chunk in chunked(list(found)):
                for row in conn.execute(
                    f"SELECT {COLUMNS} FROM push_tokens WHERE platform = ? AND user_id IN "
                    f"({marks(chunk)}) ORDER BY created_at, token_id",
                    (platform, *chunk),
                ):
                    found[row[1]].append(push_token(row))
            return found

        return await self.read(run)

    async def delete_push_token(self, user_id: str, token_id: str) -> bool:
        def run(conn: sqlite3.Connection) -> bool:
            cursor = conn.execute(
                "DELETE FROM push_tokens WHERE token_id = ? AND user_id = ?", (token_id, user_id)
            )
            return cursor.rowcount > 0

        return await self.write(run)

    async def remove_push_token(self, platform: str, token: str) -> bool:
        def run(conn: sqlite3.Connection) -> bool:
            cursor = conn.execute(
                "DELETE FROM push_tokens WHERE platform = ? AND token = ?", (platform, token)
            )
            return cursor.rowcount > 0

        return await self.write(run)

    async def touch_push_tokens(self, token_ids: Sequence[str]) -> None:
        if not token_ids:
            return
        now = isoformat(utcnow())

        def run(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "UPDATE push_tokens SET last_used_at = ? WHERE token_id = ?",
                [(now, token_id) for token_id in token_ids],
            )

        await self.write(run)

    async def add_push_receipts(
        self, platform: str, receipts: Sequence[PushReceipt], due_at: datetime
    ) -> None:
        if not receipts:
            return
        due = isoformat(due_at)

        def run(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "INSERT INTO push_receipts (receipt_id, platform, user_id, token, due_at, "
                "keep_until) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (receipt_id) DO NOTHING",
                [
                    (r.receipt_id, platform, r.user_id, r.token, due, isoformat(r.keep_until))
                    for r in receipts
                ],
            )

        await self.write(run)

    async def due_push_receipts(self, platform: str, limit: int, lease: float) -> list[PushReceipt]:
        def run(conn: sqlite3.Connection) -> list[PushReceipt]:
            now = utcnow()
            stamp = isoformat(now)
            rows = conn.execute(
                "SELECT receipt_id, user_id, token, keep_until FROM push_receipts "
                "WHERE platform = ? AND due_at <= ? AND (lease_until IS NULL OR lease_until < ?) "
                "ORDER BY due_at LIMIT ?",
                (platform, stamp, stamp, limit),
            ).fetchall()
            conn.executemany(
                "UPDATE push_receipts SET lease_until = ? WHERE receipt_id = ?",
                [(isoformat(now + timedelta(seconds=lease)), row[0]) for row in rows],
            )
            return [PushReceipt(row[0], row[1], row[2], parse_iso(row[3])) for row in rows]

        return await self.write(run)

    async def drop_push_receipts(self, receipt_ids: Sequence[str]) -> None:
        if not receipt_ids:
            return

        def run(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "DELETE FROM push_receipts WHERE receipt_id = ?", [(i,) for i in receipt_ids]
            )

        await self.write(run)
