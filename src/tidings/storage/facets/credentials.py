"""The :class:`CredentialStore` facet of :class:`~tidings.storage.base.Store`."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable

from tidings.core.models import ServiceClient


class CredentialStore(ABC):
    """Credentials: registered OAuth2 service clients and server-wide secret keys.

    Every method raises :class:`~tidings.errors.StoreUnavailable` when the database cannot be
    reached, having written nothing.
    """

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

    @abstractmethod
    async def get_or_create_key(self, name: str, factory: Callable[[], str]) -> str:
        """A server-wide secret, created once with ``factory`` and shared by every node."""
