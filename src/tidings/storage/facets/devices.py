"""The :class:`DeviceStore` facet of :class:`~tidings.storage.base.Store`."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

from tidings.core.models import AckResult, Device, Notification, NotificationState, QueueGap


class DeviceStore(ABC):
    """Devices and their queues: what each device of a user has still to acknowledge.

    Every method raises :class:`~tidings.errors.StoreUnavailable` when the database cannot be
    reached, having written nothing.
    """

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
    async def devices_of(self, user_id: str, limit: int = 100) -> list[Device]:
        """The user's devices, connected or not, the most recently seen first."""

    @abstractmethod
    async def take_retained(self, connection_id: str, user_id: str) -> int:
        """How many notifications retention removed from the device's queue since this was
        last asked (0 for an unknown device); the number starts again from 0."""

    @abstractmethod
    async def forget_device(self, user_id: str, connection_id: str) -> bool:
        """Delete the device and its queue (logout); ``True`` if it existed."""

    @abstractmethod
    async def notification_state(
        self, user_id: str, notification_id: str
    ) -> NotificationState | None:
        """Whether the user's notification was seen, read, or acknowledged by one of the user's
        devices that existed when it was created (a later device's queue starts after it);
        None for an unknown id or another user's."""

    @abstractmethod
    async def queue_depths(self, devices: Sequence[tuple[str, str]]) -> dict[str, int]:
        """How many notifications wait in the queues of ``(connection_id, user_id)`` devices,
        by connection id (unknown devices are left out), in one round trip."""

    async def queue_depth(self, connection_id: str, user_id: str) -> int:
        """How many notifications wait in a device's queue (0 for an unknown device)."""
        return (await self.queue_depths([(connection_id, user_id)])).get(connection_id, 0)
