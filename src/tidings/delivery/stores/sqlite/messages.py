"""The :class:`~tidings.delivery.stores.base.MessageStore` facet of the pipeline on SQLite."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any, TypeVar

from tidings.core.ids import new_id, new_sorted_id
from tidings.core.models import isoformat, parse_iso, utcnow
from tidings.delivery.models import (
    DELETED,
    FAILED,
    PENDING,
    STALE,
    Delivery,
    Message,
    NewMessage,
    PlannedDelivery,
)
from tidings.delivery.stores.base import (
    DELIVERIES_PAGE,
    MESSAGE_INSERT_COLUMNS,
    MessageStore,
    Planner,
    encode_json,
    message_values,
)
from tidings.delivery.stores.rows import (
    DELIVERY_COLUMNS,
    HISTORY_COLUMNS,
    MESSAGE_COLUMNS,
    HistoryRow,
    check_body,
    delivery_of,
    message_of,
    subscribers,
    with_deliveries,
)
from tidings.delivery.stores.sqlite.categories import muted
from tidings.delivery.stores.sqlite.common import (
    SqliteTables,
    chunks,
    marks,
    recipients,
    write_history,
)
from tidings.delivery.stores.sqlite.digests import (
    open_digests,
    reassign_digests,
    write_digests,
)
from tidings.errors import ConfigurationError, NotFound

T = TypeVar("T")


class SqliteMessages(SqliteTables, MessageStore):
    """Messages and their deliveries on SQLite."""

    async def create_message(
        self,
        message: NewMessage,
        counted: Sequence[str],
        since: dict[str, datetime],
        planner: Planner,
        max_recipients: int,
        *,
        conn: Any = None,
        notice: str | None = None,
    ) -> tuple[Message, bool]:
        if conn is not None:
            raise ConfigurationError(
                "a message posted in the application's transaction (conn=...) needs a "
                "PostgreSQL store: TIDINGS_STORE=postgresql://…"
            )

        def run(conn: sqlite3.Connection) -> tuple[Message, bool]:
            if message.idempotency_key is not None:
                row = conn.execute(
                    "SELECT message_id, body_hash FROM pipeline_messages "
                    "WHERE client_id = ? AND idempotency_key = ?",
                    (message.client_id, message.idempotency_key),
                ).fetchone()
                if row is not None:
                    check_body(message, row[1])
                    earlier = _message(conn, row[0], None, deliveries=False)
                    assert earlier is not None  # the row was just read in this transaction
                    return earlier, False
            users = _resolve(conn, message, max_recipients)
            told = recipients(conn, users, counted, since)
            if message.digest is not None:
                found = open_digests(conn, users, message.digest, isoformat(utcnow()))
                told = [replace(r, digests=found.get(r.user_id, {})) for r in told]
            if message.category is not None:
                off = muted(conn, users, message.category)
                told = [replace(r, muted=off.get(r.user_id, frozenset())) for r in told]
            return _insert(conn, message, planner(told)), True

        return await self.store.write(run)

    async def get_message(
        self,
        message_id: str,
        client_id: str | None,
        *,
        deliveries: bool = True,
        limit: int = DELIVERIES_PAGE,
        offset: int = 0,
    ) -> Message | None:
        return await self.store.read(
            lambda conn: _snapshot(
                conn,
                lambda: _message(
                    conn, message_id, client_id, deliveries=deliveries, page=(limit, offset)
                ),
            )
        )

    async def deliveries_of_user(self, user_id: str, limit: int) -> list[Delivery]:
        def run(conn: sqlite3.Connection) -> list[Delivery]:
            rows = conn.execute(
                f"SELECT {DELIVERY_COLUMNS} FROM pipeline_deliveries WHERE user_id = ? "
                "ORDER BY created_at DESC, delivery_id DESC LIMIT ?",
                (user_id, limit),
            ).fetchall()
            return [delivery_of(row, parse_iso) for row in rows]

        return await self.store.read(run)

    async def list_messages(self, state: str | None, limit: int) -> list[Message]:
        def run(conn: sqlite3.Connection) -> list[Message]:
            # The state is derived: filtering by it scans a bounded window of recent messages.
            window = limit if state is None else max(limit * 10, 1000)
            rows = conn.execute(
                f"SELECT {MESSAGE_COLUMNS} FROM pipeline_messages "
                "ORDER BY created_at DESC, message_id DESC LIMIT ?",
                (window,),
            ).fetchall()
            counts = _snapshot(conn, lambda: _counts(conn, [row[0] for row in rows]))
            found = [message_of(row, counts.get(row[0], {}), parse_iso) for row in rows]
            return [m for m in found if state is None or m.state == state][:limit]

        return await self.store.read(run)

    async def delete_message(
        self, message_id: str, client_id: str | None, delivery_id: str | None = None
    ) -> Message | None:
        def run(conn: sqlite3.Connection) -> Message | None:
            if _message(conn, message_id, client_id, deliveries=False) is None:
                return None
            _check_delivery(conn, message_id, delivery_id)
            now = isoformat(utcnow())
            ids = [
                row[0]
                for row in conn.execute(
                    "UPDATE pipeline_deliveries SET state = ?, reason = ?, updated_at = ? "
                    "WHERE message_id = ? AND state IN (?, ?) "
                    "AND (?7 IS NULL OR delivery_id = ?7) RETURNING delivery_id",
                    (DELETED, "deleted_by_request", now, message_id, PENDING, STALE, delivery_id),
                )
            ]
            removed = [
                row
                for chunk in chunks(ids)
                for row in conn.execute(
                    f"DELETE FROM pipeline_outbox WHERE delivery_id IN ({marks(chunk)}) "
                    "RETURNING delivery_id, channel, available_at",
                    chunk,
                ).fetchall()
            ]
            history: list[HistoryRow] = [(i, DELETED, "deleted_by_request", None) for i in ids]
            history += reassign_digests(conn, removed, now)
            write_history(conn, history, now)
            return _message(conn, message_id, client_id)

        return await self.store.write(run)

    async def retry_message(
        self, message_id: str, client_id: str | None, delivery_id: str | None = None
    ) -> Message | None:
        def run(conn: sqlite3.Connection) -> Message | None:
            if _message(conn, message_id, client_id, deliveries=False) is None:
                return None
            _check_delivery(conn, message_id, delivery_id)
            now = isoformat(utcnow())
            # The user may have given a contact point since (a delivery that failed with
            # no_address): the retry takes the current one.
            rows = conn.execute(
                "UPDATE pipeline_deliveries AS d SET state = ?, reason = ?, attempts = 0, "
                "updated_at = ?, address = COALESCE((SELECT c.address FROM pipeline_contacts c "
                "WHERE c.user_id = d.user_id AND c.channel = d.channel), d.address) "
                "WHERE message_id = ? AND state = ? AND (?6 IS NULL OR delivery_id = ?6) "
                "RETURNING delivery_id, channel",
                (PENDING, "retried_by_request", now, message_id, FAILED, delivery_id),
            ).fetchall()
            conn.executemany(
                "INSERT OR REPLACE INTO pipeline_outbox VALUES (?, ?, ?, NULL, NULL, 0)",
                [(delivery_id, channel, now) for delivery_id, channel in rows],
            )
            # Sent on its own now, no longer in the digest it was sent in.
            conn.executemany(
                "DELETE FROM pipeline_digest_items WHERE delivery_id = ? "
                "AND digest_id <> delivery_id",
                [(r[0],) for r in rows],
            )
            write_history(conn, [(r[0], PENDING, "retried_by_request", None) for r in rows], now)
            return _message(conn, message_id, client_id)

        return await self.store.write(run)


def _snapshot(conn: sqlite3.Connection, read: Callable[[], T]) -> T:
    """``read()``'s statements in one read transaction: they see one state of the database
    (a delivery's row and its history agree), not each the latest commit."""
    conn.execute("BEGIN")
    try:
        return read()
    finally:
        conn.execute("COMMIT")


def _resolve(conn: sqlite3.Connection, message: NewMessage, max_recipients: int) -> list[str]:
    """The message's recipients: its users, or its topic's subscribers."""
    if message.user_ids is not None:
        return list(message.user_ids)
    users = [
        row[0]
        for row in conn.execute(
            "SELECT user_id FROM pipeline_topic_subscriptions WHERE topic = ? "
            "ORDER BY user_id LIMIT ?",
            (message.topic, max_recipients + 1),
        )
    ]
    return subscribers(message, users, max_recipients)


def _insert(
    conn: sqlite3.Connection, message: NewMessage, planned: list[PlannedDelivery]
) -> Message:
    """Write the message, its planned deliveries, their history and their outbox rows."""
    now = utcnow()
    stamp = isoformat(now)
    message_id = new_sorted_id()
    conn.execute(
        f"INSERT INTO pipeline_messages ({MESSAGE_INSERT_COLUMNS}) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        message_values(message_id, message, stamp),
    )
    ids = [new_id() for _ in planned]
    conn.executemany(
        "INSERT INTO pipeline_deliveries (delivery_id, message_id, user_id, channel, address, "
        "state, reason, counted, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            (
                i,
                message_id,
                p.user_id,
                p.channel,
                encode_json(p.address),
                p.state,
                p.reason,
                p.queued,
                stamp,
                stamp,
            )
            for i, p in zip(ids, planned, strict=True)
        ],
    )
    conn.executemany(
        "INSERT INTO pipeline_outbox VALUES (?, ?, ?, NULL, NULL, 0)",
        # Claimed once due: at once, or after a delay step or the user's quiet hours.
        [
            (i, p.channel, isoformat(p.not_before) if p.not_before else stamp)
            for i, p in zip(ids, planned, strict=True)
            if p.queued
        ],
    )
    write_digests(conn, message_id, ids, planned)
    write_history(
        conn,
        [(i, p.state, p.reason, p.detail) for i, p in zip(ids, planned, strict=True)],
        stamp,
    )
    return Message.created(message_id, message, now, planned)


def _counts(conn: sqlite3.Connection, message_ids: list[str]) -> dict[str, dict[str, int]]:
    """Deliveries per state of each message."""
    counts: dict[str, dict[str, int]] = {}
    for chunk in chunks(message_ids):
        for message_id, state, n in conn.execute(
            "SELECT message_id, state, COUNT(*) FROM pipeline_deliveries "
            f"WHERE message_id IN ({marks(chunk)}) GROUP BY message_id, state",
            chunk,
        ):
            counts.setdefault(message_id, {})[state] = n
    return counts


def _message(
    conn: sqlite3.Connection,
    message_id: str,
    client_id: str | None,
    *,
    deliveries: bool = True,
    page: tuple[int, int] = (DELIVERIES_PAGE, 0),
) -> Message | None:
    """The message if ``client_id`` (or anyone: ``None``) created it, with a ``page``
    (limit, offset) of its deliveries unless not ``deliveries``."""
    row = conn.execute(
        f"SELECT {MESSAGE_COLUMNS} FROM pipeline_messages WHERE message_id = ?", (message_id,)
    ).fetchone()
    if row is None or (client_id is not None and row[1] != client_id):
        return None
    message = message_of(row, _counts(conn, [message_id]).get(message_id, {}), parse_iso)
    if not deliveries:
        return message
    rows = conn.execute(
        f"SELECT {DELIVERY_COLUMNS} FROM pipeline_deliveries WHERE message_id = ? ORDER BY rowid "
        "LIMIT ? OFFSET ?",
        (message_id, *page),
    ).fetchall()
    history = [
        entry
        for chunk in chunks([r[0] for r in rows])
        for entry in conn.execute(
            f"SELECT {HISTORY_COLUMNS} FROM pipeline_history "
            f"WHERE delivery_id IN ({marks(chunk)}) ORDER BY id",
            chunk,
        )
    ]
    return with_deliveries(message, rows, history, parse_iso)


def _check_delivery(conn: sqlite3.Connection, message_id: str, delivery_id: str | None) -> None:
    """Raise NotFound unless ``delivery_id`` (if given) is one of the message's."""
    if (
        delivery_id is not None
        and not conn.execute(
            "SELECT 1 FROM pipeline_deliveries WHERE delivery_id = ? AND message_id = ?",
            (delivery_id, message_id),
        ).fetchone()
    ):
        raise NotFound("no such delivery in this message", [delivery_id])
