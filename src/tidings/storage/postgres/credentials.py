"""The CredentialStore facet of the PostgreSQL store."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from tidings.core.models import (
    ServiceClient,
    utcnow,
)
from tidings.core.pg import asyncpg
from tidings.errors import (
    Conflict,
)
from tidings.storage.postgres.engine import PostgresEngine
from tidings.storage.postgres.rows import (
    _client,
)


class PostgresCredentials(PostgresEngine):
    """The CredentialStore facet on PostgreSQL."""

    # Service clients

    async def create_client(
        self, client_id: str, name: str, scopes: Iterable[str], secret_hash: str
    ) -> ServiceClient:
        now = utcnow()
        client = ServiceClient(client_id, name, frozenset(scopes), now, secret_hash)
        async with self.connection() as conn:
            try:
                await conn.execute(
                    "INSERT INTO service_clients VALUES ($1, $2, $3, $4, $5)",
                    client_id,
                    name,
                    secret_hash,
                    " ".join(sorted(client.scopes)),
                    now,
                )
            except asyncpg.UniqueViolationError as exc:
                raise Conflict(f"client {client_id!r} exists") from exc
        return client

    async def get_client(self, client_id: str) -> ServiceClient | None:
        async with self.connection() as conn:
            row = await conn.fetchrow(
                "SELECT client_id, name, scopes, created_at, secret_hash "
                "FROM service_clients WHERE client_id = $1",
                client_id,
            )
        return _client(row) if row else None

    async def list_clients(self) -> list[ServiceClient]:
        async with self.connection() as conn:
            rows = await conn.fetch(
                "SELECT client_id, name, scopes, created_at, secret_hash "
                "FROM service_clients ORDER BY created_at, client_id"
            )
        return [_client(row) for row in rows]

    async def delete_client(self, client_id: str) -> bool:
        async with self.connection() as conn:
            status = await conn.execute(
                "DELETE FROM service_clients WHERE client_id = $1", client_id
            )
        return bool(status != "DELETE 0")

    # Keys

    async def get_or_create_key(self, name: str, factory: Callable[[], str]) -> str:
        async with self.connection() as conn:
            await conn.execute(
                "INSERT INTO server_keys VALUES ($1, $2, now()) ON CONFLICT (name) DO NOTHING",
                name,
                factory(),
            )
            value = await conn.fetchval("SELECT value FROM server_keys WHERE name = $1", name)
        return str(value)
