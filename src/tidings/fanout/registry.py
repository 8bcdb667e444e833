"""The node-local registry: which devices of which users, and which sessions of which topics,
are connected here.

It also keeps the node subscribed to exactly the bus channels it needs: the first device of a
user subscribes ``user:<id>``, the first session of a topic ``topic:<name>``, and the last one to
leave unsubscribes, so the cost of an event does not grow with the number of nodes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable, Iterator

from tidings.bus.base import Bus
from tidings.errors import BusError
from tidings.fanout.broadcast import Broadcast, Text
from tidings.fanout.connection import Connection

logger = logging.getLogger("tidings.gateway")


def user_channel(user_id: str) -> str:
    return f"user:{user_id}"


def topic_channel(topic: str) -> str:
    return f"topic:{topic}"


class Registry:
    """Connections of this node, by user and by topic."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self._users: dict[str, set[Connection]] = {}
        self._topics: dict[str, set[Connection]] = {}
        # The last bus operation per channel: operations on one channel run in order.
        self._ops: dict[str, asyncio.Task[None]] = {}

    def __len__(self) -> int:
        return sum(len(conns) for conns in self._users.values())

    def __iter__(self) -> Iterator[Connection]:
        for conns in tuple(self._users.values()):
            yield from tuple(conns)

    @property
    def user_count(self) -> int:
        return len(self._users)

    @property
    def topic_count(self) -> int:
        return len(self._topics)

    def connections(self, user_id: str) -> set[Connection]:
        return self._users.get(user_id, set())

    def topic_connections(self, topic: str) -> set[Connection]:
        return self._topics.get(topic, set())

    async def add(self, conn: Connection) -> None:
        """Register ``conn``; returns once the node receives its user's events."""
        await self._join(self._users, conn.user_id, user_channel(conn.user_id), conn)

    def remove(self, conn: Connection) -> None:
        """Forget ``conn`` and its topics."""
        self._leave(self._users, conn.user_id, user_channel(conn.user_id), conn)
        self.leave_topics(conn, tuple(conn.topics))

    async def join_topics(self, conn: Connection, topics: Iterable[str]) -> None:
        """Deliver ``topics`` to ``conn``; returns once the node receives their messages."""
        joins = []
        for topic in topics:
            if topic not in conn.topics:
                conn.topics.add(topic)
                joins.append(self._join(self._topics, topic, topic_channel(topic), conn))
        await asyncio.gather(*joins)

    def leave_topics(self, conn: Connection, topics: Iterable[str]) -> None:
        for topic in topics:
            if topic in conn.topics:
                conn.topics.discard(topic)
                conn.forget_topic(topic)
                self._leave(self._topics, topic, topic_channel(topic), conn)

    async def _join(
        self, index: dict[str, set[Connection]], key: str, channel: str, conn: Connection
    ) -> None:
        members = index.get(key)
        if members is None:
            index[key] = {conn}
            self._chain(channel, self.bus.subscribe, self.bus.subscribe_now)
        else:
            members.add(conn)
        pending = self._ops.get(channel)
        if pending is not None:
            # Shielded: a device that disconnects meanwhile must not cancel the subscription
            # another connection is waiting for.
            with contextlib.suppress(BusError):
                await asyncio.shield(pending)

    def _leave(
        self, index: dict[str, set[Connection]], key: str, channel: str, conn: Connection
    ) -> None:
        members = index.get(key)
        if members is None or conn not in members:
            return
        members.discard(conn)
        if not members:
            del index[key]
            self._chain(channel, self.bus.unsubscribe, self.bus.unsubscribe_now)

    def _chain(
        self,
        channel: str,
        op: Callable[[str], Awaitable[None]],
        now: Callable[[str], bool],
    ) -> None:
        """Run ``op`` on ``channel`` after the channel's earlier operations; in place when
        none is pending and the bus can do it without waiting (the in-process bus), which
        spares a task per device connect."""
        previous = self._ops.get(channel)
        if previous is None and now(channel):
            return

        async def run() -> None:
            if previous is not None:
                await asyncio.wait([previous])
            try:
                await op(channel)
            except BusError as exc:
                # The bus restores its subscriptions when it comes back; local delivery goes on.
                logger.warning("bus %s of %s failed: %s", op.__name__, channel, exc)
                raise

        task = asyncio.create_task(run())
        self._ops[channel] = task

        def forget(done: asyncio.Task[None]) -> None:
            if self._ops.get(channel) is done:
                del self._ops[channel]
            if not done.cancelled():
                done.exception()  # retrieved: logged above

        task.add_done_callback(forget)

    def deliver_count(self, user_id: str, count: int, version: int, text: str) -> int:
        """Queue a count frame to every device of ``user_id`` here; returns how many. The
        text is encoded once for all of them (:class:`Broadcast`)."""
        conns = self._users.get(user_id)
        if not conns:
            return 0
        shared = _shared(text, len(conns))
        for conn in conns:
            conn.push_count(count, version, shared)
        return len(conns)

    def deliver_topic(
        self, topic: str, seq: int, text: str, *, skip_session: str | None = None
    ) -> int:
        """Queue message ``seq`` of ``topic`` to every socket here that follows it, except
        those of session ``skip_session`` (its publisher's); returns how many were offered it.
        The text is encoded once for all of them (:class:`Broadcast`)."""
        conns = self._topics.get(topic)
        if not conns:
            return 0
        shared = _shared(text, len(conns))
        offered = 0
        for conn in tuple(conns):
            if skip_session is None or conn.session_id != skip_session:
                conn.push_topic(topic, seq, shared)
                offered += 1
        return offered

    async def drain(self) -> None:
        """Wait for pending bus operations (used at shutdown and in tests)."""
        while self._ops:
            await asyncio.wait(list(self._ops.values()))


def _shared(text: str, sockets: int) -> Text:
    """``text`` as one :class:`Broadcast` when it goes to several sockets."""
    return Broadcast(text) if sockets > 1 else text
