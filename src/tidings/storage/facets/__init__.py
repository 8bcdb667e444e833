"""The facets of :class:`~tidings.storage.base.Store`, one abstract class per concern.

A new backend is written facet by facet, each against its contract suite; ``Store`` is all
of them plus the lifecycle and the operations that span facets (``attach``, ``open_socket``).
"""

from __future__ import annotations

from tidings.storage.facets.cluster import ClusterStore
from tidings.storage.facets.credentials import CredentialStore
from tidings.storage.facets.devices import DeviceStore
from tidings.storage.facets.notifications import NotificationStore
from tidings.storage.facets.push_tokens import PushTokenStore
from tidings.storage.facets.retention import RetentionStore
from tidings.storage.facets.topics import TopicStore
from tidings.storage.facets.users import UserStore

__all__ = [
    "ClusterStore",
    "CredentialStore",
    "DeviceStore",
    "NotificationStore",
    "PushTokenStore",
    "RetentionStore",
    "TopicStore",
    "UserStore",
]
