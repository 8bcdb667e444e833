"""The :class:`ClusterStore` facet of :class:`~tidings.storage.base.Store`."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

from tidings.core.models import NodeInfo, Presence


class ClusterStore(ABC):
    """Cluster presence: the live nodes and the sockets open on each (the notification registry).

    Every method raises :class:`~tidings.errors.StoreUnavailable` when the database cannot be
    reached, having written nothing.
    """

    @abstractmethod
    async def heartbeat(self, node_id: str, uri: str) -> bool:
        """Record that ``node_id`` is alive; ``False`` if its row was gone (it had been reaped,
        so the caller must register its sockets again)."""

    @abstractmethod
    async def reap_nodes(self, stale_after: float) -> list[str]:
        """Delete nodes silent for more than ``stale_after`` seconds, and their sockets.

        Returns the ids of the nodes removed.
        """

    @abstractmethod
    async def remove_node(self, node_id: str) -> None:
        """Delete a node and its sockets (at a clean shutdown)."""

    @abstractmethod
    async def list_nodes(self) -> list[NodeInfo]:
        """Every registered node, by id."""

    @abstractmethod
    async def add_presence(self, presences: Sequence[Presence]) -> None:
        """Register open sockets (re-registering one is harmless)."""

    @abstractmethod
    async def remove_presence(self, socket_id: str) -> None:
        """Forget a closed socket."""

    @abstractmethod
    async def presence(
        self, *, user_id: str | None = None, node_id: str | None = None
    ) -> list[Presence]:
        """Open sockets of a user, a node, or all, oldest first."""
