"""The SQLite store: one package, one module per facet over one engine (``engine.py``)."""

from __future__ import annotations

from tidings.storage.sqlite.cluster import SqliteCluster
from tidings.storage.sqlite.credentials import SqliteCredentials
from tidings.storage.sqlite.devices import SqliteDevices
from tidings.storage.sqlite.engine import SqliteEngine
from tidings.storage.sqlite.notifications import SqliteNotifications
from tidings.storage.sqlite.push_tokens import SqlitePushTokens
from tidings.storage.sqlite.retention import SqliteRetention
from tidings.storage.sqlite.topics import SqliteTopics
from tidings.storage.sqlite.users import SqliteUsers


class SqliteStore(
    SqliteNotifications,
    SqliteDevices,
    SqliteTopics,
    SqliteCluster,
    SqliteCredentials,
    SqlitePushTokens,
    SqliteRetention,
    SqliteUsers,
):
    """Store in one SQLite file (``sqlite:///path.db``; ``sqlite:///:memory:`` for tests)."""


__all__ = ["SqliteEngine", "SqliteStore"]
