"""Notifications and unseen counts: writing them, and telling every device of the new count
(a count event with its version on the bus; this node's sockets straight away if the bus
refuses it)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from tidings.bus import Bus
from tidings.core import events
from tidings.core.counters import Counters
from tidings.core.limits import (
    DEFAULT_UNSEEN_LIMIT,
    MAX_CATEGORY_LENGTH,
    MAX_ID_LENGTH,
    MAX_USER_ID_LENGTH,
)
from tidings.core.models import (
    MarkSeenResult,
    NewNotification,
    Notification,
    NotifyResult,
    StateChange,
    UnseenCount,
)
from tidings.errors import BusError, Conflict, InvalidArgument, TidingsError
from tidings.fanout import codec
from tidings.fanout.registry import Registry, user_channel
from tidings.services.checks import check_data, check_identifier, check_ids
from tidings.services.queues import Queues
from tidings.services.republish import Republisher
from tidings.services.stores import NotificationStore

logger = logging.getLogger("tidings")


def _ignore_count(count: UnseenCount) -> None:
    pass


def _ignore(seconds: float) -> None:
    pass


class Counts:
    """Notifications, unseen counts and their delivery to the devices of one node."""

    def __init__(
        self,
        store: NotificationStore,
        bus: Bus,
        registry: Registry,
        queues: Queues,
        republisher: Republisher,
        counters: Counters,
        *,
        node_id: str,
        max_data_size: int,
        max_batch_size: int,
        max_unseen_page: int,
        max_unseen_bytes: int,
        observe_notify: Callable[[float], None] = _ignore,
        on_count: Callable[[UnseenCount], None] = _ignore_count,
    ) -> None:
        self.store = store
        self.bus = bus
        self.registry = registry
        self.queues = queues
        self.republisher = republisher
        self.counters = counters
        self.node_id = node_id
        self.max_data_size = max_data_size
        self.max_batch_size = max_batch_size
        self.max_unseen_page = max_unseen_page
        self.max_unseen_bytes = max_unseen_bytes
        #: told the seconds each notify took, from the call to its count event
        self.observe_notify = observe_notify
        #: told every count this node committed (the phones' badges follow it)
        self.on_count = on_count

    async def notify(
        self,
        user_id: str,
        data: Any,
        *,
        notification_id: str | None = None,
        category: str | None = None,
    ) -> NotifyResult:
        """Persist a notification for ``user_id`` and push the new count to every device
        (see :meth:`tidings.Tidings.notify`)."""
        self.check(NewNotification(user_id, data, notification_id, category))
        # Shielded: once the write is under way, its count is published even if the caller is
        # cancelled (a timeout, a closed connection), so devices never miss a committed change.
        return await asyncio.shield(self._notify(user_id, data, notification_id, category))

    async def _notify(
        self, user_id: str, data: Any, notification_id: str | None, category: str | None
    ) -> NotifyResult:
        started = time.perf_counter()
        result = await self.store.create_notification(user_id, data, notification_id, category)
        if result.count is not None:
            await self.publish_count(result.count, result.notification.seq)
        self.observe_notify(time.perf_counter() - started)
        return result

    async def notify_many(
        self, items: Sequence[NewNotification]
    ) -> list[NotifyResult | TidingsError]:
        """Persist a batch of notifications and push each user's new count once; per item
        its result or the error that refused it (see :meth:`tidings.Tidings.notify_many`)."""
        results, valid = self.check_batch(items)
        if valid:
            written = iter(await asyncio.shield(self._notify_many(valid)))
            results = [next(written) if r is None else r for r in results]
        return [r for r in results if r is not None]

    def check(self, item: NewNotification) -> None:
        """Refuse a notification's bad ids or data before anything is written.

        Raises:
            InvalidArgument: a bad ``user_id``, ``notification_id`` or ``category``, or data
                that is not JSON.
            PayloadTooLarge: data over ``max_data_size``.
        """
        check_identifier("user_id", item.user_id, MAX_USER_ID_LENGTH)
        if item.notification_id is not None:
            check_identifier("notification_id", item.notification_id, MAX_ID_LENGTH)
        if item.category is not None:
            check_identifier("category", item.category, MAX_CATEGORY_LENGTH)
        check_data(item.data, self.max_data_size)

    def check_batch(
        self, items: Sequence[NewNotification]
    ) -> tuple[list[NotifyResult | TidingsError | None], list[NewNotification]]:
        """A batch's checks: per item the error that refuses it or ``None``, and the items
        to write.

        Raises:
            InvalidArgument: more than ``max_batch_size`` items.
        """
        if len(items) > self.max_batch_size:
            raise InvalidArgument(f"at most {self.max_batch_size} items per batch")
        results: list[NotifyResult | TidingsError | None] = []
        valid: list[NewNotification] = []
        for item in items:
            try:
                self.check(item)
            except TidingsError as exc:
                results.append(exc)
                continue
            results.append(None)
            valid.append(item)
        return results, valid

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
            await asyncio.gather(*(self.publish_count(c, seq) for c, seq in latest.values()))
        return results

    async def unseen(self, user_id: str, limit: int = DEFAULT_UNSEEN_LIMIT) -> list[Notification]:
        """The user's oldest unseen notifications, in creation order (they stay unseen)."""
        if not 0 < limit <= self.max_unseen_page:
            raise InvalidArgument(f"limit must be from 1 to {self.max_unseen_page}")
        return await self.store.unseen(user_id, limit, self.max_unseen_bytes)

    async def mark_seen(self, user_id: str, notification_ids: Sequence[str]) -> MarkSeenResult:
        """Mark notifications of ``user_id`` seen; every device of the user gets the new count.

        Raises:
            NotFound: an id is unknown or another user's; nothing was changed.
        """
        check_ids(user_id, notification_ids)
        return await asyncio.shield(self._mark_seen(user_id, notification_ids))

    async def _mark_seen(self, user_id: str, notification_ids: Sequence[str]) -> MarkSeenResult:
        result = await self.store.mark_seen(user_id, notification_ids)
        if result.count is not None:
            await self.publish_count(result.count)
        return result

    async def mark_all_seen(self, user_id: str) -> MarkSeenResult:
        """Mark everything unseen of ``user_id`` seen (one change); every device of the user
        gets the new count."""
        check_identifier("user_id", user_id, MAX_USER_ID_LENGTH)
        return await asyncio.shield(self._mark_all_seen(user_id))

    async def _mark_all_seen(self, user_id: str) -> MarkSeenResult:
        result = await self.store.mark_all_seen(user_id)
        if result.count is not None:
            await self.publish_count(result.count)
        return result

    async def change_state(
        self, user_id: str, change: StateChange, notification_ids: Sequence[str] | None
    ) -> MarkSeenResult:
        """Read, archive or unarchive notifications of ``user_id`` (``None``: all of them);
        when anything changed, every device of the user gets the counts.

        Raises:
            NotFound: an id is unknown or another user's; nothing was changed.
        """
        if notification_ids is None:
            check_identifier("user_id", user_id, MAX_USER_ID_LENGTH)
        else:
            check_ids(user_id, notification_ids)
        return await asyncio.shield(self._change_state(user_id, change, notification_ids))

    async def _change_state(
        self, user_id: str, change: StateChange, notification_ids: Sequence[str] | None
    ) -> MarkSeenResult:
        result = await self.store.change_state(user_id, change, notification_ids)
        if result.count is not None:
            await self.publish_count(result.count)
        return result

    async def count(self, user_id: str) -> UnseenCount:
        """The user's unseen count and its version."""
        return await self.store.count(user_id)

    async def publish_count(self, count: UnseenCount, seq: int = 0) -> None:
        """Tell every node of a committed count (``seq``: the notification that made it)."""
        self.on_count(count)
        payload = events.encode_count(count, self.node_id, seq)
        channel = user_channel(count.user_id)
        try:
            await self.bus.publish(channel, payload)
        except BusError as exc:
            self.counters.bus_publish_failures += 1
            # Committed already: reach this node's devices now, and keep re-publishing the
            # user's latest count until the bus takes it (versions make repeats harmless).
            logger.warning("count event for %s not published: %s", count.user_id, exc)
            self.deliver(count, seq)
            self.republisher.retry_later(("count", count.user_id), channel, payload, count.version)

    def deliver(self, count: UnseenCount, seq: int = 0) -> None:
        """Push a count to the user's sockets here; a new notification (``seq``) also wakes
        the queues of the user's devices in deliver mode."""
        text = codec.counts_frame(count)
        self.registry.deliver_count(count.user_id, count.count, count.version, text)
        if seq:
            for conn in self.registry.connections(count.user_id):
                if conn.deliver and seq > conn.delivered_upto:
                    self.queues.schedule_delivery(conn)

    async def resync(self) -> None:
        """Re-read and push the count of every user with a socket here (after a bus outage:
        count events may have been lost)."""
        for user_id in {c.user_id for c in self.registry}:
            try:
                self.deliver(await self.store.count(user_id))
            except TidingsError as exc:
                logger.warning("count resync for %s failed: %s", user_id, exc)
