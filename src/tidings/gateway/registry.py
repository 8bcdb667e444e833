"""The node-local registry: which devices of which users are connected here.

It also keeps the node subscribed to exactly the bus channels of the users it holds devices
of: the first device of a user subscribes ``user:<id>``, the last one to leave unsubscribes, so
the cost of an event does not grow with the number of nodes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterator

from tidings.bus.base import Bus
from tidings.errors import BusError
from tidings.gateway.connection import Connection

logger = logging.getLogger("tidings.gateway")


def user_channel(user_id: str) -> str:
    return f"user:{user_id}"


class Registry:
    """Connections of this node, by user."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self._users: dict[str, set[Connection]] = {}
        # The last bus operation per channel: operations on one channel run in order.
        self._ops: dict[str, asyncio.Task[None]] = {}

    def __len__(self) -> int:
        return sum(len(conns) for conns in self._users.values())

    def __iter__(self) -> Iterator[Connection]:
        for conns in tuple(self._users.values()):
            yield from tuple(conns)

    @property
    def user_count(self) -> int:
        return len(self._users)

    def connections(self, user_id: str) -> set[Connection]:
        return self._users.get(user_id, set())

    async def add(self, conn: Connection) -> None:
        """Register ``conn``; returns once the node receives its user's events."""
        conns = self._users.get(conn.user_id)
        channel = user_channel(conn.user_id)
        if conns is None:
            self._users[conn.user_id] = {conn}
            self._chain(channel, self.bus.subscribe)
        else:
            conns.add(conn)
        pending = self._ops.get(channel)
        if pending is not None:
            # Shielded: a device that disconnects meanwhile must not cancel the subscription
            # another device of the same user is waiting for.
            with contextlib.suppress(BusError):
                await asyncio.shield(pending)

    def remove(self, conn: Connection) -> None:
        conns = self._users.get(conn.user_id)
        if conns is None or conn not in conns:
            return
        conns.discard(conn)
        if not conns:
            del self._users[conn.user_id]
            self._chain(user_channel(conn.user_id), self.bus.unsubscribe)

    def _chain(self, channel: str, op: Callable[[str], Awaitable[None]]) -> None:
        previous = self._ops.get(channel)

        async def run() -> None:
            if previous is not None:
                await asyncio.wait([previous])
            try:
                await op(channel)
            except BusError as exc:
                # The bus restores its subscriptions when it comes back; local delivery goes on.
                logger.warning("bus %s of %s failed: %s", op.__name__, channel, exc)
                raise

        task = asyncio.create_task(run())
        self._ops[channel] = task

        def forget(done: asyncio.Task[None]) -> None:
            if self._ops.get(channel) is done:
                del self._ops[channel]
            if not done.cancelled():
                done.exception()  # retrieved: logged above

        task.add_done_callback(forget)

    def deliver_count(self, user_id: str, count: int, version: int, text: str) -> int:
        """Queue a count frame to every device of ``user_id`` here; returns how many."""
        conns = self._users.get(user_id)
        if not conns:
            return 0
        for conn in conns:
            conn.push_count(count, version, text)
        return len(conns)

    async def drain(self) -> None:
        """Wait for pending bus operations (used at shutdown and in tests)."""
        while self._ops:
            await asyncio.wait(list(self._ops.values()))
