"""The pipeline's tables on the node's store: the interface (``base.py``), the rows both
dialects share (``rows.py``), and one package per backend (``sqlite/``, ``postgres/``), each
one module per facet."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tidings.errors import ConfigurationError

if TYPE_CHECKING:
    from tidings.delivery.stores.base import PipelineStore
    from tidings.storage.base import Store


def for_store(store: Store) -> PipelineStore:
    """The pipeline's tables on ``store``, in its backend's dialect. A backend's modules are
    imported only for its own store (asyncpg is an extra).

    Raises:
        ConfigurationError: the pipeline has no tables for ``store``'s backend.
    """
    from tidings.storage.sqlite import SqliteStore

    if isinstance(store, SqliteStore):
        from tidings.delivery.stores.sqlite import SqlitePipelineStore

        return SqlitePipelineStore(store)
    from tidings.storage.postgres import PostgresStore

    if isinstance(store, PostgresStore):
        from tidings.delivery.stores.postgres import PostgresPipelineStore

        return PostgresPipelineStore(store)
    raise ConfigurationError(f"the pipeline has no tables for {type(store).__name__}")
