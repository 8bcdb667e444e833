"""What the HTTP API uses of the node, and nothing more.

The node sits above the API: it hands itself to :func:`~tidings.api.app.create_api` (and to
:func:`~tidings.api.fast.fast_post`), which see it only through :class:`ApiNode`. A method or
attribute a route starts to use is added here first.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from tidings.auth.base import Principal, ServicePrincipal
from tidings.auth.oauth import IssuedToken
from tidings.core.counters import Counters
from tidings.core.models import (
    Device,
    MarkSeenResult,
    NewNotification,
    NodeInfo,
    Notification,
    NotifyResult,
    Presence,
    PushToken,
    Replay,
    StateChange,
    TopicMessage,
    UnseenCount,
)
from tidings.delivery.pipeline import Pipeline
from tidings.errors import TidingsError


class ApiSettings(Protocol):
    """The settings (``TIDINGS_*``) the routes read."""

    @property
    def metrics_token(self) -> str | None: ...
    @property
    def max_recipients(self) -> int: ...
    @property
    def demo(self) -> bool: ...
    @property
    def allowed_origins(self) -> Sequence[str] | None: ...


class ServiceAuth(Protocol):
    """Service tokens: issued for client credentials, checked for a scope."""

    async def issue(
        self, client_id: str, client_secret: str, requested: str | None = None
    ) -> IssuedToken: ...
    async def require(self, token: str, scope: str) -> ServicePrincipal: ...


class DeviceAuth(Protocol):
    """Verifies a device's token (the ``/me/…`` routes)."""

    async def authenticate(self, token: str) -> Principal: ...


class ApiStore(Protocol):
    """The store calls of the probes and the admin console."""

    async def ping(self) -> None: ...
    async def presence(
        self, *, user_id: str | None = None, node_id: str | None = None
    ) -> list[Presence]: ...
    async def queue_depths(self, devices: Sequence[tuple[str, str]]) -> dict[str, int]: ...
    async def devices_of(self, user_id: str, limit: int = 100) -> list[Device]: ...
    async def list_nodes(self) -> list[NodeInfo]: ...
    async def recent_notifications(self, limit: int) -> list[Notification]: ...
    async def register_push_token(
        self, user_id: str, platform: str, token: str, app_id: str | None, *, max_per_user: int
    ) -> tuple[PushToken, bool]: ...
    async def push_tokens(self, user_id: str, platform: str | None = None) -> list[PushToken]: ...
    async def delete_push_token(self, user_id: str, token_id: str) -> bool: ...


class Sockets(Protocol):
    """The node-local registry, as the probes count it."""

    def __len__(self) -> int: ...
    @property
    def user_count(self) -> int: ...


class MetricsText(Protocol):
    """The node's Prometheus exposition (``GET /metrics``)."""

    async def render(self) -> bytes: ...


class ApiNode(Protocol):
    """The node as the HTTP API sees it."""

    @property
    def node_id(self) -> str: ...
    @property
    def settings(self) -> ApiSettings: ...
    @property
    def counters(self) -> Counters: ...
    @property
    def metrics(self) -> MetricsText: ...
    @property
    def ready(self) -> bool: ...
    @property
    def store(self) -> ApiStore: ...
    @property
    def registry(self) -> Sockets: ...
    @property
    def service_auth(self) -> ServiceAuth: ...
    @property
    def authenticator(self) -> DeviceAuth: ...
    @property
    def pipeline(self) -> Pipeline: ...

    # Lifecycle (``create_api(manage_lifespan=True)`` starts and closes the node)
    async def start(self) -> None: ...
    async def close(self) -> None: ...

    # Notifications and topics
    async def notify(
        self,
        user_id: str,
        data: Any,
        *,
        notification_id: str | None = None,
        category: str | None = None,
    ) -> NotifyResult: ...
    async def notify_many(
        self, items: Sequence[NewNotification]
    ) -> list[NotifyResult | TidingsError]: ...
    async def publish(
        self, topic: str, data: Any, *, origin_session_id: str | None = None
    ) -> TopicMessage: ...
    async def topic_log(self, topic: str, since: int, limit: int = 500) -> Replay: ...
    async def notification_log(
        self, after: str = "", limit: int = 500
    ) -> tuple[list[Notification], str]: ...
    async def forget_device(
        self, user_id: str, connection_id: str, *, before_close: str | None = None
    ) -> bool: ...
    async def erase_user(self, user_id: str) -> dict[str, int]: ...
    async def count(self, user_id: str) -> UnseenCount: ...
    async def mark_seen(self, user_id: str, notification_ids: Sequence[str]) -> MarkSeenResult: ...
    async def mark_all_seen(self, user_id: str) -> MarkSeenResult: ...
    async def change_state(
        self, user_id: str, change: StateChange, ids: Sequence[str] | None
    ) -> MarkSeenResult: ...
    async def notifications(
        self,
        user_id: str,
        *,
        state: str = "all",
        category: str | None = None,
        cursor: str | None = None,
        limit: int = 50,
    ) -> tuple[list[Notification], str | None]: ...
