"""The :class:`Tidings` node: the composition root that wires store, bus, registry, services,
authentication, gateway and pipeline, and the facade an application or the server calls."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Coroutine, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from tidings.auth.base import DeviceAuthenticator, Principal
from tidings.auth.delegated import DelegatedAuthenticator
from tidings.auth.oauth import ServiceAuth
from tidings.auth.topics import TopicHook, TopicPolicy
from tidings.bus import Bus, create_bus
from tidings.config import Settings
from tidings.core.counters import Counters
from tidings.core.lifecycle import Lifecycle
from tidings.core.limits import DEFAULT_UNSEEN_LIMIT, MAX_ID_LENGTH, MAX_USER_ID_LENGTH
from tidings.core.models import (
    AckResult,
    MarkSeenResult,
    NewNotification,
    Notification,
    NotifyResult,
    QueueGap,
    Replay,
    TopicMessage,
    UnseenCount,
)
from tidings.errors import InvalidArgument, TidingsError
from tidings.fanout import codec
from tidings.fanout.connection import Connection
from tidings.fanout.registry import Registry
from tidings.gateway.sse import Streams
from tidings.logs import safe_url
from tidings.node.auth import DEVICE_KEY, SERVICE_KEY, Credentials
from tidings.node.inbox import Inbox
from tidings.node.metrics import Metrics
from tidings.node.sse import SseDoor
from tidings.node.wiring import wire
from tidings.services.checks import check_identifier
from tidings.services.history import History
from tidings.storage import Store, create_store

if TYPE_CHECKING:
    from tidings.delivery.channels.base import Channel
    from tidings.delivery.pipeline import Pipeline
    from tidings.gateway.asgi import Gateway

__all__ = ["DEVICE_KEY", "SERVICE_KEY", "Tidings"]

logger = logging.getLogger("tidings")


class Tidings(Inbox, SseDoor, Lifecycle):
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
        topic_policy: TopicPolicy | TopicHook | None = None,
        channels: Sequence[Channel] | None = None,
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
        if not isinstance(topic_policy, TopicPolicy):
            topic_policy = TopicPolicy(
                public_patterns=settings.topic_patterns,
                claim=settings.topic_claim,
                hook=topic_policy,
            )
        #: what this node counts, read by its metrics
        self.counters = Counters()
        self.metrics = Metrics(self, self.counters)
        self._credentials = Credentials(settings, authenticator)
        self._gateway: Gateway | None = None
        self._started = False
        self._tasks: set[asyncio.Task[Any]] = set()
        #: the application's subscribe endpoint, when devices are authenticated by it
        self.delegate: DelegatedAuthenticator | None = None
        self._channels = channels
        self._pipeline: Pipeline | None = None
        #: set when the node is asked to stop: readiness goes false before anything closes
        self.draining = False
        services = wire(self, topic_policy)
        self.republisher = services.republisher
        self.queues = services.queues
        self.counts = services.counts
        self.topics = services.topics
        self.cluster = services.cluster
        self.events = services.events
        self.transactional = services.transactional
        self.history = History(self.store)
        self.sse_streams = Streams()
        self.events.on_sse_frames = self.on_sse_frames

    # Lifecycle

    async def start(self) -> None:
        """Open the store (applying migrations), connect the bus, load keys."""
        if self._started:
            return
        await self.store.start()
        try:
            self.bus.on_message = self.events.on_message
            self.bus.on_reconnect = self.events.on_reconnect
            await self.bus.start()
            if self.delegate is None:
                self.delegate = self._credentials.delegate()
            await self._credentials.start(self.store)
            await self.cluster.join()
            from tidings.delivery.pipeline import Pipeline

            self._pipeline = Pipeline(self, self._channels)
            self.events.on_pipeline = self._pipeline.on_event
            await self._pipeline.start()
        except BaseException:
            if self._pipeline is not None:
                await self._pipeline.close()
            await self._credentials.close()
            await self.bus.close()
            await self.store.close()
            raise
        self._started = True
        self.spawn(self.cluster.run())
        logger.info(
            "tidings node %s started (store %s, bus %s)",
            self.node_id,
            safe_url(self.settings.store),
            safe_url(self.settings.bus),
        )

    async def close(self) -> None:
        """Close every device connection (1001, going away), then the bus and the store."""
        if not self._started:
            return
        self._started = False
        for conn in self.registry:
            conn.close(codec.CLOSE_GOING_AWAY, "server shutting down")
        if self._gateway is not None:
            await self._gateway.wait_closed(timeout=5.0)
        await self.registry.drain()
        if self._pipeline is not None:
            await self._pipeline.close()
        await self.republisher.close()
        for task in tuple(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.cluster.leave()
        await self._credentials.close()
        if self.delegate is not None:
            await self.delegate.aclose()
            self.delegate = None
        await self.bus.close()
        await self.store.close()

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` in the background until it ends or the node closes."""
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @property
    def started(self) -> bool:
        return self._started

    @property
    def ready(self) -> bool:
        """Whether a load balancer should send this node new devices and requests."""
        return self._started and not self.draining

    @property
    def unpublished(self) -> int:
        """Events the bus refused, waiting to be published again."""
        return len(self.republisher)

    def count_committed(self, count: UnseenCount) -> None:
        """A count this node committed: the user's phones get it as their badge."""
        if self._pipeline is not None:
            self._pipeline.badge_changed(count)

    @property
    def pipeline(self) -> Pipeline:
        """The multi-channel pipeline (``POST /messages``) of this node."""
        if self._pipeline is None:
            raise TidingsError("Tidings is not started")
        return self._pipeline

    @property
    def node_uri(self) -> str:
        """Where this node is reached (its row in the store's node list)."""
        return self.settings.public_url or f"http://{self.settings.host}:{self.settings.port}"

    @property
    def topic_policy(self) -> TopicPolicy:
        """Who may follow which topics."""
        return self.topics.policy

    @topic_policy.setter
    def topic_policy(self, policy: TopicPolicy) -> None:
        self.topics.policy = policy

    @property
    def authenticator(self) -> DeviceAuthenticator:
        if self._credentials.device is None:
            raise TidingsError("Tidings is not started")
        return self._credentials.device

    @property
    def service_auth(self) -> ServiceAuth:
        if self._credentials.service is None:
            raise TidingsError("Tidings is not started")
        return self._credentials.service

    @property
    def gateway(self) -> Gateway:
        """The raw-ASGI WebSocket endpoint for devices."""
        if self._gateway is None:
            from tidings.gateway.asgi import Gateway

            self._gateway = Gateway(self)
        return self._gateway

    # Embedding in an ASGI application

    @asynccontextmanager
    async def lifespan(self, app: Any = None) -> AsyncIterator[None]:
        """Start and close with the host application: ``FastAPI(lifespan=tidings.lifespan)``
        or ``Starlette(lifespan=tidings.lifespan)``."""
        async with self:
            yield

    async def subscribe(
        self,
        websocket: Any = None,
        *,
        user_id: str,
        session_id: str | None = None,
        deliver: bool = False,
        claims: dict[str, Any] | None = None,
        check_origin: bool = True,
        scope: dict[str, Any] | None = None,
        receive: Any = None,
        send: Any = None,
    ) -> None:
        """Serve a device socket that the application authenticated itself (embedded mode).

        Call it from the application's own WebSocket endpoint once it knows the user, with a
        Starlette/FastAPI ``WebSocket`` (accepted or not) or a raw ASGI ``scope``, ``receive``
        and ``send``. Returns when the device disconnects. The wire protocol is the same as
        on ``/ws``, from ``welcome`` on. Since the application authenticates with cookies, a
        browser ``Origin`` other than this site (or ``TIDINGS_ALLOWED_ORIGINS``) is refused;
        ``check_origin=False`` when the application checked it itself.
        """
        check_identifier("user_id", user_id, MAX_USER_ID_LENGTH)
        if session_id is not None:
            check_identifier("session_id", session_id, MAX_ID_LENGTH)
        accept = True
        if websocket is not None:
            scope, receive, send = websocket.scope, websocket.receive, websocket.send
            state = getattr(websocket, "client_state", None)
            accept = getattr(state, "name", "CONNECTING") == "CONNECTING"
        if scope is None or receive is None or send is None:
            raise InvalidArgument("give a WebSocket, or scope, receive and send")
        await self.gateway.adopt(
            scope,
            receive,
            send,
            principal=Principal(user_id, claims or {}),
            session_id=session_id,
            deliver=deliver,
            accept=accept,
            check_origin=check_origin,
        )

    def asgi(self) -> Any:
        """The node's ASGI app (``/ws`` for devices, the HTTP API) to mount in a host app; it
        does not start or close ``tidings`` (use :meth:`lifespan` for that)."""
        from tidings.node.app import TidingsApp

        return TidingsApp(self, manage_lifespan=False)

    # Notifications and counts

    async def notify(
        self,
        user_id: str,
        data: Any,
        *,
        notification_id: str | None = None,
        category: str | None = None,
        conn: Any = None,
    ) -> NotifyResult:
        """Persist a notification for ``user_id`` (in ``category``, for the inbox's filters)
        and push the new count to every device.

        Returns once the notification is committed. Calling again with the same
        ``notification_id`` returns the existing notification (``created=False``). With
        ``conn``, an asyncpg or SQLAlchemy connection in a transaction, it is written in that
        transaction and its count goes out after the commit (docs/deployment.md).

        Raises:
            InvalidArgument: bad ``user_id``, ``notification_id`` or ``conn``, ``data`` not JSON.
            PayloadTooLarge: ``data`` is over ``max_notification_size``.
            Conflict: ``notification_id`` is taken by a different notification.
            StoreUnavailable: the database is unreachable; nothing was written.
            ConfigurationError: ``conn`` given to a node whose store is not PostgreSQL.
        """
        if conn is not None:
            return await self.transactional.notify(user_id, data, notification_id, category, conn)
        return await self.counts.notify(
            user_id, data, notification_id=notification_id, category=category
        )

    async def notify_many(
        self, items: Sequence[NewNotification], *, conn: Any = None
    ) -> list[NotifyResult | TidingsError]:
        """Persist a batch (one transaction on stores that can; ``conn``'s, as :meth:`notify`
        takes it) and push each user's new count once. Per item, in order: its result, or the
        error that refused it (:class:`InvalidArgument`, :class:`Conflict` …: it wrote nothing).

        Raises:
            InvalidArgument: more than ``max_batch_size`` items.
            StoreUnavailable: the database is unreachable; nothing was acknowledged.
        """
        if conn is not None:
            return await self.transactional.notify_many(items, conn)
        return await self.counts.notify_many(items)

    async def unseen(self, user_id: str, limit: int = DEFAULT_UNSEEN_LIMIT) -> list[Notification]:
        """The user's oldest unseen notifications, in creation order (they stay unseen): at
        most ``limit``, and no more than about ``max_unseen_bytes`` of data (at least one)."""
        return await self.counts.unseen(user_id, limit)

    async def mark_seen(self, user_id: str, notification_ids: Sequence[str]) -> MarkSeenResult:
        """Mark notifications of ``user_id`` seen (:class:`NotFound` for an unknown or another
        user's id, changing nothing); every device of the user gets the new count."""
        return await self.counts.mark_seen(user_id, notification_ids)

    async def count(self, user_id: str) -> UnseenCount:
        """The user's unseen count and its version."""
        return await self.counts.count(user_id)

    async def resync_counts(self) -> None:
        """Re-read and push the count of every user with a device here, look into the queue of
        every device in deliver mode, and send each socket the topic messages it missed (after
        a bus outage: events may be lost)."""
        await self.events.resync()

    # Topics

    def topic_ttl(self, topic: str) -> float:
        """Seconds messages of ``topic`` are kept: the first matching pattern's, or the default."""
        return self.topics.topic_ttl(topic)

    async def publish(
        self, topic: str, data: Any, *, origin_session_id: str | None = None
    ) -> TopicMessage:
        """Store a message on ``topic`` and send it to every subscribed session on every node,
        except ``origin_session_id`` (the session whose change caused it).

        Raises:
            InvalidArgument: a bad topic or session id, or ``data`` not JSON.
            PayloadTooLarge: ``data`` is over ``max_notification_size``.
            StoreUnavailable: the database is unreachable; nothing was published.
        """
        return await self.topics.publish(topic, data, origin_session_id=origin_session_id)

    async def subscribe_topics(self, conn: Connection, topics: Sequence[str]) -> list[str]:
        """Subscribe ``conn``'s session to ``topics`` (all or none).

        Raises:
            TopicRefused: naming the topics the policy refused; nothing was subscribed.
        """
        return await self.topics.subscribe_topics(conn, topics)

    async def unsubscribe_topics(self, conn: Connection, topics: Sequence[str]) -> list[str]:
        return await self.topics.unsubscribe_topics(conn, topics)

    async def reactivate_session(
        self, conn: Connection, topics: Sequence[str] | None = None
    ) -> list[str]:
        """Subscribe a (re)connecting socket to its session's topics (read from the store
        unless given), still allowed ones only."""
        return await self.topics.reactivate_session(conn, topics)

    async def replay(self, conn: Connection, topic: str, since: int) -> Replay:
        """Push the messages of ``topic`` after ``since`` that this socket has not had, in
        order; returns the replay's outcome (``recovered``, the topic's ``last_seq``).

        Raises:
            TopicRefused: the user may not read ``topic``.
        """
        return await self.topics.replay(conn, topic, since)

    async def topic_log(self, topic: str, since: int, limit: int = 500) -> Replay:
        """Stored messages of ``topic`` after ``since`` (for consumers with their own cursor)."""
        return await self.topics.topic_log(topic, since, limit)

    async def notification_log(
        self, after: str = "", limit: int = 500
    ) -> tuple[list[Notification], str]:
        """Every notification after an opaque log position, and the next position (for
        consumers with their own cursor; each notification once, none skipped)."""
        return await self.queues.notification_log(after, limit)

    # Durable device queues (deliver mode)

    def schedule_delivery(self, conn: Connection) -> None:
        """Push what ``conn``'s device has not acknowledged, beyond what it was sent."""
        self.queues.schedule_delivery(conn)

    @property
    def queue_page_on_open(self) -> int:
        """Notifications of a deliver-mode device's queue read with its socket's opening."""
        return self.queues.page_on_open

    async def open_queue(
        self, conn: Connection, first: Sequence[Notification] | None = None, version: int = -1
    ) -> QueueGap | None:
        """Put the socket in deliver mode: apply the operator's queue limits (telling the
        device of any gap with a ``queueGap`` frame), then push the device's queue (its first
        page as the opening read it, see :meth:`Queues.open_queue`)."""
        return await self.queues.open_queue(conn, first, version)

    async def ack(
        self, user_id: str, connection_id: str, notification_ids: Sequence[str]
    ) -> AckResult:
        """Remove notifications from a device's queue.

        Raises:
            NotFound: an id or the device is unknown or not the user's; nothing changed.
        """
        return await self.queues.ack(user_id, connection_id, notification_ids)

    async def pending(
        self, user_id: str, connection_id: str, limit: int = 100
    ) -> list[Notification]:
        """The oldest notifications waiting in a device's queue."""
        return await self.queues.pending(user_id, connection_id, limit)

    async def forget_device(
        self, user_id: str, connection_id: str, *, before_close: str | None = None
    ) -> bool:
        """Delete a device and its queue (logout); its sockets on every node are closed.

        ``before_close`` is a frame sent to the device's sockets here before they close.
        """
        delegate = self.delegate
        return await self.queues.forget_device(
            user_id,
            connection_id,
            before_close=before_close,
            invalidate=delegate.invalidate if delegate is not None else None,
        )

    async def erase_user(self, user_id: str) -> dict[str, int]:
        """Erase everything tidings holds about a user (see ``DELETE /users/{user_id}``) and
        close their sockets on every node; how many rows went, by kind."""
        erased = await self.pipeline.store.erase_user(user_id)
        delegate = self.delegate
        erased.update(
            await self.queues.erase_user(
                user_id, invalidate=delegate.invalidate if delegate is not None else None
            )
        )
        return erased

    # Cluster membership

    async def forget_presence(self, conn: Connection) -> None:
        await self.cluster.forget_presence(conn)
