"""The :class:`Store` interface every storage backend implements: the facets of
:mod:`tidings.storage.facets`, plus the lifecycle and the operations that span facets."""

from __future__ import annotations

from abc import abstractmethod
from datetime import datetime

from tidings.core.lifecycle import Lifecycle
from tidings.core.models import Opened, Presence, UnseenCount
from tidings.errors import TooManyConnections
from tidings.storage.facets import (
    ClusterStore,
    CredentialStore,
    DeviceStore,
    NotificationStore,
    PushTokenStore,
    RetentionStore,
    TopicStore,
    UserStore,
)


class Store(
    Lifecycle,
    NotificationStore,
    DeviceStore,
    TopicStore,
    ClusterStore,
    CredentialStore,
    PushTokenStore,
    RetentionStore,
    UserStore,
):
    """Durable state of tidings: every facet in one database.

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

    # Across facets

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
        queue: int = 0,
    ) -> Opened:
        """A device's socket opens: :meth:`bind_device` with ``connection_id``, then
        :meth:`attach` of the socket under the device's id, in ``session_id`` (the device's
        id when None), and with ``queue`` > 0 the first ``queue`` notifications of the
        device's queue (as :meth:`pending` from its cursor), read with the count. Returns the
        device, the user's count, the session's topics and that page. The SQLite store does it
        in one write and PostgreSQL in one statement (for a known device); this default makes
        the calls one by one.

        Raises:
            TooManyConnections: as :meth:`attach`, with the device (bound all the same) as
                its ``device``; no queue is read.
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
        page = await self.pending(device.connection_id, user_id, 0, queue) if queue > 0 else []
        return Opened(device, count, topics, page)
