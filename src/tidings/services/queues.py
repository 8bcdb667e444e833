"""Durable device queues (deliver mode): pushing what a device has not acknowledged,
acknowledgements, queue limits, and forgetting a device."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

from tidings.bus import Bus
from tidings.core import events
from tidings.core.models import AckResult, Notification, QueueGap
from tidings.errors import BusError, NotFound, StoreUnavailable
from tidings.fanout import codec
from tidings.fanout.connection import Connection
from tidings.fanout.registry import Registry, user_channel
from tidings.services.checks import check_ids
from tidings.services.stores import QueueStore

logger = logging.getLogger("tidings")

#: notifications read from a queue per store call
PAGE_SIZE = 100


class Queues:
    """The durable queues of the devices in deliver mode connected to one node."""

    def __init__(
        self,
        store: QueueStore,
        bus: Bus,
        registry: Registry,
        *,
        node_id: str,
        max_length: int | None = None,
        max_age: float | None = None,
        retention: bool = False,
    ) -> None:
        self.store = store
        self.bus = bus
        self.registry = registry
        self.node_id = node_id
        # Limits of the operator's, applied when a device's socket opens its queue.
        self.max_length = max_length
        self.max_age = max_age
        #: whether history retention may remove what waits in queues (told with queueGap)
        self.retention = retention

    def schedule_delivery(self, conn: Connection) -> None:
        """Push what ``conn``'s device has not acknowledged, beyond what it was sent."""
        if conn.closed:
            return
        if conn.delivery is not None and not conn.delivery.done():
            conn.delivery_again = True  # the running pass reads once more when done
            return
        conn.delivery = asyncio.create_task(self._deliver(conn))

    async def _deliver(self, conn: Connection) -> None:
        delay = 0.5
        while not conn.closed:
            conn.delivery_again = False
            try:
                while True:
                    await conn.wait_room(PAGE_SIZE)
                    page = await self.store.pending(
                        conn.connection_id, conn.user_id, conn.delivered_upto, PAGE_SIZE
                    )
                    for note in page:
                        conn.push(codec.notification(note))
                        conn.delivered_upto = note.seq
                    if len(page) < PAGE_SIZE:
                        break
            except NotFound:
                conn.close(codec.CLOSE_NORMAL, "device forgotten")
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

    @property
    def page_on_open(self) -> int:
        """How many notifications of a deliver-mode device's queue its socket's opening reads
        together with its count (one round trip fewer): a page, unless queue limits or
        retention must change the queue before it is read (0)."""
        return 0 if (self.max_length or self.max_age or self.retention) else PAGE_SIZE

    async def open_queue(
        self, conn: Connection, first: Sequence[Notification] | None = None, version: int = -1
    ) -> QueueGap | None:
        """Put ``conn`` in deliver mode: apply the queue limits (telling the device of any
        gap with a ``queueGap`` frame), then push the device's queue.

        ``first``: the queue's first page as the socket's opening read it (at most
        :attr:`page_on_open`), with the counts of ``version``. It is pushed at once; the queue
        is read again only if the page was full or a change came after that read (the
        socket's count is newer than ``version``: events before deliver mode do not wake the
        queue)."""
        conn.deliver = True
        if first is not None:
            for note in first:
                conn.push(codec.notification(note))
                conn.delivered_upto = note.seq
            if len(first) >= self.page_on_open or conn.last_version > version:
                self.schedule_delivery(conn)
            return None
        gap = None
        if self.max_length or self.max_age:
            gap = await self.store.trim_queue(
                conn.connection_id,
                conn.user_id,
                max_length=self.max_length,
                max_age=self.max_age,
            )
        if gap is not None:
            conn.push(codec.queue_gap(gap.reason, gap.skipped))
        if self.retention:
            removed = await self.store.take_retained(conn.connection_id, conn.user_id)
            if removed:
                conn.push(codec.queue_gap("retention", removed))
        self.schedule_delivery(conn)
        return gap

    async def ack(
        self, user_id: str, connection_id: str, notification_ids: Sequence[str]
    ) -> AckResult:
        """Remove notifications from a device's queue.

        Raises:
            NotFound: an id or the device is unknown or not the user's; nothing changed.
        """
        check_ids(user_id, notification_ids)
        return await self.store.ack(connection_id, user_id, notification_ids)

    async def pending(
        self, user_id: str, connection_id: str, limit: int = 100
    ) -> list[Notification]:
        """The oldest notifications waiting in a device's queue."""
        return await self.store.pending(connection_id, user_id, 0, limit)

    async def notification_log(
        self, after: str = "", limit: int = 500
    ) -> tuple[list[Notification], str]:
        """Every notification after an opaque log position, and the next position."""
        return await self.store.notification_log(after, limit)

    async def forget_device(
        self,
        user_id: str,
        connection_id: str,
        *,
        before_close: str | None = None,
        invalidate: Callable[[str], None] | None = None,
    ) -> bool:
        """Delete a device and its queue; its sockets on every node are closed.

        ``before_close`` is a frame sent to the device's sockets here before they close;
        ``invalidate`` is called with the user id once the device is deleted (a cache of the
        user's credentials to drop).
        """
        forgotten = await self.store.forget_device(user_id, connection_id)
        if invalidate is not None:
            invalidate(user_id)
        if before_close is not None:
            for conn in self.registry.connections(user_id):
                if conn.connection_id == connection_id:
                    conn.push(before_close)
        self.close_device(user_id, connection_id)
        if forgotten:
            payload = events.encode_device_forgotten(user_id, connection_id, self.node_id)
            try:
                await self.bus.publish(user_channel(user_id), payload)
            except BusError as exc:
                # Its sockets elsewhere find the device gone at their next queue read.
                logger.warning("device-forgotten event not published: %s", exc)
        return forgotten

    async def erase_user(
        self, user_id: str, *, invalidate: Callable[[str], None] | None = None
    ) -> dict[str, int]:
        """Delete what the store holds about the user (notifications, devices and their
        queues, sessions, push tokens); the user's sockets on every node are closed.

        ``invalidate`` is called with the user id once the rows are gone.
        """
        erased = await self.store.erase_user(user_id)
        if invalidate is not None:
            invalidate(user_id)
        self.close_user(user_id)
        try:
            version = (await self.store.count(user_id)).version
            await self.bus.publish(
                user_channel(user_id), events.encode_user_erased(user_id, self.node_id, version)
            )
        except (BusError, StoreUnavailable) as exc:
            # Its sockets elsewhere find their device gone at their next queue read.
            logger.warning("user-erased event not published: %s", exc)
        return erased

    def close_user(self, user_id: str, version: int | None = None) -> None:
        """Close the user's sockets on this node (the user was erased): all of them, or with
        the erasure's count ``version`` those opened before it (a socket that had no count
        yet is decided when it gets its first)."""
        for conn in list(self.registry.connections(user_id)):
            if version is not None and conn.last_version >= version:
                continue  # signed in after the erasure
            if version is not None and conn.last_version < 0:
                conn.erased_below = version
                continue
            conn.close(codec.CLOSE_NORMAL, "user erased", flush=False)

    def close_device(self, user_id: str, connection_id: str) -> None:
        """Close the device's sockets on this node (it was forgotten)."""
        for conn in list(self.registry.connections(user_id)):
            if conn.connection_id == connection_id:
                conn.close(codec.CLOSE_NORMAL, "device forgotten", flush=True)
