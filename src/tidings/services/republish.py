"""Events the bus refused, published again in the background until it takes them."""

from __future__ import annotations

import asyncio
import logging

from tidings.bus import Bus
from tidings.core.limits import MAX_UNPUBLISHED
from tidings.errors import BusError

logger = logging.getLogger("tidings")


class Republisher:
    """Keeps the events the bus refused, keyed by what they are about, and re-publishes them.

    A key seen again keeps only the newer version (a count supersedes older counts); past
    :data:`~tidings.core.limits.MAX_UNPUBLISHED` keys the oldest is dropped (devices recover
    on reconnection).
    """

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self._unpublished: dict[tuple[str, ...], tuple[str, bytes, int]] = {}
        self._task: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        """Events waiting to be published again."""
        return len(self._unpublished)

    def retry_later(
        self, key: tuple[str, ...], channel: str, payload: bytes, version: int = 0
    ) -> None:
        """Re-publish ``payload`` on ``channel`` until the bus takes it."""
        previous = self._unpublished.get(key)
        if previous is None or previous[2] <= version:
            self._unpublished[key] = (channel, payload, version)
        if len(self._unpublished) > MAX_UNPUBLISHED:
            dropped = next(iter(self._unpublished))
            del self._unpublished[dropped]
            logger.warning(
                "dropping unpublished event %s; devices recover on reconnection", dropped
            )
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._republish())

    async def _republish(self) -> None:
        delay = 0.1
        while self._unpublished:
            await asyncio.sleep(delay)
            for key, entry in list(self._unpublished.items()):
                try:
                    await self.bus.publish(entry[0], entry[1])
                except BusError:
                    delay = min(delay * 2, 5.0)
                    break
                if self._unpublished.get(key) is entry:
                    del self._unpublished[key]
            else:
                delay = 0.1

    async def close(self) -> None:
        """Stop re-publishing (what is left is dropped)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
