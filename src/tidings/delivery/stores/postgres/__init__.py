"""The pipeline's tables in PostgreSQL, on the :class:`PostgresStore`'s pool: one module per
facet of :class:`~tidings.delivery.stores.base.PipelineStore`.

Workers on many nodes claim with ``FOR UPDATE SKIP LOCKED`` (``claims.py``); messages to one
user serialise on a row lock per limited channel (``messages.py``).
"""

from __future__ import annotations

from tidings.delivery.stores.base import PipelineStore
from tidings.delivery.stores.postgres.claims import PostgresClaims
from tidings.delivery.stores.postgres.messages import PostgresMessages
from tidings.delivery.stores.postgres.preferences import PostgresPreferences
from tidings.delivery.stores.postgres.provider_events import PostgresProviderEvents
from tidings.delivery.stores.postgres.status_events import PostgresStatusEvents
from tidings.delivery.stores.postgres.templates import PostgresTemplates
from tidings.delivery.stores.postgres.users import PostgresErasure


class PostgresPipelineStore(
    PostgresTemplates,
    PostgresPreferences,
    PostgresMessages,
    PostgresClaims,
    PostgresErasure,
    PostgresStatusEvents,
    PostgresProviderEvents,
    PipelineStore,
):
    """The pipeline's tables in the database of a
    :class:`~tidings.storage.postgres.PostgresStore`."""


__all__ = ["PostgresPipelineStore"]
