"""The :class:`~tidings.delivery.stores.base.ErasureStore` facet of the pipeline on SQLite."""

from __future__ import annotations

import sqlite3

import orjson

from tidings.delivery.stores.base import ErasureStore, encode_json
from tidings.delivery.stores.rows import without_user
from tidings.delivery.stores.sqlite.common import SqliteTables, chunks, marks


class SqliteErasure(SqliteTables, ErasureStore):
    """A user's rows of the pipeline's tables, erased in one transaction."""

    async def erase_user(self, user_id: str) -> dict[str, int]:
        def run(conn: sqlite3.Connection) -> dict[str, int]:
            def delete(sql: str) -> int:
                return conn.execute(sql, (user_id,)).rowcount

            rows = conn.execute(
                "SELECT delivery_id, message_id FROM pipeline_deliveries WHERE user_id = ?",
                (user_id,),
            ).fetchall()
            ids = [row[0] for row in rows]
            for chunk in chunks(ids):
                for table in ("pipeline_history", "pipeline_outbox", "pipeline_digest_items"):
                    listed = marks(chunk)
                    conn.execute(f"DELETE FROM {table} WHERE delivery_id IN ({listed})", chunk)
            messages = sorted({row[1] for row in rows})
            for chunk in chunks(messages):
                for message_id, recipients in conn.execute(
                    "SELECT message_id, recipients FROM pipeline_messages "
                    f"WHERE message_id IN ({marks(chunk)})",
                    chunk,
                ).fetchall():
                    kept = without_user(orjson.loads(recipients), user_id)
                    if kept is not None:
                        conn.execute(
                            "UPDATE pipeline_messages SET recipients = ? WHERE message_id = ?",
                            (encode_json(kept), message_id),
                        )
            delete("DELETE FROM pipeline_rate_locks WHERE user_id = ?")
            delete("DELETE FROM pipeline_status_events WHERE user_id = ?")  # sent or not
            delete("DELETE FROM pipeline_digests WHERE user_id = ?")
            return {
                "deliveries": delete("DELETE FROM pipeline_deliveries WHERE user_id = ?"),
                "contacts": delete("DELETE FROM pipeline_contacts WHERE user_id = ?"),
                "preferences": delete("DELETE FROM pipeline_channel_prefs WHERE user_id = ?")
                + delete("DELETE FROM pipeline_topic_subscriptions WHERE user_id = ?")
                + delete("DELETE FROM pipeline_quiet_hours WHERE user_id = ?")
                + delete("DELETE FROM pipeline_user_locales WHERE user_id = ?")
                + delete("DELETE FROM pipeline_category_prefs WHERE user_id = ?"),
            }

        return await self.store.write(run)
