"""The UserStore facet of the SQLite store."""

from __future__ import annotations

import sqlite3

from tidings.storage.counts import erase_counts_sql
from tidings.storage.sqlite.engine import SqliteEngine


class SqliteUsers(SqliteEngine):
    """The UserStore facet on SQLite."""

    async def erase_user(self, user_id: str) -> dict[str, int]:
        def run(conn: sqlite3.Connection) -> dict[str, int]:
            def delete(sql: str) -> int:
                return conn.execute(sql, (user_id,)).rowcount

            delete(
                "DELETE FROM device_acks WHERE connection_id IN "
                "(SELECT connection_id FROM devices WHERE user_id = ?)"
            )
            erased = {
                "notifications": delete("DELETE FROM notifications WHERE user_id = ?"),
                "devices": delete("DELETE FROM devices WHERE user_id = ?"),
                "sockets": delete("DELETE FROM notification_registry WHERE user_id = ?"),
                "sessions": delete("DELETE FROM session_topics WHERE user_id = ?"),
                "push_tokens": delete("DELETE FROM push_tokens WHERE user_id = ?"),
            }
            delete("DELETE FROM push_receipts WHERE user_id = ?")
            delete(erase_counts_sql("sqlite"))
            return erased

        return await self.write(run)
