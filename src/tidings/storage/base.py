"""The :class:`Store` interface every storage backend implements."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Any

from tidings.core.lifecycle import Lifecycle
from tidings.core.models import (
    AckResult,
    Device,
    MarkSeenResult,
    NewNotification,
    NodeInfo,
    Notification,
    NotifyResult,
    Presence,
    QueueGap,
    Replay,
    ServiceClient,
    TopicMessage,
    UnseenCount,
)
from tidings.errors import Conflict, TooManyConnections


class Store(Lifecycle):
    """Durable state of tidings: notifications, unseen counts, devices, service clients.

    Counts are maintained in the transaction that changes them, so an event can carry the
    new ``(count, version)`` and no node ever re-counts. Every method raises
    :class:`~tidings.errors.StoreUnavailable` when the database cannot be reached, having
    written nothing.
    """

    def __init__(self, url: str) -> None:
        self.url = url

    # Lifecycle

    @abstractmethod
    async def start(self) -> None:
        """Connect and apply pending migrations."""

    @abstractmethod
    async def close(self) -> None:
        """Release connections. Idempotent."""

    @abstractmethod
    async def ping(self) -> None:
        """Check the database answers.

        Raises:
            StoreUnavailable: it does not.
        """

    # Notifications and counts

    async def create_notifications(
        self, items: Sequence[NewNotification]
    ) -> list[NotifyResult | Conflict]:
        """Insert several notifications; per item its result, or the :class:`Conflict` that
        refused it (the others are still written). A store may do it in one transaction (this
        default makes one call per item); each created item's ``count`` is its user's count
        right after it, as if the items had been created one by one (the version rises by one
        per notification).

        Raises:
            StoreUnavailable: the database is unreachable (then nothing may have been written
                by a one-transaction store, and a retry with the same ids is safe).
        """
        results: list[NotifyResult | Conflict] = []
        for item in items:
            try:
                results.append(
                    await self.create_notification(item.user_id, item.data, item.notification_id)
                )
            except Conflict as exc:
                results.append(exc)
        return results

    @abstractmethod
    async def create_notification(
        self, user_id: str, data: Any, notification_id: str | None = None
    ) -> NotifyResult:
        """Insert a notification and bump the user's unseen count, in one transaction.

        ``data`` is any JSON-serialisable value. When ``notification_id`` already exists for
        the same user with equal data, nothing is written and the existing notification is
        returned with ``created=False`` (idempotent retries).

        Raises:
            Conflict: ``notification_id`` exists for another user or with other data.
        """

    @abstractmethod
    async def unseen(
        self, user_id: str, limit: int, max_bytes: int | None = None
    ) -> list[Notification]:
        """The user's oldest ``limit`` unseen notifications, in creation order; with
        ``max_bytes``, only as many as have about that many bytes of data in all, read no
        further than that (but always the oldest one)."""

    @abstractmethod
    async def mark_seen(self, user_id: str, notification_ids: Sequence[str]) -> MarkSeenResult:
        """Set ``seen_date`` on the given notifications of this user, in one transaction.

        Ids already seen are accepted and left alone. The count and version change only if
        at least one notification changed.

        Raises:
            NotFound: an id is unknown or belongs to another user; nothing was changed.
        """

    @abstractmethod
    async def count(self, user_id: str) -> UnseenCount:
        """The user's current unseen count and version (``0, 0`` for an unknown user)."""

    # Devices

    @abstractmethod
    async def bind_device(self, user_id: str, connection_id: str | None) -> Device:
        """Return the device ``connection_id`` of this user, creating it if needed.

        A well-formed ``connection_id`` (8 to 64 of ``A-Z a-z 0-9 _ -``) that is unknown is
        created for this user as given, so a client may choose its own. One that is malformed
        or bound to another user is ignored and a new one is issued: a device id never moves
        between users. A new device's queue starts after the user's latest notification.
        """

    @abstractmethod
    async def pending(
        self, connection_id: str, user_id: str, after_seq: int, limit: int
    ) -> list[Notification]:
        """The device's queue: the user's notifications after ``max(after_seq, cursor)`` not
        yet acknowledged by it, in creation order (``seq`` set), at most ``limit``.

        Raises:
            NotFound: the device is unknown or not this user's (forgotten).
        """

    @abstractmethod
    async def ack(
        self, connection_id: str, user_id: str, notification_ids: Sequence[str]
    ) -> AckResult:
        """Remove notifications from the device's queue (acknowledging twice is harmless).

        Raises:
            NotFound: an id is unknown or another user's, or the device is; nothing changed.
        """

    @abstractmethod
    async def trim_queue(
        self,
        connection_id: str,
        user_id: str,
        *,
        max_length: int | None,
        max_age: float | None,
    ) -> QueueGap | None:
        """Drop the oldest queued notifications past ``max_length`` or older than ``max_age``
        seconds; returns what was dropped, or ``None``."""

    @abstractmethod
    async def forget_device(self, user_id: str, connection_id: str) -> bool:
        """Delete the device and its queue (logout); ``True`` if it existed."""

    @abstractmethod
    async def notification_log(self, after: str, limit: int) -> tuple[list[Notification], str]:
        """Every user's notifications after the opaque log position ``after`` (``""`` for
        the start), and the position to continue from: a consumer with its own cursor follows
        everything tidings stores, each notification once, none ever skipped.

        Raises:
            InvalidArgument: ``after`` is not a position of this store.
        """

    @abstractmethod
    async def recent_notifications(self, limit: int) -> list[Notification]:
        """The newest notifications of every user, newest first (for operators)."""

    @abstractmethod
    async def queue_depths(self, devices: Sequence[tuple[str, str]]) -> dict[str, int]:
        """How many notifications wait in the queues of ``(connection_id, user_id)`` devices,
        by connection id (unknown devices are left out), in one round trip."""

    async def queue_depth(self, connection_id: str, user_id: str) -> int:
        """How many notifications wait in a device's queue (0 for an unknown device)."""
        return (await self.queue_depths([(connection_id, user_id)])).get(connection_id, 0)

    # Topics

    @abstractmethod
    async def append_topic_message(
        self, topic: str, data: Any, origin_session_id: str | None, ttl: float
    ) -> TopicMessage:
        """Store a message under the topic's next sequence number, kept ``ttl`` seconds."""

    @abstractmethod
    async def topic_messages(self, topic: str, since: int, limit: int) -> Replay:
        """Unexpired messages with ``seq > since`` in order, at most ``limit``; ``recovered``
        is false when messages after ``since`` were already deleted (the gap reaches past
        retention)."""

    async def topic_last_seqs(self, topics: Sequence[str]) -> dict[str, int]:
        """The last sequence number of each topic (0 for a topic without messages yet)."""
        return {t: (await self.topic_messages(t, 2**62, 1)).last_seq for t in topics}

    @abstractmethod
    async def expire(self, session_idle: float) -> int:
        """Delete expired topic messages, and session subscriptions idle for ``session_idle``
        seconds; returns how many messages were deleted."""

    @abstractmethod
    async def touch_sessions(self, sessions: Iterable[tuple[str, str]]) -> None:
        """Mark ``(user_id, session_id)`` pairs active (sessions with an open socket)."""

    @abstractmethod
    async def session_topics(self, user_id: str, session_id: str) -> list[str]:
        """The topics the session is subscribed to (marking the session active)."""

    @abstractmethod
    async def subscribe_session(
        self,
        user_id: str,
        session_id: str,
        topics: Sequence[str],
        max_sessions: int | None = None,
    ) -> None:
        """Add topics to the session's subscriptions. With ``max_sessions``, the user keeps
        the subscriptions of that many sessions at most: the least recently active others are
        dropped (a device that comes back under one subscribes again)."""

    @abstractmethod
    async def unsubscribe_session(
        self, user_id: str, session_id: str, topics: Sequence[str]
    ) -> None:
        """Remove topics from the session's subscriptions."""

    # Cluster: nodes and the notification_registry

    @abstractmethod
    async def heartbeat(self, node_id: str, uri: str) -> bool:
        """Record that ``node_id`` is alive; ``False`` if its row was gone (it had been reaped,
        so the caller must register its sockets again)."""

    @abstractmethod
    async def reap_nodes(self, stale_after: float) -> list[str]:
        """Delete nodes silent for more than ``stale_after`` seconds, and their sockets.

        Returns the ids of the nodes removed.
        """

    @abstractmethod
    async def remove_node(self, node_id: str) -> None:
        """Delete a node and its sockets (at a clean shutdown)."""

    @abstractmethod
    async def list_nodes(self) -> list[NodeInfo]:
        """Every registered node, by id."""

    @abstractmethod
    async def add_presence(self, presences: Sequence[Presence]) -> None:
        """Register open sockets (re-registering one is harmless)."""

    async def attach(
        self, presence: Presence, max_sockets: int | None = None
    ) -> tuple[UnseenCount, list[str]]:
        """A socket opens: register it (as :meth:`add_presence`), and return its user's count
        and its session's topics, marked active (as :meth:`count` and :meth:`session_topics`).
        Stores do it in one round trip; this default makes three.

        Raises:
            TooManyConnections: the user already has ``max_sockets`` registered sockets (on
                every node); nothing was registered. Connects racing on several nodes may
                each see room, so the cap may be passed by a few.
        """
        if max_sockets is not None:
            held = len(await self.presence(user_id=presence.user_id))
            if held >= max_sockets:
                raise TooManyConnections(f"{presence.user_id} holds {held} sockets")
        await self.add_presence([presence])
        count = await self.count(presence.user_id)
        return count, await self.session_topics(presence.user_id, presence.session_id)

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
    ) -> tuple[Device, UnseenCount, list[str]]:
        """A device's socket opens: :meth:`bind_device` with ``connection_id``, then
        :meth:`attach` of the socket under the device's id, in ``session_id`` (the device's
        id when None). Returns the device, the user's count and the session's topics. The
        SQLite store does it in one write; this default makes the two calls.

        Raises:
            TooManyConnections: as :meth:`attach`, with the device (bound all the same) as
                its ``device``.
        """
        device = await self.bind_device(user_id, connection_id)
        presence = Presence(
            socket_id,
            device.connection_id,
            user_id,
            session_id or device.connection_id,
            node_id,
            connected_since,
        )
        try:
            count, topics = await self.attach(presence, max_sockets)
        except TooManyConnections as exc:
            exc.device = device
            raise
        return device, count, topics

    @abstractmethod
    async def remove_presence(self, socket_id: str) -> None:
        """Forget a closed socket."""

    @abstractmethod
    async def presence(
        self, *, user_id: str | None = None, node_id: str | None = None
    ) -> list[Presence]:
        """Open sockets of a user, a node, or all, oldest first."""

    # Service clients

    @abstractmethod
    async def create_client(
        self, client_id: str, name: str, scopes: Iterable[str], secret_hash: str
    ) -> ServiceClient:
        """Register an OAuth2 client; the secret is stored only as ``secret_hash``."""

    @abstractmethod
    async def get_client(self, client_id: str) -> ServiceClient | None:
        """The client, or ``None`` if unknown or deleted."""

    @abstractmethod
    async def list_clients(self) -> list[ServiceClient]:
        """Every registered client, oldest first."""

    @abstractmethod
    async def delete_client(self, client_id: str) -> bool:
        """Remove a client; ``True`` if it existed. Tokens it holds expire on their own."""

    # Keys

    @abstractmethod
    async def get_or_create_key(self, name: str, factory: Callable[[], str]) -> str:
        """A server-wide secret, created once with ``factory`` and shared by every node."""
