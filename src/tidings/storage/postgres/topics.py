"""The TopicStore facet of the PostgreSQL store."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import timedelta
from typing import Any

import orjson

from tidings.core.models import (
    Replay,
    TopicMessage,
    utcnow,
)
from tidings.storage._common import (
    answerable,
    load_data,
)
from tidings.storage.postgres.engine import PostgresEngine


class PostgresTopics(PostgresEngine):
    """The TopicStore facet on PostgreSQL."""

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
