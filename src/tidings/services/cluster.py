"""Cluster membership: a node's row and its sockets' presence in the store, its heartbeat,
and reaping the nodes that went silent."""

from __future__ import annotations

import asyncio
import logging

from tidings.errors import TidingsError
from tidings.fanout.connection import Connection
from tidings.fanout.registry import Registry
from tidings.services.retention import Retention
from tidings.services.stores import ClusterStore

logger = logging.getLogger("tidings")

#: seconds between two sweeps of expired topic messages, idle sessions and old history
EXPIRY_INTERVAL = 60.0


class Cluster:
    """One node's membership of the cluster."""

    def __init__(
        self,
        store: ClusterStore,
        registry: Registry,
        *,
        node_id: str,
        node_uri: str,
        heartbeat_interval: float,
        node_timeout: float,
        session_ttl: float,
        retention: Retention | None = None,
    ) -> None:
        self.store = store
        self.registry = registry
        self.node_id = node_id
        self.node_uri = node_uri
        self.heartbeat_interval = heartbeat_interval
        self.node_timeout = node_timeout
        self.session_ttl = session_ttl
        self.retention = retention

    async def join(self) -> None:
        """Register the node (raises :class:`~tidings.errors.StoreUnavailable`)."""
        # Rows under this node's id are a previous life's (killed without its clean
        # shutdown): its sockets are gone, and would show as ghosts until reaped.
        await self.store.remove_node(self.node_id)
        await self.store.heartbeat(self.node_id, self.node_uri)

    async def leave(self) -> None:
        """Deregister the node and its sockets' presence (a failure is logged)."""
        try:
            await self.store.remove_node(self.node_id)
        except TidingsError as exc:
            logger.warning("could not deregister node %s: %s", self.node_id, exc)

    async def run(self) -> None:
        """Heartbeat, re-register after having been reaped, reap nodes that went silent,
        sweep what expired; until cancelled."""
        next_expiry = 0.0
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.heartbeat_interval)
            try:
                if loop.time() >= next_expiry:
                    # Every node does it; deleting what another node deleted is harmless.
                    next_expiry = loop.time() + EXPIRY_INTERVAL
                    await self._expire()
                await self._beat()
            except TidingsError as exc:
                logger.warning("cluster heartbeat failed: %s", exc)

    async def _expire(self) -> None:
        # Sessions with an open socket here stay alive however long they last.
        await self.store.touch_sessions(
            {(c.user_id, c.session_id) for c in self.registry if c.topics}
        )
        expired = await self.store.expire(self.session_ttl)
        if expired:
            logger.info("deleted %d expired topic messages", expired)
        if self.retention is not None:
            try:
                await self.retention.sweep()
            except Exception:  # a conflict with a concurrent change: the next sweep goes on
                logger.exception("retention sweep failed")

    async def _beat(self) -> None:
        if not await self.store.heartbeat(self.node_id, self.node_uri):
            # Another node took us for dead (a long pause): register our sockets again.
            logger.warning("node %s was reaped; registering its sockets again", self.node_id)
            await self.store.add_presence([c.presence(self.node_id) for c in self.registry])
        for node_id in await self.store.reap_nodes(self.node_timeout):
            logger.warning("node %s stopped heart-beating; its sockets were removed", node_id)

    async def forget_presence(self, conn: Connection) -> None:
        """Remove a closed socket's presence row (a failure is logged: the row goes when the
        node does)."""
        try:
            await self.store.remove_presence(conn.socket_id)
        except TidingsError as exc:
            logger.warning(
                "registry removal of %s failed: %s",
                conn.connection_id,
                exc,
                extra=conn.log_fields(),
            )
