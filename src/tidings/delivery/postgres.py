"""The pipeline's tables in PostgreSQL, on the :class:`PostgresStore`'s pool.

Workers on many nodes claim with ``FOR UPDATE SKIP LOCKED``: each takes rows no other
transaction holds, so two workers never get one delivery, and neither waits for the other.
Messages to one user serialise on a row of ``pipeline_rate_locks`` per limited channel (a row
lock, not an advisory lock, so a topic with many subscribers does not fill the lock table).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import orjson

from tidings.core.ids import new_id, new_sorted_id
from tidings.core.models import utcnow
from tidings.delivery.models import (
    ACTIVE,
    DELETED,
    FAILED,
    PENDING,
    SENT,
    STALE,
    Claim,
    Content,
    HistoryEntry,
    Message,
    NewMessage,
    Outcome,
    PlannedDelivery,
    Preferences,
    Template,
)
from tidings.delivery.planner import Recipient
from tidings.delivery.sqlite import _delivery
from tidings.delivery.store import (
    DELIVERIES_PAGE,
    Backoff,
    PipelineStore,
    Planner,
    decode_content,
    encode_json,
    message_values,
)
from tidings.errors import Conflict, InvalidArgument
from tidings.storage.postgres import PostgresStore

MESSAGE_COLUMNS = (
    "message_id, client_id, channels::text, recipients::text, template_id, content::text, "
    "data::text, critical, idempotency_key, created_at"
)
DELIVERY_COLUMNS = (
    "delivery_id, message_id, user_id, channel, state, reason, attempts, last_error, "
    "provider_id, created_at, updated_at, sent_at"
)
TEMPLATE_COLUMNS = "template_id, subject, text, html, version, created_at, updated_at"


def _template(r: Any) -> Template:
    return Template(r[0], Content(r[2], r[1], r[3]), r[4], r[5], r[6])


class PostgresPipelineStore(PipelineStore):
    def __init__(self, store: PostgresStore) -> None:
        self.store = store

    # Templates

    async def put_template(self, template_id: str, content: Content) -> tuple[Template, bool]:
        async with self.store.connection() as conn:
            row = await conn.fetchrow(
                f"INSERT INTO pipeline_templates AS t VALUES ($1, $2, $3, $4, 1, $5, $5) "
                "ON CONFLICT (template_id) DO UPDATE SET subject = excluded.subject, "
                "text = excluded.text, html = excluded.html, version = t.version + 1, "
                f"updated_at = excluded.updated_at RETURNING {TEMPLATE_COLUMNS}",
                template_id,
                content.subject,
                content.text,
                content.html,
                utcnow(),
            )
        template = _template(row)
        return template, template.version == 1

    async def get_template(self, template_id: str) -> Template | None:
        async with self.store.connection() as conn:
            row = await conn.fetchrow(
                f"SELECT {TEMPLATE_COLUMNS} FROM pipeline_templates WHERE template_id = $1",
                template_id,
            )
        return None if row is None else _template(row)

    async def list_templates(self) -> list[Template]:
        async with self.store.connection() as conn:
            rows = await conn.fetch(
                f"SELECT {TEMPLATE_COLUMNS} FROM pipeline_templates ORDER BY template_id"
            )
        return [_template(row) for row in rows]

    async def delete_template(self, template_id: str) -> bool:
        async with self.store.connection() as conn:
            status = await conn.execute(
                "DELETE FROM pipeline_templates WHERE template_id = $1", template_id
            )
        return bool(status != "DELETE 0")

    # Preferences and contact points

    async def preferences(self, user_id: str) -> Preferences:
        async with self.store.connection() as conn:
            recipient = (await _recipients(conn, [user_id], [], {}))[0]
            topics = await conn.fetch(
                "SELECT topic FROM pipeline_topic_subscriptions WHERE user_id = $1 ORDER BY topic",
                user_id,
            )
        return Preferences(
            user_id, dict(recipient.switches), [r[0] for r in topics], dict(recipient.contacts)
        )

    async def set_channel(self, user_id: str, channel: str, enabled: bool) -> None:
        async with self.store.connection() as conn:
            await conn.execute(
                "INSERT INTO pipeline_channel_prefs VALUES ($1, $2, $3, $4) "
                "ON CONFLICT (user_id, channel) DO UPDATE SET enabled = excluded.enabled, "
                "updated_at = excluded.updated_at",
                user_id,
                channel,
                enabled,
                utcnow(),
            )

    async def set_topic(self, user_id: str, topic: str, subscribed: bool) -> None:
        async with self.store.connection() as conn:
            if subscribed:
                await conn.execute(
                    "INSERT INTO pipeline_topic_subscriptions VALUES ($1, $2, $3) "
                    "ON CONFLICT DO NOTHING",
                    topic,
                    user_id,
                    utcnow(),
                )
            else:
                await conn.execute(
                    "DELETE FROM pipeline_topic_subscriptions WHERE topic = $1 AND user_id = $2",
                    topic,
                    user_id,
                )

    async def set_contact(self, user_id: str, channel: str, address: Any) -> None:
        async with self.store.connection() as conn:
            if address is None:
                await conn.execute(
                    "DELETE FROM pipeline_contacts WHERE user_id = $1 AND channel = $2",
                    user_id,
                    channel,
                )
            else:
                await conn.execute(
                    "INSERT INTO pipeline_contacts VALUES ($1, $2, $3::jsonb, $4) "
                    "ON CONFLICT (user_id, channel) DO UPDATE SET address = excluded.address, "
                    "updated_at = excluded.updated_at",
                    user_id,
                    channel,
                    encode_json(address),
                    utcnow(),
                )

    # Messages

    async def create_message(
        self,
        message: NewMessage,
        counted: Sequence[str],
        since: dict[str, datetime],
        planner: Planner,
        max_recipients: int,
    ) -> tuple[Message, bool]:
        async with self.store.connection(transaction=True) as conn:
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
                    if row[1] != message.body_hash:
                        raise Conflict(
                            f"idempotency_key {message.idempotency_key!r} was used with "
                            "another body"
                        )
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
            planned = planner(await _recipients(conn, users, counted, since))
            return await _insert(conn, message, planned), True

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

    async def list_messages(self, state: str | None, limit: int) -> list[Message]:
        window = limit if state is None else max(limit * 10, 1000)
        async with self.store.connection() as conn:
            rows = await conn.fetch(
                f"SELECT {MESSAGE_COLUMNS} FROM pipeline_messages "
                "ORDER BY created_at DESC, message_id DESC LIMIT $1",
                window,
            )
            counts = await _counts(conn, [row[0] for row in rows])
        found = [_message_of(row, counts.get(row[0], {})) for row in rows]
        return [m for m in found if state is None or m.state == state][:limit]

    async def delete_message(self, message_id: str, client_id: str | None) -> Message | None:
        async with self.store.connection(transaction=True) as conn:
            if await _message(conn, message_id, client_id, deliveries=False) is None:
                return None
            now = utcnow()
            ids = [
                row[0]
                for row in await conn.fetch(
                    "UPDATE pipeline_deliveries SET state = $1, reason = 'deleted_by_request', "
                    "updated_at = $2 WHERE message_id = $3 AND state IN ($4, $5) "
                    "RETURNING delivery_id",
                    DELETED,
                    now,
                    message_id,
                    PENDING,
                    STALE,
                )
            ]
            await conn.execute(
                "DELETE FROM pipeline_outbox WHERE delivery_id = ANY($1::text[])", ids
            )
            await _history(conn, [(i, DELETED, "deleted_by_request", None) for i in ids], now)
            return await _message(conn, message_id, client_id)

    async def retry_message(self, message_id: str, client_id: str | None) -> Message | None:
        async with self.store.connection(transaction=True) as conn:
            if await _message(conn, message_id, client_id, deliveries=False) is None:
                return None
            now = utcnow()
            rows = await conn.fetch(
                # The current contact point: the user may have given one since (no_address).
                "UPDATE pipeline_deliveries d SET state = $1, reason = 'retried_by_request', "
                "attempts = 0, updated_at = $2, address = COALESCE((SELECT c.address FROM "
                "pipeline_contacts c WHERE c.user_id = d.user_id AND c.channel = d.channel), "
                "d.address) WHERE message_id = $3 AND state = $4 RETURNING delivery_id, channel",
                PENDING,
                now,
                message_id,
                FAILED,
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
            await _history(conn, [(r[0], PENDING, "retried_by_request", None) for r in rows], now)
            return await _message(conn, message_id, client_id)

    # Workers

    async def claim(
        self, channels: Sequence[str], owner: str, limit: int, lease: float
    ) -> list[Claim]:
        now = utcnow()
        async with self.store.connection(transaction=True) as conn:
            rows = await conn.fetch(
                "WITH due AS (SELECT delivery_id FROM pipeline_outbox "
                "WHERE channel = ANY($1::text[]) AND available_at <= $2 AND lease_owner IS NULL "
                "ORDER BY available_at LIMIT $3 FOR UPDATE SKIP LOCKED), "
                "taken AS (UPDATE pipeline_outbox o SET lease_owner = $4, lease_until = $5, "
                "attempt = o.attempt + 1 FROM due WHERE o.delivery_id = due.delivery_id "
                "RETURNING o.delivery_id, o.attempt, o.available_at), "
                "marked AS (UPDATE pipeline_deliveries d SET state = $6, reason = 'claimed', "
                "attempts = d.attempts + 1, updated_at = $2 FROM taken "
                "WHERE d.delivery_id = taken.delivery_id "
                "RETURNING d.delivery_id, d.message_id, d.user_id, d.channel, d.address::text) "
                "SELECT m.delivery_id, m.message_id, m.user_id, m.channel, m.address, t.attempt, "
                "g.template_id, g.content::text, g.data::text, g.critical "
                "FROM marked m JOIN taken t USING (delivery_id) "
                "JOIN pipeline_messages g ON g.message_id = m.message_id "
                "ORDER BY t.available_at",
                list(channels),
                now,
                limit,
                owner,
                now + timedelta(seconds=lease),
                ACTIVE,
            )
            claims = [_claim(row) for row in rows]
            await _history(
                conn,
                [(c.delivery_id, ACTIVE, "claimed", f"try {c.attempt} by {owner}") for c in claims],
                now,
            )
        return claims

    async def renew(self, owner: str, claims: Sequence[Claim], lease: float) -> set[str]:
        if not claims:
            return set()
        async with self.store.connection() as conn:
            rows = await conn.fetch(
                "UPDATE pipeline_outbox o SET lease_until = $1 "
                "FROM unnest($2::text[], $3::int[]) AS t(i, a) "
                "WHERE o.delivery_id = t.i AND o.attempt = t.a AND o.lease_owner = $4 "
                "RETURNING o.delivery_id",
                utcnow() + timedelta(seconds=lease),
                [c.delivery_id for c in claims],
                [c.attempt for c in claims],
                owner,
            )
        return {row[0] for row in rows}

    async def complete(self, owner: str, claim: Claim, outcome: Outcome) -> bool:
        async with self.store.connection(transaction=True) as conn:
            row = await conn.fetchrow(
                "SELECT lease_owner, attempt FROM pipeline_outbox WHERE delivery_id = $1 "
                "FOR UPDATE",
                claim.delivery_id,
            )
            if row is None or row[0] != owner or row[1] != claim.attempt:
                return False
            now = utcnow()
            if outcome.state == PENDING:
                await conn.execute(
                    "UPDATE pipeline_outbox SET lease_owner = NULL, lease_until = NULL, "
                    "available_at = $2 WHERE delivery_id = $1",
                    claim.delivery_id,
                    outcome.retry_at,
                )
            else:
                await conn.execute(
                    "DELETE FROM pipeline_outbox WHERE delivery_id = $1", claim.delivery_id
                )
            await conn.execute(
                "UPDATE pipeline_deliveries SET state = $2, reason = $3, "
                "last_error = COALESCE($4, last_error), provider_id = COALESCE($5, provider_id), "
                "updated_at = $6, sent_at = $7 WHERE delivery_id = $1",
                claim.delivery_id,
                outcome.state,
                outcome.reason,
                outcome.error,
                outcome.provider_id,
                now,
                now if outcome.state == SENT else None,
            )
            detail = outcome.error if outcome.state != SENT else outcome.provider_id
            await _history(conn, [(claim.delivery_id, outcome.state, outcome.reason, detail)], now)
        return True

    async def requeue_stale(self, backoff: Backoff | None = None) -> int:
        now = utcnow()
        async with self.store.connection(transaction=True) as conn:
            expired = await conn.fetch(
                "UPDATE pipeline_outbox SET lease_owner = NULL, lease_until = NULL, "
                "available_at = $1 WHERE delivery_id IN (SELECT delivery_id FROM "
                "pipeline_outbox WHERE lease_until < $1 FOR UPDATE SKIP LOCKED) "
                "RETURNING delivery_id, attempt",
                now,
            )
            ids = [row[0] for row in expired]
            if ids and backoff is not None:
                await conn.execute(
                    "UPDATE pipeline_outbox o SET available_at = t.a "
                    "FROM unnest($1::text[], $2::timestamptz[]) AS t(i, a) "
                    "WHERE o.delivery_id = t.i",
                    ids,
                    [now + timedelta(seconds=backoff(row[1])) for row in expired],
                )
            if ids:
                await conn.execute(
                    "UPDATE pipeline_deliveries SET state = $1, reason = 'lease_expired', "
                    "updated_at = $2 WHERE delivery_id = ANY($3::text[])",
                    STALE,
                    now,
                    ids,
                )
                detail = "its worker stopped renewing the lease; queued again"
                await _history(conn, [(i, STALE, "lease_expired", detail) for i in ids], now)
        return len(ids)

    async def depths(self) -> dict[str, dict[str, int]]:
        found: dict[str, dict[str, int]] = {}
        async with self.store.connection() as conn:
            for channel, state, n in await conn.fetch(
                "SELECT o.channel, d.state, COUNT(*) FROM pipeline_outbox o "
                "JOIN pipeline_deliveries d USING (delivery_id) GROUP BY o.channel, d.state"
            ):
                found.setdefault(channel, {})[state] = n
        return found


async def _resolve(conn: Any, message: NewMessage, max_recipients: int) -> list[str]:
    if message.user_ids is not None:
        return list(message.user_ids)
    rows = await conn.fetch(
        "SELECT user_id FROM pipeline_topic_subscriptions WHERE topic = $1 "
        "ORDER BY user_id LIMIT $2",
        message.topic,
        max_recipients + 1,
    )
    if len(rows) > max_recipients:
        raise InvalidArgument(
            f"topic {message.topic!r} has more than {max_recipients} subscribers "
            "(TIDINGS_MAX_TOPIC_RECIPIENTS)"
        )
    return [row[0] for row in rows]


async def _recipients(
    conn: Any, users: list[str], counted: Sequence[str], since: dict[str, datetime]
) -> list[Recipient]:
    switches: dict[str, dict[str, bool]] = {}
    contacts: dict[str, dict[str, Any]] = {}
    recent: dict[str, dict[str, int]] = {}
    for user, channel, enabled in await conn.fetch(
        "SELECT user_id, channel, enabled FROM pipeline_channel_prefs "
        "WHERE user_id = ANY($1::text[])",
        users,
    ):
        switches.setdefault(user, {})[channel] = enabled
    for user, channel, address in await conn.fetch(
        "SELECT user_id, channel, address::text FROM pipeline_contacts "
        "WHERE user_id = ANY($1::text[])",
        users,
    ):
        contacts.setdefault(user, {})[channel] = orjson.loads(address)
    for channel in counted:
        for user, n in await conn.fetch(
            "SELECT user_id, COUNT(*) FROM pipeline_deliveries WHERE channel = $1 AND counted "
            "AND created_at >= $2 AND user_id = ANY($3::text[]) GROUP BY user_id",
            channel,
            since[channel],
            users,
        ):
            recent.setdefault(user, {})[channel] = n
    return [
        Recipient(u, switches.get(u, {}), contacts.get(u, {}), recent.get(u, {})) for u in users
    ]


async def _insert(conn: Any, message: NewMessage, planned: list[PlannedDelivery]) -> Message:
    now = utcnow()
    message_id = new_sorted_id()
    await conn.execute(
        "INSERT INTO pipeline_messages VALUES ($1, $2, $3, $4, $5::jsonb, $6::jsonb, $7, "
        "$8::jsonb, $9::jsonb, $10, $11)",
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
    queued = [(i, p.channel) for i, p in zip(ids, planned, strict=True) if p.queued]
    await conn.execute(
        "INSERT INTO pipeline_outbox (delivery_id, channel, available_at) "
        "SELECT i, c, $3 FROM unnest($1::text[], $2::text[]) AS t(i, c)",
        [q[0] for q in queued],
        [q[1] for q in queued],
        now,
    )
    await _history(
        conn, [(i, p.state, p.reason, p.detail) for i, p in zip(ids, planned, strict=True)], now
    )
    return Message.created(message_id, message, now, planned)


async def _history(
    conn: Any, entries: list[tuple[str, str, str, str | None]], at: datetime
) -> None:
    if not entries:
        return
    await conn.execute(
        "INSERT INTO pipeline_history (delivery_id, state, reason, detail, at) "
        "SELECT i, s, r, d, $5 FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) "
        "AS t(i, s, r, d)",
        [e[0] for e in entries],
        [e[1] for e in entries],
        [e[2] for e in entries],
        [e[3] for e in entries],
        at,
    )


async def _counts(conn: Any, message_ids: list[str]) -> dict[str, dict[str, int]]:
    counts: dict[str, dict[str, int]] = {}
    for message_id, state, n in await conn.fetch(
        "SELECT message_id, state, COUNT(*) FROM pipeline_deliveries "
        "WHERE message_id = ANY($1::text[]) GROUP BY message_id, state",
        message_ids,
    ):
        counts.setdefault(message_id, {})[state] = n
    return counts


def _message_of(row: Any, counts: dict[str, int]) -> Message:
    return Message(
        row[0],
        row[1],
        orjson.loads(row[2]),
        orjson.loads(row[3]),
        row[4],
        decode_content(row[5]),
        orjson.loads(row[6]),
        row[7],
        row[8],
        row[9],
        counts,
    )


async def _message(
    conn: Any,
    message_id: str,
    client_id: str | None,
    *,
    deliveries: bool = True,
    page: tuple[int, int] = (DELIVERIES_PAGE, 0),
) -> Message | None:
    row = await conn.fetchrow(
        f"SELECT {MESSAGE_COLUMNS} FROM pipeline_messages WHERE message_id = $1", message_id
    )
    if row is None or (client_id is not None and row[1] != client_id):
        return None
    message = _message_of(row, (await _counts(conn, [message_id])).get(message_id, {}))
    if not deliveries:
        return message
    rows = await conn.fetch(
        f"SELECT {DELIVERY_COLUMNS} FROM pipeline_deliveries WHERE message_id = $1 "
        "ORDER BY created_at, user_id, channel LIMIT $2 OFFSET $3",
        message_id,
        *page,
    )
    history: dict[str, list[HistoryEntry]] = {}
    for delivery_id, state, reason, detail, at in await conn.fetch(
        "SELECT delivery_id, state, reason, detail, at FROM pipeline_history "
        "WHERE delivery_id = ANY($1::text[]) ORDER BY id",
        [r[0] for r in rows],
    ):
        history.setdefault(delivery_id, []).append(HistoryEntry(state, reason, detail, at))
    found = [_delivery(r, r[9], r[10], r[11]) for r in rows]
    for delivery in found:
        delivery.history.extend(history.get(delivery.delivery_id, []))
    return replace(message, deliveries=found)


def _claim(row: Any) -> Claim:
    return Claim(
        delivery_id=row[0],
        message_id=row[1],
        user_id=row[2],
        channel=row[3],
        address=orjson.loads(row[4]) if row[4] is not None else None,
        attempt=row[5],
        template_id=row[6],
        content=decode_content(row[7]),
        data=orjson.loads(row[8]),
        critical=row[9],
    )
