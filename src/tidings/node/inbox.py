"""The inbox's operations of :class:`~tidings.node.tidings.Tidings`: a user's history page by
page, and the changes of state beside ``markSeen`` (everything seen, read, archived)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from tidings.core.models import MarkSeenResult, Notification, StateChange

if TYPE_CHECKING:
    from tidings.services.counts import Counts
    from tidings.services.history import History


class Inbox:
    """Mixed into :class:`~tidings.node.tidings.Tidings`, which sets ``counts`` and
    ``history``."""

    counts: Counts
    history: History

    async def notifications(
        self,
        user_id: str,
        *,
        state: str = "all",
        category: str | None = None,
        cursor: str | None = None,
        limit: int = 50,
    ) -> tuple[list[Notification], str | None]:
        """A page of the user's history, newest first (``state``: all, unseen, unread or
        archived; ``category``), and the cursor of the next page (``None`` at the end).

        Raises:
            InvalidArgument: an unknown state, a bad limit, or a cursor that is not this
                user's for these filters.
        """
        return await self.history.page(user_id, state, category, cursor, limit)

    async def mark_all_seen(self, user_id: str) -> MarkSeenResult:
        """Mark everything unseen of the user seen, as one change of the count; every device
        of the user gets it."""
        return await self.counts.mark_all_seen(user_id)

    async def change_state(
        self, user_id: str, change: StateChange, ids: Sequence[str] | None
    ) -> MarkSeenResult:
        """Read, archive or unarchive the user's notifications (``ids`` ``None``: all of
        them). Reading and archiving see what was unseen: every device of the user gets the
        new count.

        Raises:
            NotFound: an id is unknown or another user's; nothing was changed.
        """
        return await self.counts.change_state(user_id, change, ids)
