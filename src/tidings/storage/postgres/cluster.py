"""The ClusterStore facet of the PostgreSQL store."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

from tidings.core.models import (
    NodeInfo,
    Presence,
    UnseenCount,
)
from tidings.errors import (
    TooManyConnections,
)
from tidings.storage.counts import counted
from tidings.storage.postgres.engine import PostgresEngine


class PostgresCluster(PostgresEngine):
    """The ClusterStore facet on PostgreSQL."""

    # Cluster

    async def heartbeat(self, node_id: str, uri: str) -> bool:
        async with self.connection() as conn:
            existed = await conn.fetchval(
                "INSERT INTO nodes AS n VALUES ($1, $2, now(), now()) ON CONFLICT (node_id) "
                "DO UPDATE SET heartbeat_at = now(), uri = EXCLUDED.uri "
                "RETURNING (xmax <> 0)",
                node_id,
                uri,
            )
        return bool(existed)

    async def reap_nodes(self, stale_after: float) -> list[str]:
        async with self.connection(transaction=True) as conn:
            dead = [
                row[0]
                for row in await conn.fetch(
                    "DELETE FROM nodes WHERE heartbeat_at < now() - $1::interval RETURNING node_id",
                    timedelta(seconds=stale_after),
                )
            ]
            if dead:
                await conn.execute(
                    "DELETE FROM notification_registry WHERE node_id = ANY($1::text[])", dead
                )
        return dead

    async def remove_node(self, node_id: str) -> None:
        async with self.connection(transaction=True) as conn:
            await conn.execute("DELETE FROM nodes WHERE node_id = $1", node_id)
            await conn.execute("DELETE FROM notification_registry WHERE node_id = $1", node_id)

    async def list_nodes(self) -> list[NodeInfo]:
        async with self.connection() as conn:
            rows = await conn.fetch(
                "SELECT node_id, uri, started_at, heartbeat_at FROM nodes ORDER BY node_id"
            )
        return [NodeInfo(*row) for row in rows]

    async def add_presence(self, presences: Sequence[Presence]) -> None:
        if not presences:
            return
        rows = [
            (p.socket_id, p.connection_id, p.user_id, p.session_id, p.node_id, p.connected_since)
            for p in presences
        ]
        async with self.connection() as conn:
            await conn.executemany(
                "INSERT INTO notification_registry VALUES ($1, $2, $3, $4, $5, $6) "
                "ON CONFLICT (socket_id) DO NOTHING",
                rows,
            )

    async def attach(
        self, presence: Presence, max_sockets: int | None = None
    ) -> tuple[UnseenCount, list[str]]:
        """One round trip instead of three: the data-modifying CTEs run whether or not the
        query reads them; over ``max_sockets`` none of them writes."""
        async with self.connection() as conn:
            row = await conn.fetchrow(
                "WITH held AS (SELECT count(*) AS n FROM notification_registry "
                "WHERE user_id = $3), "
                "registered AS (INSERT INTO notification_registry "
                "SELECT $1, $2, $3, $4, $5, $6 WHERE $7::int IS NULL OR (SELECT n FROM held) < $7 "
                "ON CONFLICT (socket_id) DO NOTHING), "
                "touched AS (UPDATE session_topics SET active_at = now() "
                "WHERE user_id = $3 AND session_id = $4 "
                "AND ($7::int IS NULL OR (SELECT n FROM held) < $7) RETURNING topic) "
                "SELECT (SELECT array_agg(topic ORDER BY topic) FROM touched), "
                "(SELECT n FROM held), c.unseen, c.unread, c.version, c.categories "
                "FROM (SELECT 1) AS one LEFT JOIN user_counts AS c ON c.user_id = $3",
                presence.socket_id,
                presence.connection_id,
                presence.user_id,
                presence.session_id,
                presence.node_id,
                presence.connected_since,
                max_sockets,
            )
        topics, held = row[0], row[1]
        if max_sockets is not None and held >= max_sockets:
            raise TooManyConnections(f"{presence.user_id} holds {held} sockets")
        count = counted(presence.user_id, row[2:] if row[4] is not None else None)
        return count, list(topics or ())

    async def remove_presence(self, socket_id: str) -> None:
        async with self.connection() as conn:
            await conn.execute("DELETE FROM notification_registry WHERE socket_id = $1", socket_id)

    async def presence(
        self, *, user_id: str | None = None, node_id: str | None = None
    ) -> list[Presence]:
        async with self.connection() as conn:
            rows = await conn.fetch(
                "SELECT socket_id, connection_id, user_id, session_id, node_id, connected_since "
                "FROM notification_registry WHERE ($1::text IS NULL OR user_id = $1) "
                "AND ($2::text IS NULL OR node_id = $2) ORDER BY connected_since, socket_id",
                user_id,
                node_id,
            )
        return [Presence(*row) for row in rows]
