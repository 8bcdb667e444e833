"""The :class:`~tidings.delivery.stores.base.PreferenceStore` facet of the pipeline on
SQLite."""

from __future__ import annotations

import sqlite3
from typing import Any

from tidings.core.models import isoformat, utcnow
from tidings.delivery.models import Preferences, QuietHours
from tidings.delivery.stores.base import PreferenceStore, encode_json
from tidings.delivery.stores.sqlite.categories import categories_of, set_category
from tidings.delivery.stores.sqlite.common import SqliteTables, recipients


class SqlitePreferences(SqliteTables, PreferenceStore):
    """Channel switches, topic subscriptions, contact points, quiet hours and locales on
    SQLite."""

    async def preferences(self, user_id: str) -> Preferences:
        def run(conn: sqlite3.Connection) -> Preferences:
            recipient = recipients(conn, [user_id], [], {})[0]
            topics = [
                row[0]
                for row in conn.execute(
                    "SELECT topic FROM pipeline_topic_subscriptions WHERE user_id = ? "
                    "ORDER BY topic",
                    (user_id,),
                )
            ]
            locale = conn.execute(
                "SELECT locale FROM pipeline_user_locales WHERE user_id = ?", (user_id,)
            ).fetchone()
            return Preferences(
                user_id,
                dict(recipient.switches),
                topics,
                dict(recipient.contacts),
                recipient.quiet,
                locale[0] if locale else None,
                categories_of(conn, user_id),
            )

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

    async def set_quiet_hours(self, user_id: str, hours: QuietHours | None) -> None:
        def run(conn: sqlite3.Connection) -> None:
            if hours is None:
                conn.execute("DELETE FROM pipeline_quiet_hours WHERE user_id = ?", (user_id,))
            else:
                conn.execute(
                    "INSERT OR REPLACE INTO pipeline_quiet_hours VALUES (?, ?, ?, ?, ?)",
                    (user_id, hours.timezone, hours.start, hours.end, isoformat(utcnow())),
                )

        await self.store.write(run)

    async def set_locale(self, user_id: str, locale: str | None) -> None:
        def run(conn: sqlite3.Connection) -> None:
            if locale is None:
                conn.execute("DELETE FROM pipeline_user_locales WHERE user_id = ?", (user_id,))
            else:
                conn.execute(
                    "INSERT OR REPLACE INTO pipeline_user_locales VALUES (?, ?, ?)",
                    (user_id, locale, isoformat(utcnow())),
                )

        await self.store.write(run)

    async def set_category(self, user_id: str, category: str, channel: str, enabled: bool) -> None:
        await self.store.write(lambda conn: set_category(conn, user_id, category, channel, enabled))
