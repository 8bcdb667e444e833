"""The :class:`TopicStore` facet of :class:`~tidings.storage.base.Store`."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from typing import Any

from tidings.core.models import Replay, TopicMessage


class TopicStore(ABC):
    """Topics and sessions: messages kept for replay, and the topics each session follows.

    Every method raises :class:`~tidings.errors.StoreUnavailable` when the database cannot be
    reached, having written nothing.
    """

    @abstractmethod
    async def append_topic_message(
        self, topic: str, data: Any, origin_session_id: str | None, ttl: float
    ) -> TopicMessage:
        """Store a message under the topic's next sequence number, kept ``ttl`` seconds."""

    @abstractmethod
    async def topic_messages(self, topic: str, since: int, limit: int) -> Replay:
        """Unexpired messages with ``seq > since`` in order, at most ``limit``; ``recovered``
        is false when messages after ``since`` were already deleted (the gap reaches past
        retention)."""

    async def topic_last_seqs(self, topics: Sequence[str]) -> dict[str, int]:
        """The last sequence number of each topic (0 for a topic without messages yet)."""
        return {t: (await self.topic_messages(t, 2**62, 1)).last_seq for t in topics}

    @abstractmethod
    async def expire(self, session_idle: float) -> int:
        """Delete expired topic messages, and session subscriptions idle for ``session_idle``
        seconds; returns how many messages were deleted."""

    @abstractmethod
    async def touch_sessions(self, sessions: Iterable[tuple[str, str]]) -> None:
        """Mark ``(user_id, session_id)`` pairs active (sessions with an open socket)."""

    @abstractmethod
    async def session_topics(self, user_id: str, session_id: str) -> list[str]:
        """The topics the session is subscribed to (marking the session active)."""

    @abstractmethod
    async def subscribe_session(
        self,
        user_id: str,
        session_id: str,
        topics: Sequence[str],
        max_sessions: int | None = None,
    ) -> None:
        """Add topics to the session's subscriptions. With ``max_sessions``, the user keeps
        the subscriptions of that many sessions at most: the least recently active others are
        dropped (a device that comes back under one subscribes again)."""

    @abstractmethod
    async def unsubscribe_session(
        self, user_id: str, session_id: str, topics: Sequence[str]
    ) -> None:
        """Remove topics from the session's subscriptions."""
