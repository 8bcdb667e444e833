"""Digests on SQLite (docs/pipeline.md, "Digest"); the tables as on PostgreSQL
(:mod:`tidings.delivery.stores.postgres.digests`). SQLite's one writer runs a message's whole
transaction alone, so reading a digest and joining it need no locks: a worker's claim is a
write too, before or after it."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

from tidings.core.models import isoformat
from tidings.delivery.models import PENDING, QUEUED, SENT, Digest, PlannedDelivery
from tidings.delivery.stores.rows import DIGEST_LIVE, HistoryRow, followed, promoted
from tidings.delivery.stores.sqlite.common import chunks, marks, write_history


def open_digests(
    conn: sqlite3.Connection, users: Sequence[str], digest: Digest, now: str
) -> dict[str, dict[str, str]]:
    """user id → channel → the delivery of the user's open digest of ``digest.key`` (one that
    closes after ``now`` and no worker holds)."""
    found: dict[str, dict[str, str]] = {}
    channels = list(digest.channels)
    for chunk in chunks(list(users)):
        for user, channel, delivery in conn.execute(
            "SELECT g.user_id, g.channel, g.delivery_id FROM pipeline_digests g "
            "JOIN pipeline_outbox o ON o.delivery_id = g.delivery_id "
            f"WHERE g.user_id IN ({marks(chunk)}) AND g.channel IN ({marks(channels)}) "
            "AND g.digest_key = ? AND g.closes_at > ? AND o.lease_owner IS NULL",
            (*chunk, *channels, digest.key, now),
        ):
            found.setdefault(user, {})[channel] = delivery
    return found


def write_digests(
    conn: sqlite3.Connection,
    message_id: str,
    ids: Sequence[str],
    planned: Sequence[PlannedDelivery],
) -> None:
    """Record the digests a new message opens and the deliveries it puts in a digest."""
    pairs = list(zip(ids, planned, strict=True))
    conn.executemany(
        "INSERT INTO pipeline_digests (user_id, channel, digest_key, delivery_id, closes_at) "
        "VALUES (?, ?, ?, ?, ?) ON CONFLICT (user_id, channel, digest_key) DO UPDATE SET "
        "delivery_id = excluded.delivery_id, closes_at = excluded.closes_at",
        [
            (p.user_id, p.channel, p.digest_key, i, isoformat(p.not_before))
            for i, p in pairs
            if p.digest_key and p.queued and p.not_before is not None
        ],
    )
    conn.executemany(
        "INSERT INTO pipeline_digest_items (delivery_id, digest_id, message_id) VALUES (?, ?, ?)",
        [(i, p.into or i, message_id) for i, p in pairs if p.digest_key],
    )


def digest_data(conn: sqlite3.Connection, digest_ids: Sequence[str]) -> dict[str, list[Any]]:
    """digest delivery → the data (JSON text) of each message still in it, oldest first."""
    found: dict[str, list[Any]] = {}
    for chunk in chunks(list(digest_ids)):
        for digest_id, data in conn.execute(
            "SELECT i.digest_id, m.data FROM pipeline_digest_items i "
            "JOIN pipeline_deliveries d ON d.delivery_id = i.delivery_id "
            "JOIN pipeline_messages m ON m.message_id = i.message_id "
            f"WHERE i.digest_id IN ({marks(chunk)}) AND d.state IN ({marks(DIGEST_LIVE)}) "
            "ORDER BY i.digest_id, m.created_at, i.message_id",
            (*chunk, *DIGEST_LIVE),
        ):
            found.setdefault(digest_id, []).append(data)
    return found


def follow_digests(
    conn: sqlite3.Connection, ended: Sequence[tuple[str, str, str]], now: str
) -> None:
    """The deliveries sent in the digests that ``ended`` ((digest delivery, state, reason))
    end as their digest did."""
    rows: list[Any] = []
    for chunk in chunks([e[0] for e in ended]):
        rows += conn.execute(
            "SELECT i.delivery_id, i.digest_id FROM pipeline_digest_items i "
            "JOIN pipeline_deliveries d ON d.delivery_id = i.delivery_id "
            f"WHERE i.digest_id IN ({marks(chunk)}) AND i.delivery_id <> i.digest_id "
            "AND d.state = ?",
            (*chunk, PENDING),
        ).fetchall()
    changes, history = followed(rows, ended)
    conn.executemany(
        "UPDATE pipeline_deliveries SET state = ?, reason = ?, updated_at = ?, sent_at = ? "
        "WHERE delivery_id = ?",
        [(s, r, now, now if s == SENT else None, i) for i, s, r in changes],
    )
    write_history(conn, history, now)


def reassign_digests(
    conn: sqlite3.Connection, removed: Sequence[tuple[str, str, str]], now: str
) -> list[HistoryRow]:
    """Digests whose delivery was deleted while waiting (``removed``: delivery, channel, its
    outbox time) are sent by their oldest delivery still waiting in them, at the same time.
    The history entries of the deliveries that took over (written by the caller)."""
    rows: list[Any] = []
    for chunk in chunks([r[0] for r in removed]):
        rows += conn.execute(
            "SELECT i.digest_id, i.delivery_id FROM pipeline_digest_items i "
            "JOIN pipeline_deliveries d ON d.delivery_id = i.delivery_id "
            "JOIN pipeline_messages m ON m.message_id = i.message_id "
            f"WHERE i.digest_id IN ({marks(chunk)}) AND d.state IN ({marks(QUEUED)}) "
            "ORDER BY i.digest_id, m.created_at, i.message_id",
            (*chunk, *QUEUED),
        ).fetchall()
    moves = promoted(rows, removed)
    for old, new, channel, at in moves:
        conn.execute(
            "UPDATE pipeline_digest_items SET digest_id = ? WHERE digest_id = ?", (new, old)
        )
        conn.execute(
            "UPDATE pipeline_digests SET delivery_id = ? WHERE delivery_id = ?", (new, old)
        )
        conn.execute(
            "UPDATE pipeline_deliveries SET reason = 'digest', updated_at = ? "
            "WHERE delivery_id = ?",
            (now, new),
        )
        conn.execute(
            "INSERT INTO pipeline_outbox (delivery_id, channel, available_at) VALUES (?, ?, ?)",
            (new, channel, at),
        )
    return [
        (new, PENDING, "digest", f"sends the digest of delivery {old}, deleted")
        for old, new, _, _ in moves
    ]
