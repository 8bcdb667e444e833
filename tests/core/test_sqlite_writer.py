"""The SQLite store's group commit: concurrent writes share one transaction, and a write that
fails is undone alone, whether it shared its transaction or had it to itself."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from tidings.errors import Conflict, NotFound
from tidings.storage.sqlite import SqliteStore


async def open_store(tmp_path: Path) -> SqliteStore:
    store = SqliteStore(f"sqlite:///{tmp_path}/writer.db")
    await store.start()
    await store.write(lambda c: c.execute("CREATE TABLE t (k TEXT PRIMARY KEY)"))
    return store


def insert(key: str, *, then_fail: Exception | None = None):  # type: ignore[no-untyped-def]
    def run(conn: sqlite3.Connection) -> str:
        conn.execute("INSERT INTO t VALUES (?)", (key,))
        if then_fail is not None:
            raise then_fail
        return key

    return run


async def keys(store: SqliteStore) -> list[str]:
    return await store.read(lambda c: [r[0] for r in c.execute("SELECT k FROM t ORDER BY k")])


async def test_a_write_alone_that_fails_leaves_nothing(tmp_path: Path) -> None:
    store = await open_store(tmp_path)
    try:
        with pytest.raises(NotFound):
            await store.write(insert("a", then_fail=NotFound("no such thing")))
        assert await keys(store) == []
        with pytest.raises(Conflict):  # an integrity error is a conflict
            await store.write(lambda c: c.execute("INSERT INTO t VALUES ('b'), ('b')"))
        assert await keys(store) == []
        assert await store.write(insert("c")) == "c"  # and the writer goes on
        assert await keys(store) == ["c"]
    finally:
        await store.close()


async def test_a_failing_write_in_a_shared_transaction_is_undone_alone(tmp_path: Path) -> None:
    store = await open_store(tmp_path)
    try:
        outcomes = await asyncio.gather(
            store.write(insert("a")),
            store.write(insert("b", then_fail=NotFound("no"))),
            store.write(insert("c")),
            return_exceptions=True,
        )
        assert outcomes[0] == "a" and outcomes[2] == "c"
        assert isinstance(outcomes[1], NotFound)
        assert await keys(store) == ["a", "c"]
    finally:
        await store.close()
