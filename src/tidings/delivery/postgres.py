"""Kept for one release: the pipeline's tables in PostgreSQL are
:mod:`tidings.delivery.stores.postgres`."""

from tidings.delivery.stores.postgres import PostgresPipelineStore as PostgresPipelineStore
from tidings.delivery.stores.postgres.common import MESSAGE_COLUMNS as MESSAGE_COLUMNS
from tidings.delivery.stores.rows import DELIVERY_COLUMNS as DELIVERY_COLUMNS
from tidings.delivery.stores.rows import TEMPLATE_COLUMNS as TEMPLATE_COLUMNS
