"""Topics: publishing, session subscriptions, replay, and catching up after a bus outage."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Mapping, Sequence
from fnmatch import fnmatchcase
from typing import Any

import orjson

from tidings.auth.topics import TopicPolicy, check_topic
from tidings.bus import Bus
from tidings.core import events
from tidings.core.limits import MAX_ID_LENGTH
from tidings.core.models import Replay, TopicMessage
from tidings.errors import BusError, InvalidArgument, TidingsError, TopicRefused
from tidings.fanout.connection import Connection
from tidings.fanout.registry import Registry, topic_channel
from tidings.services.checks import check_data, check_identifier
from tidings.services.republish import Republisher
from tidings.services.stores import TopicStore

logger = logging.getLogger("tidings")

#: stored messages read per store call during a replay
PAGE_SIZE = 200

Spawn = Callable[[Coroutine[Any, Any, None]], None]


class Topics:
    """Topic messages and the topic subscriptions of the sessions connected to one node."""

    def __init__(
        self,
        store: TopicStore,
        bus: Bus,
        registry: Registry,
        policy: TopicPolicy,
        republisher: Republisher,
        spawn: Spawn,
        *,
        node_id: str,
        ttl: float,
        ttls: Mapping[str, float],
        max_data_size: int,
        max_topics_per_session: int,
        max_sessions_per_user: int,
    ) -> None:
        self.store = store
        self.bus = bus
        self.registry = registry
        self.policy = policy
        self.republisher = republisher
        #: runs a background task of the node's (cancelled when the node closes)
        self.spawn = spawn
        self.node_id = node_id
        self.ttl = ttl
        self.ttls = ttls
        self.max_data_size = max_data_size
        self.max_topics_per_session = max_topics_per_session
        self.max_sessions_per_user = max_sessions_per_user

    def topic_ttl(self, topic: str) -> float:
        """Seconds messages of ``topic`` are kept: the first matching pattern's, or the default."""
        for pattern, ttl in self.ttls.items():
            if fnmatchcase(topic, pattern):
                return ttl
        return self.ttl

    async def publish(
        self, topic: str, data: Any, *, origin_session_id: str | None = None
    ) -> TopicMessage:
        """Store a message on ``topic`` and send it to every subscribed session on every node
        (see :meth:`tidings.Tidings.publish`)."""
        check_topic(topic)
        if origin_session_id is not None:
            check_identifier("origin_session_id", origin_session_id, MAX_ID_LENGTH)
        check_data(data, self.max_data_size)
        return await asyncio.shield(self._publish(topic, data, origin_session_id))

    async def _publish(self, topic: str, data: Any, origin: str | None) -> TopicMessage:
        message = await self.store.append_topic_message(topic, data, origin, self.topic_ttl(topic))
        payload = events.encode_topic_message(message, self.node_id)
        if len(payload) > self.bus.max_payload:
            payload = events.encode_topic_message(message, self.node_id, by_reference=True)
        channel = topic_channel(topic)
        try:
            await self.bus.publish(channel, payload)
        except BusError as exc:
            # Stored already: this node's sessions get it now, the others when the bus takes
            # it again (each socket drops repeats by seq).
            logger.warning("topic message %s/%d not published: %s", topic, message.seq, exc)
            self.deliver(message)
            self.republisher.retry_later(("topic", topic, str(message.seq)), channel, payload)
        return message

    def deliver(self, message: TopicMessage) -> None:
        """Push a message to the sockets here that follow its topic (not its origin's)."""
        if not self.registry.topic_connections(message.topic):
            return  # nobody follows it here: not even encoded
        text = orjson.dumps(message.to_frame()).decode()
        self.registry.deliver_topic(
            message.topic, message.seq, text, skip_session=message.origin_session_id
        )

    def deliver_reference(self, reference: TopicMessage) -> None:
        """A message too large for the bus came by reference: read it, then deliver it."""
        self.spawn(self._fetch_and_deliver(reference))

    async def _fetch_and_deliver(self, reference: TopicMessage) -> None:
        try:
            replay = await self.store.topic_messages(reference.topic, reference.seq - 1, 1)
        except TidingsError as exc:
            logger.warning(
                "topic message %s/%d unreadable: %s", reference.topic, reference.seq, exc
            )
            return
        for message in replay.messages:
            if message.seq == reference.seq:
                self.deliver(message)

    async def subscribe_topics(self, conn: Connection, topics: Sequence[str]) -> list[str]:
        """Subscribe ``conn``'s session to ``topics`` (all or none).

        Raises:
            InvalidArgument: the session would follow more than its limit of topics.
            TopicRefused: naming the topics the policy refused; nothing was subscribed.
        """
        limit = self.max_topics_per_session
        if len(conn.topics | set(topics)) > limit:
            raise InvalidArgument(f"a session may follow at most {limit} topics")
        refused = await self.policy.refused(conn.user_id, conn.claims, topics)
        if refused:
            raise TopicRefused(refused)
        await self.store.subscribe_session(
            conn.user_id, conn.session_id, topics, self.max_sessions_per_user
        )
        # Every socket of this session on this node follows the session's subscriptions, as
        # far as its own token allows (as on reactivation), from the topic's last seq now.
        sockets = self._session_connections(conn)
        joining = sorted({t for other in sockets for t in topics if t not in other.topics})
        starts = await self.store.topic_last_seqs(joining) if joining else {}
        for other in sockets:
            allowed: Sequence[str] = topics
            if other is not conn and other.claims != conn.claims:
                refused_here = set(await self.policy.refused(other.user_id, other.claims, topics))
                allowed = [t for t in topics if t not in refused_here]
            _mark_start(other, {t: starts[t] for t in allowed if t in starts})
            await self.registry.join_topics(other, allowed)
        return list(topics)

    async def unsubscribe_topics(self, conn: Connection, topics: Sequence[str]) -> list[str]:
        """Unsubscribe ``conn``'s session (every socket of it here) from ``topics``."""
        await self.store.unsubscribe_session(conn.user_id, conn.session_id, topics)
        for other in self._session_connections(conn):
            self.registry.leave_topics(other, topics)
            if other.topic_start is not None:
                for topic in topics:
                    other.topic_start.pop(topic, None)
        return list(topics)

    def _session_connections(self, conn: Connection) -> list[Connection]:
        return [
            c
            for c in self.registry.connections(conn.user_id) | {conn}
            if c.session_id == conn.session_id
        ]

    async def reactivate_session(
        self, conn: Connection, topics: Sequence[str] | None = None
    ) -> list[str]:
        """Subscribe a (re)connecting socket to its session's topics (read from the store
        unless given), still allowed ones only."""
        if topics is None:
            topics = await self.store.session_topics(conn.user_id, conn.session_id)
        refused = set(await self.policy.refused(conn.user_id, conn.claims, topics))
        allowed = [t for t in topics if t not in refused]
        if allowed:
            _mark_start(conn, await self.store.topic_last_seqs(allowed))
        await self.registry.join_topics(conn, allowed)
        return allowed

    async def replay(self, conn: Connection, topic: str, since: int) -> Replay:
        """Push the messages of ``topic`` after ``since`` that this socket has not had, in
        order, holding live ones back meanwhile; returns the replay's outcome (``recovered``,
        the topic's ``last_seq``; ``messages`` is left empty).

        Raises:
            TopicRefused: the user may not read ``topic``.
        """
        if not await self.policy.allowed(conn.user_id, conn.claims, topic):
            raise TopicRefused([topic])
        return await self._replay(conn, topic, since)

    async def _replay(self, conn: Connection, topic: str, since: int) -> Replay:
        conn.replaying[topic] = []
        recovered, last_seq, cursor = True, 0, since
        try:
            while True:
                await conn.wait_room(PAGE_SIZE)
                if conn.closed:
                    break
                page = await self.store.topic_messages(topic, cursor, PAGE_SIZE)
                recovered = recovered and page.recovered
                last_seq = page.last_seq
                for message in page.messages:
                    if conn.mark_topic(topic, message.seq) and (
                        message.origin_session_id != conn.session_id
                    ):
                        conn.push(orjson.dumps(message.to_frame()).decode())
                    cursor = message.seq
                if len(page.messages) < PAGE_SIZE:
                    break
        finally:
            held = conn.replaying.pop(topic, [])
            # The client had everything up to ``since`` (never beyond what exists).
            conn.skip_topic_until(topic, min(since, last_seq))
            for seq, text in sorted(held, key=lambda item: item[0]):
                conn.push_topic(topic, seq, text)
        if topic not in conn.topics:
            conn.forget_topic(topic)  # a replay of a topic not followed keeps no state
        return Replay([], recovered, last_seq)

    async def catch_up(self, conn: Connection) -> None:
        """After a bus outage: send what the socket's topics got meanwhile (since it joined
        them, or since the last message it had)."""
        starts = conn.topic_start or {}
        for topic in tuple(conn.topics):
            since = max(conn.topic_seq.get(topic, 0), starts.get(topic, 0))
            try:
                await self._replay(conn, topic, since)
            except TidingsError as exc:
                logger.warning("topic catch-up of %s failed: %s", topic, exc)

    async def topic_log(self, topic: str, since: int, limit: int = 500) -> Replay:
        """Stored messages of ``topic`` after ``since`` (for consumers with their own cursor)."""
        check_topic(topic)
        return await self.store.topic_messages(topic, since, limit)


def _mark_start(conn: Connection, starts: dict[str, int]) -> None:
    """Remember where ``conn`` joined each topic of ``starts`` (a later join keeps the first)."""
    if starts:
        if conn.topic_start is None:
            conn.topic_start = {}
        for topic, seq in starts.items():
            conn.topic_start.setdefault(topic, seq)
