"""The :class:`UserStore` facet of :class:`~tidings.storage.base.Store`."""

from __future__ import annotations

from abc import ABC, abstractmethod


class UserStore(ABC):
    """What the store holds about a user, as a whole."""

    @abstractmethod
    async def erase_user(self, user_id: str) -> dict[str, int]:
        """Delete everything the store holds about ``user_id``, in one transaction: their
        notifications and count, devices and the devices' queues, the registry rows of their
        sockets, their topic sessions, push tokens and push receipts still to check. How many
        rows of each went, by kind (``notifications``, ``devices``, ``sockets``, ``sessions``,
        ``push_tokens``); all zero for a user the store does not know.

        The count's row stays (or is made), at 0 and one version higher: devices that sign
        in again must never take a later count for an older one (clients keep the highest
        version they saw), and the nodes tell the sockets opened before the erasure from
        those opened after by it; it holds the user id and its numbers, nothing else."""
