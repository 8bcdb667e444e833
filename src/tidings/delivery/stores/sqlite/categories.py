"""Users' switches per (category, channel) on SQLite (docs/pipeline.md, "Unsubscribe")."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from tidings.core.models import isoformat, utcnow
from tidings.delivery.stores.sqlite.common import chunks, marks


def muted(
    conn: sqlite3.Connection, users: Sequence[str], category: str
) -> dict[str, frozenset[str]]:
    """user id → the channels they turned ``category`` off on."""
    found: dict[str, set[str]] = {}
    for chunk in chunks(list(users)):
        for user, channel in conn.execute(
            "SELECT user_id, channel FROM pipeline_category_prefs "
            f"WHERE user_id IN ({marks(chunk)}) AND category = ? AND NOT enabled",
            (*chunk, category),
        ):
            found.setdefault(user, set()).add(channel)
    return {user: frozenset(channels) for user, channels in found.items()}


def categories_of(conn: sqlite3.Connection, user_id: str) -> dict[str, dict[str, bool]]:
    """category → channel → enabled, as the user set them."""
    found: dict[str, dict[str, bool]] = {}
    for category, channel, enabled in conn.execute(
        "SELECT category, channel, enabled FROM pipeline_category_prefs WHERE user_id = ? "
        "ORDER BY category, channel",
        (user_id,),
    ):
        found.setdefault(category, {})[channel] = bool(enabled)
    return found


def set_category(
    conn: sqlite3.Connection, user_id: str, category: str, channel: str, on: bool
) -> None:
    conn.execute(
        "INSERT OR REPLACE INTO pipeline_category_prefs VALUES (?, ?, ?, ?, ?)",
        (user_id, category, channel, on, isoformat(utcnow())),
    )
