"""What the SQLite facets of the pipeline share: the node's store, ``IN (...)`` lists, the
history and the recipients the planner is given."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any

from tidings.core.models import isoformat
from tidings.delivery.planner import Recipient
from tidings.delivery.status_types import status_rows
from tidings.delivery.stores.rows import HISTORY_COLUMNS, HistoryRow, recipients_of
from tidings.delivery.stores.status_rows import EVENT_INSERT_COLUMNS
from tidings.storage.sqlite import SqliteStore

CHUNK = 500  # bound parameters per IN (...) list

#: a history entry's event for each endpoint (?1..?6: a row of ``status_rows``, ?7 the time);
#: due no sooner than the delivery's latest event still waiting for that endpoint
WRITE_EVENTS = (
    f"INSERT INTO pipeline_status_events ({EVENT_INSERT_COLUMNS}) "
    "SELECT ?1, e.url, ?2, d.delivery_id, d.message_id, d.user_id, d.channel, ?4, ?5, ?6, ?7, "
    "d.attempts, d.provider_id, max(?7, COALESCE((SELECT p.available_at "
    "FROM pipeline_status_events p WHERE p.state = 'pending' AND p.endpoint = e.url "
    "AND p.delivery_id = d.delivery_id ORDER BY p.id DESC LIMIT 1), ?7)) "
    "FROM pipeline_deliveries d, pipeline_status_endpoints e WHERE d.delivery_id = ?3 "
    "ORDER BY e.url"
)


class SqliteTables:
    """The pipeline's tables in the file of a :class:`SqliteStore`: reads on its reading
    connection (:meth:`SqliteStore.read`), writes through its writer thread
    (:meth:`SqliteStore.write`)."""

    def __init__(self, store: SqliteStore) -> None:
        self.store = store


def chunks(items: Sequence[str]) -> Iterator[Sequence[str]]:
    """``items`` in slices of at most :data:`CHUNK`."""
    for start in range(0, len(items), CHUNK):
        yield items[start : start + CHUNK]


def marks(items: Sequence[Any]) -> str:
    """The ``?`` of an ``IN (...)`` list of ``items``."""
    return ",".join("?" * len(items))


def write_history(conn: sqlite3.Connection, entries: list[HistoryRow], stamp: str) -> None:
    """Append history entries, all at ``stamp``, and the status events they make for each
    endpoint of delivery-status webhooks (none configured: one lookup)."""
    conn.executemany(
        f"INSERT INTO pipeline_history ({HISTORY_COLUMNS}) VALUES (?, ?, ?, ?, ?)",
        [(*entry, stamp) for entry in entries],
    )
    if entries and conn.execute("SELECT 1 FROM pipeline_status_endpoints LIMIT 1").fetchone():
        conn.executemany(WRITE_EVENTS, [(*row, stamp) for row in status_rows(entries)])


def recipients(
    conn: sqlite3.Connection, users: list[str], counted: Sequence[str], since: dict[str, datetime]
) -> list[Recipient]:
    """Each of ``users`` with their switches, contacts, quiet hours and, per ``counted``
    channel, the deliveries counted since ``since[channel]``."""
    switches: list[Any] = []
    contacts: list[Any] = []
    quiet: list[Any] = []
    recent: list[tuple[str, str, int]] = []
    for chunk in chunks(users):
        listed = marks(chunk)
        switches += conn.execute(
            f"SELECT user_id, channel, enabled FROM pipeline_channel_prefs "
            f"WHERE user_id IN ({listed})",
            chunk,
        ).fetchall()
        contacts += conn.execute(
            f"SELECT user_id, channel, address FROM pipeline_contacts WHERE user_id IN ({listed})",
            chunk,
        ).fetchall()
        quiet += conn.execute(
            "SELECT user_id, timezone, start_at, end_at FROM pipeline_quiet_hours "
            f"WHERE user_id IN ({listed})",
            chunk,
        ).fetchall()
        for channel in counted:
            recent += [
                (user, channel, n)
                for user, n in conn.execute(
                    "SELECT user_id, COUNT(*) FROM pipeline_deliveries WHERE channel = ? "
                    f"AND counted = 1 AND created_at >= ? AND user_id IN ({listed}) "
                    "GROUP BY user_id",
                    (channel, isoformat(since[channel]), *chunk),
                )
            ]
    return recipients_of(users, switches, contacts, recent, quiet)
