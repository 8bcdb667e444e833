"""The application's own database connection, as tidings writes on it: the asyncpg connection
under what the application holds, inside the transaction it is in.

Used by transactional notify (``Tidings.notify(..., conn=...)``); anything else of tidings that
writes inside the application's transaction takes its connection through
:func:`asyncpg_connection_of` too, so every such door accepts the same objects and refuses the
same ones with the same words.
"""

from __future__ import annotations

import sys
from typing import Any

from tidings.core.pg import asyncpg
from tidings.errors import InvalidArgument

__all__ = ["asyncpg_connection_of"]

_ACCEPTED = (
    "an asyncpg Connection (or one acquired from an asyncpg pool) or a SQLAlchemy "
    "AsyncConnection or AsyncSession on the asyncpg driver (postgresql+asyncpg://)"
)


async def asyncpg_connection_of(conn: Any, *, name: str = "conn") -> Any:
    """The asyncpg connection under ``conn``, which must be inside a transaction.

    ``conn`` is an asyncpg ``Connection``, a connection acquired from an asyncpg pool, or a
    SQLAlchemy ``AsyncConnection`` or ``AsyncSession`` whose driver is asyncpg. SQLAlchemy's
    asyncpg dialect sends ``BEGIN`` with its first statement; when nothing ran yet in the
    transaction, one ``SELECT 1`` through SQLAlchemy makes it begin, so what is written on the
    returned connection is part of it. A session is asked for its connection, which begins
    its transaction if it had none (the session's commit then commits it).

    Raises:
        InvalidArgument: naming ``name``: not one of those objects, a SQLAlchemy connection on
            another driver, or not inside a transaction (asyncpg's ``is_in_transaction()``,
            SQLAlchemy's ``in_transaction()``; an ``AUTOCOMMIT`` SQLAlchemy connection never
            is). Nothing was sent on the connection then, but that ``SELECT 1``.
    """
    if isinstance(conn, asyncpg.Connection | asyncpg.pool.PoolConnectionProxy):
        if not conn.is_in_transaction():
            raise InvalidArgument(
                f"{name}: the connection is not inside a transaction; call it within "
                "`async with conn.transaction():`"
            )
        return conn
    # SQLAlchemy is the application's, not a dependency of tidings: if it is not imported,
    # the object cannot be one of its connections.
    orm = sys.modules.get("sqlalchemy.ext.asyncio")
    if orm is not None and isinstance(conn, orm.AsyncSession):
        conn = await conn.connection()
    if orm is None or not isinstance(conn, orm.AsyncConnection):
        raise InvalidArgument(f"{name}: expected {_ACCEPTED}, not {type(conn).__name__}")
    driver = conn.dialect.driver
    if driver != "asyncpg":
        raise InvalidArgument(
            f"{name}: a SQLAlchemy connection on the {driver!r} driver; transactional notify "
            "needs asyncpg: create the engine with a postgresql+asyncpg:// URL"
        )
    if not conn.in_transaction():
        raise InvalidArgument(
            f"{name}: the SQLAlchemy connection is not inside a transaction; call it within "
            "`async with engine.begin() as conn:` (or after `await conn.begin()`)"
        )
    raw = (await conn.get_raw_connection()).driver_connection
    if not raw.is_in_transaction():
        await conn.exec_driver_sql("SELECT 1")  # SQLAlchemy's BEGIN goes with a first statement
        if not raw.is_in_transaction():
            raise InvalidArgument(
                f"{name}: the SQLAlchemy connection runs in AUTOCOMMIT; transactional notify "
                "needs a transaction to write in"
            )
    return raw
