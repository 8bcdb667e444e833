"""The :class:`~tidings.delivery.stores.base.PreferenceStore` facet of the pipeline on
PostgreSQL."""

from __future__ import annotations

from typing import Any

from tidings.core.models import utcnow
from tidings.delivery.models import Preferences, QuietHours
from tidings.delivery.stores.base import PreferenceStore, encode_json
from tidings.delivery.stores.postgres.categories import categories_of, set_category
from tidings.delivery.stores.postgres.common import PostgresTables, recipients


class PostgresPreferences(PostgresTables, PreferenceStore):
    """Channel switches, topic subscriptions, contact points, quiet hours and locales on
    PostgreSQL."""

    async def preferences(self, user_id: str) -> Preferences:
        async with self.store.connection() as conn:
            recipient = (await recipients(conn, [user_id], [], {}))[0]
            topics = await conn.fetch(
                "SELECT topic FROM pipeline_topic_subscriptions WHERE user_id = $1 ORDER BY topic",
                user_id,
            )
            locale = await conn.fetchval(
                "SELECT locale FROM pipeline_user_locales WHERE user_id = $1", user_id
            )
            categories = await categories_of(conn, user_id)
        return Preferences(
            user_id,
            dict(recipient.switches),
            [r[0] for r in topics],
            dict(recipient.contacts),
            recipient.quiet,
            locale,
            categories,
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

    async def set_quiet_hours(self, user_id: str, hours: QuietHours | None) -> None:
        async with self.store.connection() as conn:
            if hours is None:
                await conn.execute("DELETE FROM pipeline_quiet_hours WHERE user_id = $1", user_id)
            else:
                await conn.execute(
                    "INSERT INTO pipeline_quiet_hours VALUES ($1, $2, $3, $4, $5) "
                    "ON CONFLICT (user_id) DO UPDATE SET timezone = excluded.timezone, "
                    "start_at = excluded.start_at, end_at = excluded.end_at, "
                    "updated_at = excluded.updated_at",
                    user_id,
                    hours.timezone,
                    hours.start,
                    hours.end,
                    utcnow(),
                )

    async def set_locale(self, user_id: str, locale: str | None) -> None:
        async with self.store.connection() as conn:
            if locale is None:
                await conn.execute("DELETE FROM pipeline_user_locales WHERE user_id = $1", user_id)
            else:
                await conn.execute(
                    "INSERT INTO pipeline_user_locales VALUES ($1, $2, $3) "
                    "ON CONFLICT (user_id) DO UPDATE SET locale = excluded.locale, "
                    "updated_at = excluded.updated_at",
                    user_id,
                    locale,
                    utcnow(),
                )

    async def set_category(self, user_id: str, category: str, channel: str, enabled: bool) -> None:
        async with self.store.connection() as conn:
            await set_category(conn, user_id, category, channel, enabled)
