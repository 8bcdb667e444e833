"""The SQLite engine: connections, migrations, and the batched reads and group-committed
writes every facet runs on."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qsl, unquote, urlsplit

from tidings.core.batching import Batcher
from tidings.core.models import (
    isoformat,
    utcnow,
)
from tidings.errors import (
    ConfigurationError,
    Conflict,
    StoreError,
    StoreUnavailable,
)
from tidings.storage._common import (
    load_migrations,
    split_sql,
)
from tidings.storage.base import Store

T = TypeVar("T")


def _path_from_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme != "sqlite":
        raise ConfigurationError(f"not a sqlite URL: {url!r}")
    # sqlite:///relative.db → "relative.db"; sqlite:////abs/path.db → "/abs/path.db"
    path = unquote(parts.path)
    path = path[1:] if path.startswith("/") else path
    if not path:
        raise ConfigurationError(f"sqlite URL names no file: {url!r} (try sqlite:///tidings.db)")
    return path


def _cache_from_url(url: str) -> int:
    """``?cache_mb=N`` (MiB of page cache per connection), 32 by default."""
    value = dict(parse_qsl(urlsplit(url).query)).get("cache_mb", "32")
    try:
        mib = int(value)
    except ValueError:
        mib = 0
    if not 1 <= mib <= 65536:
        raise ConfigurationError(f"cache_mb must be 1 to 65536 MiB, not {value!r}")
    return mib


#: rows per multi-row INSERT of a batch of notifications (5 parameters each: SQLite allows
#: 32,766 per statement)

#: work for a connection: a read, or a write run inside the writer's transaction
Work = Callable[[sqlite3.Connection], Any]


class SqliteEngine(Store):
    """Connections and batching of the SQLite store; the facets are its subclasses."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.path = _path_from_url(url)
        self.cache_mib = _cache_from_url(url)
        self.memory = self.path == ":memory:"
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="tidings-sqlite-w")
        self._reader = (
            self._writer
            if self.memory
            else ThreadPoolExecutor(1, thread_name_prefix="tidings-sqlite-r")
        )
        self._wconn: sqlite3.Connection | None = None
        self._rconn: sqlite3.Connection | None = None
        self._writes: Batcher[Work] = Batcher(self._write_batch)
        # A hop to the reader thread costs more than a point read: concurrent reads share one.
        self._reads: Batcher[Work] = Batcher(self._read_batch, max_batch=256)
        self._started = False

    # Lifecycle

    async def start(self) -> None:
        if self._started:
            return
        loop = asyncio.get_running_loop()
        if not self.memory:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        try:
            self._wconn = await loop.run_in_executor(self._writer, self._open)
            await loop.run_in_executor(self._writer, self._migrate, self._wconn)
            if self.memory:
                self._rconn = self._wconn
            else:
                self._rconn = await loop.run_in_executor(self._reader, self._open)
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"cannot open {self.path}: {exc}") from exc
        self._started = True

    def _open(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA busy_timeout = 10000")
        if not self.memory:
            conn.execute("PRAGMA journal_mode = WAL")
        # FULL: a committed notification survives power loss, not only a process crash.
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA foreign_keys = ON")
        # 32 MiB of page cache per connection by default (grown only as used, so a node's
        # memory rises with its database up to 2 x this; ?cache_mb= in the URL sets it): index
        # inserts into a large table stay in memory instead of re-reading pages (SQLite's
        # default is 2 MiB).
        conn.execute(f"PRAGMA cache_size = -{self.cache_mib * 1024}")
        return conn

    @staticmethod
    def _migrate(conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                "version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)"
            )
            done = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
            for version, name, sql in load_migrations("sqlite"):
                if version in done:
                    continue
                for statement in split_sql(sql):
                    conn.execute(statement)
                conn.execute(
                    "INSERT INTO schema_migrations VALUES (?, ?, ?)",
                    (version, name, isoformat(utcnow())),
                )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    async def close(self) -> None:
        if not self._started:
            return
        self._started = False  # refuse new calls at once; pending writes still finish
        await self._writes.drain()
        await self._reads.drain()
        loop = asyncio.get_running_loop()
        for executor, conn in {(self._writer, self._wconn), (self._reader, self._rconn)}:
            if conn is not None:
                await loop.run_in_executor(executor, conn.close)
        self._wconn = self._rconn = None
        self._writer.shutdown(wait=True)
        self._reader.shutdown(wait=True)

    async def ping(self) -> None:
        await self.read(lambda conn: conn.execute("SELECT 1").fetchone())

    # Plumbing

    def _check_started(self) -> None:
        if not self._started:
            raise StoreError("store is not started; call start() or use 'async with'")

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` on the reading connection, batched with concurrent reads: one hop to
        the reader thread for all of them.

        Raises:
            StoreUnavailable: the database failed the read (``sqlite3.Error``); any other
                exception of ``fn`` is raised as is.
        """
        self._check_started()
        result: T = await self._reads.submit(fn)
        return result

    async def write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` inside a write transaction, grouped with concurrent writes (group
        commit: one transaction, each write in its own savepoint, so a failing write is
        undone alone and its exception raised to its caller only).

        Raises:
            StoreUnavailable: the database failed (nothing of ``fn`` was written).
        """
        self._check_started()
        result: T = await self._writes.submit(fn)
        return result

    # the names the pipeline store and tests used before ``read``/``write`` were public
    _read = read
    _write = write

    async def _read_batch(self, batch: list[Work]) -> list[Any]:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._reader, self._run_reads, batch)
        except Exception as exc:
            return [StoreUnavailable(f"sqlite read failed: {exc}")] * len(batch)

    def _run_reads(self, batch: list[Work]) -> list[Any]:
        conn = self._rconn
        assert conn is not None
        outcomes: list[Any] = []
        for fn in batch:
            try:
                outcomes.append(fn(conn))
            except sqlite3.Error as exc:
                failure = StoreUnavailable(f"sqlite read failed: {exc}")
                failure.__cause__ = exc
                outcomes.append(failure)
            except Exception as exc:
                outcomes.append(exc)
        return outcomes

    async def _write_batch(self, batch: list[Work]) -> list[Any]:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._writer, self._run_batch, batch)
        except Exception as exc:
            failure = StoreUnavailable(f"sqlite write failed: {exc}")
            failure.__cause__ = exc
            return [failure] * len(batch)

    def _run_batch(self, batch: list[Work]) -> list[Any]:
        conn = self._wconn
        assert conn is not None
        outcomes: list[Any] = []
        # Each write of a shared transaction gets a savepoint, so that a failing one is undone
        # alone; a write alone in its transaction is undone by rolling the transaction back.
        shared = len(batch) > 1
        conn.execute("BEGIN IMMEDIATE")
        try:
            for fn in batch:
                if shared:
                    conn.execute("SAVEPOINT item")
                try:
                    outcomes.append(fn(conn))
                except Exception as exc:
                    if shared:
                        conn.execute("ROLLBACK TO item")
                    elif conn.in_transaction:
                        conn.execute("ROLLBACK")
                    outcomes.append(_as_store_error(exc))
                if shared:
                    conn.execute("RELEASE item")
            if conn.in_transaction:
                conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return outcomes


def _as_store_error(exc: Exception) -> Exception:
    if isinstance(exc, StoreError):
        return exc
    if isinstance(exc, sqlite3.IntegrityError):
        return Conflict(str(exc))
    if isinstance(exc, sqlite3.Error):
        return StoreUnavailable(f"sqlite write failed: {exc}")
    return exc


#: a notification's columns; the data as bytes, so that text that is not UTF-8 (written by
#: other means) fails the decoding of its own row only, not the read of a whole page
