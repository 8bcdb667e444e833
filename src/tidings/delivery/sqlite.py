"""Kept for one release: the pipeline's tables in SQLite are
:mod:`tidings.delivery.stores.sqlite`."""

from tidings.delivery.stores.rows import DELIVERY_COLUMNS as DELIVERY_COLUMNS
from tidings.delivery.stores.rows import MESSAGE_COLUMNS as MESSAGE_COLUMNS
from tidings.delivery.stores.sqlite import SqlitePipelineStore as SqlitePipelineStore
