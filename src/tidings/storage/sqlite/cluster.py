"""The ClusterStore facet of the SQLite store."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from datetime import datetime, timedelta

from tidings.core.models import (
    Device,
    NodeInfo,
    Notification,
    Opened,
    Presence,
    UnseenCount,
    isoformat,
    parse_iso,
    utcnow,
)
from tidings.errors import (
    TooManyConnections,
)
from tidings.storage.sqlite.engine import SqliteEngine
from tidings.storage.sqlite.rows import (
    _attach,
    _bind,
    _queue_page,
)


class SqliteCluster(SqliteEngine):
    """The ClusterStore facet on SQLite."""

    # Cluster

    async def heartbeat(self, node_id: str, uri: str) -> bool:
        now = isoformat(utcnow())

        def run(conn: sqlite3.Connection) -> bool:
            cursor = conn.execute(
                "UPDATE nodes SET heartbeat_at = ?, uri = ? WHERE node_id = ?", (now, uri, node_id)
            )
            if cursor.rowcount:
                return True
            conn.execute("INSERT INTO nodes VALUES (?, ?, ?, ?)", (node_id, uri, now, now))
            return False

        return await self.write(run)

    async def reap_nodes(self, stale_after: float) -> list[str]:
        cutoff = isoformat(utcnow() - timedelta(seconds=stale_after))

        def run(conn: sqlite3.Connection) -> list[str]:
            rows = conn.execute(
                "DELETE FROM nodes WHERE heartbeat_at < ? RETURNING node_id", (cutoff,)
            ).fetchall()
            dead = [row[0] for row in rows]
            for node_id in dead:
                conn.execute("DELETE FROM notification_registry WHERE node_id = ?", (node_id,))
            return dead

        return await self.write(run)

    async def remove_node(self, node_id: str) -> None:
        def run(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM nodes WHERE node_id = ?", (node_id,))
            conn.execute("DELETE FROM notification_registry WHERE node_id = ?", (node_id,))

        await self.write(run)

    async def list_nodes(self) -> list[NodeInfo]:
        def run(conn: sqlite3.Connection) -> list[NodeInfo]:
            rows = conn.execute(
                "SELECT node_id, uri, started_at, heartbeat_at FROM nodes ORDER BY node_id"
            ).fetchall()
            return [NodeInfo(r[0], r[1], parse_iso(r[2]), parse_iso(r[3])) for r in rows]

        return await self.read(run)

    async def add_presence(self, presences: Sequence[Presence]) -> None:
        rows = [
            (
                p.socket_id,
                p.connection_id,
                p.user_id,
                p.session_id,
                p.node_id,
                isoformat(p.connected_since),
            )
            for p in presences
        ]
        if not rows:
            return

        def run(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "INSERT OR REPLACE INTO notification_registry VALUES (?, ?, ?, ?, ?, ?)", rows
            )

        await self.write(run)

    async def attach(
        self, presence: Presence, max_sockets: int | None = None
    ) -> tuple[UnseenCount, list[str]]:
        """One item of the writer's batch instead of three round trips."""
        row = (
            presence.socket_id,
            presence.connection_id,
            presence.user_id,
            presence.session_id,
            presence.node_id,
            isoformat(presence.connected_since),
        )
        now = isoformat(utcnow())

        def run(conn: sqlite3.Connection) -> tuple[UnseenCount, list[str]]:
            attached = _attach(conn, row, max_sockets, now)
            if attached is None:
                raise TooManyConnections(
                    f"{presence.user_id} holds the most sockets allowed ({max_sockets})"
                )
            return attached

        return await self.write(run)

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
        """The device's binding, the socket's registration and the first page of its queue
        in one item of the writer's batch: a connect storm's cost is mostly the writes' round
        trips."""
        now = isoformat(utcnow())
        since = isoformat(connected_since)

        def run(
            conn: sqlite3.Connection,
        ) -> tuple[Device, tuple[UnseenCount, list[str]] | None, list[Notification]]:
            device = _bind(conn, user_id, connection_id, now)
            cid = device.connection_id
            row = (socket_id, cid, user_id, session_id or cid, node_id, since)
            # Over the cap the binding stays (as with two calls): not raised in here, which
            # would undo it.
            attached = _attach(conn, row, max_sockets, now)
            page = []
            if attached is not None and queue > 0:
                page = _queue_page(conn, cid, user_id, device.cursor, queue)
            return device, attached, page

        device, attached, page = await self.write(run)
        if attached is None:
            raise TooManyConnections(
                f"{user_id} holds the most sockets allowed ({max_sockets})", device
            )
        return Opened(device, *attached, page)

    async def remove_presence(self, socket_id: str) -> None:
        def run(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM notification_registry WHERE socket_id = ?", (socket_id,))

        await self.write(run)

    async def presence(
        self, *, user_id: str | None = None, node_id: str | None = None
    ) -> list[Presence]:
        clauses, params = [], []
        if user_id is not None:
            clauses.append("user_id = ?")
            params.append(user_id)
        if node_id is not None:
            clauses.append("node_id = ?")
            params.append(node_id)
        where = f"WHERE {' AND '.join(clauses)} " if clauses else ""

        def run(conn: sqlite3.Connection) -> list[Presence]:
            rows = conn.execute(
                "SELECT socket_id, connection_id, user_id, session_id, node_id, connected_since "
                f"FROM notification_registry {where}ORDER BY connected_since, socket_id",
                params,
            ).fetchall()
            return [Presence(r[0], r[1], r[2], r[3], r[4], parse_iso(r[5])) for r in rows]

        return await self.read(run)
