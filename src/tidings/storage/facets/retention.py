"""The :class:`RetentionStore` facet of :class:`~tidings.storage.base.Store`."""

from __future__ import annotations

from abc import ABC, abstractmethod
from datetime import datetime

from tidings.core.models import Removed, RetentionScope


class RetentionStore(ABC):
    """Removing old history: notifications past an age, or past a number kept per user.

    A removal takes the notifications out of their users' counts in the same transaction
    (one change per user whose unseen or unread count fell), whatever their state.
    """

    @abstractmethod
    async def log_position_before(self, when: datetime) -> int:
        """The highest log position of a notification created before ``when`` (0: none).
        Positions rise with creation time, so a few probes of the log's key find it."""

    @abstractmethod
    async def remove_in_range(
        self, scope: RetentionScope, after: int, upto: int, limit: int
    ) -> Removed:
        """Remove up to ``limit`` notifications of ``scope`` with a log position in
        ``(after, upto]``, oldest first."""

    @abstractmethod
    async def users_notified_after(self, position: int, limit: int) -> tuple[list[str], int]:
        """The users of up to ``limit`` notifications past log ``position``, and the position
        of the last of them (``position`` itself when there are none)."""

    @abstractmethod
    async def remove_beyond(
        self, user_id: str, scope: RetentionScope, keep: int, limit: int
    ) -> Removed:
        """Remove up to ``limit`` notifications of ``user_id`` in ``scope`` older than the
        newest ``keep`` of them."""
