"""The pipeline's tables in SQLite, written through the :class:`SqliteStore`'s writer thread:
one module per facet of :class:`~tidings.delivery.stores.base.PipelineStore`.

One writer makes claims exclusive without row locks: a claim is one transaction on the only
writing connection, so two workers (tasks or processes sharing the file) never take the same
row — the second sees it leased.
"""

from __future__ import annotations

from tidings.delivery.stores.base import PipelineStore
from tidings.delivery.stores.sqlite.claims import SqliteClaims
from tidings.delivery.stores.sqlite.messages import SqliteMessages
from tidings.delivery.stores.sqlite.preferences import SqlitePreferences
from tidings.delivery.stores.sqlite.provider_events import SqliteProviderEvents
from tidings.delivery.stores.sqlite.status_events import SqliteStatusEvents
from tidings.delivery.stores.sqlite.templates import SqliteTemplates
from tidings.delivery.stores.sqlite.users import SqliteErasure


class SqlitePipelineStore(
    SqliteTemplates,
    SqlitePreferences,
    SqliteMessages,
    SqliteClaims,
    SqliteErasure,
    SqliteStatusEvents,
    SqliteProviderEvents,
    PipelineStore,
):
    """The pipeline's tables in the file of a :class:`~tidings.storage.sqlite.SqliteStore`."""


__all__ = ["SqlitePipelineStore"]
