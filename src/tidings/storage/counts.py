"""How unseen counts are versioned, in one place: the version rises by one per change.

A created notification is one change (a batch of ``n`` for a user raises its version by
``n``, as if they had come one by one); marking notifications seen is one change, however
many were marked. Both backends build their ``user_counts`` statements here, so the rule is
written once for every dialect.
"""

from __future__ import annotations

from typing import Literal

Dialect = Literal["sqlite", "postgres"]


def add_unseen_sql(dialect: Dialect, rows: str) -> str:
    """An upsert adding ``n`` unseen notifications per user, and ``n`` to the version.

    ``rows`` yields ``(user_id, n, n)`` (a ``VALUES`` or ``SELECT`` in the dialect); the
    statement returns ``user_id, unseen, version`` after the change.
    """
    table, q = ("user_counts AS c", "c.") if dialect == "postgres" else ("user_counts", "")
    return (
        f"INSERT INTO {table} (user_id, unseen, version) {rows} "
        f"ON CONFLICT (user_id) DO UPDATE SET unseen = {q}unseen + excluded.unseen, "
        f"version = {q}version + excluded.version RETURNING user_id, unseen, version"
    )


def mark_seen_sql(dialect: Dialect) -> str:
    """An update removing ``n`` from a user's unseen count, as one change (version + 1).

    Parameters: ``(n, user_id)`` on SQLite, ``($1 user_id, $2 n)`` on PostgreSQL; returns
    ``unseen, version`` after the change.
    """
    n, user = ("$2", "$1") if dialect == "postgres" else ("?", "?")
    return (
        f"UPDATE user_counts SET unseen = unseen - {n}, version = version + 1 "
        f"WHERE user_id = {user} RETURNING unseen, version"
    )
