"""Who may subscribe to which topic.

The default policy, in order:

1. ``user:<id>`` topics are private: only user ``<id>`` may subscribe.
2. A device JWT may list topics or patterns in a claim (``topics`` by default); those are
   allowed.
3. If the operator configured public patterns (``TIDINGS_TOPIC_PATTERNS``), other topics must
   match one of them; without any, every other topic is open to every authenticated user.

An application can replace all of it with its own hook (``Tidings(topic_policy=...)``), a
function of the device's user, claims and the topic that returns (or awaits) a bool.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Iterable, Sequence
from fnmatch import fnmatchcase
from typing import Any

from tidings.core.limits import MAX_TOPIC_LENGTH
from tidings.errors import InvalidArgument

#: ``hook(user_id, claims, topic)`` → allowed?
TopicHook = Callable[[str, dict[str, Any], str], bool | Awaitable[bool]]


def check_topic(topic: object) -> str:
    """A valid topic name, or InvalidArgument."""
    if (
        not isinstance(topic, str)
        or not 0 < len(topic) <= MAX_TOPIC_LENGTH
        or any(ord(c) < 32 for c in topic)
    ):
        raise InvalidArgument(
            f"a topic is 1 to {MAX_TOPIC_LENGTH} characters without control characters"
        )
    return topic


class TopicPolicy:
    """Decides whether a user may subscribe to (and replay) a topic."""

    def __init__(
        self,
        *,
        public_patterns: Sequence[str] | None = None,
        claim: str = "topics",
        hook: TopicHook | None = None,
    ) -> None:
        self.public_patterns = list(public_patterns) if public_patterns else None
        self.claim = claim
        self.hook = hook

    async def allowed(self, user_id: str, claims: dict[str, Any], topic: str) -> bool:
        if self.hook is not None:
            verdict = self.hook(user_id, claims, topic)
            if inspect.isawaitable(verdict):
                verdict = await verdict
            return bool(verdict)
        if topic.startswith("user:"):
            return topic == f"user:{user_id}"
        granted = claims.get(self.claim)
        if isinstance(granted, str):
            granted = granted.split()
        if isinstance(granted, list) and _matches(topic, granted):
            return True
        if self.public_patterns is None:
            return True
        return _matches(topic, self.public_patterns)

    async def refused(
        self, user_id: str, claims: dict[str, Any], topics: Iterable[str]
    ) -> list[str]:
        """The topics of ``topics`` this user may not subscribe to."""
        return [t for t in topics if not await self.allowed(user_id, claims, t)]


def _matches(topic: str, patterns: Iterable[object]) -> bool:
    return any(isinstance(p, str) and fnmatchcase(topic, p) for p in patterns)
