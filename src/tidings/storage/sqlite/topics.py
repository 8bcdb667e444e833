"""The TopicStore facet of the SQLite store."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from datetime import timedelta
from typing import Any

import orjson

from tidings.core.models import (
    Replay,
    TopicMessage,
    isoformat,
    parse_iso,
    utcnow,
)
from tidings.storage.sqlite.engine import SqliteEngine
from tidings.storage.sqlite.rows import (
    _topic_data,
    chunked,
    marks,
)


class SqliteTopics(SqliteEngine):
    """The TopicStore facet on SQLite."""

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
            for chunk in chunked(wanted):
                found.update(
                    conn.execute(
                        f"SELECT topic, last_seq FROM topics WHERE topic IN ({marks(chunk)})",
                        chunk,
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
