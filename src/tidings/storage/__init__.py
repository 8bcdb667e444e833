"""Storage backends, chosen by URL scheme."""

from __future__ import annotations

from tidings.core.backends import load_backend
from tidings.storage.base import Store

#: URL scheme → ``"module:Class"``; modules are imported only when used.
BACKENDS: dict[str, str] = {
    "sqlite": "tidings.storage.sqlite:SqliteStore",
    "postgres": "tidings.storage.postgres:PostgresStore",
    "postgresql": "tidings.storage.postgres:PostgresStore",
}


def create_store(url: str) -> Store:
    """Instantiate the store for ``url`` (not started)."""
    cls: type[Store] = load_backend("store", BACKENDS, url)
    return cls(url)


__all__ = ["BACKENDS", "Store", "create_store"]
