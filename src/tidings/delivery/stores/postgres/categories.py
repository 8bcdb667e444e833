"""Users' switches per (category, channel) on PostgreSQL (docs/pipeline.md, "Unsubscribe")."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tidings.core.models import utcnow


async def muted(conn: Any, users: Sequence[str], category: str) -> dict[str, frozenset[str]]:
    """user id → the channels they turned ``category`` off on."""
    found: dict[str, set[str]] = {}
    for user, channel in await conn.fetch(
        "SELECT user_id, channel FROM pipeline_category_prefs "
        "WHERE user_id = ANY($1::text[]) AND category = $2 AND NOT enabled",
        list(users),
        category,
    ):
        found.setdefault(user, set()).add(channel)
    return {user: frozenset(channels) for user, channels in found.items()}


async def categories_of(conn: Any, user_id: str) -> dict[str, dict[str, bool]]:
    """category → channel → enabled, as the user set them."""
    found: dict[str, dict[str, bool]] = {}
    for category, channel, enabled in await conn.fetch(
        "SELECT category, channel, enabled FROM pipeline_category_prefs WHERE user_id = $1 "
        "ORDER BY category, channel",
        user_id,
    ):
        found.setdefault(category, {})[channel] = enabled
    return found


async def set_category(conn: Any, user_id: str, category: str, channel: str, on: bool) -> None:
    await conn.execute(
        "INSERT INTO pipeline_category_prefs VALUES ($1, $2, $3, $4, $5) "
        "ON CONFLICT (user_id, category, channel) DO UPDATE SET enabled = excluded.enabled, "
        "updated_at = excluded.updated_at",
        user_id,
        category,
        channel,
        on,
        utcnow(),
    )
