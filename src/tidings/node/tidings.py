"""The :class:`Tidings` facade: everything an application or the server calls."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import AsyncIterator, Coroutine, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import orjson

from tidings.auth.base import DeviceAuthenticator, Principal
from tidings.auth.delegated import DelegatedAuthenticator
from tidings.auth.jwks import JwksCache
from tidings.auth.jwt import JwtAuthenticator
from tidings.auth.oauth import ExternalIssuer, ServiceAuth
from tidings.auth.topics import TopicHook, TopicPolicy, check_topic
from tidings.bus import Bus, create_bus
from tidings.config import Settings
from tidings.core import events
from tidings.core.lifecycle import Lifecycle
from tidings.core.limits import MAX_DATA_DEPTH, MAX_UNPUBLISHED, MAX_USER_ID_LENGTH
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
    nests_deeper,
    too_deep_message,
    walk_nests_deeper,
)
from tidings.errors import (
    BusError,
    ConfigurationError,
    Conflict,
    InvalidArgument,
    NotFound,
    PayloadTooLarge,
    StoreUnavailable,
    TidingsError,
    TopicRefused,
)
from tidings.fanout import codec as protocol
from tidings.fanout.connection import Connection
from tidings.fanout.registry import Registry, topic_channel, user_channel
from tidings.logs import safe_url
from tidings.node.metrics import Metrics, counters
from tidings.storage import Store, create_store

if TYPE_CHECKING:
    from tidings.delivery.channels.base import Channel
    from tidings.delivery.pipeline import Pipeline
    from tidings.gateway.asgi import Gateway

logger = logging.getLogger("tidings")

DEVICE_KEY = "device_jwt_secret"
#: events kept for re-publishing while the bus refuses them; past that the oldest go
SERVICE_KEY = "service_token_key"


def _random_key() -> str:
    return secrets.token_urlsafe(48)


class Tidings(Lifecycle):
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
        if isinstance(topic_policy, TopicPolicy):
            self.topic_policy = topic_policy
        else:
            self.topic_policy = TopicPolicy(
                public_patterns=settings.topic_patterns,
                claim=settings.topic_claim,
                hook=topic_policy,
            )
        self._authenticator = authenticator
        self._service_auth: ServiceAuth | None = None
        self._gateway: Gateway | None = None
        self._started = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._key_caches: list[JwksCache] = []
        #: the application's subscribe endpoint, when devices are authenticated by it
        self.delegate: DelegatedAuthenticator | None = None
        # Events the bus refused, re-published in the background: (channel, payload, version).
        self._unpublished: dict[tuple[str, ...], tuple[str, bytes, int]] = {}
        self._republisher: asyncio.Task[None] | None = None
        self._channels = channels
        self._pipeline: Pipeline | None = None
        #: set when the node is asked to stop: readiness goes false before anything closes
        self.draining = False
        self.metrics = Metrics(self)

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
            settings = self.settings
            if self._authenticator is None:
                secret = settings.jwt_secret or await self.store.get_or_create_key(
                    DEVICE_KEY, _random_key
                )
                self._authenticator = JwtAuthenticator(
                    secret,
                    audience=settings.jwt_audience,
                    issuer=settings.jwt_issuer,
                    leeway=settings.jwt_leeway,
                    jwks=self._keep(JwksCache(settings.jwks_url)) if settings.jwks_url else None,
                    jwks_algorithms=settings.jwt_algorithms,
                )
            if settings.delegate_url and self.delegate is None:
                self.delegate = DelegatedAuthenticator(
                    settings.delegate_url,
                    forward_headers=settings.delegate_headers,
                    timeout=settings.delegate_timeout,
                    cache_ttl=settings.delegate_cache_ttl,
                )
            key = settings.service_token_key or await self.store.get_or_create_key(
                SERVICE_KEY, _random_key
            )
            self._service_auth = ServiceAuth(
                self.store, key, ttl=settings.service_token_ttl, external=_external_issuer(settings)
            )
            # Rows under this node's id are a previous life's (killed without its clean
            # shutdown): its sockets are gone, and would show as ghosts until reaped.
            await self.store.remove_node(self.node_id)
            await self.store.heartbeat(self.node_id, self.node_uri)
            from tidings.delivery.pipeline import Pipeline

            self._pipeline = Pipeline(self, self._channels)
            await self._pipeline.start()
        except BaseException:
            if self._pipeline is not None:
                await self._pipeline.close()
            await self.bus.close()
            await self.store.close()
            raise
        self._started = True
        self._spawn(self._cluster_loop())
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
            conn.close(protocol.CLOSE_GOING_AWAY, "server shutting down")
        if self._gateway is not None:
            await self._gateway.wait_closed(timeout=5.0)
        await self.registry.drain()
        if self._pipeline is not None:
            await self._pipeline.close()
        if self._republisher is not None:
            self._tasks.add(self._republisher)
        for task in tuple(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        try:
            await self.store.remove_node(self.node_id)
        except TidingsError as exc:
            logger.warning("could not deregister node %s: %s", self.node_id, exc)
        for cache in self._key_caches:
            await cache.aclose()
        if self.delegate is not None:
            await self.delegate.aclose()
            self.delegate = None
        if self._service_auth is not None and self._service_auth.external is not None:
            await self._service_auth.external.jwks.aclose()
        await self.bus.close()
        await self.store.close()

    def _keep(self, cache: JwksCache) -> JwksCache:
        self._key_caches.append(cache)
        return cache

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
        return len(self._unpublished)

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

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # Cluster membership

    async def _cluster_loop(self) -> None:
        """Heartbeat, re-register after having been reaped, reap nodes that went silent."""
        settings = self.settings
        next_expiry = 0.0
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(settings.heartbeat_interval)
            try:
                if loop.time() >= next_expiry:
                    # Every node does it; deleting what another node deleted is harmless.
                    next_expiry = loop.time() + 60
                    # Sessions with an open socket here stay alive however long they last.
                    await self.store.touch_sessions(
                        {(c.user_id, c.session_id) for c in self.registry if c.topics}
                    )
                    expired = await self.store.expire(settings.session_ttl)
                    if expired:
                        logger.info("deleted %d expired topic messages", expired)
                if not await self.store.heartbeat(self.node_id, self.node_uri):
                    # Another node took us for dead (a long pause): register our sockets again.
                    logger.warning(
                        "node %s was reaped; registering its sockets again", self.node_id
                    )
                    await self.store.add_presence([c.presence(self.node_id) for c in self.registry])
                for node_id in await self.store.reap_nodes(settings.node_timeout):
                    logger.warning(
                        "node %s stopped heart-beating; its sockets were removed", node_id
                    )
            except TidingsError as exc:
                logger.warning("cluster heartbeat failed: %s", exc)

    async def forget_presence(self, conn: Connection) -> None:
        try:
            await self.store.remove_presence(conn.socket_id)
        except TidingsError as exc:
            logger.warning(
                "registry removal of %s failed: %s",
                conn.connection_id,
                exc,
                extra=conn.log_fields(),
            )

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
        _check_identifier("user_id", user_id, MAX_USER_ID_LENGTH)
        if session_id is not None:
            _check_identifier("session_id", session_id, protocol.MAX_ID_LENGTH)
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
        from tidings.server import TidingsApp

        return TidingsApp(self, manage_lifespan=False)

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
        self._check_size(data)
        # Shielded: once the write is under way, its count is published even if the caller is
        # cancelled (a timeout, a closed connection), so devices never miss a committed change.
        return await asyncio.shield(self._notify(user_id, data, notification_id))

    async def _notify(self, user_id: str, data: Any, notification_id: str | None) -> NotifyResult:
        started = time.perf_counter()
        result = await self.store.create_notification(user_id, data, notification_id)
        if result.count is not None:
            await self._publish_count(result.count, result.notification.seq)
        self.metrics.notify_seconds.observe(time.perf_counter() - started)
        return result

    async def notify_many(
        self, items: Sequence[NewNotification]
    ) -> list[NotifyResult | TidingsError]:
        """Persist a batch of notifications (one transaction on stores that can) and push
        each user's new count once. Per item, in order: its result, or the error that refused
        it (:class:`InvalidArgument`, :class:`PayloadTooLarge`, :class:`Conflict`); refused
        items change nothing, the others are written.

        Raises:
            InvalidArgument: more than ``max_batch_size`` items.
            StoreUnavailable: the database is unreachable; nothing was acknowledged.
        """
        if len(items) > self.settings.max_batch_size:
            raise InvalidArgument(f"at most {self.settings.max_batch_size} items per batch")
        results: list[NotifyResult | TidingsError | None] = []
        valid: list[NewNotification] = []
        for item in items:
            try:
                _check_identifier("user_id", item.user_id, MAX_USER_ID_LENGTH)
                if item.notification_id is not None:
                    _check_identifier(
                        "notification_id", item.notification_id, protocol.MAX_ID_LENGTH
                    )
                self._check_size(item.data)
            except TidingsError as exc:
                results.append(exc)
                continue
            results.append(None)
            valid.append(item)
        if valid:
            written = iter(await asyncio.shield(self._notify_many(valid)))
            results = [next(written) if r is None else r for r in results]
        return [r for r in results if r is not None]

    async def _notify_many(self, items: Sequence[NewNotification]) -> list[NotifyResult | Conflict]:
        results = await self.store.create_notifications(items)
        # Each user's last created item carries its newest count and its largest seq.
        latest: dict[str, tuple[UnseenCount, int]] = {}
        for result in reversed(results):
            if isinstance(result, NotifyResult) and result.count is not None:
                note = result.notification
                if note.user_id not in latest:
                    latest[note.user_id] = (result.count, note.seq)
        if latest:
            await asyncio.gather(*(self._publish_count(c, seq) for c, seq in latest.values()))
        return results

    async def unseen(
        self, user_id: str, limit: int = protocol.DEFAULT_UNSEEN_LIMIT
    ) -> list[Notification]:
        """The user's oldest unseen notifications, in creation order (they stay unseen): at
        most ``limit``, and no more than about ``max_unseen_bytes`` of data (at least one)."""
        if not 0 < limit <= self.settings.max_unseen_page:
            raise InvalidArgument(f"limit must be from 1 to {self.settings.max_unseen_page}")
        return await self.store.unseen(user_id, limit, self.settings.max_unseen_bytes)

    async def mark_seen(self, user_id: str, notification_ids: Sequence[str]) -> MarkSeenResult:
        """Mark notifications of ``user_id`` seen; every device of the user gets the new count.

        Raises:
            NotFound: an id is unknown or another user's; nothing was changed.
        """
        self._check_ids(user_id, notification_ids)
        return await asyncio.shield(self._mark_seen(user_id, notification_ids))

    def _check_size(self, data: Any) -> None:
        try:
            encoded = orjson.dumps(data)
        except TypeError as exc:
            if walk_nests_deeper(data, MAX_DATA_DEPTH):  # past orjson's own limit
                raise InvalidArgument(too_deep_message()) from None
            raise InvalidArgument(f"data is not JSON-serialisable: {exc}") from None
        size = len(encoded)
        # orjson writes NaN and Infinity as null: only data with a null can hold one.
        if b"null" in encoded and not _finite(data):
            # JSON has no NaN or Infinity; stored, they would silently come back as null.
            raise InvalidArgument("data contains NaN or Infinity, which JSON cannot carry")
        if size > self.settings.max_notification_size:
            raise PayloadTooLarge(
                f"data is {size} bytes of JSON; the limit is {self.settings.max_notification_size}"
            )
        # Frames and answers wrap data in a few more levels: refuse what they could not write.
        # (Shorter data cannot nest that deep: most data costs the length test only.)
        if size > 2 * MAX_DATA_DEPTH + 1 and nests_deeper(data, encoded):
            raise InvalidArgument(too_deep_message())

    @staticmethod
    def _check_ids(user_id: str, notification_ids: Sequence[str]) -> None:
        _check_identifier("user_id", user_id, MAX_USER_ID_LENGTH)
        if len(notification_ids) > protocol.MAX_IDS_PER_FRAME:
            raise InvalidArgument(f"at most {protocol.MAX_IDS_PER_FRAME} ids per call")
        for nid in notification_ids:
            _check_identifier("notification_id", nid, protocol.MAX_ID_LENGTH)

    async def _mark_seen(self, user_id: str, notification_ids: Sequence[str]) -> MarkSeenResult:
        result = await self.store.mark_seen(user_id, notification_ids)
        if result.count is not None:
            await self._publish_count(result.count)
        return result

    async def count(self, user_id: str) -> UnseenCount:
        """The user's unseen count and its version."""
        return await self.store.count(user_id)

    # Events between nodes

    async def _publish_count(self, count: UnseenCount, seq: int = 0) -> None:
        payload = events.encode_count(count, self.node_id, seq)
        channel = user_channel(count.user_id)
        try:
            await self.bus.publish(channel, payload)
        except BusError as exc:
            counters.bus_publish_failures += 1
            # Committed already: reach this node's devices now, and keep re-publishing the
            # user's latest count until the bus takes it (versions make repeats harmless).
            logger.warning("count event for %s not published: %s", count.user_id, exc)
            self._deliver_count(count, seq)
            self._retry_later(("count", count.user_id), channel, payload, count.version)

    def _retry_later(
        self, key: tuple[str, ...], channel: str, payload: bytes, version: int = 0
    ) -> None:
        """Re-publish an event the bus refused, in the background, until it takes it. For a
        key seen before, only the newer version is kept (a count supersedes older counts)."""
        previous = self._unpublished.get(key)
        if previous is None or previous[2] <= version:
            self._unpublished[key] = (channel, payload, version)
        if len(self._unpublished) > MAX_UNPUBLISHED:
            dropped = next(iter(self._unpublished))
            del self._unpublished[dropped]
            logger.warning(
                "dropping unpublished event %s; devices recover on reconnection", dropped
            )
        if self._republisher is None or self._republisher.done():
            self._republisher = asyncio.create_task(self._republish())

    async def _republish(self) -> None:
        delay = 0.1
        while self._unpublished:
            await asyncio.sleep(delay)
            for key, entry in list(self._unpublished.items()):
                try:
                    await self.bus.publish(entry[0], entry[1])
                except BusError:
                    delay = min(delay * 2, 5.0)
                    break
                if self._unpublished.get(key) is entry:
                    del self._unpublished[key]
            else:
                delay = 0.1

    def _on_bus_message(self, channel: str, payload: bytes) -> None:
        event = events.decode(payload)
        if event is None:
            logger.warning("ignoring undecodable bus message on %s", channel)
            return
        if event["type"] == events.COUNT_CHANGED:
            if event.get("node") != self.node_id:
                self.metrics.observe_event_age(event.get("t"))
            decoded = events.decode_count(event)
            if decoded is not None:
                self._deliver_count(*decoded)
        elif event["type"] == events.TOPIC_MESSAGE:
            decoded_message = events.decode_topic_message(event)
            if decoded_message is not None:
                message, complete = decoded_message
                if complete:
                    self._deliver_topic(message)
                else:
                    self._spawn(self._fetch_and_deliver(message))
        elif event["type"].startswith("pipeline-"):
            if self._pipeline is not None:
                self._pipeline.on_event(event)
        elif event["type"] == events.DEVICE_FORGOTTEN:
            user_id, connection_id = event.get("user_id"), event.get("connection_id")
            if isinstance(user_id, str) and isinstance(connection_id, str):
                self._close_device(user_id, connection_id)

    def _deliver_count(self, count: UnseenCount, seq: int = 0) -> None:
        text = protocol.count_changed(count.count, count.version)
        self.registry.deliver_count(count.user_id, count.count, count.version, text)
        if seq:
            for conn in self.registry.connections(count.user_id):
                if conn.deliver and seq > conn.delivered_upto:
                    self.schedule_delivery(conn)

    def _on_bus_reconnect(self) -> None:
        counters.bus_reconnects += 1
        self._spawn(self.resync_counts())

    async def resync_counts(self) -> None:
        """Re-read and push the count of every user with a device here, look into the queue of
        every device in deliver mode, and send each socket the topic messages it missed (after
        a bus outage: events may be lost)."""
        for user_id in {c.user_id for c in self.registry}:
            try:
                self._deliver_count(await self.store.count(user_id))
            except TidingsError as exc:
                logger.warning("count resync for %s failed: %s", user_id, exc)
        for conn in self.registry:
            if conn.deliver:
                self.schedule_delivery(conn)
            if conn.topics:
                self._spawn(self._catch_up_topics(conn))

    # Topics

    def topic_ttl(self, topic: str) -> float:
        """Seconds messages of ``topic`` are kept: the first matching pattern's, or the default."""
        from fnmatch import fnmatchcase

        for pattern, ttl in self.settings.topic_ttls.items():
            if fnmatchcase(topic, pattern):
                return ttl
        return self.settings.topic_ttl

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
        check_topic(topic)
        if origin_session_id is not None:
            _check_identifier("origin_session_id", origin_session_id, protocol.MAX_ID_LENGTH)
        self._check_size(data)
        return await asyncio.shield(self._publish(topic, data, origin_session_id))

    async def _publish(self, topic: str, data: Any, origin: str | None) -> TopicMessage:
        message = await self.store.append_topic_message(topic, data, origin, self.topic_ttl(topic))
        payload = events.encode_topic_message(message, self.node_id)
        if len(payload) > self.bus.max_payload:
            payload = events.encode_topic_message(message, self.node_id, by_reference=True)
        channel = topic_channel(topic)
        try:
            await self.bus.publish(channel, payload)
        except BusError as exc:
            # Stored already: this node's sessions get it now, the others when the bus takes
            # it again (each socket drops repeats by seq).
            logger.warning("topic message %s/%d not published: %s", topic, message.seq, exc)
            self._deliver_topic(message)
            self._retry_later(("topic", topic, str(message.seq)), channel, payload)
        return message

    async def _fetch_and_deliver(self, reference: TopicMessage) -> None:
        try:
            replay = await self.store.topic_messages(reference.topic, reference.seq - 1, 1)
        except TidingsError as exc:
            logger.warning(
                "topic message %s/%d unreadable: %s", reference.topic, reference.seq, exc
            )
            return
        for message in replay.messages:
            if message.seq == reference.seq:
                self._deliver_topic(message)

    def _deliver_topic(self, message: TopicMessage) -> None:
        conns = self.registry.topic_connections(message.topic)
        if not conns:
            return
        text = orjson.dumps(message.to_frame()).decode()
        for conn in tuple(conns):
            if message.origin_session_id is None or conn.session_id != message.origin_session_id:
                conn.push_topic(message.topic, message.seq, text)

    async def subscribe_topics(self, conn: Connection, topics: Sequence[str]) -> list[str]:
        """Subscribe ``conn``'s session to ``topics`` (all or none).

        Raises:
            TopicRefused: naming the topics the policy refused; nothing was subscribed.
        """
        limit = self.settings.max_topics_per_session
        if len(conn.topics | set(topics)) > limit:
            raise InvalidArgument(f"a session may follow at most {limit} topics")
        refused = await self.topic_policy.refused(conn.user_id, conn.claims, topics)
        if refused:
            raise TopicRefused(refused)
        await self.store.subscribe_session(
            conn.user_id, conn.session_id, topics, self.settings.max_sessions_per_user
        )
        # Every socket of this session on this node follows the session's subscriptions, as
        # far as its own token allows (as on reactivation), from the topic's last seq now.
        sockets = self._session_connections(conn)
        joining = sorted({t for other in sockets for t in topics if t not in other.topics})
        starts = await self.store.topic_last_seqs(joining) if joining else {}
        for other in sockets:
            allowed: Sequence[str] = topics
            if other is not conn and other.claims != conn.claims:
                refused_here = set(
                    await self.topic_policy.refused(other.user_id, other.claims, topics)
                )
                allowed = [t for t in topics if t not in refused_here]
            _mark_start(other, {t: starts[t] for t in allowed if t in starts})
            await self.registry.join_topics(other, allowed)
        return list(topics)

    async def unsubscribe_topics(self, conn: Connection, topics: Sequence[str]) -> list[str]:
        await self.store.unsubscribe_session(conn.user_id, conn.session_id, topics)
        for other in self._session_connections(conn):
            self.registry.leave_topics(other, topics)
            if other.topic_start is not None:
                for topic in topics:
                    other.topic_start.pop(topic, None)
        return list(topics)

    def _session_connections(self, conn: Connection) -> list[Connection]:
        return [
            c
            for c in self.registry.connections(conn.user_id) | {conn}
            if c.session_id == conn.session_id
        ]

    async def reactivate_session(
        self, conn: Connection, topics: Sequence[str] | None = None
    ) -> list[str]:
        """Subscribe a (re)connecting socket to its session's topics (read from the store
        unless given), still allowed ones only."""
        if topics is None:
            topics = await self.store.session_topics(conn.user_id, conn.session_id)
        refused = set(await self.topic_policy.refused(conn.user_id, conn.claims, topics))
        allowed = [t for t in topics if t not in refused]
        if allowed:
            _mark_start(conn, await self.store.topic_last_seqs(allowed))
        await self.registry.join_topics(conn, allowed)
        return allowed

    async def replay(self, conn: Connection, topic: str, since: int) -> Replay:
        """Push the messages of ``topic`` after ``since`` that this socket has not had, in
        order, holding live ones back meanwhile; returns the replay's outcome (``recovered``,
        the topic's ``last_seq``; ``messages`` is left empty).

        Raises:
            TopicRefused: the user may not read ``topic``.
        """
        if not await self.topic_policy.allowed(conn.user_id, conn.claims, topic):
            raise TopicRefused([topic])
        return await self._replay(conn, topic, since)

    async def _replay(self, conn: Connection, topic: str, since: int) -> Replay:
        page_size = 200
        conn.replaying[topic] = []
        recovered, last_seq, cursor = True, 0, since
        try:
            while True:
                await conn.wait_room(page_size)
                if conn.closed:
                    break
                page = await self.store.topic_messages(topic, cursor, page_size)
                recovered = recovered and page.recovered
                last_seq = page.last_seq
                for message in page.messages:
                    if conn.mark_topic(topic, message.seq) and (
                        message.origin_session_id != conn.session_id
                    ):
                        conn.push(orjson.dumps(message.to_frame()).decode())
                    cursor = message.seq
                if len(page.messages) < page_size:
                    break
        finally:
            held = conn.replaying.pop(topic, [])
            # The client had everything up to ``since`` (never beyond what exists).
            conn.skip_topic_until(topic, min(since, last_seq))
            for seq, text in sorted(held, key=lambda item: item[0]):
                conn.push_topic(topic, seq, text)
        if topic not in conn.topics:
            conn.forget_topic(topic)  # a replay of a topic not followed keeps no state
        return Replay([], recovered, last_seq)

    async def _catch_up_topics(self, conn: Connection) -> None:
        """After a bus outage: send what the socket's topics got meanwhile (since it joined
        them, or since the last message it had)."""
        starts = conn.topic_start or {}
        for topic in tuple(conn.topics):
            since = max(conn.topic_seq.get(topic, 0), starts.get(topic, 0))
            try:
                await self._replay(conn, topic, since)
            except TidingsError as exc:
                logger.warning("topic catch-up of %s failed: %s", topic, exc)

    async def topic_log(self, topic: str, since: int, limit: int = 500) -> Replay:
        """Stored messages of ``topic`` after ``since`` (for consumers with their own cursor)."""
        check_topic(topic)
        return await self.store.topic_messages(topic, since, limit)

    async def notification_log(
        self, after: str = "", limit: int = 500
    ) -> tuple[list[Notification], str]:
        """Every notification after an opaque log position, and the next position (for
        consumers with their own cursor; each notification once, none skipped)."""
        return await self.store.notification_log(after, limit)

    # Durable device queues (deliver mode)

    def schedule_delivery(self, conn: Connection) -> None:
        """Push what ``conn``'s device has not acknowledged, beyond what it was sent."""
        if conn.closed:
            return
        if conn.delivery is not None and not conn.delivery.done():
            conn.delivery_again = True  # the running pass reads once more when done
            return
        conn.delivery = asyncio.create_task(self._deliver(conn))

    async def _deliver(self, conn: Connection) -> None:
        page_size = 100
        delay = 0.5
        while not conn.closed:
            conn.delivery_again = False
            try:
                while True:
                    await conn.wait_room(page_size)
                    page = await self.store.pending(
                        conn.connection_id, conn.user_id, conn.delivered_upto, page_size
                    )
                    for note in page:
                        conn.push(protocol.notification(note))
                        conn.delivered_upto = note.seq
                    if len(page) < page_size:
                        break
            except NotFound:
                conn.close(protocol.CLOSE_NORMAL, "device forgotten")
                return
            except StoreUnavailable as exc:
                logger.warning(
                    "queue of %s unavailable: %s; retrying",
                    conn.connection_id,
                    exc,
                    extra=conn.log_fields(),
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
                conn.delivery_again = True
            if not conn.delivery_again:
                return

    async def open_queue(self, conn: Connection) -> QueueGap | None:
        """Apply the operator's queue limits (telling the device of any gap with a
        ``queueGap`` frame), then start pushing the device's queue."""
        settings = self.settings
        gap = None
        if settings.device_queue_max_length or settings.device_queue_max_age:
            gap = await self.store.trim_queue(
                conn.connection_id,
                conn.user_id,
                max_length=settings.device_queue_max_length,
                max_age=settings.device_queue_max_age,
            )
        if gap is not None:
            conn.push(protocol.queue_gap(gap.reason, gap.skipped))
        self.schedule_delivery(conn)
        return gap

    async def ack(
        self, user_id: str, connection_id: str, notification_ids: Sequence[str]
    ) -> AckResult:
        """Remove notifications from a device's queue.

        Raises:
            NotFound: an id or the device is unknown or not the user's; nothing changed.
        """
        self._check_ids(user_id, notification_ids)
        return await self.store.ack(connection_id, user_id, notification_ids)

    async def pending(
        self, user_id: str, connection_id: str, limit: int = 100
    ) -> list[Notification]:
        """The oldest notifications waiting in a device's queue."""
        return await self.store.pending(connection_id, user_id, 0, limit)

    async def forget_device(
        self, user_id: str, connection_id: str, *, before_close: str | None = None
    ) -> bool:
        """Delete a device and its queue (logout); its sockets on every node are closed.

        ``before_close`` is a frame sent to the device's sockets here before they close.
        """
        forgotten = await self.store.forget_device(user_id, connection_id)
        if self.delegate is not None:
            self.delegate.invalidate(user_id)
        if before_close is not None:
            for conn in self.registry.connections(user_id):
                if conn.connection_id == connection_id:
                    conn.push(before_close)
        self._close_device(user_id, connection_id)
        if forgotten:
            payload = events.encode_device_forgotten(user_id, connection_id, self.node_id)
            try:
                await self.bus.publish(user_channel(user_id), payload)
            except BusError as exc:
                # Its sockets elsewhere find the device gone at their next queue read.
                logger.warning("device-forgotten event not published: %s", exc)
        return forgotten

    def _close_device(self, user_id: str, connection_id: str) -> None:
        for conn in list(self.registry.connections(user_id)):
            if conn.connection_id == connection_id:
                conn.close(protocol.CLOSE_NORMAL, "device forgotten", flush=True)


def _external_issuer(settings: Settings) -> ExternalIssuer | None:
    if not settings.service_jwks_url:
        return None
    if not (settings.service_issuer and settings.service_audience):
        raise ConfigurationError(
            "TIDINGS_SERVICE_JWKS_URL needs TIDINGS_SERVICE_ISSUER and TIDINGS_SERVICE_AUDIENCE"
        )
    return ExternalIssuer(
        JwksCache(settings.service_jwks_url),  # closed by Tidings.close() via ServiceAuth
        issuer=settings.service_issuer,
        audience=settings.service_audience,
        algorithms=settings.service_algorithms,
    )


def _finite(value: Any) -> bool:
    """No NaN or infinite float anywhere in a JSON value."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, float):
            if item != item or item in (float("inf"), float("-inf")):
                return False
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
    return True


def _check_identifier(name: str, value: object, max_length: int) -> None:
    if not isinstance(value, str) or not 0 < len(value) <= max_length or "\x00" in value:
        raise InvalidArgument(
            f"{name} must be a string of 1 to {max_length} characters without NUL"
        )


def _mark_start(conn: Connection, starts: dict[str, int]) -> None:
    """Remember where ``conn`` joined each topic of ``starts`` (a later join keeps the first)."""
    if starts:
        if conn.topic_start is None:
            conn.topic_start = {}
        for topic, seq in starts.items():
            conn.topic_start.setdefault(topic, seq)
