"""The UserStore facet of the PostgreSQL store."""

from __future__ import annotations

from tidings.storage.counts import erase_counts_sql
from tidings.storage.postgres.engine import PostgresEngine
from tidings.storage.postgres.notifications import USER_LOCK


class PostgresUsers(PostgresEngine):
    """The UserStore facet on PostgreSQL."""

    async def erase_user(self, user_id: str) -> dict[str, int]:
        async with self.connection(transaction=True) as conn:
            await conn.execute(USER_LOCK, user_id)  # after the user's changes under way
            # The count's row first: concurrent changes of the user's count wait for this
            # transaction, as they wait for one another.
            await conn.execute(erase_counts_sql("postgres"), user_id)
            await conn.execute(
                "DELETE FROM device_acks WHERE connection_id IN "
                "(SELECT connection_id FROM devices WHERE user_id = $1)",
                user_id,
            )
            await conn.execute("DELETE FROM push_receipts WHERE user_id = $1", user_id)
            erased = {}
            for kind, table in (
                ("notifications", "notifications"),
                ("devices", "devices"),
                ("sockets", "notification_registry"),
                ("sessions", "session_topics"),
                ("push_tokens", "push_tokens"),
            ):
                status = await conn.execute(f"DELETE FROM {table} WHERE user_id = $1", user_id)
                erased[kind] = int(status.split()[-1])
        return erased
