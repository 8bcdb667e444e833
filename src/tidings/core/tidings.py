"""The :class:`Tidings` facade: everything an application or the server calls."""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

import orjson

from tidings.auth.base import DeviceAuthenticator
from tidings.auth.jwt import MAX_USER_ID_LENGTH, JwtAuthenticator
from tidings.auth.oauth import ServiceAuth
from tidings.bus import Bus, create_bus
from tidings.config import Settings
from tidings.core import events
from tidings.core.models import MarkSeenResult, Notification, NotifyResult, UnseenCount
from tidings.errors import BusError, InvalidArgument, PayloadTooLarge, TidingsError
from tidings.gateway import protocol
from tidings.gateway.registry import Registry, user_channel
from tidings.storage import Store, create_store

if TYPE_CHECKING:
    from tidings.gateway.asgi import Gateway

logger = logging.getLogger("tidings")

DEVICE_KEY = "device_jwt_secret"
SERVICE_KEY = "service_token_key"


def _random_key() -> str:
    return secrets.token_urlsafe(48)


class Tidings:
    """A tidings node: store, bus, connected devices, and the operations on them.

    Use it as an async context manager (or call :meth:`start` and :meth:`close`)::

        async with Tidings(store="sqlite:///app.db") as tidings:
            await tidings.notify("alice", {"text": "Your order shipped"})

    ``store`` and ``bus`` take a URL or a backend instance. Settings not passed come from
    ``TIDINGS_*`` environment variables, then defaults.
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        store: Store | str | None = None,
        bus: Bus | str | None = None,
        authenticator: DeviceAuthenticator | None = None,
        **overrides: Any,
    ) -> None:
        # A URL selects a backend like the setting does; an instance is used as it is.
        if isinstance(store, str):
            overrides["store"], store = store, None
        if isinstance(bus, str):
            overrides["bus"], bus = bus, None
        if settings is None:
            settings = Settings(**overrides)
        elif overrides:
            settings = settings.model_copy(update=overrides)
        self.settings = settings
        self.node_id = settings.node_id
        self.store = store if store is not None else create_store(settings.store)
        self.bus = bus if bus is not None else create_bus(settings.bus)
        self.registry = Registry(self.bus)
        self._authenticator = authenticator
        self._service_auth: ServiceAuth | None = None
        self._gateway: Gateway | None = None
        self._started = False
        self._tasks: set[asyncio.Task[Any]] = set()

    # Lifecycle

    async def start(self) -> None:
        """Open the store (applying migrations), connect the bus, load keys."""
        if self._started:
            return
        await self.store.start()
        try:
            self.bus.on_message = self._on_bus_message
            self.bus.on_reconnect = self._on_bus_reconnect
            await self.bus.start()
            if self._authenticator is None:
                secret = self.settings.jwt_secret or await self.store.get_or_create_key(
                    DEVICE_KEY, _random_key
                )
                self._authenticator = JwtAuthenticator(
                    secret,
                    audience=self.settings.jwt_audience,
                    issuer=self.settings.jwt_issuer,
                    leeway=self.settings.jwt_leeway,
                )
            key = await self.store.get_or_create_key(SERVICE_KEY, _random_key)
            self._service_auth = ServiceAuth(self.store, key, ttl=self.settings.service_token_ttl)
        except BaseException:
            await self.bus.close()
            await self.store.close()
            raise
        self._started = True
        logger.info("tidings node %s started (store %s)", self.node_id, self.settings.store)

    async def close(self) -> None:
        """Close every device connection (1001, going away), then the bus and the store."""
        if not self._started:
            return
        self._started = False
        for conn in self.registry:
            conn.close(protocol.CLOSE_GOING_AWAY, "server shutting down")
        if self._gateway is not None:
            await self._gateway.wait_closed(timeout=5.0)
        await self.registry.drain()
        for task in tuple(self._tasks):
            task.cancel()
        await self.bus.close()
        await self.store.close()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def started(self) -> bool:
        return self._started

    @property
    def authenticator(self) -> DeviceAuthenticator:
        if self._authenticator is None:
            raise TidingsError("Tidings is not started")
        return self._authenticator

    @property
    def service_auth(self) -> ServiceAuth:
        if self._service_auth is None:
            raise TidingsError("Tidings is not started")
        return self._service_auth

    @property
    def gateway(self) -> Gateway:
        """The raw-ASGI WebSocket endpoint for devices."""
        if self._gateway is None:
            from tidings.gateway.asgi import Gateway

            self._gateway = Gateway(self)
        return self._gateway

    # Notifications

    async def notify(
        self, user_id: str, data: Any, *, notification_id: str | None = None
    ) -> NotifyResult:
        """Persist a notification for ``user_id`` and push the new count to every device.

        Returns once the notification is committed. Calling again with the same
        ``notification_id`` returns the existing notification (``created=False``).

        Raises:
            InvalidArgument: bad ``user_id`` or ``notification_id``, or ``data`` not JSON.
            PayloadTooLarge: ``data`` is over ``max_notification_size``.
            Conflict: ``notification_id`` is taken by a different notification.
            StoreUnavailable: the database is unreachable; nothing was written.
        """
        _check_identifier("user_id", user_id, MAX_USER_ID_LENGTH)
        if notification_id is not None:
            _check_identifier("notification_id", notification_id, protocol.MAX_ID_LENGTH)
        try:
            size = len(orjson.dumps(data))
        except TypeError as exc:
            raise InvalidArgument(f"data is not JSON-serialisable: {exc}") from None
        if size > self.settings.max_notification_size:
            raise PayloadTooLarge(
                f"data is {size} bytes of JSON; the limit is {self.settings.max_notification_size}"
            )
        result = await self.store.create_notification(user_id, data, notification_id)
        if result.count is not None:
            await self._publish_count(result.count)
        return result

    async def unseen(
        self, user_id: str, limit: int = protocol.DEFAULT_UNSEEN_LIMIT
    ) -> list[Notification]:
        """The user's oldest unseen notifications, in creation order (they stay unseen)."""
        if not 0 < limit <= self.settings.max_unseen_page:
            raise InvalidArgument(f"limit must be from 1 to {self.settings.max_unseen_page}")
        return await self.store.unseen(user_id, limit)

    async def mark_seen(self, user_id: str, notification_ids: Sequence[str]) -> MarkSeenResult:
        """Mark notifications of ``user_id`` seen; every device of the user gets the new count.

        Raises:
            NotFound: an id is unknown or another user's; nothing was changed.
        """
        result = await self.store.mark_seen(user_id, notification_ids)
        if result.count is not None:
            await self._publish_count(result.count)
        return result

    async def count(self, user_id: str) -> UnseenCount:
        """The user's unseen count and its version."""
        return await self.store.count(user_id)

    # Events between nodes

    async def _publish_count(self, count: UnseenCount) -> None:
        payload = events.encode_count(count, self.node_id)
        try:
            await self.bus.publish(user_channel(count.user_id), payload)
        except BusError as exc:
            # Committed already: reach this node's devices at least; the others re-read the
            # count when their bus comes back.
            logger.warning("count event for %s not published: %s", count.user_id, exc)
            self._deliver_count(count)

    def _on_bus_message(self, channel: str, payload: bytes) -> None:
        event = events.decode(payload)
        if event is None:
            logger.warning("ignoring undecodable bus message on %s", channel)
            return
        if event["type"] == events.COUNT_CHANGED:
            count = events.decode_count(event)
            if count is not None:
                self._deliver_count(count)

    def _deliver_count(self, count: UnseenCount) -> None:
        text = protocol.count_changed(count.count, count.version)
        self.registry.deliver_count(count.user_id, count.count, count.version, text)

    def _on_bus_reconnect(self) -> None:
        task = asyncio.create_task(self.resync_counts())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def resync_counts(self) -> None:
        """Re-read and push the count of every user with a device here (after a bus outage)."""
        for user_id in [u for u in {c.user_id for c in self.registry}]:
            try:
                self._deliver_count(await self.store.count(user_id))
            except TidingsError as exc:
                logger.warning("count resync for %s failed: %s", user_id, exc)


def _check_identifier(name: str, value: object, max_length: int) -> None:
    if not isinstance(value, str) or not 0 < len(value) <= max_length:
        raise InvalidArgument(f"{name} must be a string of 1 to {max_length} characters")
