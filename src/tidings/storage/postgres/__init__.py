"""The PostgreSQL store: one package, one module per facet over one engine (``engine.py``)."""

from __future__ import annotations

from tidings.storage.postgres.cluster import PostgresCluster
from tidings.storage.postgres.credentials import PostgresCredentials
from tidings.storage.postgres.devices import PostgresDevices
from tidings.storage.postgres.engine import PostgresEngine
from tidings.storage.postgres.notifications import PostgresNotifications
from tidings.storage.postgres.push_tokens import PostgresPushTokens
from tidings.storage.postgres.retention import PostgresRetention
from tidings.storage.postgres.topics import PostgresTopics
from tidings.storage.postgres.users import PostgresUsers


class PostgresStore(
    PostgresNotifications,
    PostgresDevices,
    PostgresTopics,
    PostgresCluster,
    PostgresCredentials,
    PostgresPushTokens,
    PostgresRetention,
    PostgresUsers,
):
    """Store in PostgreSQL (version 12 or later)."""


__all__ = ["PostgresEngine", "PostgresStore"]
