"""Kept for one release: the pipeline store's interface is
:mod:`tidings.delivery.stores.base`."""

from tidings.delivery.stores.base import DELIVERIES_PAGE as DELIVERIES_PAGE
from tidings.delivery.stores.base import Backoff as Backoff
from tidings.delivery.stores.base import PipelineStore as PipelineStore
from tidings.delivery.stores.base import Planner as Planner
from tidings.delivery.stores.base import decode_content as decode_content
from tidings.delivery.stores.base import encode_json as encode_json
from tidings.delivery.stores.base import message_values as message_values
