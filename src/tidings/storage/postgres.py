"""PostgreSQL backend (asyncpg): state shared by every node of a cluster.

``postgresql://user@host:5432/db`` (or ``postgres://``). Query parameters ``pool_min`` and
``pool_max`` size the connection pool (default 1 and 10). Each operation is one transaction on a
pooled connection; connections lost with the server are replaced on the next acquire, so service
resumes by itself when the database comes back.
"""

from __future__ import annotations

import zlib
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import orjson

from tidings.core.ids import CONNECTION_ID, new_id
from tidings.core.models import (
    AckResult,
    Device,
    MarkSeenResult,
    NewNotification,
    NodeInfo,
    Notification,
    NotifyResult,
    Presence,
    QueueGap,
    Replay,
    ServiceClient,
    TopicMessage,
    UnseenCount,
    utcnow,
)
from tidings.core.pg import UNAVAILABLE as _UNAVAILABLE
from tidings.core.pg import asyncpg
from tidings.errors import (
    ConfigurationError,
    Conflict,
    InvalidArgument,
    NotFound,
    StoreError,
    StoreUnavailable,
    TooManyConnections,
)
from tidings.storage._common import (
    Prepared,
    answerable,
    load_data,
    load_migrations,
    prepare,
    repeated,
    split_sql,
    with_counts,
)
from tidings.storage.base import Store
from tidings.storage.batching import Batcher
from tidings.storage.counts import add_unseen_sql, mark_seen_sql

MIGRATION_LOCK = zlib.crc32(b"tidings-migrations")
NOTIFICATION_COLUMNS = "notification_id, user_id, data::text, creation_date, seen_date, seq"
# The user's oldest unseen notifications up to a count and about a number of bytes of data
# (at least one): sizes are summed in the database, so a page of large notifications costs
# the node (and the wire) no more than the budget. Parameters: user_id, limit, bytes.
UNSEEN_WITHIN = (
    "WITH page AS (SELECT seq, octet_length(data::text) AS size FROM notifications "
    "WHERE user_id = $1 AND seen_date IS NULL ORDER BY seq LIMIT $2), "
    "sized AS (SELECT seq, size, sum(size) OVER (ORDER BY seq) AS upto FROM page) "
    "SELECT n.notification_id, n.user_id, n.data::text, n.creation_date, n.seen_date, n.seq "
    "FROM sized JOIN notifications n ON n.seq = sized.seq "
    "WHERE sized.upto <= $3 OR sized.upto = sized.size ORDER BY n.seq"
)


async def _no_reset(connection: Any) -> None:
    """Skip asyncpg's per-release reset: we use no session state (measured +15 %)."""


class PostgresStore(Store):
    """Store in PostgreSQL (version 12 or later)."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        parts = urlsplit(url)
        if parts.scheme not in ("postgres", "postgresql"):
            raise ConfigurationError(f"not a PostgreSQL URL: {url!r}")
        options = dict(parse_qsl(parts.query))
        try:
            self.pool_min = int(options.pop("pool_min", 1))
            self.pool_max = int(options.pop("pool_max", 10))
        except ValueError:
            raise ConfigurationError("pool_min and pool_max must be integers") from None
        self.dsn = urlunsplit(parts._replace(scheme="postgresql", query=urlencode(options)))
        self._pool: asyncpg.Pool | None = None
        #: single notifications waiting to be written together, and the task writing them
        self._notifies: Batcher[Prepared] = Batcher(self._notify_batch, max_batch=1000)

    # Lifecycle

    async def start(self) -> None:
        if self._pool is not None:
            return
        try:
            self._pool = await asyncpg.create_pool(
                self.dsn,
                min_size=self.pool_min,
                max_size=self.pool_max,
                command_timeout=15,
                timeout=5,
                reset=_no_reset,
            )
            async with self._pool.acquire() as conn, conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
                await self._migrate(conn)
        except _UNAVAILABLE as exc:
            await self.close()
            raise StoreUnavailable(f"cannot reach PostgreSQL: {exc}") from exc
        except (
            asyncpg.InvalidCatalogNameError,
            asyncpg.InvalidAuthorizationSpecificationError,
        ) as exc:
            # Retrying cannot help: the URL names a database or role that does not exist, or
            # a wrong password.
            await self.close()
            raise ConfigurationError(
                f"TIDINGS_STORE: PostgreSQL refused it: {exc} (create the database, e.g. "
                "createdb NAME, or fix the URL's database, user or password)"
            ) from exc

    @staticmethod
    async def _migrate(conn: Any) -> None:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            "version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TIMESTAMPTZ NOT NULL)"
        )
        done = {row[0] for row in await conn.fetch("SELECT version FROM schema_migrations")}
        for version, name, sql in load_migrations("postgres"):
            if version in done:
                continue
            for statement in split_sql(sql):
                await conn.execute(statement)
            await conn.execute(
                "INSERT INTO schema_migrations VALUES ($1, $2, now())", version, name
            )

    async def close(self) -> None:
        await self._notifies.drain()
        pool, self._pool = self._pool, None
        if pool is not None:
            try:
                await pool.close()
            except _UNAVAILABLE:
                pool.terminate()

    async def ping(self) -> None:
        async with self.connection() as conn:
            await conn.fetchval("SELECT 1")

    @asynccontextmanager
    async def connection(self, *, transaction: bool = False) -> AsyncIterator[Any]:
        """A pooled connection (inside a transaction with ``transaction=True``), for the
        facets of this store written outside this class (the pipeline's tables).

        Raises:
            StoreError: the store is not started.
            StoreUnavailable: PostgreSQL cannot be reached (the transaction is rolled back).
            InvalidArgument: PostgreSQL refused a value.
        """
        if self._pool is None:
            raise StoreError("store is not started; call start() or use 'async with'")
        try:
            async with self._pool.acquire() as conn:
                if transaction:
                    async with conn.transaction():
                        yield conn
                else:
                    yield conn
        except _UNAVAILABLE as exc:
            raise StoreUnavailable(f"PostgreSQL unavailable: {exc}") from exc
        except asyncpg.DataError as exc:
            raise InvalidArgument(f"PostgreSQL refused a value: {exc}") from exc

    # Notifications and counts

    async def create_notification(
        self, user_id: str, data: Any, notification_id: str | None = None
    ) -> NotifyResult:
        """Grouped with the notifications other callers create meanwhile into one transaction
        (:meth:`create_notifications`): one commit for a burst of concurrent requests, as the
        SQLite store's group commit does. Each caller still gets only its own result."""
        # Encoded here, so data that cannot be JSON fails this caller, not the whole group.
        item = prepare([NewNotification(user_id, data, notification_id)])[0]
        result: NotifyResult = await self._notifies.submit(item)
        return result  # raises the item's Conflict, or what failed its write

    async def _notify_batch(self, batch: list[Prepared]) -> list[Any]:
        try:
            return list(await self._write_batch(batch))
        except StoreUnavailable as exc:  # nothing of the batch was written
            return [exc] * len(batch)
        except Exception as exc:
            if len(batch) == 1:
                return [exc]
            # One item's value was refused and rolled the group back: write each alone, so
            # the refusal reaches its own caller and no other.
            return [await self._write_alone(item) for item in batch]

    async def _write_alone(self, item: Prepared) -> Any:
        try:
            return (await self._write_batch([item]))[0]
        except Exception as exc:
            return exc

    async def create_notifications(
        self, items: Sequence[NewNotification]
    ) -> list[NotifyResult | Conflict]:
        """One transaction and four statements for the whole batch: the users' locks (in one
        order, so concurrent batches cannot deadlock), the ids already used, a multi-row insert,
        and every user's count."""
        return await self._write_batch(prepare(items))

    async def _write_batch(self, prepared: list[Prepared]) -> list[NotifyResult | Conflict]:
        now = utcnow()
        async with self.connection(transaction=True) as conn:
            # The same per-user locks as create_notification (seq order per user), taken in
            # the order of their keys.
            await conn.execute(
                "SELECT pg_advisory_xact_lock(k) FROM (SELECT DISTINCT hashtextextended(u, 7) "
                "AS k FROM unnest($1::text[]) AS u ORDER BY k) AS locks",
                [p[0] for p in prepared],
            )
            known = {
                row[0]: _notification(row)
                for row in await conn.fetch(
                    f"SELECT {NOTIFICATION_COLUMNS} FROM notifications "
                    "WHERE notification_id = ANY($1::text[])",
                    [p[3] for p in prepared],
                )
            }
            outcomes: list[Notification | NotifyResult | Conflict] = []
            fresh: dict[str, tuple[str, Any, str]] = {}
            for user_id, data, encoded, nid in prepared:
                prior = known.get(nid)
                if prior is None and nid in fresh:
                    prior = Notification(nid, fresh[nid][0], fresh[nid][1], now)
                if prior is not None:
                    outcomes.append(repeated(prior, user_id, data))
                    continue
                fresh[nid] = (user_id, data, encoded)
                outcomes.append(Notification(nid, user_id, data, now))
            seqs: dict[str, int] = {}
            if fresh:
                ids = list(fresh)
                rows = await conn.fetch(
                    "INSERT INTO notifications (notification_id, user_id, data, creation_date) "
                    "SELECT i, u, d::json, $4 FROM unnest($1::text[], $2::text[], $3::text[]) "
                    "AS t(i, u, d) ON CONFLICT (notification_id) DO NOTHING "
                    "RETURNING notification_id, seq",
                    ids,
                    [fresh[i][0] for i in ids],
                    [fresh[i][2] for i in ids],
                    now,
                )
                seqs = {row[0]: row[1] for row in rows}
            added: dict[str, int] = {}
            for nid in seqs:
                added[fresh[nid][0]] = added.get(fresh[nid][0], 0) + 1
            final: dict[str, tuple[int, int]] = {}
            if added:
                users = list(added)
                for user_id, unseen, version in await conn.fetch(
                    add_unseen_sql(
                        "postgres", "SELECT u, n, n FROM unnest($1::text[], $2::int[]) AS t(u, n)"
                    ),
                    users,
                    [added[u] for u in users],
                ):
                    final[user_id] = (unseen, version)
        settled: list[Notification | NotifyResult | Conflict] = []
        for outcome in outcomes:
            if isinstance(outcome, Notification):
                nid = outcome.notification_id
                if nid in seqs:
                    settled.append(
                        Notification(nid, outcome.user_id, outcome.data, now, seq=seqs[nid])
                    )
                else:  # taken meanwhile by a transaction of another user
                    settled.append(Conflict(f"notification_id {nid!r} is taken meanwhile"))
            elif isinstance(outcome, NotifyResult) and outcome.notification.seq == 0:
                # a repeat, inside this batch, of an item created by it
                first = outcome.notification
                seq = seqs.get(first.notification_id, 0)
                again = Notification(first.notification_id, first.user_id, first.data, now, seq=seq)
                settled.append(NotifyResult(again, created=False))
            else:
                settled.append(outcome)
        return with_counts(settled, added, final)

    async def unseen(
        self, user_id: str, limit: int, max_bytes: int | None = None
    ) -> list[Notification]:
        async with self.connection() as conn:
            if max_bytes is None:
                rows = await conn.fetch(
                    f"SELECT {NOTIFICATION_COLUMNS} FROM notifications "
                    "WHERE user_id = $1 AND seen_date IS NULL ORDER BY seq LIMIT $2",
                    user_id,
                    limit,
                )
            else:
                rows = await conn.fetch(UNSEEN_WITHIN, user_id, limit, max_bytes)
        return [_notification(row) for row in rows]

    async def mark_seen(self, user_id: str, notification_ids: Sequence[str]) -> MarkSeenResult:
        ids = list(dict.fromkeys(notification_ids))
        if not ids:
            return MarkSeenResult()
        async with self.connection(transaction=True) as conn:
            await _owned(conn, user_id, ids)
            # Rows locked by a concurrent markSeen are re-checked after its commit, so each
            # notification is counted down once.
            marked = [
                row[0]
                for row in await conn.fetch(
                    "UPDATE notifications SET seen_date = $3 WHERE user_id = $1 "
                    "AND notification_id = ANY($2::text[]) AND seen_date IS NULL "
                    "RETURNING notification_id",
                    user_id,
                    ids,
                    utcnow(),
                )
            ]
            if not marked:
                return MarkSeenResult()
            unseen, version = await conn.fetchrow(
                mark_seen_sql("postgres"),
                user_id,
                len(marked),
            )
        return MarkSeenResult(marked, UnseenCount(user_id, unseen, version))

    async def count(self, user_id: str) -> UnseenCount:
        async with self.connection() as conn:
            row = await conn.fetchrow(
                "SELECT unseen, version FROM user_counts WHERE user_id = $1", user_id
            )
        return UnseenCount(user_id, row[0], row[1]) if row else UnseenCount(user_id, 0, 0)

    # Devices

    async def bind_device(self, user_id: str, connection_id: str | None) -> Device:
        now = utcnow()
        columns = "connection_id, user_id, created_at, last_seen_at, cursor"
        insert = (
            f"INSERT INTO devices ({columns}) VALUES ($1, $2, $3, $3, "
            "(SELECT coalesce(max(seq), 0) FROM notifications WHERE user_id = $2)) "
        )
        async with self.connection(transaction=True) as conn:
            # A new device's queue starts after the user's latest notification: read it while
            # none of the user's notifications is half-committed (see create_notification).
            await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 7))", user_id)
            if connection_id and CONNECTION_ID.match(connection_id):
                row = await conn.fetchrow(
                    "UPDATE devices SET last_seen_at = $3 WHERE connection_id = $1 "
                    f"AND user_id = $2 RETURNING {columns}",
                    connection_id,
                    user_id,
                    now,
                )
                if row is not None:
                    return Device(*row)
                row = await conn.fetchrow(
                    insert + f"ON CONFLICT DO NOTHING RETURNING {columns}",
                    connection_id,
                    user_id,
                    now,
                )
                if row is not None:
                    return Device(*row)
            row = await conn.fetchrow(insert + f"RETURNING {columns}", new_id(), user_id, now)
        return Device(*row)

    async def _cursor(self, conn: Any, connection_id: str, user_id: str, *, lock: bool) -> int:
        cursor = await conn.fetchval(
            "SELECT cursor FROM devices WHERE connection_id = $1 AND user_id = $2"
            + (" FOR UPDATE" if lock else ""),
            connection_id,
            user_id,
        )
        if cursor is None:
            raise NotFound("unknown device", [connection_id])
        return int(cursor)

    async def pending(
        self, connection_id: str, user_id: str, after_seq: int, limit: int
    ) -> list[Notification]:
        async with self.connection() as conn:
            cursor = await self._cursor(conn, connection_id, user_id, lock=False)
            rows = await conn.fetch(
                f"SELECT {NOTIFICATION_COLUMNS} {QUEUE} ORDER BY seq LIMIT $4",
                user_id,
                max(after_seq, cursor),
                connection_id,
                limit,
            )
        return [_notification(row) for row in rows]

    async def ack(
        self, connection_id: str, user_id: str, notification_ids: Sequence[str]
    ) -> AckResult:
        ids = list(dict.fromkeys(notification_ids))
        async with self.connection(transaction=True) as conn:
            cursor = await self._cursor(conn, connection_id, user_id, lock=True)
            above = [row[1] for row in await _owned(conn, user_id, ids) if row[1] > cursor]
            if above:
                await conn.execute(
                    "INSERT INTO device_acks SELECT $1, unnest($2::bigint[]) "
                    "ON CONFLICT DO NOTHING",
                    connection_id,
                    above,
                )
            cursor = await _advance_cursor(conn, connection_id, user_id, cursor)
        return AckResult(ids, cursor)

    async def trim_queue(
        self,
        connection_id: str,
        user_id: str,
        *,
        max_length: int | None,
        max_age: float | None,
    ) -> QueueGap | None:
        pending = QUEUE
        async with self.connection(transaction=True) as conn:
            try:
                cursor = start = await self._cursor(conn, connection_id, user_id, lock=True)
            except NotFound:
                return None
            skipped, reason = 0, ""
            if max_age:
                old = await conn.fetchrow(
                    f"SELECT count(*), max(seq) {pending} AND creation_date < $4",
                    user_id,
                    cursor,
                    connection_id,
                    utcnow() - timedelta(seconds=max_age),
                )
                if old[0]:
                    skipped, reason, cursor = old[0], "max_age", old[1]
            if max_length is not None:
                total = await conn.fetchval(
                    f"SELECT count(*) {pending}",
                    user_id,
                    cursor,
                    connection_id,
                )
                if total > max_length:
                    cursor = await conn.fetchval(
                        f"SELECT seq {pending} ORDER BY seq LIMIT 1 OFFSET $4",
                        user_id,
                        cursor,
                        connection_id,
                        total - max_length - 1,
                    )
                    skipped, reason = skipped + total - max_length, reason or "max_length"
            if cursor == start:
                return None
            await conn.execute(
                "UPDATE devices SET cursor = $2 WHERE connection_id = $1", connection_id, cursor
            )
            await conn.execute(
                "DELETE FROM device_acks WHERE connection_id = $1 AND seq <= $2",
                connection_id,
                cursor,
            )
        return QueueGap(reason, skipped, cursor)

    async def forget_device(self, user_id: str, connection_id: str) -> bool:
        async with self.connection(transaction=True) as conn:
            status = await conn.execute(
                "DELETE FROM devices WHERE connection_id = $1 AND user_id = $2",
                connection_id,
                user_id,
            )
            if status == "DELETE 0":
                return False
            await conn.execute("DELETE FROM device_acks WHERE connection_id = $1", connection_id)
        return True

    async def notification_log(self, after: str, limit: int) -> tuple[list[Notification], str]:
        # Position "txid.seq": only transactions older than every running one are read, so a
        # row can never appear behind a consumer's position later (see migration 005).
        txid, _, seq = (after or "0.0").partition(".")
        if not (txid.isdigit() and seq.isdigit()):
            raise InvalidArgument(f"not a log position of this store: {after!r}")
        async with self.connection() as conn:
            rows = await conn.fetch(
                f"SELECT {NOTIFICATION_COLUMNS}, txid::text FROM notifications "
                "WHERE (txid, seq) > ($1::text::xid8, $2::bigint) "
                "AND txid < pg_snapshot_xmin(pg_current_snapshot()) "
                "ORDER BY txid, seq LIMIT $3",
                txid,
                int(seq),
                limit,
            )
        if not rows:
            return [], after or "0.0"
        notes = [_notification(row, answered=True) for row in rows]
        return notes, f"{rows[-1][6]}.{rows[-1][5]}"

    async def recent_notifications(self, limit: int) -> list[Notification]:
        async with self.connection() as conn:
            rows = await conn.fetch(
                f"SELECT {NOTIFICATION_COLUMNS} FROM notifications ORDER BY seq DESC LIMIT $1",
                limit,
            )
        return [_notification(row, answered=True) for row in rows]

    async def queue_depths(self, devices: Sequence[tuple[str, str]]) -> dict[str, int]:
        if not devices:
            return {}
        async with self.connection() as conn:
            rows = await conn.fetch(
                "SELECT d.connection_id, (SELECT count(*) FROM notifications n "
                "WHERE n.user_id = d.user_id AND n.seq > d.cursor AND NOT EXISTS "
                "(SELECT 1 FROM device_acks a WHERE a.connection_id = d.connection_id "
                "AND a.seq = n.seq)) FROM devices d JOIN unnest($1::text[], $2::text[]) "
                "AS t(connection_id, user_id) USING (connection_id, user_id)",
                [c for c, _ in devices],
                [u for _, u in devices],
            )
        return {row[0]: int(row[1]) for row in rows}

    # Topics

    async def append_topic_message(
        self, topic: str, data: Any, origin_session_id: str | None, ttl: float
    ) -> TopicMessage:
        now = utcnow()
        async with self.connection(transaction=True) as conn:
            seq = await conn.fetchval(
                "INSERT INTO topics AS t VALUES ($1, 1) ON CONFLICT (topic) "
                "DO UPDATE SET last_seq = t.last_seq + 1 RETURNING last_seq",
                topic,
            )
            await conn.execute(
                "INSERT INTO topic_messages VALUES ($1, $2, $3::json, $4, $5, $6)",
                topic,
                seq,
                orjson.dumps(data).decode(),
                origin_session_id,
                now,
                now + timedelta(seconds=ttl),
            )
        return TopicMessage(topic, seq, data, now, origin_session_id)

    async def topic_last_seqs(self, topics: Sequence[str]) -> dict[str, int]:
        wanted = list(dict.fromkeys(topics))
        if not wanted:
            return {}
        async with self.connection() as conn:
            rows = await conn.fetch(
                "SELECT topic, last_seq FROM topics WHERE topic = ANY($1::text[])", wanted
            )
        found: dict[str, int] = dict.fromkeys(wanted, 0)
        found.update((r[0], r[1]) for r in rows)
        return found

    async def topic_messages(self, topic: str, since: int, limit: int) -> Replay:
        async with self.connection() as conn:
            last = await conn.fetchval("SELECT last_seq FROM topics WHERE topic = $1", topic) or 0
            rows = await conn.fetch(
                "SELECT seq, data::text, creation_date, origin_session_id FROM topic_messages "
                "WHERE topic = $1 AND seq > $2 AND expires_at > now() ORDER BY seq LIMIT $3",
                topic,
                since,
                limit,
            )
        messages = []
        for r in rows:
            what = f"topic message {topic!r}/{r[0]}"
            data = answerable(load_data(r[1], what), r[1], what)
            messages.append(TopicMessage(topic, r[0], data, r[2], r[3]))
        first = messages[0].seq if messages else last + 1
        return Replay(messages, recovered=since >= last or first == since + 1, last_seq=last)

    async def expire(self, session_idle: float) -> int:
        async with self.connection() as conn:
            status = await conn.execute("DELETE FROM topic_messages WHERE expires_at <= now()")
            await conn.execute(
                "DELETE FROM session_topics WHERE active_at < now() - $1::interval",
                timedelta(seconds=session_idle),
            )
        return int(status.split()[-1])

    async def touch_sessions(self, sessions: Iterable[tuple[str, str]]) -> None:
        pairs = list(sessions)
        if not pairs:
            return
        async with self.connection() as conn:
            await conn.execute(
                "UPDATE session_topics s SET active_at = now() FROM unnest($1::text[], $2::text[])"
                " AS t(user_id, session_id) WHERE s.user_id = t.user_id "
                "AND s.session_id = t.session_id",
                [u for u, _ in pairs],
                [x for _, x in pairs],
            )

    async def session_topics(self, user_id: str, session_id: str) -> list[str]:
        async with self.connection() as conn:
            rows = await conn.fetch(
                "UPDATE session_topics SET active_at = now() WHERE user_id = $1 "
                "AND session_id = $2 RETURNING topic",
                user_id,
                session_id,
            )
        return sorted(r[0] for r in rows)

    async def subscribe_session(
        self,
        user_id: str,
        session_id: str,
        topics: Sequence[str],
        max_sessions: int | None = None,
    ) -> None:
        async with self.connection() as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO session_topics SELECT $1, $2, unnest($3::text[]), now(), now() "
                "ON CONFLICT (user_id, session_id, topic) DO UPDATE SET active_at = now()",
                user_id,
                session_id,
                list(topics),
            )
            if max_sessions is not None:
                await conn.execute(
                    "DELETE FROM session_topics WHERE user_id = $1 AND session_id IN ("
                    " SELECT session_id FROM session_topics WHERE user_id = $1"
                    " AND session_id <> $2 GROUP BY session_id"
                    " ORDER BY max(active_at) DESC, session_id OFFSET $3)",
                    user_id,
                    session_id,
                    max_sessions - 1,
                )

    async def unsubscribe_session(
        self, user_id: str, session_id: str, topics: Sequence[str]
    ) -> None:
        async with self.connection() as conn:
            await conn.execute(
                "DELETE FROM session_topics WHERE user_id = $1 AND session_id = $2 "
                "AND topic = ANY($3::text[])",
                user_id,
                session_id,
                list(topics),
            )

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
                "SELECT (SELECT unseen FROM user_counts WHERE user_id = $3), "
                "(SELECT version FROM user_counts WHERE user_id = $3), "
                "(SELECT array_agg(topic ORDER BY topic) FROM touched), (SELECT n FROM held)",
                presence.socket_id,
                presence.connection_id,
                presence.user_id,
                presence.session_id,
                presence.node_id,
                presence.connected_since,
                max_sockets,
            )
        unseen, version, topics, held = row
        if max_sockets is not None and held >= max_sockets:
            raise TooManyConnections(f"{presence.user_id} holds {held} sockets")
        return UnseenCount(presence.user_id, unseen or 0, version or 0), list(topics or ())

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

    # Service clients

    async def create_client(
        self, client_id: str, name: str, scopes: Iterable[str], secret_hash: str
    ) -> ServiceClient:
        now = utcnow()
        client = ServiceClient(client_id, name, frozenset(scopes), now, secret_hash)
        async with self.connection() as conn:
            try:
                await conn.execute(
                    "INSERT INTO service_clients VALUES ($1, $2, $3, $4, $5)",
                    client_id,
                    name,
                    secret_hash,
                    " ".join(sorted(client.scopes)),
                    now,
                )
            except asyncpg.UniqueViolationError as exc:
                raise Conflict(f"client {client_id!r} exists") from exc
        return client

    async def get_client(self, client_id: str) -> ServiceClient | None:
        async with self.connection() as conn:
            row = await conn.fetchrow(
                "SELECT client_id, name, scopes, created_at, secret_hash "
                "FROM service_clients WHERE client_id = $1",
                client_id,
            )
        return _client(row) if row else None

    async def list_clients(self) -> list[ServiceClient]:
        async with self.connection() as conn:
            rows = await conn.fetch(
                "SELECT client_id, name, scopes, created_at, secret_hash "
                "FROM service_clients ORDER BY created_at, client_id"
            )
        return [_client(row) for row in rows]

    async def delete_client(self, client_id: str) -> bool:
        async with self.connection() as conn:
            status = await conn.execute(
                "DELETE FROM service_clients WHERE client_id = $1", client_id
            )
        return bool(status != "DELETE 0")

    # Keys

    async def get_or_create_key(self, name: str, factory: Callable[[], str]) -> str:
        async with self.connection() as conn:
            await conn.execute(
                "INSERT INTO server_keys VALUES ($1, $2, now()) ON CONFLICT (name) DO NOTHING",
                name,
                factory(),
            )
            value = await conn.fetchval("SELECT value FROM server_keys WHERE name = $1", name)
        return str(value)


def _notification(row: Any, *, answered: bool = False) -> Notification:
    """A notification row (``NOTIFICATION_COLUMNS``); ``answered`` for readers whose pages
    are written in one answer (see :func:`answerable`)."""
    data = load_data(row[2], f"notification {row[0]!r}")
    if answered:
        data = answerable(data, row[2], f"notification {row[0]!r}")
    return Notification(
        notification_id=row[0],
        user_id=row[1],
        data=data,
        creation_date=row[3],
        seen_date=row[4],
        seq=row[5] if len(row) > 5 else 0,
    )


# A device's queue: its user's notifications after the cursor that it has not acknowledged.
# Parameters: $1 user_id, $2 cursor, $3 connection_id.
QUEUE = (
    "FROM notifications n WHERE user_id = $1 AND seq > $2 AND NOT EXISTS "
    "(SELECT 1 FROM device_acks a WHERE a.connection_id = $3 AND a.seq = n.seq)"
)


async def _owned(conn: Any, user_id: str, ids: Sequence[str]) -> list[Any]:
    """``(notification_id, seq)`` rows of the user's notifications among ``ids``.

    Raises:
        NotFound: some ids are unknown or another user's.
    """
    rows = await conn.fetch(
        "SELECT notification_id, seq FROM notifications "
        "WHERE user_id = $1 AND notification_id = ANY($2::text[])",
        user_id,
        list(ids),
    )
    found = {row[0] for row in rows}
    missing = [nid for nid in ids if nid not in found]
    if missing:
        raise NotFound("unknown notification ids", missing)
    return list(rows)


async def _advance_cursor(conn: Any, connection_id: str, user_id: str, cursor: int) -> int:
    """Fold contiguous acknowledgements into the cursor and drop their rows."""
    start = cursor
    while True:
        rows = await conn.fetch(
            "SELECT n.seq, a.seq IS NOT NULL FROM notifications n LEFT JOIN device_acks a "
            "ON a.connection_id = $1 AND a.seq = n.seq "
            "WHERE n.user_id = $2 AND n.seq > $3 ORDER BY n.seq LIMIT 256",
            connection_id,
            user_id,
            cursor,
        )
        for seq, acked in rows:
            if not acked:
                break
            cursor = seq
        else:
            if len(rows) == 256:
                continue
        break
    if cursor != start:
        await conn.execute(
            "UPDATE devices SET cursor = $2 WHERE connection_id = $1", connection_id, cursor
        )
        await conn.execute(
            "DELETE FROM device_acks WHERE connection_id = $1 AND seq <= $2",
            connection_id,
            cursor,
        )
    return cursor


def _client(row: Any) -> ServiceClient:
    return ServiceClient(
        client_id=row[0],
        name=row[1],
        scopes=frozenset(row[2].split()),
        created_at=row[3],
        secret_hash=row[4],
    )
