"""The store contract of the topics facet (storage/facets/topics.py): topic messages with their
sequence numbers, replay and retention, session subscriptions and their bound per user. Every
backend passes it (the ``store`` fixture of :mod:`contract.store.backends` runs each test on
each)."""

from __future__ import annotations

import asyncio

from contract.store.backends import store
from tidings.storage import Store

__all__ = ["store"]  # the fixture


async def test_topic_sequence_and_replay(store: Store) -> None:
    """Each topic numbers its messages; a replay after seq N returns the rest in order."""
    for i in range(5):
        message = await store.append_topic_message("pet", {"i": i}, "s1", ttl=60)
        assert message.seq == i + 1
    await store.append_topic_message("owner", "x", None, ttl=60)
    replay = await store.topic_messages("pet", since=2, limit=100)
    assert [m.data["i"] for m in replay.messages] == [2, 3, 4]
    assert replay.recovered and replay.last_seq == 5
    assert replay.messages[0].origin_session_id == "s1"
    assert (await store.topic_messages("pet", since=5, limit=100)).recovered
    nothing = await store.topic_messages("never", since=0, limit=10)
    assert nothing.messages == [] and nothing.recovered


async def test_replay_past_retention_is_not_recovered(store: Store) -> None:
    """When the messages after ``since`` expired, the replay says so."""
    await store.append_topic_message("pet", 1, None, ttl=0.1)
    await store.append_topic_message("pet", 2, None, ttl=0.1)
    await asyncio.sleep(0.3)
    await store.append_topic_message("pet", 3, None, ttl=60)
    replay = await store.topic_messages("pet", since=0, limit=10)
    assert [m.data for m in replay.messages] == [3] and not replay.recovered
    assert (await store.topic_messages("pet", since=2, limit=10)).recovered
    assert await store.expire(session_idle=3600) == 2
    replay = await store.topic_messages("pet", since=1, limit=10)
    assert not replay.recovered and [m.seq for m in replay.messages] == [3]


async def test_session_subscriptions_are_per_user_and_session(store: Store) -> None:
    """Subscriptions are kept per (user, session) and can be removed."""
    await store.subscribe_session("alice", "tab", ["pet", "owner"])
    await store.subscribe_session("alice", "tab", ["pet"])
    await store.subscribe_session("bob", "tab", ["zoo"])
    assert await store.session_topics("alice", "tab") == ["owner", "pet"]
    await store.unsubscribe_session("alice", "tab", ["owner", "never"])
    assert await store.session_topics("alice", "tab") == ["pet"]
    assert await store.session_topics("bob", "tab") == ["zoo"]
    assert await store.session_topics("alice", "other") == []


async def test_topic_last_seqs_names_every_topic_asked(store: Store) -> None:
    """Each topic's last sequence number, 0 for a topic without messages; duplicates are
    answered once."""
    for n in range(3):
        await store.append_topic_message("pet", {"n": n}, None, 3600)
    await store.append_topic_message("news", {"n": 0}, None, 3600)
    assert await store.topic_last_seqs(["pet", "news", "empty", "pet"]) == {
        "pet": 3,
        "news": 1,
        "empty": 0,
    }
    assert await store.topic_last_seqs([]) == {}


async def test_topic_last_seqs_reads_many_topics(store: Store) -> None:
    """More topics than one SQL statement's parameters (SQLite's 999 of old) are answered."""
    topics = [f"t{i}" for i in range(1200)]
    await store.append_topic_message("t1100", {}, None, 3600)
    seqs = await store.topic_last_seqs(topics)
    assert len(seqs) == 1200 and seqs["t1100"] == 1 and seqs["t0"] == 0


async def test_a_user_keeps_the_subscriptions_of_max_sessions_sessions(store: Store) -> None:
    """With ``max_sessions``, subscribing a new session drops the least recently active
    sessions beyond the limit, never the one subscribing, never another user's."""
    await store.subscribe_session("bob", "keep", ["zoo"], 2)
    for i in range(5):
        await store.subscribe_session("alice", f"s{i}", ["pet", "news"], 3)
        await asyncio.sleep(0.002)  # distinct activity times
    kept = [s for s in (f"s{i}" for i in range(5)) if await store.session_topics("alice", s)]
    assert kept == ["s2", "s3", "s4"]
    # s2 was active again (session_topics marks it): s3 is now the least recent.
    await asyncio.sleep(0.002)
    await store.session_topics("alice", "s2")
    await asyncio.sleep(0.002)
    await store.subscribe_session("alice", "s5", ["pet"], 3)
    kept = [s for s in (f"s{i}" for i in range(6)) if await store.session_topics("alice", s)]
    assert kept == ["s2", "s4", "s5"]
    assert await store.session_topics("bob", "keep") == ["zoo"]


async def test_without_max_sessions_nothing_is_dropped(store: Store) -> None:
    """Without a limit every session keeps its subscriptions (the TTL still applies)."""
    for i in range(4):
        await store.subscribe_session("carol", f"s{i}", ["pet"])
    for i in range(4):
        assert await store.session_topics("carol", f"s{i}") == ["pet"]


async def test_touched_sessions_outlive_idle_ones(store: Store) -> None:
    """``touch_sessions`` marks sessions active: ``expire`` then drops the subscriptions of the
    sessions idle for longer than ``session_idle`` only, another user's same-named session
    included in neither. Setup and checks through this facet only."""
    await store.subscribe_session("alice", "open", ["pet"])
    await store.subscribe_session("alice", "closed", ["pet"])
    await store.subscribe_session("bob", "open", ["zoo"])
    await asyncio.sleep(0.3)
    await store.touch_sessions([("alice", "open")])
    await store.touch_sessions([])  # nothing to mark: harmless
    await store.expire(session_idle=0.2)
    assert await store.session_topics("alice", "open") == ["pet"]
    assert await store.session_topics("alice", "closed") == []
    assert await store.session_topics("bob", "open") == []
