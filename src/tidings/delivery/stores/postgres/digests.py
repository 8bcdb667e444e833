"""Digests on PostgreSQL (docs/pipeline.md, "Digest").

``pipeline_digests`` holds the open digest of each (user, channel, key): the delivery that will
send it and when it goes (``closes_at``). A message with the key locks its users' rows (in key
order, like the rate locks, so two messages with one key serialise and never deadlock) and joins
each digest whose delivery still waits unclaimed; its outbox row is locked too, so a worker
skips it until the message commits. ``pipeline_digest_items`` lists the deliveries each digest
sends (its own first).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from tidings.delivery.models import PENDING, QUEUED, SENT, Digest, PlannedDelivery
from tidings.delivery.stores.postgres.common import write_history
from tidings.delivery.stores.rows import DIGEST_LIVE, HistoryRow, followed, promoted


async def open_digests(
    conn: Any, users: Sequence[str], digest: Digest, now: datetime
) -> dict[str, dict[str, str]]:
    """user id → channel → the delivery of the user's open digest of ``digest.key`` (one that
    closes after ``now`` and no worker holds), with the rows locked until the transaction
    ends."""
    rows = await conn.fetch(
        "INSERT INTO pipeline_digests (user_id, channel, digest_key, delivery_id, closes_at) "
        "SELECT u, c, $3, '', '-infinity' FROM unnest($1::text[]) AS u, unnest($2::text[]) AS c "
        "ORDER BY u, c ON CONFLICT (user_id, channel, digest_key) "
        "DO UPDATE SET digest_key = excluded.digest_key "
        "RETURNING user_id, channel, delivery_id, closes_at > $4",
        sorted(users),
        sorted(digest.channels),
        digest.key,
        now,
    )
    candidates = [(r[0], r[1], r[2]) for r in rows if r[3]]
    if not candidates:
        return {}
    waiting = {
        row[0]
        for row in await conn.fetch(
            "SELECT delivery_id FROM pipeline_outbox WHERE delivery_id = ANY($1::text[]) "
            "AND lease_owner IS NULL ORDER BY delivery_id FOR UPDATE",
            [c[2] for c in candidates],
        )
    }
    found: dict[str, dict[str, str]] = {}
    for user, channel, delivery in candidates:
        if delivery in waiting:
            found.setdefault(user, {})[channel] = delivery
    return found


async def write_digests(
    conn: Any, message_id: str, ids: Sequence[str], planned: Sequence[PlannedDelivery]
) -> None:
    """Record the digests a new message opens (the user's row now names its delivery) and the
    deliveries it puts in a digest, its own or an open one."""
    opened = [(i, p) for i, p in zip(ids, planned, strict=True) if p.digest_key and p.queued]
    joined = [(i, p.into) for i, p in zip(ids, planned, strict=True) if p.into is not None]
    if opened:
        await conn.execute(
            "UPDATE pipeline_digests g SET delivery_id = t.i, closes_at = t.a "
            "FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[]) AS t(u, c, i, a) "
            "WHERE g.user_id = t.u AND g.channel = t.c AND g.digest_key = $5",
            [p.user_id for _, p in opened],
            [p.channel for _, p in opened],
            [i for i, _ in opened],
            [p.not_before for _, p in opened],
            opened[0][1].digest_key,
        )
    items = [(i, i) for i, _ in opened] + [(i, into) for i, into in joined]
    if items:
        await conn.execute(
            "INSERT INTO pipeline_digest_items (delivery_id, digest_id, message_id) "
            "SELECT i, g, $3 FROM unnest($1::text[], $2::text[]) AS t(i, g)",
            [i for i, _ in items],
            [g for _, g in items],
            message_id,
        )


async def digest_data(conn: Any, digest_ids: Sequence[str]) -> dict[str, list[Any]]:
    """digest delivery → the data (JSON text) of each message still in it, oldest first."""
    found: dict[str, list[Any]] = {}
    for digest_id, data in await conn.fetch(
        "SELECT i.digest_id, m.data::text FROM pipeline_digest_items i "
        "JOIN pipeline_deliveries d ON d.delivery_id = i.delivery_id "
        "JOIN pipeline_messages m ON m.message_id = i.message_id "
        "WHERE i.digest_id = ANY($1::text[]) AND d.state = ANY($2::text[]) "
        "ORDER BY i.digest_id, m.created_at, i.message_id",
        list(digest_ids),
        list(DIGEST_LIVE),
    ):
        found.setdefault(digest_id, []).append(data)
    return found


async def follow_digests(conn: Any, ended: Sequence[tuple[str, str, str]], now: datetime) -> None:
    """The deliveries sent in the digests that ``ended`` ((digest delivery, state, reason),
    each sent, failed or deleted) end as their digest did."""
    if not ended:
        return
    rows = await conn.fetch(
        "SELECT i.delivery_id, i.digest_id FROM pipeline_digest_items i "
        "JOIN pipeline_deliveries d ON d.delivery_id = i.delivery_id "
        "WHERE i.digest_id = ANY($1::text[]) AND i.delivery_id <> i.digest_id AND d.state = $2",
        [e[0] for e in ended],
        PENDING,
    )
    changes, history = followed(rows, ended)
    if not changes:
        return
    await conn.execute(
        "UPDATE pipeline_deliveries d SET state = t.s, reason = t.r, updated_at = $4, "
        "sent_at = CASE WHEN t.s = $5::text THEN $4::timestamptz END "
        "FROM unnest($1::text[], $2::text[], $3::text[]) AS t(i, s, r) WHERE d.delivery_id = t.i",
        [c[0] for c in changes],
        [c[1] for c in changes],
        [c[2] for c in changes],
        now,
        SENT,
    )
    await write_history(conn, history, now)


async def reassign_digests(
    conn: Any, removed: Sequence[tuple[str, str, datetime]], now: datetime
) -> list[HistoryRow]:
    """Digests whose delivery was deleted while waiting (``removed``: delivery, channel, its
    outbox time) are sent by their oldest delivery still waiting in them, at the same time.
    The history entries of the deliveries that took over (written by the caller)."""
    if not removed:
        return []
    rows = await conn.fetch(
        "SELECT i.digest_id, i.delivery_id FROM pipeline_digest_items i "
        "JOIN pipeline_deliveries d ON d.delivery_id = i.delivery_id "
        "JOIN pipeline_messages m ON m.message_id = i.message_id "
        "WHERE i.digest_id = ANY($1::text[]) AND d.state = ANY($2::text[]) "
        "ORDER BY i.digest_id, m.created_at, i.message_id",
        [r[0] for r in removed],
        list(QUEUED),
    )
    moves = promoted(rows, removed)
    for old, new, channel, at in moves:
        await conn.execute(
            "UPDATE pipeline_digest_items SET digest_id = $2 WHERE digest_id = $1", old, new
        )
        await conn.execute(
            "UPDATE pipeline_digests SET delivery_id = $2 WHERE delivery_id = $1", old, new
        )
        await conn.execute(
            "UPDATE pipeline_deliveries SET reason = 'digest', updated_at = $2 "
            "WHERE delivery_id = $1",
            new,
            now,
        )
        await conn.execute(
            "INSERT INTO pipeline_outbox (delivery_id, channel, available_at) VALUES ($1, $2, $3)",
            new,
            channel,
            at,
        )
    return [
        (new, PENDING, "digest", f"sends the digest of delivery {old}, deleted")
        for old, new, _, _ in moves
    ]
