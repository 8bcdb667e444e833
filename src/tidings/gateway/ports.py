"""What the gateway uses of the node, and nothing more.

The node sits above the gateway: it hands itself to :class:`~tidings.gateway.asgi.Gateway`,
which sees it only through :class:`GatewayNode` (and the node's settings only through
:class:`GatewaySettings`). A method or attribute the gateway starts to use is added here first.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Protocol

from tidings.auth.base import Principal
from tidings.core.counters import Counters
from tidings.core.models import (
    AckResult,
    MarkSeenResult,
    Notification,
    Opened,
    QueueGap,
    Replay,
    StateChange,
)
from tidings.fanout.connection import Connection


class GatewaySettings(Protocol):
    """The settings (``TIDINGS_*``) the gateway reads."""

    # Admission
    @property
    def max_connections(self) -> int: ...
    @property
    def max_connects_per_second(self) -> float: ...
    @property
    def max_connections_per_user(self) -> int | None: ...
    @property
    def allowed_origins(self) -> Sequence[str] | None: ...

    # Handshake and authentication
    @property
    def auth_timeout(self) -> float: ...
    @property
    def cookie_secure(self) -> bool | None: ...
    @property
    def cookie_samesite(self) -> str: ...
    @property
    def cookie_max_age(self) -> int: ...

    # Limits of a session
    @property
    def max_frame_size(self) -> int: ...
    @property
    def max_frames_per_second(self) -> float: ...
    @property
    def max_unseen_page(self) -> int: ...
    @property
    def max_unseen_bytes(self) -> int: ...
    @property
    def outbound_queue_size(self) -> int: ...


class Authenticator(Protocol):
    """Verifies a device's token."""

    async def authenticate(self, token: str) -> Principal: ...


class Delegate(Protocol):
    """The application that authenticates devices by their request (delegated mode)."""

    async def authenticate_request(
        self, headers: Mapping[str, str]
    ) -> tuple[Principal, str | None]: ...


class SocketRegistry(Protocol):
    """The node-local registry of open sockets."""

    async def add(self, conn: Connection) -> None: ...
    def remove(self, conn: Connection) -> None: ...


class SocketStore(Protocol):
    """The one store call of a socket's opening."""

    async def open_socket(
        self,
        user_id: str,
        connection_id: str | None,
        *,
        socket_id: str,
        session_id: str | None,
        node_id: str,
        connected_since: datetime,
        max_sockets: int | None = None,
        queue: int = 0,
    ) -> Opened: ...


class GatewayNode(Protocol):
    """The node as the gateway sees it."""

    @property
    def node_id(self) -> str: ...
    @property
    def settings(self) -> GatewaySettings: ...
    @property
    def counters(self) -> Counters: ...
    @property
    def started(self) -> bool: ...
    @property
    def draining(self) -> bool: ...
    @property
    def authenticator(self) -> Authenticator: ...
    @property
    def delegate(self) -> Delegate | None: ...
    @property
    def registry(self) -> SocketRegistry: ...
    @property
    def store(self) -> SocketStore: ...

    # Lifecycle (the gateway served on its own starts and closes the node)
    async def start(self) -> None: ...
    async def close(self) -> None: ...

    # A socket's life
    async def reactivate_session(
        self, conn: Connection, topics: Sequence[str] | None = None
    ) -> list[str]: ...
    @property
    def queue_page_on_open(self) -> int: ...
    async def open_queue(
        self, conn: Connection, first: Sequence[Notification] | None = None, version: int = -1
    ) -> QueueGap | None: ...
    async def forget_presence(self, conn: Connection) -> None: ...

    # Frames
    async def unseen(self, user_id: str, limit: int = ...) -> list[Notification]: ...
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
    async def ack(
        self, user_id: str, connection_id: str, notification_ids: Sequence[str]
    ) -> AckResult: ...
    async def subscribe_topics(self, conn: Connection, topics: Sequence[str]) -> list[str]: ...
    async def unsubscribe_topics(self, conn: Connection, topics: Sequence[str]) -> list[str]: ...
    async def replay(self, conn: Connection, topic: str, since: int) -> Replay: ...
    async def forget_device(
        self, user_id: str, connection_id: str, *, before_close: str | None = None
    ) -> bool: ...
