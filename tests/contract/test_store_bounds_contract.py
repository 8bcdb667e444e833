"""The Store contract for what bounds a user's stored state and a socket's topic catch-up;
every backend passes the same tests (the fixture of test_store_contract.py)."""

from __future__ import annotations

import asyncio

from contract.test_store_contract import store
from tidings.core.models import Presence, utcnow
from tidings.storage import Store

__all__ = ["store"]  # the fixture


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


async def test_remove_node_drops_its_sockets_only(store: Store) -> None:
    """A node that starts again under its id clears its previous life's sockets; another
    node's stay."""
    now = utcnow()
    await store.heartbeat("n1", "http://n1")
    await store.heartbeat("n2", "http://n2")
    await store.add_presence(
        [
            Presence("sock-1", "c1", "u1", "c1", "n1", now),
            Presence("sock-2", "c2", "u1", "c2", "n2", now),
        ]
    )
    await store.remove_node("n1")
    sockets = await store.presence(user_id="u1")
    assert [p.socket_id for p in sockets] == ["sock-2"]
