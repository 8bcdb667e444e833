"""The store contract of the cluster facet (storage/facets/cluster.py): node heartbeats and
reaping, the registry of open sockets. Every backend passes it (the ``store`` fixture of
:mod:`contract.store.backends` runs each test on each)."""

from __future__ import annotations

import asyncio

from contract.store.backends import presence, store
from tidings.core.models import Presence, utcnow
from tidings.storage import Store

__all__ = ["store"]  # the fixture


async def test_heartbeat_registers_then_refreshes(store: Store) -> None:
    """The first heartbeat creates the node (False); later ones refresh it (True)."""
    assert await store.heartbeat("n1", "http://a:1") is False
    assert await store.heartbeat("n1", "http://a:1") is True
    nodes = await store.list_nodes()
    assert [(n.node_id, n.uri) for n in nodes] == [("n1", "http://a:1")]


async def test_presence_by_user_and_node(store: Store) -> None:
    """Sockets are listed by user or by node; re-adding one is harmless; removal forgets it."""
    await store.add_presence([presence("s1", "alice", "n1"), presence("s2", "alice", "n2")])
    await store.add_presence([presence("s3", "bob", "n1"), presence("s1", "alice", "n1")])
    assert {p.socket_id for p in await store.presence(user_id="alice")} == {"s1", "s2"}
    assert {p.socket_id for p in await store.presence(node_id="n1")} == {"s1", "s3"}
    assert len(await store.presence()) == 3
    await store.remove_presence("s1")
    assert {p.socket_id for p in await store.presence(user_id="alice")} == {"s2"}


async def test_reaping_removes_silent_nodes_and_their_sockets(store: Store) -> None:
    """A node silent past the limit is reaped with its sockets; live nodes stay."""
    await store.heartbeat("dead", "u")
    await asyncio.sleep(0.3)
    await store.heartbeat("alive", "u")
    await store.add_presence([presence("s1", "alice", "dead"), presence("s2", "bob", "alive")])
    assert await store.reap_nodes(stale_after=0.2) == ["dead"]
    assert [n.node_id for n in await store.list_nodes()] == ["alive"]
    assert [p.socket_id for p in await store.presence()] == ["s2"]
    assert await store.heartbeat("dead", "u") is False  # it comes back as a new node


async def test_remove_node_forgets_its_sockets(store: Store) -> None:
    """A clean shutdown removes the node and its registry rows."""
    await store.heartbeat("n1", "u")
    await store.add_presence([presence("s1", "alice", "n1")])
    await store.remove_node("n1")
    assert await store.list_nodes() == [] and await store.presence() == []


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
