"""The PostgreSQL engine: the pool, migrations, connections, and notify grouping."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from tidings.core.batching import Batcher
from tidings.core.pg import UNAVAILABLE as _UNAVAILABLE
from tidings.core.pg import asyncpg
from tidings.errors import (
    ConfigurationError,
    InvalidArgument,
    StoreError,
    StoreUnavailable,
)
from tidings.storage._common import (
    Prepared,
    load_migrations,
    split_sql,
)
from tidings.storage.base import Store
from tidings.storage.postgres.rows import (
    MIGRATION_LOCK,
    _no_reset,
)

T = TypeVar("T")


class PostgresEngine(Store):
    """The pool and connections of the PostgreSQL store; the facets are its subclasses."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        parts = urlsplit(url)
        if parts.scheme not in ("postgres", "postgresql"):
            raise ConfigurationError(f"not a PostgreSQL URL: {url!r}")
        options = dict(parse_qsl(parts.query))
        try:
            self.pool_min = int(options.pop("pool_min", 1))
            self.pool_max = int(options.pop("pool_max", 10))
        except ValueError:
            raise ConfigurationError("pool_min and pool_max must be integers") from None
        self.dsn = urlunsplit(parts._replace(scheme="postgresql", query=urlencode(options)))
        self._pool: asyncpg.Pool | None = None
        #: single notifications waiting to be written together, and the task writing them
        self._notifies: Batcher[Prepared] = Batcher(self._notify_batch, max_batch=1000)
        # Concurrent calls of a socket's life grouped as SQLite's writer groups them: a
        # connect storm or an event for many deliver-mode devices costs a few statements per
        # group instead of a few per device (the facets write the batches).
        #: sockets opening (device binding, registry row, count and topics)
        self._opens: Batcher[Any] = Batcher(self._open_batch, max_batch=500)
        #: sockets closing (their registry rows)
        self._leaves: Batcher[str] = Batcher(self._leave_batch, max_batch=1000)
        #: deliver-mode queue reads
        self._reads: Batcher[Any] = Batcher(self._pending_batch, max_batch=500)
        #: deliver-mode acknowledgements
        self._acks: Batcher[Any] = Batcher(self._ack_batch, max_batch=500)

    # Lifecycle

    async def start(self) -> None:
        if self._pool is not None:
            return
        try:
            self._pool = await asyncpg.create_pool(
                self.dsn,
                min_size=self.pool_min,
                max_size=self.pool_max,
                command_timeout=15,
                timeout=5,
                reset=_no_reset,
            )
            async with self._pool.acquire() as conn, conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
                await self._migrate(conn)
        except _UNAVAILABLE as exc:
            await self.close()
            raise StoreUnavailable(f"cannot reach PostgreSQL: {exc}") from exc
        except (
            asyncpg.InvalidCatalogNameError,
            asyncpg.InvalidAuthorizationSpecificationError,
        ) as exc:
            # Retrying cannot help: the URL names a database or role that does not exist, or
            # a wrong password.
            await self.close()
            raise ConfigurationError(
                f"TIDINGS_STORE: PostgreSQL refused it: {exc} (create the database, e.g. "
                "createdb NAME, or fix the URL's database, user or password)"
            ) from exc

    @staticmethod
    async def _migrate(conn: Any) -> None:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            "version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TIMESTAMPTZ NOT NULL)"
        )
        done = {row[0] for row in await conn.fetch("SELECT version FROM schema_migrations")}
        for version, name, sql in load_migrations("postgres"):
            if version in done:
                continue
            for statement in split_sql(sql):
                await conn.execute(statement)
            await conn.execute(
                "INSERT INTO schema_migrations VALUES ($1, $2, now())", version, name
            )

    async def close(self) -> None:
        for batcher in (self._notifies, self._opens, self._leaves, self._reads, self._acks):
            await batcher.drain()
        pool, self._pool = self._pool, None
        if pool is not None:
            try:
                await pool.close()
            except _UNAVAILABLE:
                pool.terminate()

    @abstractmethod
    async def _notify_batch(self, batch: list[Prepared]) -> list[Any]:
        """Write a group of single notifications (the notifications facet does)."""

    @abstractmethod
    async def _open_batch(self, batch: list[Any]) -> list[Any]:
        """Open a group of sockets (the cluster facet does)."""

    @abstractmethod
    async def _leave_batch(self, batch: list[str]) -> list[Any]:
        """Remove a group of sockets' registry rows (the cluster facet does)."""

    @abstractmethod
    async def _pending_batch(self, batch: list[Any]) -> list[Any]:
        """Read a group of device queues (the devices facet does)."""

    @abstractmethod
    async def _ack_batch(self, batch: list[Any]) -> list[Any]:
        """Acknowledge a group of device queues' notifications (the devices facet does)."""

    async def retrying(self, run: Callable[[], Awaitable[T]]) -> T:
        """``run()``, run again (up to three times in all) when PostgreSQL broke a deadlock by
        failing it: groups of sockets opening and acknowledging on several nodes lock rows of
        the same devices, and a group is worth retrying rather than failing every caller."""
        for attempt in range(3):
            try:
                return await run()
            except asyncpg.DeadlockDetectedError:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    async def ping(self) -> None:
        async with self.connection() as conn:
            await conn.fetchval("SELECT 1")

    @asynccontextmanager
    async def connection(self, *, transaction: bool = False) -> AsyncIterator[Any]:
        """A pooled connection (inside a transaction with ``transaction=True``), for the
        facets of this store written outside this class (the pipeline's tables).

        Raises:
            StoreError: the store is not started.
            StoreUnavailable: PostgreSQL cannot be reached (the transaction is rolled back).
            InvalidArgument: PostgreSQL refused a value.
        """
        if self._pool is None:
            raise StoreError("store is not started; call start() or use 'async with'")
        try:
            async with self._pool.acquire() as conn:
                if transaction:
                    async with conn.transaction():
                        yield conn
                else:
                    yield conn
        except _UNAVAILABLE as exc:
            raise StoreUnavailable(f"PostgreSQL unavailable: {exc}") from exc
        except asyncpg.DataError as exc:
            raise InvalidArgument(f"PostgreSQL refused a value: {exc}") from exc
