"""The default topic policy and application hooks."""

from __future__ import annotations

import pytest

from tidings.auth.topics import TopicPolicy, check_topic
from tidings.errors import InvalidArgument


async def test_user_topics_are_private() -> None:
    """user:<id> topics belong to that user only, whatever the other rules."""
    policy = TopicPolicy()
    assert await policy.allowed("alice", {}, "user:alice")
    assert not await policy.allowed("bob", {}, "user:alice")
    assert not await policy.allowed("bob", {"topics": ["user:*"]}, "user:alice")


async def test_everything_else_is_open_without_patterns() -> None:
    """Without configured patterns any authenticated user may subscribe to other topics."""
    assert await TopicPolicy().allowed("alice", {}, "pet")


async def test_patterns_narrow_and_claims_grant() -> None:
    """Public patterns restrict topics; a JWT claim adds topics or patterns for that user."""
    policy = TopicPolicy(public_patterns=["news:*", "pet"])
    assert await policy.allowed("alice", {}, "news:today")
    assert not await policy.allowed("alice", {}, "owner")
    assert await policy.allowed("alice", {"topics": ["owner", "team:7:*"]}, "team:7:chat")
    assert await policy.allowed("alice", {"topics": "owner extra"}, "owner")
    assert not await policy.allowed("alice", {"topics": [1, None]}, "owner")
    refused = await policy.refused("alice", {}, ["pet", "owner", "x"])
    assert refused == ["owner", "x"]


async def test_application_hook_decides_sync_or_async() -> None:
    """A hook replaces the default rules; it may be a coroutine function."""

    def only_even(user_id: str, claims: dict, topic: str) -> bool:
        return topic.endswith(("0", "2"))

    async def by_claim(user_id: str, claims: dict, topic: str) -> bool:
        return topic in claims.get("rooms", [])

    assert await TopicPolicy(hook=only_even).allowed("a", {}, "room2")
    assert not await TopicPolicy(hook=only_even).allowed("a", {}, "room1")
    assert await TopicPolicy(hook=by_claim).allowed("a", {"rooms": ["r"]}, "r")
    assert not await TopicPolicy(hook=by_claim).allowed("a", {}, "user:a")


@pytest.mark.parametrize("bad", ["", "x" * 201, "a\nb", "tab\there", 7, None])
def test_bad_topic_names(bad: object) -> None:
    """Empty, overlong, control characters and non-strings are refused."""
    with pytest.raises(InvalidArgument):
        check_topic(bad)
