"""The :class:`~tidings.delivery.stores.base.ErasureStore` facet of the pipeline on
PostgreSQL."""

from __future__ import annotations

import orjson

from tidings.delivery.stores.base import ErasureStore, encode_json
from tidings.delivery.stores.postgres.common import PostgresTables
from tidings.delivery.stores.rows import without_user


class PostgresErasure(PostgresTables, ErasureStore):
    """A user's rows of the pipeline's tables, erased in one transaction."""

    async def erase_user(self, user_id: str) -> dict[str, int]:
        async with self.store.connection(transaction=True) as conn:

            async def delete(sql: str) -> int:
                return int((await conn.execute(sql, user_id)).split()[-1])

            rows = await conn.fetch(
                "SELECT delivery_id, message_id FROM pipeline_deliveries WHERE user_id = $1 "
                "FOR UPDATE",
                user_id,
            )
            ids = [row[0] for row in rows]
            for table in ("pipeline_history", "pipeline_outbox", "pipeline_digest_items"):
                await conn.execute(f"DELETE FROM {table} WHERE delivery_id = ANY($1::text[])", ids)
            for message_id, recipients in await conn.fetch(
                "SELECT message_id, recipients::text FROM pipeline_messages "
                "WHERE message_id = ANY($1::text[]) ORDER BY message_id FOR UPDATE",
                sorted({row[1] for row in rows}),
            ):
                kept = without_user(orjson.loads(recipients), user_id)
                if kept is not None:
                    await conn.execute(
                        "UPDATE pipeline_messages SET recipients = $2::jsonb WHERE message_id = $1",
                        message_id,
                        encode_json(kept),
                    )
            await delete("DELETE FROM pipeline_rate_locks WHERE user_id = $1")
            await delete("DELETE FROM pipeline_status_events WHERE user_id = $1")  # sent or not
            await delete("DELETE FROM pipeline_digests WHERE user_id = $1")
            return {
                "deliveries": await delete("DELETE FROM pipeline_deliveries WHERE user_id = $1"),
                "contacts": await delete("DELETE FROM pipeline_contacts WHERE user_id = $1"),
                "preferences": await delete("DELETE FROM pipeline_channel_prefs WHERE user_id = $1")
                + await delete("DELETE FROM pipeline_topic_subscriptions WHERE user_id = $1")
                + await delete("DELETE FROM pipeline_quiet_hours WHERE user_id = $1")
                + await delete("DELETE FROM pipeline_user_locales WHERE user_id = $1")
                + await delete("DELETE FROM pipeline_category_prefs WHERE user_id = $1"),
            }
