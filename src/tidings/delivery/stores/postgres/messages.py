"""The :class:`~tidings.delivery.stores.base.MessageStore` facet of the pipeline on PostgreSQL.

Messages to one user serialise on a row of ``pipeline_rate_locks`` per limited channel (a row
lock, not an advisory lock, so a topic with many subscribers does not fill the lock table).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

from tidings.core.ids import new_id, new_sorted_id
from tidings.core.models import utcnow
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
from tidings.delivery.stores.postgres.categories import muted
from tidings.delivery.stores.postgres.common import (
    MESSAGE_COLUMNS,
    PostgresTables,
    recipients,
    write_history,
)
from tidings.delivery.stores.postgres.digests import (
    open_digests,
    reassign_digests,
    write_digests,
)
from tidings.delivery.stores.rows import (
    DELIVERY_COLUMNS,
    HISTORY_COLUMNS,
    HistoryRow,
    check_body,
    delivery_of,
    message_of,
    native,
    subscribers,
    with_deliveries,
)
from tidings.errors import NotFound
from tidings.storage.postgres.transactional import notify_work


class PostgresMessages(PostgresTables, MessageStore):
    """Messages and their deliveries on PostgreSQL."""

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
            # A savepoint in the application's transaction: a refusal undoes only this.
            async with conn.transaction():
                created = await _create(conn, message, counted, since, planner, max_recipients)
                if created[1] and notice is not None:
                    await notify_work(conn, notice)
            return created
        async with self.store.connection(transaction=True) as own:
            return await _create(own, message, counted, since, planner, max_recipients)

    async def get_message(
        self,
        message_id: str,
        client_id: str | None,
        *,
        deliveries: bool = True,
        limit: int = DELIVERIES_PAGE,
        offset: int = 0,
    ) -> Message | None:
        async with (
            self.store.connection() as conn,
            # one snapshot: a delivery's row and its history agree
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            return await _message(
                conn, message_id, client_id, deliveries=deliveries, page=(limit, offset)
            )

    async def deliveries_of_user(self, user_id: str, limit: int) -> list[Delivery]:
        async with self.store.connection() as conn:
            rows = await conn.fetch(
                f"SELECT {DELIVERY_COLUMNS} FROM pipeline_deliveries WHERE user_id = $1 "
                "ORDER BY created_at DESC, delivery_id DESC LIMIT $2",
                user_id,
                limit,
            )
        return [delivery_of(row, native) for row in rows]

    async def list_messages(self, state: str | None, limit: int) -> list[Message]:
        window = limit if state is None else max(limit * 10, 1000)
        async with self.store.connection() as conn:
            rows = await conn.fetch(
                f"SELECT {MESSAGE_COLUMNS} FROM pipeline_messages "
                "ORDER BY created_at DESC, message_id DESC LIMIT $1",
                window,
            )
            counts = await _counts(conn, [row[0] for row in rows])
        found = [message_of(row, counts.get(row[0], {}), native) for row in rows]
        return [m for m in found if state is None or m.state == state][:limit]

    async def delete_message(
        self, message_id: str, client_id: str | None, delivery_id: str | None = None
    ) -> Message | None:
        async with self.store.connection(transaction=True) as conn:
            if await _message(conn, message_id, client_id, deliveries=False) is None:
                return None
            await _check_delivery(conn, message_id, delivery_id)
            now = utcnow()
            ids = [
                row[0]
                for row in await conn.fetch(
                    "UPDATE pipeline_deliveries SET state = $1, reason = 'deleted_by_request', "
                    "updated_at = $2 WHERE message_id = $3 AND state IN ($4, $5) "
                    "AND ($6::text IS NULL OR delivery_id = $6) RETURNING delivery_id",
                    DELETED,
                    now,
                    message_id,
                    PENDING,
                    STALE,
                    delivery_id,
                )
            ]
            removed = await conn.fetch(
                "DELETE FROM pipeline_outbox WHERE delivery_id = ANY($1::text[]) "
                "RETURNING delivery_id, channel, available_at",
                ids,
            )
            history: list[HistoryRow] = [(i, DELETED, "deleted_by_request", None) for i in ids]
            history += await reassign_digests(conn, removed, now)
            await write_history(conn, history, now)
            return await _message(conn, message_id, client_id)

    async def retry_message(
        self, message_id: str, client_id: str | None, delivery_id: str | None = None
    ) -> Message | None:
        async with self.store.connection(transaction=True) as conn:
            if await _message(conn, message_id, client_id, deliveries=False) is None:
                return None
            await _check_delivery(conn, message_id, delivery_id)
            now = utcnow()
            rows = await conn.fetch(
                # The current contact point: the user may have given one since (no_address).
                "UPDATE pipeline_deliveries d SET state = $1, reason = 'retried_by_request', "
                "attempts = 0, updated_at = $2, address = COALESCE((SELECT c.address FROM "
                "pipeline_contacts c WHERE c.user_id = d.user_id AND c.channel = d.channel), "
                "d.address) WHERE message_id = $3 AND state = $4 "
                "AND ($5::text IS NULL OR delivery_id = $5) RETURNING delivery_id, channel",
                PENDING,
                now,
                message_id,
                FAILED,
                delivery_id,
            )
            await conn.execute(
                "INSERT INTO pipeline_outbox (delivery_id, channel, available_at) "
                "SELECT i, c, $3 FROM unnest($1::text[], $2::text[]) AS t(i, c) "
                "ON CONFLICT (delivery_id) DO UPDATE SET available_at = excluded.available_at, "
                "lease_owner = NULL, lease_until = NULL, attempt = 0",
                [r[0] for r in rows],
                [r[1] for r in rows],
                now,
            )
            # Sent on its own now, no longer in the digest it was sent in.
            await conn.execute(
                "DELETE FROM pipeline_digest_items WHERE delivery_id = ANY($1::text[]) "
                "AND digest_id <> delivery_id",
                [r[0] for r in rows],
            )
            await write_history(
                conn, [(r[0], PENDING, "retried_by_request", None) for r in rows], now
            )
            return await _message(conn, message_id, client_id)


async def _create(
    conn: Any,
    message: NewMessage,
    counted: Sequence[str],
    since: dict[str, datetime],
    planner: Planner,
    max_recipients: int,
) -> tuple[Message, bool]:
    """A message written on ``conn``, in its transaction (see ``create_message``)."""
    if message.idempotency_key is not None:
        # Concurrent requests with one key wait here for the first to commit.
        await conn.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended($1, 11))",
            f"{message.client_id}/{message.idempotency_key}",  # a clash only shares a lock
        )
        row = await conn.fetchrow(
            "SELECT message_id, body_hash FROM pipeline_messages "
            "WHERE client_id = $1 AND idempotency_key = $2",
            message.client_id,
            message.idempotency_key,
        )
        if row is not None:
            check_body(message, row[1])
            earlier = await _message(conn, row[0], None, deliveries=False)
            assert earlier is not None  # read in this transaction
            return earlier, False
    users = await _resolve(conn, message, max_recipients)
    if counted and users:
        await conn.execute(
            "INSERT INTO pipeline_rate_locks SELECT u, c FROM unnest($1::text[]) AS u, "
            "unnest($2::text[]) AS c ORDER BY u, c ON CONFLICT (user_id, channel) "
            "DO UPDATE SET channel = excluded.channel",
            sorted(users),
            sorted(counted),
        )
    told = await recipients(conn, users, counted, since)
    if message.digest is not None:
        found = await open_digests(conn, users, message.digest, utcnow())
        told = [replace(r, digests=found.get(r.user_id, {})) for r in told]
    if message.category is not None:
        off = await muted(conn, users, message.category)
        told = [replace(r, muted=off.get(r.user_id, frozenset())) for r in told]
    return await _insert(conn, message, planner(told)), True


async def _resolve(conn: Any, message: NewMessage, max_recipients: int) -> list[str]:
    """The message's recipients: its users, or its topic's subscribers."""
    if message.user_ids is not None:
        return list(message.user_ids)
    rows = await conn.fetch(
        "SELECT user_id FROM pipeline_topic_subscriptions WHERE topic = $1 "
        "ORDER BY user_id LIMIT $2",
        message.topic,
        max_recipients + 1,
    )
    return subscribers(message, [row[0] for row in rows], max_recipients)


async def _insert(conn: Any, message: NewMessage, planned: list[PlannedDelivery]) -> Message:
    """Write the message, its planned deliveries, their history and their outbox rows."""
    now = utcnow()
    message_id = new_sorted_id()
    await conn.execute(
        f"INSERT INTO pipeline_messages ({MESSAGE_INSERT_COLUMNS}) VALUES ($1, $2, $3, $4, "
        "$5::jsonb, $6::jsonb, $7, $8::jsonb, $9::jsonb, $10, $11, $12::jsonb, $13::jsonb, $14, "
        "$15)",
        *message_values(message_id, message, now),
    )
    ids = [new_id() for _ in planned]
    await conn.execute(
        "INSERT INTO pipeline_deliveries (delivery_id, message_id, user_id, channel, address, "
        "state, reason, counted, created_at, updated_at) SELECT i, $1, u, c, a::jsonb, s, r, q, "
        "$2, $2 FROM unnest($3::text[], $4::text[], $5::text[], $6::text[], $7::text[], "
        "$8::text[], $9::bool[]) AS t(i, u, c, a, s, r, q)",
        message_id,
        now,
        ids,
        [p.user_id for p in planned],
        [p.channel for p in planned],
        [encode_json(p.address) for p in planned],
        [p.state for p in planned],
        [p.reason for p in planned],
        [p.queued for p in planned],
    )
    # Claimed once due: at once, or after a delay step or the user's quiet hours.
    queued = [
        (i, p.channel, p.not_before or now) for i, p in zip(ids, planned, strict=True) if p.queued
    ]
    await conn.execute(
        "INSERT INTO pipeline_outbox (delivery_id, channel, available_at) "
        "SELECT i, c, a FROM unnest($1::text[], $2::text[], $3::timestamptz[]) AS t(i, c, a)",
        [q[0] for q in queued],
        [q[1] for q in queued],
        [q[2] for q in queued],
    )
    await write_digests(conn, message_id, ids, planned)
    await write_history(
        conn, [(i, p.state, p.reason, p.detail) for i, p in zip(ids, planned, strict=True)], now
    )
    return Message.created(message_id, message, now, planned)


async def _counts(conn: Any, message_ids: list[str]) -> dict[str, dict[str, int]]:
    """Deliveries per state of each message."""
    counts: dict[str, dict[str, int]] = {}
    for message_id, state, n in await conn.fetch(
        "SELECT message_id, state, COUNT(*) FROM pipeline_deliveries "
        "WHERE message_id = ANY($1::text[]) GROUP BY message_id, state",
        message_ids,
    ):
        counts.setdefault(message_id, {})[state] = n
    return counts


async def _message(
    conn: Any,
    message_id: str,
    client_id: str | None,
    *,
    deliveries: bool = True,
    page: tuple[int, int] = (DELIVERIES_PAGE, 0),
) -> Message | None:
    """The message if ``client_id`` (or anyone: ``None``) created it, with a ``page``
    (limit, offset) of its deliveries unless not ``deliveries``."""
    row = await conn.fetchrow(
        f"SELECT {MESSAGE_COLUMNS} FROM pipeline_messages WHERE message_id = $1", message_id
    )
    if row is None or (client_id is not None and row[1] != client_id):
        return None
    message = message_of(row, (await _counts(conn, [message_id])).get(message_id, {}), native)
    if not deliveries:
        return message
    rows = await conn.fetch(
        f"SELECT {DELIVERY_COLUMNS} FROM pipeline_deliveries WHERE message_id = $1 "
        "ORDER BY created_at, user_id, channel LIMIT $2 OFFSET $3",
        message_id,
        *page,
    )
    history = await conn.fetch(
        f"SELECT {HISTORY_COLUMNS} FROM pipeline_history "
        "WHERE delivery_id = ANY($1::text[]) ORDER BY id",
        [r[0] for r in rows],
    )
    return with_deliveries(message, rows, history, native)


async def _check_delivery(conn: Any, message_id: str, delivery_id: str | None) -> None:
    """Raise NotFound unless ``delivery_id`` (if given) is one of the message's."""
    if delivery_id is not None and not await conn.fetchval(
        "SELECT 1 FROM pipeline_deliveries WHERE delivery_id = $1 AND message_id = $2",
        delivery_id,
        message_id,
    ):
        raise NotFound("no such delivery in this message", [delivery_id])
