"""The ClusterStore facet of the PostgreSQL store."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from tidings.core.ids import CONNECTION_ID
from tidings.core.models import (
    Device,
    NodeInfo,
    Opened,
    Presence,
    UnseenCount,
    utcnow,
)
from tidings.errors import (
    TooManyConnections,
)
from tidings.storage.counts import counted
from tidings.storage.postgres.engine import PostgresEngine
from tidings.storage.postgres.rows import NOTIFICATION_COLUMNS, _notification


class Opening(NamedTuple):
    """A socket of a known device opening: one item of a batch of :data:`OPEN_KNOWN`."""

    socket_id: str
    connection_id: str
    user_id: str
    session_id: str | None
    node_id: str
    connected_since: datetime
    max_sockets: int | None
    queue: int  # notifications of the device's queue to read with it


# Open the sockets of known devices, a group in one statement: touch each device, register
# each socket unless its user already holds ``most`` (the count taken before the group, so
# sockets of one user in one group may pass the cap by a few, as racing nodes may), mark its
# session's topics active, read its user's count and the first ``page`` notifications of its
# queue. Rows in item order (``i``), one per queued notification (or one with none): whether
# the device is this user's, the device's columns, the sockets held, the topics, the count,
# the notification. Unknown devices are bound by ``bind_device`` (a new device's queue needs
# the user's lock).
OPEN_KNOWN = (
    "WITH input AS (SELECT t.*, coalesce(t.session_id, t.connection_id) AS session "
    "FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], "
    "$6::timestamptz[], $7::int[], $8::int[]) WITH ORDINALITY "
    "AS t(socket_id, connection_id, user_id, session_id, node_id, since, most, page, i)), "
    "bound AS (UPDATE devices AS d SET last_seen_at = $9 "
    "FROM (SELECT DISTINCT connection_id, user_id FROM input) AS s "
    "WHERE d.connection_id = s.connection_id AND d.user_id = s.user_id "
    "RETURNING d.connection_id, d.user_id, d.created_at, d.last_seen_at, d.cursor), "
    "held AS (SELECT user_id, count(*) AS n FROM notification_registry "
    "WHERE user_id IN (SELECT user_id FROM input) GROUP BY user_id), "
    "admitted AS (SELECT input.* FROM input JOIN bound USING (connection_id, user_id) "
    "LEFT JOIN held USING (user_id) WHERE input.most IS NULL OR coalesce(held.n, 0) < input.most), "
    "registered AS (INSERT INTO notification_registry "
    "SELECT socket_id, connection_id, user_id, session, node_id, since FROM admitted "
    "ON CONFLICT (socket_id) DO NOTHING), "
    "touched AS (UPDATE session_topics AS s SET active_at = $9 "
    "FROM (SELECT DISTINCT user_id, session FROM admitted) AS a "
    "WHERE s.user_id = a.user_id AND s.session_id = a.session "
    "RETURNING s.user_id, s.session_id, s.topic) "
    "SELECT input.i, bound.connection_id IS NOT NULL, bound.created_at, bound.last_seen_at, "
    "bound.cursor, coalesce(held.n, 0), "
    "(SELECT array_agg(t.topic ORDER BY t.topic) FROM touched AS t "
    "WHERE t.user_id = input.user_id AND t.session_id = input.session), "
    "c.unseen, c.unread, c.version, c.categories, n.* "
    "FROM input LEFT JOIN bound USING (connection_id, user_id) LEFT JOIN held USING (user_id) "
    "LEFT JOIN user_counts AS c ON c.user_id = input.user_id "
    f"LEFT JOIN LATERAL (SELECT {NOTIFICATION_COLUMNS} FROM notifications AS q "
    "WHERE input.page > 0 AND (input.most IS NULL OR coalesce(held.n, 0) < input.most) "
    "AND q.user_id = input.user_id AND q.seq > bound.cursor AND NOT EXISTS "
    "(SELECT 1 FROM device_acks AS k WHERE k.connection_id = input.connection_id "
    "AND k.seq = q.seq) ORDER BY q.seq LIMIT input.page) AS n ON true ORDER BY input.i, n.seq"
)


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

    async def open_socket(
        self,
        user_id: str,
        connection_id: str | None,
        *,
        socket_id: str,
        session_id: str | None,
        node_id: str,
        connected_since: datetime,
        max_sockets: int | None = None,
        queue: int = 0,
    ) -> Opened:
        """A known device's socket opens in one statement (the first page of its queue
        included), grouped with the sockets opening at the same time (a reconnect storm); a
        new device takes the calls one by one."""
        if connection_id and CONNECTION_ID.match(connection_id):
            item = Opening(
                socket_id,
                connection_id,
                user_id,
                session_id,
                node_id,
                connected_since,
                max_sockets,
                queue,
            )
            opened: Opened | None = await self._opens.submit(item)  # raises over the cap
            if opened is not None:
                return opened
        return await super().open_socket(
            user_id,
            connection_id,
            socket_id=socket_id,
            session_id=session_id,
            node_id=node_id,
            connected_since=connected_since,
            max_sockets=max_sockets,
            queue=queue,
        )

    async def _open_batch(self, batch: list[Opening]) -> list[Any]:
        """Per item: an :class:`Opened`, :class:`TooManyConnections` (with the device) over
        the cap, or None for a device this statement does not know (another user's, or
        new)."""
        columns = list(map(list, zip(*batch, strict=True)))

        async def run() -> list[Any]:
            async with self.connection() as conn:
                return list(await conn.fetch(OPEN_KNOWN, *columns, utcnow()))

        outcomes: list[Any] = [None] * len(batch)
        for row in await self.retrying(run):
            index = row[0] - 1
            item = batch[index]
            opened = outcomes[index]
            if opened is None:
                if not row[1]:
                    continue  # not this user's device
                device = Device(item.connection_id, item.user_id, row[2], row[3], row[4])
                if item.max_sockets is not None and row[5] >= item.max_sockets:
                    outcomes[index] = TooManyConnections(
                        f"{item.user_id} holds the most sockets allowed ({item.max_sockets})",
                        device,
                    )
                    continue
                count = counted(item.user_id, row[7:11] if row[9] is not None else None)
                opened = outcomes[index] = Opened(device, count, list(row[6] or ()), [])
            if row[11] is not None:
                opened.queue.append(_notification(row[11:]))
        return outcomes

    async def remove_presence(self, socket_id: str) -> None:
        await self._leaves.submit(socket_id)

    async def _leave_batch(self, batch: list[str]) -> list[Any]:
        async with self.connection() as conn:
            await conn.execute(
                "DELETE FROM notification_registry WHERE socket_id = ANY($1::text[])", batch
            )
        return [None] * len(batch)

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
