"""SQLite rows: column lists, decoders and the statements several facets share."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence, Sized
from typing import Any

from tidings.core.ids import CONNECTION_ID, new_id
from tidings.core.models import (
    Device,
    Notification,
    ServiceClient,
    UnseenCount,
    parse_iso,
)
from tidings.errors import (
    NotFound,
)
from tidings.storage._common import (
    answerable,
    load_data,
)
from tidings.storage.counts import COUNT_COLUMNS, counted

INSERT_CHUNK = 500


def chunked(items: list[str]) -> Iterator[list[str]]:
    """``items`` in lists short enough for one statement's ``IN (?, …)``."""
    for at in range(0, len(items), INSERT_CHUNK):
        yield items[at : at + INSERT_CHUNK]


def marks(items: Sized) -> str:
    """The ``?, ?, …`` placeholders of an ``IN`` list of ``items``."""
    return ", ".join("?" * len(items))


_INSERT = (
    "INSERT INTO notifications (seq, notification_id, user_id, data, creation_date, category) "
    "VALUES "
)


def _insert_rows(
    conn: sqlite3.Connection, rows: list[tuple[int, str, str, str, str, str | None]]
) -> None:
    """Insert a batch's rows, up to ``INSERT_CHUNK`` per statement. ``executemany`` runs the
    statement once per row, and releases and takes back the GIL around each: with the event
    loop busy parsing the next requests, each take-back can wait for the loop's switch
    interval. Batches of 500 through HTTP: 29.0-32.5 k/s with ``executemany``, 33.7-37.4 k/s
    with these (runs interleaved on the same machine)."""
    chunk = min(INSERT_CHUNK, conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // 6)
    for start in range(0, len(rows), chunk):
        part = rows[start : start + chunk]  # full chunks share one statement text (and plan)
        conn.execute(
            _INSERT + ",".join(["(?, ?, ?, ?, ?, ?)"] * len(part)), [v for row in part for v in row]
        )


#: a notification with its inbox fields, as :func:`_notification` reads it
NOTE_COLUMNS = (
    "notification_id, user_id, CAST(data AS BLOB), creation_date, seen_date, seq, category, "
    "read_date, archived_date"
)

# The user's oldest unseen notifications up to a count and about a number of bytes of data
# (at least one): sizes are summed over the page's rows without reading them into Python,
# so a page of large notifications costs the node no more than the budget. length() counts
# characters, which is the bytes for ASCII. Parameters: user_id, limit, bytes.
UNSEEN_WITHIN = (
    "WITH page AS (SELECT seq, length(data) AS size FROM notifications "
    "WHERE user_id = ? AND seen_date IS NULL ORDER BY seq LIMIT ?), "
    "sized AS (SELECT seq, size, sum(size) OVER (ORDER BY seq) AS upto FROM page) "
    "SELECT n.notification_id, n.user_id, CAST(n.data AS BLOB), n.creation_date, "
    "n.seen_date, n.seq, n.category, n.read_date, n.archived_date "
    "FROM sized JOIN notifications n ON n.seq = sized.seq "
    "WHERE sized.upto <= ? OR sized.upto = sized.size ORDER BY n.seq"
)


def _notification(row: tuple[Any, ...], *, answered: bool = False) -> Notification:
    """A notification row (``NOTE_COLUMNS``); ``answered`` for readers whose pages are
    written in one answer (see :func:`answerable`)."""
    data = load_data(row[2], f"notification {row[0]!r}")
    if answered:
        data = answerable(data, row[2], f"notification {row[0]!r}")
    return Notification(
        notification_id=row[0],
        user_id=row[1],
        data=data,
        creation_date=parse_iso(row[3]),
        seen_date=parse_iso(row[4]) if row[4] else None,
        seq=row[5],
        category=row[6],
        read_date=parse_iso(row[7]) if row[7] else None,
        archived_date=parse_iso(row[8]) if row[8] else None,
    )


def _topic_data(topic: str, seq: int, text: bytes) -> Any:
    what = f"topic message {topic!r}/{seq}"
    return answerable(load_data(text, what), text, what)


DEVICE_COLUMNS = "connection_id, user_id, created_at, last_seen_at, cursor"


def _device(row: tuple[Any, ...]) -> Device:
    return Device(row[0], row[1], parse_iso(row[2]), parse_iso(row[3]), row[4])


def _bind(conn: sqlite3.Connection, user_id: str, connection_id: str | None, now: str) -> Device:
    """The device ``connection_id`` of this user, created if needed (see bind_device)."""
    if connection_id and CONNECTION_ID.match(connection_id):
        row = conn.execute(
            "UPDATE devices SET last_seen_at = ? WHERE connection_id = ? AND user_id = ? "
            f"RETURNING {DEVICE_COLUMNS}",
            (now, connection_id, user_id),
        ).fetchone()
        if row is not None:
            return _device(row)
        taken = conn.execute(
            "SELECT 1 FROM devices WHERE connection_id = ?", (connection_id,)
        ).fetchone()
        chosen = new_id() if taken else connection_id
    else:
        chosen = new_id()
    row = conn.execute(
        f"INSERT INTO devices ({DEVICE_COLUMNS}) VALUES (?, ?, ?, ?, "
        "(SELECT coalesce(max(seq), 0) FROM notifications WHERE user_id = ?)) "
        f"RETURNING {DEVICE_COLUMNS}",
        (chosen, user_id, now, now, user_id),
    ).fetchone()
    return _device(row)


def _attach(
    conn: sqlite3.Connection, row: tuple[str, ...], max_sockets: int | None, now: str
) -> tuple[UnseenCount, list[str]] | None:
    """Register the socket ``row`` (a notification_registry row), mark its session's topics
    active; the user's count and those topics, or None (nothing written) over ``max_sockets``."""
    user, session = row[2], row[3]
    if max_sockets is not None:
        (held,) = conn.execute(
            "SELECT COUNT(*) FROM notification_registry WHERE user_id = ?", (user,)
        ).fetchone()
        if held >= max_sockets:
            return None
    conn.execute("INSERT OR REPLACE INTO notification_registry VALUES (?, ?, ?, ?, ?, ?)", row)
    counts = conn.execute(
        f"SELECT {COUNT_COLUMNS} FROM user_counts WHERE user_id = ?", (user,)
    ).fetchone()
    topics = conn.execute(
        "UPDATE session_topics SET active_at = ? WHERE user_id = ? AND session_id = ? "
        "RETURNING topic",
        (now, user, session),
    ).fetchall()
    return counted(user, counts), sorted(t[0] for t in topics)


# A device's queue: its user's notifications after the cursor that it has not acknowledged.
# Parameters: user_id, cursor, connection_id.
QUEUE = (
    "FROM notifications n WHERE user_id = ? AND seq > ? AND NOT EXISTS "
    "(SELECT 1 FROM device_acks a WHERE a.connection_id = ? AND a.seq = n.seq)"
)


def _queue_page(
    conn: sqlite3.Connection, connection_id: str, user_id: str, after: int, limit: int
) -> list[Notification]:
    """The device's queue after ``after`` (at least its cursor), oldest first, at most
    ``limit``."""
    rows = conn.execute(
        f"SELECT {NOTE_COLUMNS} {QUEUE} ORDER BY seq LIMIT ?",
        (user_id, after, connection_id, limit),
    ).fetchall()
    return [_notification(r) for r in rows]


def _cursor(conn: sqlite3.Connection, connection_id: str, user_id: str) -> int | None:
    row = conn.execute(
        "SELECT cursor FROM devices WHERE connection_id = ? AND user_id = ?",
        (connection_id, user_id),
    ).fetchone()
    return None if row is None else int(row[0])


def _owned(conn: sqlite3.Connection, user_id: str, ids: Sequence[str]) -> list[tuple[Any, ...]]:
    """``(notification_id, seq, seen_date)`` of the user's notifications among ``ids``.

    Raises:
        NotFound: some ids are unknown or another user's.
    """
    rows = conn.execute(
        f"SELECT notification_id, seq, seen_date FROM notifications "
        f"WHERE user_id = ? AND notification_id IN ({marks(ids)})",
        (user_id, *ids),
    ).fetchall()
    found = {row[0] for row in rows}
    missing = [nid for nid in ids if nid not in found]
    if missing:
        raise NotFound("unknown notification ids", missing)
    return rows


def _advance_cursor(conn: sqlite3.Connection, connection_id: str, user_id: str, cursor: int) -> int:
    """Fold contiguous acknowledgements into the cursor and drop their rows."""
    start = cursor
    while True:
        rows = conn.execute(
            "SELECT n.seq, a.seq IS NOT NULL FROM notifications n LEFT JOIN device_acks a "
            "ON a.connection_id = ? AND a.seq = n.seq "
            "WHERE n.user_id = ? AND n.seq > ? ORDER BY n.seq LIMIT 256",
            (connection_id, user_id, cursor),
        ).fetchall()
        for seq, acked in rows:
            if not acked:
                break
            cursor = seq
        else:
            if len(rows) == 256:
                continue
        break
    if cursor != start:
        conn.execute(
            "UPDATE devices SET cursor = ? WHERE connection_id = ?", (cursor, connection_id)
        )
        conn.execute(
            "DELETE FROM device_acks WHERE connection_id = ? AND seq <= ?",
            (connection_id, cursor),
        )
    return cursor


def _client(row: tuple[Any, ...]) -> ServiceClient:
    return ServiceClient(
        client_id=row[0],
        name=row[1],
        scopes=frozenset(row[2].split()),
        created_at=parse_iso(row[3]),
        secret_hash=row[4],
    )
