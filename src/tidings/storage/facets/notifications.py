"""The :class:`NotificationStore` facet of :class:`~tidings.storage.base.Store`."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

from tidings.core.models import (
    HistoryState,
    MarkSeenResult,
    NewNotification,
    Notification,
    NotifyResult,
    StateChange,
    UnseenCount,
)
from tidings.errors import Conflict


class NotificationStore(ABC):
    """Notifications and unseen counts: what a user is told, and how many are unseen.

    Counts are maintained in the transaction that changes them, so an event can carry the
    new ``(count, version)`` and no node ever re-counts; the version rises by one per change.

    Every method raises :class:`~tidings.errors.StoreUnavailable` when the database cannot be
    reached, having written nothing.
    """

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
                    await self.create_notification(
                        item.user_id, item.data, item.notification_id, item.category
                    )
                )
            except Conflict as exc:
                results.append(exc)
        return results

    @abstractmethod
    async def create_notification(
        self,
        user_id: str,
        data: Any,
        notification_id: str | None = None,
        category: str | None = None,
    ) -> NotifyResult:
        """Insert a notification (in ``category``, if given) and bump the user's unseen count,
        in one transaction.

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
    async def history(
        self,
        user_id: str,
        state: HistoryState,
        category: str | None,
        before: int | None,
        limit: int,
    ) -> list[Notification]:
        """The user's notifications newest first, up to ``limit``, with their inbox fields:
        those of ``state`` (``all``: not archived; ``unseen`` and ``unread``: not archived
        either; ``archived``), of ``category`` if given, created before the log position
        ``before`` if given (the ``seq`` of the last one of the page before)."""

    @abstractmethod
    async def mark_all_seen(self, user_id: str) -> MarkSeenResult:
        """Mark every notification of the user that is unseen now seen, in one transaction
        and one change of the count (the version rises once), however many they are;
        notifications created meanwhile by other transactions stay unseen."""

    @abstractmethod
    async def change_state(
        self, user_id: str, change: StateChange, notification_ids: Sequence[str] | None
    ) -> MarkSeenResult:
        """Read, archive or unarchive the listed notifications of the user (``None``: every
        one of the user at this moment), in one transaction: ``marked`` lists those whose
        state changed; ``count`` the counts after the change when anything changed (reading
        and archiving see and read what was not; the version rises once, even when no count
        moved), else ``None``.

        Raises:
            NotFound: a listed id is unknown or another user's; nothing was changed.
        """

    @abstractmethod
    async def count(self, user_id: str) -> UnseenCount:
        """The user's current unseen count and version (``0, 0`` for an unknown user)."""

    @abstractmethod
    async def counts(self, user_ids: Sequence[str]) -> dict[str, UnseenCount]:
        """Each user's unseen count and version, in one read (every user of ``user_ids`` is
        a key)."""

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
