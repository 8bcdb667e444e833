"""The :class:`PushTokenStore` facet of :class:`~tidings.storage.base.Store`."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from datetime import datetime

from tidings.core.models import PushReceipt, PushToken


class PushTokenStore(ABC):
    """Push tokens: each user's addresses at the push providers (APNs, FCM, Expo).

    A ``(platform, token)`` pair belongs to one user at a time: registering it for another
    user moves it (a phone signed into another account). Every method raises
    :class:`~tidings.errors.StoreUnavailable` when the database cannot be reached, having
    written nothing.
    """

    @abstractmethod
    async def register_push_token(
        self,
        user_id: str,
        platform: str,
        token: str,
        app_id: str | None,
        *,
        max_per_user: int,
    ) -> tuple[PushToken, bool]:
        """Register ``token`` for ``user_id``; ``(registration, created)``.

        The user's own token again: the same registration (its ``app_id`` updated), not
        created. Another user's: it moves, under a new id, created. Past ``max_per_user``
        tokens the user's least recently used one is dropped."""

    @abstractmethod
    async def push_tokens(self, user_id: str, platform: str | None = None) -> list[PushToken]:
        """The user's tokens (of ``platform`` only, if given), oldest first."""

    @abstractmethod
    async def push_tokens_of(
        self, user_ids: Sequence[str], platform: str
    ) -> dict[str, list[PushToken]]:
        """Each user's tokens of ``platform``, oldest first, in one read (every user of
        ``user_ids`` is a key; ``[]`` for one with none)."""

    @abstractmethod
    async def delete_push_token(self, user_id: str, token_id: str) -> bool:
        """Remove the user's registration ``token_id``; ``False`` if the user has none by
        that id (another user's id included: nothing changes)."""

    @abstractmethod
    async def remove_push_token(self, platform: str, token: str) -> bool:
        """Remove a token the provider said is gone, whoever holds it; ``True`` if it was
        registered."""

    @abstractmethod
    async def touch_push_tokens(self, token_ids: Sequence[str]) -> None:
        """Record that a send used these registrations now."""

    @abstractmethod
    async def add_push_receipts(
        self, platform: str, receipts: Sequence[PushReceipt], due_at: datetime
    ) -> None:
        """Keep receipts to ask the provider for from ``due_at`` (a receipt id already kept
        is left as it is)."""

    @abstractmethod
    async def due_push_receipts(self, platform: str, limit: int, lease: float) -> list[PushReceipt]:
        """Up to ``limit`` receipts of ``platform`` that are due and that no node is checking,
        oldest first; each is the caller's for ``lease`` seconds (then due again, if still
        kept)."""

    @abstractmethod
    async def drop_push_receipts(self, receipt_ids: Sequence[str]) -> None:
        """Forget receipts: answered, or given up."""
