"""The CredentialStore facet of the SQLite store."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable

from tidings.core.models import (
    ServiceClient,
    isoformat,
    utcnow,
)
from tidings.storage.sqlite.engine import SqliteEngine
from tidings.storage.sqlite.rows import (
    _client,
)


class SqliteCredentials(SqliteEngine):
    """The CredentialStore facet on SQLite."""

    # Service clients

    async def create_client(
        self, client_id: str, name: str, scopes: Iterable[str], secret_hash: str
    ) -> ServiceClient:
        now = utcnow()
        client = ServiceClient(client_id, name, frozenset(scopes), now, secret_hash)

        def run(conn: sqlite3.Connection) -> ServiceClient:
            conn.execute(
                "INSERT INTO service_clients VALUES (?, ?, ?, ?, ?)",
                (client_id, name, secret_hash, " ".join(sorted(client.scopes)), isoformat(now)),
            )
            return client

        return await self.write(run)

    async def get_client(self, client_id: str) -> ServiceClient | None:
        def run(conn: sqlite3.Connection) -> ServiceClient | None:
            row = conn.execute(
                "SELECT client_id, name, scopes, created_at, secret_hash "
                "FROM service_clients WHERE client_id = ?",
                (client_id,),
            ).fetchone()
            return _client(row) if row else None

        return await self.read(run)

    async def list_clients(self) -> list[ServiceClient]:
        def run(conn: sqlite3.Connection) -> list[ServiceClient]:
            rows = conn.execute(
                "SELECT client_id, name, scopes, created_at, secret_hash "
                "FROM service_clients ORDER BY created_at, client_id"
            ).fetchall()
            return [_client(row) for row in rows]

        return await self.read(run)

    async def delete_client(self, client_id: str) -> bool:
        def run(conn: sqlite3.Connection) -> bool:
            cursor = conn.execute("DELETE FROM service_clients WHERE client_id = ?", (client_id,))
            return cursor.rowcount > 0

        return await self.write(run)

    # Keys

    async def get_or_create_key(self, name: str, factory: Callable[[], str]) -> str:
        def run(conn: sqlite3.Connection) -> str:
            conn.execute(
                "INSERT INTO server_keys VALUES (?, ?, ?) ON CONFLICT (name) DO NOTHING",
                (name, factory(), isoformat(utcnow())),
            )
            row = conn.execute("SELECT value FROM server_keys WHERE name = ?", (name,)).fetchone()
            return str(row[0])

        return await self.write(run)
