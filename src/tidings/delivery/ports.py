"""What the delivery layer uses of the node above it, as Protocols (the node satisfies them).

The pipeline, its workers and the in-app channel are handed a :class:`PipelineHost`; a
channel builds itself from :class:`ChannelSettings` and :meth:`PipelineHost.store`. Nothing in
``tidings.delivery`` imports the node.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from tidings.auth.topics import TopicPolicy
from tidings.bus.base import Bus
from tidings.core.counters import Counters
from tidings.core.models import NotifyResult
from tidings.storage.base import Store


class ChannelSettings(Protocol):
    """The settings the built-in channels are configured from (``TIDINGS_*``)."""

    @property
    def provider_timeout(self) -> float: ...
    @property
    def allow_private_addresses(self) -> bool: ...
    @property
    def smtp_url(self) -> str | None: ...
    @property
    def email_from(self) -> str: ...
    @property
    def webhook_secret(self) -> str | None: ...
    @property
    def vapid_private_key(self) -> str | None: ...
    @property
    def vapid_subject(self) -> str: ...
    @property
    def sms_url(self) -> str | None: ...
    @property
    def sms_token(self) -> str | None: ...
    @property
    def sms_from(self) -> str | None: ...


class PipelineSettings(ChannelSettings, Protocol):
    """The settings the pipeline and its workers read."""

    @property
    def rate_limits(self) -> Mapping[str, str]: ...
    @property
    def workers(self) -> int: ...
    @property
    def worker_concurrency(self) -> int: ...
    @property
    def pipeline_lease(self) -> float: ...
    @property
    def pipeline_max_attempts(self) -> int: ...
    @property
    def pipeline_retry_base(self) -> float: ...
    @property
    def pipeline_retry_max(self) -> float: ...
    @property
    def pipeline_poll_interval(self) -> float: ...
    @property
    def max_recipients(self) -> int: ...
    @property
    def max_topic_recipients(self) -> int: ...


class PipelineHost(Protocol):
    """The node, as the pipeline, its workers and the in-app channel see it."""

    @property
    def settings(self) -> PipelineSettings: ...
    @property
    def store(self) -> Store: ...
    @property
    def bus(self) -> Bus: ...
    @property
    def node_id(self) -> str: ...
    @property
    def topic_policy(self) -> TopicPolicy: ...
    @property
    def counters(self) -> Counters:
        """Where the workers count sends (``counters.sends[(channel, outcome)]``)."""
        ...

    async def notify(
        self, user_id: str, data: Any, *, notification_id: str | None = None
    ) -> NotifyResult:
        """Persist a notification and push the new count to the user's devices."""
        ...
