"""SQLite backend: the embedded default.

Why not aiosqlite: it hops to its thread once per statement, so a transaction costs four or
five hops and interleaves with other tasks' statements. Here each transaction is one function
run on a dedicated writer thread, and concurrent writes are grouped into one transaction with
a savepoint each (group commit): one fsync covers every notification that arrived meanwhile.
Reads use their own connection on their own thread (WAL lets them run beside the writer).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qsl, unquote, urlsplit

import orjson

from tidings.core.ids import CONNECTION_ID, new_id, new_sorted_id
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
    isoformat,
    parse_iso,
    utcnow,
)
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
    answerable,
    canonical_json,
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

T = TypeVar("T")


def _path_from_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme != "sqlite":
        raise ConfigurationError(f"not a sqlite URL: {url!r}")
    # sqlite:///relative.db → "relative.db"; sqlite:////abs/path.db → "/abs/path.db"
    path = unquote(parts.path)
    path = path[1:] if path.startswith("/") else path
    if not path:
        raise ConfigurationError(f"sqlite URL names no file: {url!r} (try sqlite:///tidings.db)")
    return path


def _cache_from_url(url: str) -> int:
    """``?cache_mb=N`` (MiB of page cache per connection), 32 by default."""
    value = dict(parse_qsl(urlsplit(url).query)).get("cache_mb", "32")
    try:
        mib = int(value)
    except ValueError:
        mib = 0
    if not 1 <= mib <= 65536:
        raise ConfigurationError(f"cache_mb must be 1 to 65536 MiB, not {value!r}")
    return mib


#: rows per multi-row INSERT of a batch of notifications (5 parameters each: SQLite allows
#: 32,766 per statement)
INSERT_CHUNK = 500
_INSERT = "INSERT INTO notifications (seq, notification_id, user_id, data, creation_date) VALUES "


def _insert_rows(conn: sqlite3.Connection, rows: list[tuple[int, str, str, str, str]]) -> None:
    """Insert a batch's rows, up to ``INSERT_CHUNK`` per statement. ``executemany`` runs the
    statement once per row, and releases and takes back the GIL around each: with the event
    loop busy parsing the next requests, each take-back can wait for the loop's switch
    interval. Batches of 500 through HTTP: 29.0-32.5 k/s with ``executemany``, 33.7-37.4 k/s
    with these (runs interleaved on the same machine)."""
    chunk = min(INSERT_CHUNK, conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // 5)
    for start in range(0, len(rows), chunk):
        part = rows[start : start + chunk]  # full chunks share one statement text (and plan)
        conn.execute(
            _INSERT + ",".join(["(?, ?, ?, ?, ?)"] * len(part)), [v for row in part for v in row]
        )


#: work for a connection: a read, or a write run inside the writer's transaction
Work = Callable[[sqlite3.Connection], Any]


class SqliteStore(Store):
    """Store in one SQLite file (``sqlite:///path.db``; ``sqlite:///:memory:`` for tests)."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.path = _path_from_url(url)
        self.cache_mib = _cache_from_url(url)
        self.memory = self.path == ":memory:"
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="tidings-sqlite-w")
        self._reader = (
            self._writer
            if self.memory
            else ThreadPoolExecutor(1, thread_name_prefix="tidings-sqlite-r")
        )
        self._wconn: sqlite3.Connection | None = None
        self._rconn: sqlite3.Connection | None = None
        self._writes: Batcher[Work] = Batcher(self._write_batch)
        # A hop to the reader thread costs more than a point read: concurrent reads share one.
        self._reads: Batcher[Work] = Batcher(self._read_batch, max_batch=256)
        self._started = False

    # Lifecycle

    async def start(self) -> None:
        if self._started:
            return
        loop = asyncio.get_running_loop()
        if not self.memory:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        try:
            self._wconn = await loop.run_in_executor(self._writer, self._open)
            await loop.run_in_executor(self._writer, self._migrate, self._wconn)
            if self.memory:
                self._rconn = self._wconn
            else:
                self._rconn = await loop.run_in_executor(self._reader, self._open)
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"cannot open {self.path}: {exc}") from exc
        self._started = True

    def _open(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA busy_timeout = 10000")
        if not self.memory:
            conn.execute("PRAGMA journal_mode = WAL")
        # FULL: a committed notification survives power loss, not only a process crash.
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA foreign_keys = ON")
        # 32 MiB of page cache per connection by default (grown only as used, so a node's
        # memory rises with its database up to 2 x this; ?cache_mb= in the URL sets it): index
        # inserts into a large table stay in memory instead of re-reading pages (SQLite's
        # default is 2 MiB).
        conn.execute(f"PRAGMA cache_size = -{self.cache_mib * 1024}")
        return conn

    @staticmethod
    def _migrate(conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                "version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)"
            )
            done = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
            for version, name, sql in load_migrations("sqlite"):
                if version in done:
                    continue
                for statement in split_sql(sql):
                    conn.execute(statement)
                conn.execute(
                    "INSERT INTO schema_migrations VALUES (?, ?, ?)",
                    (version, name, isoformat(utcnow())),
                )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    async def close(self) -> None:
        if not self._started:
            return
        self._started = False  # refuse new calls at once; pending writes still finish
        await self._writes.drain()
        await self._reads.drain()
        loop = asyncio.get_running_loop()
        for executor, conn in {(self._writer, self._wconn), (self._reader, self._rconn)}:
            if conn is not None:
                await loop.run_in_executor(executor, conn.close)
        self._wconn = self._rconn = None
        self._writer.shutdown(wait=True)
        self._reader.shutdown(wait=True)

    async def ping(self) -> None:
        await self.read(lambda conn: conn.execute("SELECT 1").fetchone())

    # Plumbing

    def _check_started(self) -> None:
        if not self._started:
            raise StoreError("store is not started; call start() or use 'async with'")

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` on the reading connection, batched with concurrent reads: one hop to
        the reader thread for all of them.

        Raises:
            StoreUnavailable: the database failed the read (``sqlite3.Error``); any other
                exception of ``fn`` is raised as is.
        """
        self._check_started()
        result: T = await self._reads.submit(fn)
        return result

    async def write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` inside a write transaction, grouped with concurrent writes (group
        commit: one transaction, each write in its own savepoint, so a failing write is
        undone alone and its exception raised to its caller only).

        Raises:
            StoreUnavailable: the database failed (nothing of ``fn`` was written).
        """
        self._check_started()
        result: T = await self._writes.submit(fn)
        return result

    # the names the pipeline store and tests used before ``read``/``write`` were public
    _read = read
    _write = write

    async def _read_batch(self, batch: list[Work]) -> list[Any]:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._reader, self._run_reads, batch)
        except Exception as exc:
            return [StoreUnavailable(f"sqlite read failed: {exc}")] * len(batch)

    def _run_reads(self, batch: list[Work]) -> list[Any]:
        conn = self._rconn
        assert conn is not None
        outcomes: list[Any] = []
        for fn in batch:
            try:
                outcomes.append(fn(conn))
            except sqlite3.Error as exc:
                failure = StoreUnavailable(f"sqlite read failed: {exc}")
                failure.__cause__ = exc
                outcomes.append(failure)
            except Exception as exc:
                outcomes.append(exc)
        return outcomes

    async def _write_batch(self, batch: list[Work]) -> list[Any]:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._writer, self._run_batch, batch)
        except Exception as exc:
            failure = StoreUnavailable(f"sqlite write failed: {exc}")
            failure.__cause__ = exc
            return [failure] * len(batch)

    def _run_batch(self, batch: list[Work]) -> list[Any]:
        conn = self._wconn
        assert conn is not None
        outcomes: list[Any] = []
        # Each write of a shared transaction gets a savepoint, so that a failing one is undone
        # alone; a write alone in its transaction is undone by rolling the transaction back.
        shared = len(batch) > 1
        conn.execute("BEGIN IMMEDIATE")
        try:
            for fn in batch:
                if shared:
                    conn.execute("SAVEPOINT item")
                try:
                    outcomes.append(fn(conn))
                except Exception as exc:
                    if shared:
                        conn.execute("ROLLBACK TO item")
                    elif conn.in_transaction:
                        conn.execute("ROLLBACK")
                    outcomes.append(_as_store_error(exc))
                if shared:
                    conn.execute("RELEASE item")
            if conn.in_transaction:
                conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return outcomes

    # Notifications and counts

    async def create_notification(
        self, user_id: str, data: Any, notification_id: str | None = None
    ) -> NotifyResult:
        encoded = orjson.dumps(data)
        nid = notification_id or new_sorted_id()
        now = utcnow()

        def run(conn: sqlite3.Connection) -> NotifyResult:
            row = conn.execute(
                f"SELECT {NOTE_COLUMNS} FROM notifications WHERE notification_id = ?",
                (nid,),
            ).fetchone()
            if row is not None:
                existing = _notification(row)
                if existing.user_id != user_id or canonical_json(existing.data) != canonical_json(
                    data
                ):
                    raise Conflict(
                        f"notification_id {nid!r} is already used by another notification"
                    )
                return NotifyResult(existing, created=False)
            seq = conn.execute(
                "INSERT INTO notifications (notification_id, user_id, data, creation_date) "
                "VALUES (?, ?, ?, ?)",
                (nid, user_id, encoded.decode(), isoformat(now)),
            ).lastrowid
            _, unseen, version = conn.execute(
                add_unseen_sql("sqlite", "VALUES (?, 1, 1)"), (user_id,)
            ).fetchone()
            return NotifyResult(
                Notification(nid, user_id, data, now, seq=seq or 0),
                created=True,
                count=UnseenCount(user_id, unseen, version),
            )

        return await self.write(run)

    async def create_notifications(
        self, items: Sequence[NewNotification]
    ) -> list[NotifyResult | Conflict]:
        """One transaction for the whole batch: a lookup of the ids already used, one insert
        per new notification, one count update per user."""
        now = utcnow()
        stamp = isoformat(now)
        prepared = prepare(items)

        # Only ids the callers chose can be known already; generated ones are new.
        ids = [item.notification_id for item in items if item.notification_id]

        def run(conn: sqlite3.Connection) -> list[NotifyResult | Conflict]:
            known: dict[str, Notification] = {}
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                for row in conn.execute(
                    f"SELECT {NOTE_COLUMNS} "
                    f"FROM notifications WHERE notification_id IN ({','.join('?' * len(chunk))})",
                    chunk,
                ):
                    known[row[0]] = _notification(row)
            outcomes: list[Notification | NotifyResult | Conflict] = []
            added: dict[str, int] = {}
            rows: list[tuple[int, str, str, str, str]] = []
            # Seqs are handed out here (one writer, inside BEGIN IMMEDIATE) so the inserts can
            # run as one executemany; AUTOINCREMENT's counter follows the largest one.
            last = conn.execute(
                "SELECT max(coalesce((SELECT seq FROM sqlite_sequence "
                "WHERE name = 'notifications'), 0), "
                "coalesce((SELECT max(seq) FROM notifications), 0))"
            ).fetchone()[0]
            for user_id, data, encoded, nid in prepared:
                prior = known.get(nid)
                if prior is not None:
                    outcomes.append(repeated(prior, user_id, data))
                    continue
                last += 1
                rows.append((last, nid, user_id, encoded, stamp))
                note = Notification(nid, user_id, data, now, seq=last)
                known[nid] = note
                outcomes.append(note)
                added[user_id] = added.get(user_id, 0) + 1
            _insert_rows(conn, rows)
            # Every user's count in one statement ("WHERE true" lets SQLite parse the upsert);
            # the version rises by one per notification, as if they had come one by one.
            final = {
                user_id: (unseen, version)
                for user_id, unseen, version in conn.execute(
                    add_unseen_sql(
                        "sqlite", "SELECT key, value, value FROM json_each(?) WHERE true"
                    ),
                    (orjson.dumps(added).decode(),),
                )
            }
            return with_counts(outcomes, added, final)

        return await self.write(run)

    async def unseen(
        self, user_id: str, limit: int, max_bytes: int | None = None
    ) -> list[Notification]:
        def run(conn: sqlite3.Connection) -> list[Notification]:
            if max_bytes is None:
                rows = conn.execute(
                    f"SELECT {NOTE_COLUMNS} "
                    "FROM notifications WHERE user_id = ? AND seen_date IS NULL "
                    "ORDER BY seq LIMIT ?",
                    (user_id, limit),
                ).fetchall()
            else:
                rows = conn.execute(UNSEEN_WITHIN, (user_id, limit, max_bytes)).fetchall()
            return [_notification(row) for row in rows]

        return await self.read(run)

    async def mark_seen(self, user_id: str, notification_ids: Sequence[str]) -> MarkSeenResult:
        ids = list(dict.fromkeys(notification_ids))
        if not ids:
            return MarkSeenResult()
        now = isoformat(utcnow())

        def run(conn: sqlite3.Connection) -> MarkSeenResult:
            fresh = [row[0] for row in _owned(conn, user_id, ids) if row[2] is None]
            if not fresh:
                return MarkSeenResult()
            marks = ",".join("?" * len(fresh))
            conn.execute(
                f"UPDATE notifications SET seen_date = ? "
                f"WHERE user_id = ? AND seen_date IS NULL AND notification_id IN ({marks})",
                (now, user_id, *fresh),
            )
            unseen, version = conn.execute(
                mark_seen_sql("sqlite"),
                (len(fresh), user_id),
            ).fetchone()
            return MarkSeenResult(fresh, UnseenCount(user_id, unseen, version))

        return await self.write(run)

    async def count(self, user_id: str) -> UnseenCount:
        def run(conn: sqlite3.Connection) -> UnseenCount:
            row = conn.execute(
                "SELECT unseen, version FROM user_counts WHERE user_id = ?", (user_id,)
            ).fetchone()
            return UnseenCount(user_id, *(row or (0, 0)))

        return await self.read(run)

    # Devices

    async def bind_device(self, user_id: str, connection_id: str | None) -> Device:
        now = isoformat(utcnow())
        return await self.write(lambda conn: _bind(conn, user_id, connection_id, now))

    async def pending(
        self, connection_id: str, user_id: str, after_seq: int, limit: int
    ) -> list[Notification]:
        def run(conn: sqlite3.Connection) -> list[Notification]:
            cursor = _cursor(conn, connection_id, user_id)
            if cursor is None:
                raise NotFound("unknown device", [connection_id])
            rows = conn.execute(
                f"SELECT {NOTE_COLUMNS} {QUEUE} ORDER BY seq LIMIT ?",
                (user_id, max(after_seq, cursor), connection_id, limit),
            ).fetchall()
            return [_notification(r) for r in rows]

        return await self.read(run)

    async def ack(
        self, connection_id: str, user_id: str, notification_ids: Sequence[str]
    ) -> AckResult:
        ids = list(dict.fromkeys(notification_ids))

        def run(conn: sqlite3.Connection) -> AckResult:
            cursor = _cursor(conn, connection_id, user_id)
            if cursor is None:
                raise NotFound("unknown device", [connection_id])
            conn.executemany(
                "INSERT OR IGNORE INTO device_acks VALUES (?, ?)",
                [(connection_id, row[1]) for row in _owned(conn, user_id, ids) if row[1] > cursor],
            )
            cursor = _advance_cursor(conn, connection_id, user_id, cursor)
            return AckResult(ids, cursor)

        return await self.write(run)

    async def trim_queue(
        self,
        connection_id: str,
        user_id: str,
        *,
        max_length: int | None,
        max_age: float | None,
    ) -> QueueGap | None:
        cutoff = isoformat(utcnow() - timedelta(seconds=max_age)) if max_age else None

        def run(conn: sqlite3.Connection) -> QueueGap | None:
            found = _cursor(conn, connection_id, user_id)
            if found is None:
                return None
            cursor = start = found
            pending = QUEUE
            skipped, reason = 0, ""
            if cutoff is not None:
                old = conn.execute(
                    f"SELECT count(*), max(seq) {pending} AND creation_date < ?",
                    (user_id, cursor, connection_id, cutoff),
                ).fetchone()
                if old[0]:
                    skipped, reason, cursor = old[0], "max_age", old[1]
            if max_length is not None:
                (total,) = conn.execute(
                    f"SELECT count(*) {pending}",
                    (user_id, cursor, connection_id),
                ).fetchone()
                if total > max_length:
                    (cursor,) = conn.execute(
                        f"SELECT seq {pending} ORDER BY seq LIMIT 1 OFFSET ?",
                        (user_id, cursor, connection_id, total - max_length - 1),
                    ).fetchone()
                    skipped, reason = skipped + total - max_length, reason or "max_length"
            if cursor == start:
                return None
            conn.execute(
                "UPDATE devices SET cursor = ? WHERE connection_id = ?", (cursor, connection_id)
            )
            conn.execute(
                "DELETE FROM device_acks WHERE connection_id = ? AND seq <= ?",
                (connection_id, cursor),
            )
            return QueueGap(reason, skipped, cursor)

        return await self.write(run)

    async def forget_device(self, user_id: str, connection_id: str) -> bool:
        def run(conn: sqlite3.Connection) -> bool:
            cursor = conn.execute(
                "DELETE FROM devices WHERE connection_id = ? AND user_id = ?",
                (connection_id, user_id),
            )
            if not cursor.rowcount:
                return False
            conn.execute("DELETE FROM device_acks WHERE connection_id = ?", (connection_id,))
            return True

        return await self.write(run)

    async def notification_log(self, after: str, limit: int) -> tuple[list[Notification], str]:
        # One writer: seq order is commit order, so the seq is the position.
        if after and not after.isdigit():
            raise InvalidArgument(f"not a log position of this store: {after!r}")
        start = int(after or 0)

        def run(conn: sqlite3.Connection) -> list[Notification]:
            rows = conn.execute(
                f"SELECT {NOTE_COLUMNS} FROM notifications WHERE seq > ? ORDER BY seq LIMIT ?",
                (start, limit),
            ).fetchall()
            return [_notification(r, answered=True) for r in rows]

        notes = await self.read(run)
        return notes, str(notes[-1].seq if notes else start)

    async def recent_notifications(self, limit: int) -> list[Notification]:
        def run(conn: sqlite3.Connection) -> list[Notification]:
            rows = conn.execute(
                f"SELECT {NOTE_COLUMNS} FROM notifications ORDER BY seq DESC LIMIT ?",
                (limit,),
            ).fetchall()
            return [_notification(r, answered=True) for r in rows]

        return await self.read(run)

    async def queue_depths(self, devices: Sequence[tuple[str, str]]) -> dict[str, int]:
        def run(conn: sqlite3.Connection) -> dict[str, int]:
            depths = {}
            for connection_id, user_id in devices:  # one thread hop for the whole list
                cursor = _cursor(conn, connection_id, user_id)
                if cursor is not None:
                    (depths[connection_id],) = conn.execute(
                        f"SELECT count(*) {QUEUE}",
                        (user_id, cursor, connection_id),
                    ).fetchone()
            return depths

        return await self.read(run)

    # Topics

    async def append_topic_message(
        self, topic: str, data: Any, origin_session_id: str | None, ttl: float
    ) -> TopicMessage:
        encoded = orjson.dumps(data).decode()
        now = utcnow()
        expires = isoformat(now + timedelta(seconds=ttl))

        def run(conn: sqlite3.Connection) -> TopicMessage:
            (seq,) = conn.execute(
                "INSERT INTO topics VALUES (?, 1) ON CONFLICT (topic) "
                "DO UPDATE SET last_seq = last_seq + 1 RETURNING last_seq",
                (topic,),
            ).fetchone()
            conn.execute(
                "INSERT INTO topic_messages VALUES (?, ?, ?, ?, ?, ?)",
                (topic, seq, encoded, origin_session_id, isoformat(now), expires),
            )
            return TopicMessage(topic, seq, data, now, origin_session_id)

        return await self.write(run)

    async def topic_last_seqs(self, topics: Sequence[str]) -> dict[str, int]:
        wanted = list(dict.fromkeys(topics))

        def run(conn: sqlite3.Connection) -> dict[str, int]:
            found: dict[str, int] = dict.fromkeys(wanted, 0)
            for at in range(0, len(wanted), 500):
                chunk = wanted[at : at + 500]
                marks = ",".join("?" * len(chunk))
                found.update(
                    conn.execute(
                        f"SELECT topic, last_seq FROM topics WHERE topic IN ({marks})", chunk
                    ).fetchall()
                )
            return found

        return await self.read(run) if wanted else {}

    async def topic_messages(self, topic: str, since: int, limit: int) -> Replay:
        now = isoformat(utcnow())

        def run(conn: sqlite3.Connection) -> Replay:
            row = conn.execute("SELECT last_seq FROM topics WHERE topic = ?", (topic,)).fetchone()
            last = row[0] if row else 0
            rows = conn.execute(
                "SELECT seq, CAST(data AS BLOB), creation_date, origin_session_id "
                "FROM topic_messages "
                "WHERE topic = ? AND seq > ? AND expires_at > ? ORDER BY seq LIMIT ?",
                (topic, since, now, limit),
            ).fetchall()
            messages = [
                TopicMessage(topic, r[0], _topic_data(topic, r[0], r[1]), parse_iso(r[2]), r[3])
                for r in rows
            ]
            first = messages[0].seq if messages else last + 1
            return Replay(messages, recovered=since >= last or first == since + 1, last_seq=last)

        return await self.read(run)

    async def expire(self, session_idle: float) -> int:
        now = utcnow()
        idle_before = isoformat(now - timedelta(seconds=session_idle))

        def run(conn: sqlite3.Connection) -> int:
            deleted = conn.execute(
                "DELETE FROM topic_messages WHERE expires_at <= ?", (isoformat(now),)
            ).rowcount
            conn.execute("DELETE FROM session_topics WHERE active_at < ?", (idle_before,))
            return deleted

        return await self.write(run)

    async def touch_sessions(self, sessions: Iterable[tuple[str, str]]) -> None:
        now = isoformat(utcnow())
        rows = [(now, user, session) for user, session in sessions]
        if not rows:
            return

        def run(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "UPDATE session_topics SET active_at = ? WHERE user_id = ? AND session_id = ?",
                rows,
            )

        await self.write(run)

    async def session_topics(self, user_id: str, session_id: str) -> list[str]:
        now = isoformat(utcnow())

        def run(conn: sqlite3.Connection) -> list[str]:
            rows = conn.execute(
                "UPDATE session_topics SET active_at = ? WHERE user_id = ? AND session_id = ? "
                "RETURNING topic",
                (now, user_id, session_id),
            ).fetchall()
            return sorted(r[0] for r in rows)

        return await self.write(run)

    async def subscribe_session(
        self,
        user_id: str,
        session_id: str,
        topics: Sequence[str],
        max_sessions: int | None = None,
    ) -> None:
        now = isoformat(utcnow())

        def run(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "INSERT INTO session_topics VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT DO UPDATE SET active_at = excluded.active_at",
                [(user_id, session_id, t, now, now) for t in topics],
            )
            if max_sessions is not None:
                conn.execute(
                    "DELETE FROM session_topics WHERE user_id = ? AND session_id IN ("
                    " SELECT session_id FROM session_topics WHERE user_id = ?"
                    " AND session_id <> ? GROUP BY session_id"
                    " ORDER BY max(active_at) DESC, session_id LIMIT -1 OFFSET ?)",
                    (user_id, user_id, session_id, max_sessions - 1),
                )

        await self.write(run)

    async def unsubscribe_session(
        self, user_id: str, session_id: str, topics: Sequence[str]
    ) -> None:
        def run(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "DELETE FROM session_topics WHERE user_id = ? AND session_id = ? AND topic = ?",
                [(user_id, session_id, t) for t in topics],
            )

        await self.write(run)

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
    ) -> tuple[Device, UnseenCount, list[str]]:
        """The device's binding and the socket's registration in one item of the writer's
        batch: a connect storm's cost is mostly the writes' round trips."""
        now = isoformat(utcnow())
        since = isoformat(connected_since)

        def run(
            conn: sqlite3.Connection,
        ) -> tuple[Device, tuple[UnseenCount, list[str]] | None]:
            device = _bind(conn, user_id, connection_id, now)
            cid = device.connection_id
            row = (socket_id, cid, user_id, session_id or cid, node_id, since)
            # Over the cap the binding stays (as with two calls): not raised in here, which
            # would undo it.
            return device, _attach(conn, row, max_sockets, now)

        device, attached = await self.write(run)
        if attached is None:
            raise TooManyConnections(
                f"{user_id} holds the most sockets allowed ({max_sockets})", device
            )
        return (device, *attached)

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

    # Service clients

    async def create_client(
        self, client_id: str, name: str, scopes: Iterable[str], secret_hash: str
    ) -> ServiceClient:
        now = utcnow()
        client = ServiceClient(client_id, name, frozenset(scopes), now, secret_hash)

        def run(conn: sqlite3.Connection) -> ServiceClient:
            conn.execute(
                "INSERT INTO service_clients VALUES (?, ?, ?, ?, ?)",
                (client_id, name, secret_hash, " ".join(sorted(client.scopes)), isoformat(now)),
            )
            return client

        return await self.write(run)

    async def get_client(self, client_id: str) -> ServiceClient | None:
        def run(conn: sqlite3.Connection) -> ServiceClient | None:
            row = conn.execute(
                "SELECT client_id, name, scopes, created_at, secret_hash "
                "FROM service_clients WHERE client_id = ?",
                (client_id,),
            ).fetchone()
            return _client(row) if row else None

        return await self.read(run)

    async def list_clients(self) -> list[ServiceClient]:
        def run(conn: sqlite3.Connection) -> list[ServiceClient]:
            rows = conn.execute(
                "SELECT client_id, name, scopes, created_at, secret_hash "
                "FROM service_clients ORDER BY created_at, client_id"
            ).fetchall()
            return [_client(row) for row in rows]

        return await self.read(run)

    async def delete_client(self, client_id: str) -> bool:
        def run(conn: sqlite3.Connection) -> bool:
            cursor = conn.execute("DELETE FROM service_clients WHERE client_id = ?", (client_id,))
            return cursor.rowcount > 0

        return await self.write(run)

    # Keys

    async def get_or_create_key(self, name: str, factory: Callable[[], str]) -> str:
        def run(conn: sqlite3.Connection) -> str:
            conn.execute(
                "INSERT INTO server_keys VALUES (?, ?, ?) ON CONFLICT (name) DO NOTHING",
                (name, factory(), isoformat(utcnow())),
            )
            row = conn.execute("SELECT value FROM server_keys WHERE name = ?", (name,)).fetchone()
            return str(row[0])

        return await self.write(run)


def _as_store_error(exc: Exception) -> Exception:
    if isinstance(exc, StoreError):
        return exc
    if isinstance(exc, sqlite3.IntegrityError):
        return Conflict(str(exc))
    if isinstance(exc, sqlite3.Error):
        return StoreUnavailable(f"sqlite write failed: {exc}")
    return exc


#: a notification's columns; the data as bytes, so that text that is not UTF-8 (written by
#: other means) fails the decoding of its own row only, not the read of a whole page
NOTE_COLUMNS = "notification_id, user_id, CAST(data AS BLOB), creation_date, seen_date, seq"

# The user's oldest unseen notifications up to a count and about a number of bytes of data
# (at least one): sizes are summed over the page's rows without reading them into Python,
# so a page of large notifications costs the node no more than the budget. length() counts
# characters, which is the bytes for ASCII. Parameters: user_id, limit, bytes.
UNSEEN_WITHIN = (
    "WITH page AS (SELECT seq, length(data) AS size FROM notifications "
    "WHERE user_id = ? AND seen_date IS NULL ORDER BY seq LIMIT ?), "
    "sized AS (SELECT seq, size, sum(size) OVER (ORDER BY seq) AS upto FROM page) "
    "SELECT n.notification_id, n.user_id, CAST(n.data AS BLOB), n.creation_date, "
    "n.seen_date, n.seq FROM sized JOIN notifications n ON n.seq = sized.seq "
    "WHERE sized.upto <= ? OR sized.upto = sized.size ORDER BY n.seq"
)


def _notification(row: tuple[Any, ...], *, answered: bool = False) -> Notification:
    """A notification row (``NOTE_COLUMNS``); ``answered`` for readers whose pages are
    written in one answer (see :func:`answerable`)."""
    data = load_data(row[2], f"notification {row[0]!r}")
    if answered:
        data = answerable(data, row[2], f"notification {row[0]!r}")
    return Notification(
        notification_id=row[0],
        user_id=row[1],
        data=data,
        creation_date=parse_iso(row[3]),
        seen_date=parse_iso(row[4]) if row[4] else None,
        seq=row[5] if len(row) > 5 else 0,
    )


def _topic_data(topic: str, seq: int, text: bytes) -> Any:
    what = f"topic message {topic!r}/{seq}"
    return answerable(load_data(text, what), text, what)


DEVICE_COLUMNS = "connection_id, user_id, created_at, last_seen_at, cursor"


def _device(row: tuple[Any, ...]) -> Device:
    return Device(row[0], row[1], parse_iso(row[2]), parse_iso(row[3]), row[4])


def _bind(conn: sqlite3.Connection, user_id: str, connection_id: str | None, now: str) -> Device:
    """The device ``connection_id`` of this user, created if needed (see bind_device)."""
    if connection_id and CONNECTION_ID.match(connection_id):
        row = conn.execute(
            "UPDATE devices SET last_seen_at = ? WHERE connection_id = ? AND user_id = ? "
            f"RETURNING {DEVICE_COLUMNS}",
            (now, connection_id, user_id),
        ).fetchone()
        if row is not None:
            return _device(row)
        taken = conn.execute(
            "SELECT 1 FROM devices WHERE connection_id = ?", (connection_id,)
        ).fetchone()
        chosen = new_id() if taken else connection_id
    else:
        chosen = new_id()
    row = conn.execute(
        f"INSERT INTO devices ({DEVICE_COLUMNS}) VALUES (?, ?, ?, ?, "
        "(SELECT coalesce(max(seq), 0) FROM notifications WHERE user_id = ?)) "
        f"RETURNING {DEVICE_COLUMNS}",
        (chosen, user_id, now, now, user_id),
    ).fetchone()
    return _device(row)


def _attach(
    conn: sqlite3.Connection, row: tuple[str, ...], max_sockets: int | None, now: str
) -> tuple[UnseenCount, list[str]] | None:
    """Register the socket ``row`` (a notification_registry row), mark its session's topics
    active; the user's count and those topics, or None (nothing written) over ``max_sockets``."""
    user, session = row[2], row[3]
    if max_sockets is not None:
        (held,) = conn.execute(
            "SELECT COUNT(*) FROM notification_registry WHERE user_id = ?", (user,)
        ).fetchone()
        if held >= max_sockets:
            return None
    conn.execute("INSERT OR REPLACE INTO notification_registry VALUES (?, ?, ?, ?, ?, ?)", row)
    counted = conn.execute(
        "SELECT unseen, version FROM user_counts WHERE user_id = ?", (user,)
    ).fetchone()
    topics = conn.execute(
        "UPDATE session_topics SET active_at = ? WHERE user_id = ? AND session_id = ? "
        "RETURNING topic",
        (now, user, session),
    ).fetchall()
    return UnseenCount(user, *(counted or (0, 0))), sorted(t[0] for t in topics)


# A device's queue: its user's notifications after the cursor that it has not acknowledged.
# Parameters: user_id, cursor, connection_id.
QUEUE = (
    "FROM notifications n WHERE user_id = ? AND seq > ? AND NOT EXISTS "
    "(SELECT 1 FROM device_acks a WHERE a.connection_id = ? AND a.seq = n.seq)"
)


def _cursor(conn: sqlite3.Connection, connection_id: str, user_id: str) -> int | None:
    row = conn.execute(
        "SELECT cursor FROM devices WHERE connection_id = ? AND user_id = ?",
        (connection_id, user_id),
    ).fetchone()
    return None if row is None else int(row[0])


def _owned(conn: sqlite3.Connection, user_id: str, ids: Sequence[str]) -> list[tuple[Any, ...]]:
    """``(notification_id, seq, seen_date)`` of the user's notifications among ``ids``.

    Raises:
        NotFound: some ids are unknown or another user's.
    """
    marks = ",".join("?" * len(ids))
    rows = conn.execute(
        f"SELECT notification_id, seq, seen_date FROM notifications "
        f"WHERE user_id = ? AND notification_id IN ({marks})",
        (user_id, *ids),
    ).fetchall()
    found = {row[0] for row in rows}
    missing = [nid for nid in ids if nid not in found]
    if missing:
        raise NotFound("unknown notification ids", missing)
    return rows


def _advance_cursor(conn: sqlite3.Connection, connection_id: str, user_id: str, cursor: int) -> int:
    """Fold contiguous acknowledgements into the cursor and drop their rows."""
    start = cursor
    while True:
        rows = conn.execute(
            "SELECT n.seq, a.seq IS NOT NULL FROM notifications n LEFT JOIN device_acks a "
            "ON a.connection_id = ? AND a.seq = n.seq "
            "WHERE n.user_id = ? AND n.seq > ? ORDER BY n.seq LIMIT 256",
            (connection_id, user_id, cursor),
        ).fetchall()
        for seq, acked in rows:
            if not acked:
                break
            cursor = seq
        else:
            if len(rows) == 256:
                continue
        break
    if cursor != start:
        conn.execute(
            "UPDATE devices SET cursor = ? WHERE connection_id = ?", (cursor, connection_id)
        )
        conn.execute(
            "DELETE FROM device_acks WHERE connection_id = ? AND seq <= ?",
            (connection_id, cursor),
        )
    return cursor


def _client(row: tuple[Any, ...]) -> ServiceClient:
    return ServiceClient(
        client_id=row[0],
        name=row[1],
        scopes=frozenset(row[2].split()),
        created_at=parse_iso(row[3]),
        secret_hash=row[4],
    )
