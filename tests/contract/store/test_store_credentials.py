"""The store contract of the credentials facet (storage/facets/credentials.py): service clients and
the node's keys. Every backend passes it (the ``store`` fixture of
:mod:`contract.store.backends` runs each test on each)."""

from __future__ import annotations

from contract.store.backends import store
from tidings.storage import Store

__all__ = ["store"]  # the fixture


async def test_clients_roundtrip(store: Store) -> None:
    """Clients are stored with their hash and scopes, listed and deleted."""
    await store.create_client("c1", "app", {"notify", "publish"}, "hash")
    client = await store.get_client("c1")
    assert client is not None and client.scopes == {"notify", "publish"}
    assert client.secret_hash == "hash"
    assert [c.client_id for c in await store.list_clients()] == ["c1"]
    assert await store.delete_client("c1")
    assert await store.get_client("c1") is None
    assert not await store.delete_client("c1")


async def test_keys_are_created_once(store: Store) -> None:
    """get_or_create_key keeps the first value."""
    first = await store.get_or_create_key("k", lambda: "one")
    second = await store.get_or_create_key("k", lambda: "two")
    assert first == second == "one"
