"""The pipeline's tables in SQLite, written through the :class:`SqliteStore`'s writer thread.

One writer makes claims exclusive without row locks: a claim is one transaction on the only
writing connection, so two workers (tasks or processes sharing the file) never take the same
row — the second sees it leased.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any, TypeVar

import orjson

from tidings.core.ids import new_id, new_sorted_id
from tidings.core.models import isoformat, parse_iso, utcnow
from tidings.delivery.models import (
    ACTIVE,
    DELETED,
    FAILED,
    PENDING,
    SENT,
    STALE,
    Claim,
    Content,
    Delivery,
    HistoryEntry,
    Message,
    NewMessage,
    Outcome,
    PlannedDelivery,
    Preferences,
    Template,
)
from tidings.delivery.planner import Recipient
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
from tidings.storage.sqlite import SqliteStore

T = TypeVar("T")
_CHUNK = 500  # bound parameters per IN (...) list
MESSAGE_COLUMNS = (
    "message_id, client_id, channels, recipients, template_id, content, data, critical, "
    "idempotency_key, created_at"
)
DELIVERY_COLUMNS = (
    "delivery_id, message_id, user_id, channel, state, reason, attempts, last_error, "
    "provider_id, created_at, updated_at, sent_at"
)


def _chunks(items: Sequence[str]) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]


def _marks(items: Sequence[Any]) -> str:
    return ",".join("?" * len(items))


class SqlitePipelineStore(PipelineStore):
    def __init__(self, store: SqliteStore) -> None:
        self.store = store

    # Templates

    async def put_template(self, template_id: str, content: Content) -> tuple[Template, bool]:
        def run(conn: sqlite3.Connection) -> tuple[Template, bool]:
            now = isoformat(utcnow())
            row = conn.execute(
                "SELECT version, created_at FROM pipeline_templates WHERE template_id = ?",
                (template_id,),
            ).fetchone()
            version, created = (1, now) if row is None else (row[0] + 1, row[1])
            conn.execute(
                "INSERT OR REPLACE INTO pipeline_templates VALUES (?, ?, ?, ?, ?, ?, ?)",
                (template_id, content.subject, content.text, content.html, version, created, now),
            )
            template = Template(template_id, content, version, parse_iso(created), parse_iso(now))
            return template, row is None

        return await self.store.write(run)

    async def get_template(self, template_id: str) -> Template | None:
        templates = await self.store.read(lambda conn: _templates(conn, template_id))
        return templates[0] if templates else None

    async def list_templates(self) -> list[Template]:
        return await self.store.read(lambda conn: _templates(conn, None))

    async def delete_template(self, template_id: str) -> bool:
        def run(conn: sqlite3.Connection) -> bool:
            cur = conn.execute(
                "DELETE FROM pipeline_templates WHERE template_id = ?", (template_id,)
            )
            return cur.rowcount > 0

        return await self.store.write(run)

    # Preferences and contact points

    async def preferences(self, user_id: str) -> Preferences:
        def run(conn: sqlite3.Connection) -> Preferences:
            recipient = _recipients(conn, [user_id], [], {})[0]
            topics = [
                row[0]
                for row in conn.execute(
                    "SELECT topic FROM pipeline_topic_subscriptions WHERE user_id = ? "
                    "ORDER BY topic",
                    (user_id,),
                )
            ]
            return Preferences(user_id, dict(recipient.switches), topics, dict(recipient.contacts))

        return await self.store.read(run)

    async def set_channel(self, user_id: str, channel: str, enabled: bool) -> None:
        await self.store.write(
            lambda conn: conn.execute(
                "INSERT OR REPLACE INTO pipeline_channel_prefs VALUES (?, ?, ?, ?)",
                (user_id, channel, enabled, isoformat(utcnow())),
            )
        )

    async def set_topic(self, user_id: str, topic: str, subscribed: bool) -> None:
        def run(conn: sqlite3.Connection) -> None:
            if subscribed:
                conn.execute(
                    "INSERT OR IGNORE INTO pipeline_topic_subscriptions VALUES (?, ?, ?)",
                    (topic, user_id, isoformat(utcnow())),
                )
            else:
                conn.execute(
                    "DELETE FROM pipeline_topic_subscriptions WHERE topic = ? AND user_id = ?",
                    (topic, user_id),
                )

        await self.store.write(run)

    async def set_contact(self, user_id: str, channel: str, address: Any) -> None:
        def run(conn: sqlite3.Connection) -> None:
            if address is None:
                conn.execute(
                    "DELETE FROM pipeline_contacts WHERE user_id = ? AND channel = ?",
                    (user_id, channel),
                )
            else:
                conn.execute(
                    "INSERT OR REPLACE INTO pipeline_contacts VALUES (?, ?, ?, ?)",
                    (user_id, channel, encode_json(address), isoformat(utcnow())),
                )

        await self.store.write(run)

    # Messages

    async def create_message(
        self,
        message: NewMessage,
        counted: Sequence[str],
        since: dict[str, datetime],
        planner: Planner,
        max_recipients: int,
    ) -> tuple[Message, bool]:
        def run(conn: sqlite3.Connection) -> tuple[Message, bool]:
            if message.idempotency_key is not None:
                row = conn.execute(
                    "SELECT message_id, body_hash FROM pipeline_messages "
                    "WHERE client_id = ? AND idempotency_key = ?",
                    (message.client_id, message.idempotency_key),
                ).fetchone()
                if row is not None:
                    if row[1] != message.body_hash:
                        raise Conflict(
                            f"idempotency_key {message.idempotency_key!r} was used with "
                            "another body"
                        )
                    earlier = _message(conn, row[0], None, deliveries=False)
                    assert earlier is not None  # the row was just read in this transaction
                    return earlier, False
            users = _resolve(conn, message, max_recipients)
            planned = planner(_recipients(conn, users, counted, since))
            return _insert(conn, message, planned), True

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
            found = [_message_of(row, counts.get(row[0], {})) for row in rows]
            return [m for m in found if state is None or m.state == state][:limit]

        return await self.store.read(run)

    async def delete_message(self, message_id: str, client_id: str | None) -> Message | None:
        def run(conn: sqlite3.Connection) -> Message | None:
            if _message(conn, message_id, client_id, deliveries=False) is None:
                return None
            now = isoformat(utcnow())
            ids = [
                row[0]
                for row in conn.execute(
                    "UPDATE pipeline_deliveries SET state = ?, reason = ?, updated_at = ? "
                    "WHERE message_id = ? AND state IN (?, ?) RETURNING delivery_id",
                    (DELETED, "deleted_by_request", now, message_id, PENDING, STALE),
                )
            ]
            for chunk in _chunks(ids):
                conn.execute(
                    f"DELETE FROM pipeline_outbox WHERE delivery_id IN ({_marks(chunk)})", chunk
                )
            _history(conn, [(i, DELETED, "deleted_by_request", None) for i in ids], now)
            return _message(conn, message_id, client_id)

        return await self.store.write(run)

    async def retry_message(self, message_id: str, client_id: str | None) -> Message | None:
        def run(conn: sqlite3.Connection) -> Message | None:
            if _message(conn, message_id, client_id, deliveries=False) is None:
                return None
            now = isoformat(utcnow())
            # The user may have given a contact point since (a delivery that failed with
            # no_address): the retry takes the current one.
            rows = conn.execute(
                "UPDATE pipeline_deliveries AS d SET state = ?, reason = ?, attempts = 0, "
                "updated_at = ?, address = COALESCE((SELECT c.address FROM pipeline_contacts c "
                "WHERE c.user_id = d.user_id AND c.channel = d.channel), d.address) "
                "WHERE message_id = ? AND state = ? RETURNING delivery_id, channel",
                (PENDING, "retried_by_request", now, message_id, FAILED),
            ).fetchall()
            conn.executemany(
                "INSERT OR REPLACE INTO pipeline_outbox VALUES (?, ?, ?, NULL, NULL, 0)",
                [(delivery_id, channel, now) for delivery_id, channel in rows],
            )
            _history(conn, [(r[0], PENDING, "retried_by_request", None) for r in rows], now)
            return _message(conn, message_id, client_id)

        return await self.store.write(run)

    # Workers

    async def claim(
        self, channels: Sequence[str], owner: str, limit: int, lease: float
    ) -> list[Claim]:
        def run(conn: sqlite3.Connection) -> list[Claim]:
            now = utcnow()
            stamp, until = isoformat(now), isoformat(now + timedelta(seconds=lease))
            ids = [
                row[0]
                for row in conn.execute(
                    f"SELECT delivery_id FROM pipeline_outbox WHERE channel IN "
                    f"({_marks(channels)}) AND available_at <= ? AND lease_owner IS NULL "
                    "ORDER BY available_at LIMIT ?",
                    (*channels, stamp, limit),
                )
            ]
            if not ids:
                return []
            marks = _marks(ids)
            conn.execute(
                f"UPDATE pipeline_outbox SET lease_owner = ?, lease_until = ?, "
                f"attempt = attempt + 1 WHERE delivery_id IN ({marks})",
                (owner, until, *ids),
            )
            conn.execute(
                f"UPDATE pipeline_deliveries SET state = ?, reason = 'claimed', "
                f"attempts = attempts + 1, updated_at = ? WHERE delivery_id IN ({marks})",
                (ACTIVE, stamp, *ids),
            )
            rows = conn.execute(
                "SELECT d.delivery_id, d.message_id, d.user_id, d.channel, d.address, "
                "o.attempt, m.template_id, m.content, m.data, m.critical "
                "FROM pipeline_outbox o JOIN pipeline_deliveries d USING (delivery_id) "
                f"JOIN pipeline_messages m USING (message_id) WHERE o.delivery_id IN ({marks}) "
                "ORDER BY o.available_at",
                ids,
            ).fetchall()
            claims = [_claim(row) for row in rows]
            _history(
                conn,
                [(c.delivery_id, ACTIVE, "claimed", f"try {c.attempt} by {owner}") for c in claims],
                stamp,
            )
            return claims

        return await self.store.write(run)

    async def renew(self, owner: str, claims: Sequence[Claim], lease: float) -> set[str]:
        def run(conn: sqlite3.Connection) -> set[str]:
            until = isoformat(utcnow() + timedelta(seconds=lease))
            held: set[str] = set()
            for claim in claims:
                row = conn.execute(
                    "UPDATE pipeline_outbox SET lease_until = ? WHERE delivery_id = ? "
                    "AND lease_owner = ? AND attempt = ? RETURNING delivery_id",
                    (until, claim.delivery_id, owner, claim.attempt),
                ).fetchone()
                if row is not None:
                    held.add(row[0])
            return held

        return await self.store.write(run)

    async def complete(self, owner: str, claim: Claim, outcome: Outcome) -> bool:
        def run(conn: sqlite3.Connection) -> bool:
            row = conn.execute(
                "SELECT lease_owner, attempt FROM pipeline_outbox WHERE delivery_id = ?",
                (claim.delivery_id,),
            ).fetchone()
            if row is None or row[0] != owner or row[1] != claim.attempt:
                return False
            now = isoformat(utcnow())
            if outcome.state == PENDING:
                assert outcome.retry_at is not None  # the worker always sets it for a retry
                conn.execute(
                    "UPDATE pipeline_outbox SET lease_owner = NULL, lease_until = NULL, "
                    "available_at = ? WHERE delivery_id = ?",
                    (isoformat(outcome.retry_at), claim.delivery_id),
                )
            else:
                conn.execute(
                    "DELETE FROM pipeline_outbox WHERE delivery_id = ?", (claim.delivery_id,)
                )
            conn.execute(
                "UPDATE pipeline_deliveries SET state = ?, reason = ?, "
                "last_error = COALESCE(?, last_error), provider_id = COALESCE(?, provider_id), "
                "updated_at = ?, sent_at = ? WHERE delivery_id = ?",
                (
                    outcome.state,
                    outcome.reason,
                    outcome.error,
                    outcome.provider_id,
                    now,
                    now if outcome.state == SENT else None,
                    claim.delivery_id,
                ),
            )
            detail = outcome.error if outcome.state != SENT else outcome.provider_id
            _history(conn, [(claim.delivery_id, outcome.state, outcome.reason, detail)], now)
            return True

        return await self.store.write(run)

    async def requeue_stale(self, backoff: Backoff | None = None) -> int:
        def run(conn: sqlite3.Connection) -> int:
            moment = utcnow()
            now = isoformat(moment)
            expired = conn.execute(
                "UPDATE pipeline_outbox SET lease_owner = NULL, lease_until = NULL, "
                "available_at = ? WHERE lease_until < ? RETURNING delivery_id, attempt",
                (now, now),
            ).fetchall()
            ids = [row[0] for row in expired]
            if backoff is not None:
                conn.executemany(
                    "UPDATE pipeline_outbox SET available_at = ? WHERE delivery_id = ?",
                    [
                        (isoformat(moment + timedelta(seconds=backoff(attempt))), delivery_id)
                        for delivery_id, attempt in expired
                    ],
                )
            for chunk in _chunks(ids):
                conn.execute(
                    f"UPDATE pipeline_deliveries SET state = ?, reason = 'lease_expired', "
                    f"updated_at = ? WHERE delivery_id IN ({_marks(chunk)})",
                    (STALE, now, *chunk),
                )
            detail = "its worker stopped renewing the lease; queued again"
            _history(conn, [(i, STALE, "lease_expired", detail) for i in ids], now)
            return len(ids)

        return await self.store.write(run)

    async def depths(self) -> dict[str, dict[str, int]]:
        def run(conn: sqlite3.Connection) -> dict[str, dict[str, int]]:
            found: dict[str, dict[str, int]] = {}
            for channel, state, n in conn.execute(
                "SELECT o.channel, d.state, COUNT(*) FROM pipeline_outbox o "
                "JOIN pipeline_deliveries d USING (delivery_id) GROUP BY o.channel, d.state"
            ):
                found.setdefault(channel, {})[state] = n
            return found

        return await self.store.read(run)


def _snapshot(conn: sqlite3.Connection, read: Callable[[], T]) -> T:
    """``read()``'s statements in one read transaction: they see one state of the database
    (a delivery's row and its history agree), not each the latest commit."""
    conn.execute("BEGIN")
    try:
        return read()
    finally:
        conn.execute("COMMIT")


def _templates(conn: sqlite3.Connection, template_id: str | None) -> list[Template]:
    sql = "SELECT template_id, subject, text, html, version, created_at, updated_at "
    sql += "FROM pipeline_templates "
    rows = (
        conn.execute(sql + "ORDER BY template_id").fetchall()
        if template_id is None
        else conn.execute(sql + "WHERE template_id = ?", (template_id,)).fetchall()
    )
    return [
        Template(r[0], Content(r[2], r[1], r[3]), r[4], parse_iso(r[5]), parse_iso(r[6]))
        for r in rows
    ]


def _resolve(conn: sqlite3.Connection, message: NewMessage, max_recipients: int) -> list[str]:
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
    if len(users) > max_recipients:
        raise InvalidArgument(
            f"topic {message.topic!r} has more than {max_recipients} subscribers "
            "(TIDINGS_MAX_TOPIC_RECIPIENTS)"
        )
    return users


def _recipients(
    conn: sqlite3.Connection,
    users: list[str],
    counted: Sequence[str],
    since: dict[str, datetime],
) -> list[Recipient]:
    switches: dict[str, dict[str, bool]] = {}
    contacts: dict[str, dict[str, Any]] = {}
    recent: dict[str, dict[str, int]] = {}
    for chunk in _chunks(users):
        marks = _marks(chunk)
        for user, channel, enabled in conn.execute(
            f"SELECT user_id, channel, enabled FROM pipeline_channel_prefs "
            f"WHERE user_id IN ({marks})",
            chunk,
        ):
            switches.setdefault(user, {})[channel] = bool(enabled)
        for user, channel, address in conn.execute(
            f"SELECT user_id, channel, address FROM pipeline_contacts WHERE user_id IN ({marks})",
            chunk,
        ):
            contacts.setdefault(user, {})[channel] = orjson.loads(address)
        for channel in counted:
            for user, n in conn.execute(
                "SELECT user_id, COUNT(*) FROM pipeline_deliveries WHERE channel = ? "
                f"AND counted = 1 AND created_at >= ? AND user_id IN ({marks}) GROUP BY user_id",
                (channel, isoformat(since[channel]), *chunk),
            ):
                recent.setdefault(user, {})[channel] = n
    return [
        Recipient(u, switches.get(u, {}), contacts.get(u, {}), recent.get(u, {})) for u in users
    ]


def _insert(
    conn: sqlite3.Connection, message: NewMessage, planned: list[PlannedDelivery]
) -> Message:
    now = utcnow()
    stamp = isoformat(now)
    message_id = new_sorted_id()
    conn.execute(
        "INSERT INTO pipeline_messages VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        message_values(message_id, message, stamp),
    )
    ids = [new_id() for _ in planned]
    conn.executemany(
        "INSERT INTO pipeline_deliveries (delivery_id, message_id, user_id, channel, address, "
        "state, reason, counted, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            (i, message_id, p.user_id, p.channel, encode_json(p.address), *_row(p), stamp, stamp)
            for i, p in zip(ids, planned, strict=True)
        ],
    )
    conn.executemany(
        "INSERT INTO pipeline_outbox VALUES (?, ?, ?, NULL, NULL, 0)",
        [(i, p.channel, stamp) for i, p in zip(ids, planned, strict=True) if p.queued],
    )
    _history(
        conn,
        [(i, p.state, p.reason, p.detail) for i, p in zip(ids, planned, strict=True)],
        stamp,
    )
    return Message.created(message_id, message, now, planned)


def _row(p: PlannedDelivery) -> tuple[str, str, bool]:
    return p.state, p.reason, p.queued


def _history(
    conn: sqlite3.Connection, entries: list[tuple[str, str, str, str | None]], stamp: str
) -> None:
    conn.executemany(
        "INSERT INTO pipeline_history (delivery_id, state, reason, detail, at) "
        "VALUES (?, ?, ?, ?, ?)",
        [(*entry, stamp) for entry in entries],
    )


def _counts(conn: sqlite3.Connection, message_ids: list[str]) -> dict[str, dict[str, int]]:
    counts: dict[str, dict[str, int]] = {}
    for chunk in _chunks(message_ids):
        for message_id, state, n in conn.execute(
            "SELECT message_id, state, COUNT(*) FROM pipeline_deliveries "
            f"WHERE message_id IN ({_marks(chunk)}) GROUP BY message_id, state",
            chunk,
        ):
            counts.setdefault(message_id, {})[state] = n
    return counts


def _message_of(row: tuple[Any, ...], counts: dict[str, int]) -> Message:
    return Message(
        row[0],
        row[1],
        orjson.loads(row[2]),
        orjson.loads(row[3]),
        row[4],
        decode_content(row[5]),
        orjson.loads(row[6]),
        bool(row[7]),
        row[8],
        parse_iso(row[9]),
        counts,
    )


def _message(
    conn: sqlite3.Connection,
    message_id: str,
    client_id: str | None,
    *,
    deliveries: bool = True,
    page: tuple[int, int] = (DELIVERIES_PAGE, 0),
) -> Message | None:
    row = conn.execute(
        f"SELECT {MESSAGE_COLUMNS} FROM pipeline_messages WHERE message_id = ?", (message_id,)
    ).fetchone()
    if row is None or (client_id is not None and row[1] != client_id):
        return None
    message = _message_of(row, _counts(conn, [message_id]).get(message_id, {}))
    if not deliveries:
        return message
    rows = conn.execute(
        f"SELECT {DELIVERY_COLUMNS} FROM pipeline_deliveries WHERE message_id = ? ORDER BY rowid "
        "LIMIT ? OFFSET ?",
        (message_id, *page),
    ).fetchall()
    history: dict[str, list[HistoryEntry]] = {}
    for chunk in _chunks([r[0] for r in rows]):
        for delivery_id, state, reason, detail, at in conn.execute(
            "SELECT delivery_id, state, reason, detail, at FROM pipeline_history "
            f"WHERE delivery_id IN ({_marks(chunk)}) ORDER BY id",
            chunk,
        ):
            history.setdefault(delivery_id, []).append(
                HistoryEntry(state, reason, detail, parse_iso(at))
            )
    found = [
        _delivery(r, parse_iso(r[9]), parse_iso(r[10]), parse_iso(r[11]) if r[11] else None)
        for r in rows
    ]
    for delivery in found:
        delivery.history.extend(history.get(delivery.delivery_id, []))
    return replace(message, deliveries=found)


def _delivery(r: Any, created: datetime, updated: datetime, sent: datetime | None) -> Delivery:
    """A delivery from a row of :data:`DELIVERY_COLUMNS` (timestamps given decoded)."""
    return Delivery(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], created, updated, sent)


def _claim(row: tuple[Any, ...]) -> Claim:
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
        critical=bool(row[9]),
    )
