"""Badges that never lie: when a user's unseen count changes (a notification, or reading on
another device), every phone of the user gets the new count as a silent badge update.

Updates are rate-limited per user: the first change is sent at once, changes within the next
``interval`` seconds are folded into one update with the latest count at its end (APNs
collapses them on the phone too). Only the node that committed the change sends it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Sequence
from typing import Any, Protocol, runtime_checkable

from tidings.core.models import UnseenCount

logger = logging.getLogger("tidings.pipeline")


@runtime_checkable
class BadgeChannel(Protocol):
    """A channel that can set the badge of a user's phones (:class:`ApnsChannel`)."""

    name: str

    async def send_badge(self, user_id: str, badge: int) -> None:
        """Send ``badge`` to every phone of the user on this channel, silently."""
        ...


class BadgeSync:
    """Sends each user's latest unseen count to their phones, at most once per ``interval``."""

    def __init__(self, channels: Sequence[BadgeChannel], interval: float) -> None:
        self.channels = list(channels)
        self.interval = interval
        #: users whose last update went out less than ``interval`` ago: the count still to send
        #: when it ends (``None``: nothing changed since)
        self._quiet: dict[str, UnseenCount | None] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    @property
    def active(self) -> bool:
        return bool(self.channels) and self.interval > 0 and not self._closed

    def changed(self, count: UnseenCount) -> None:
        """A committed count of ``count.user_id`` (called by the node that wrote it)."""
        if not self.active:
            return
        user_id = count.user_id
        if user_id in self._quiet:
            held = self._quiet[user_id]
            if held is None or count.version > held.version:
                self._quiet[user_id] = count  # folded into the update at the interval's end
            return
        self._quiet[user_id] = None
        self._spawn(self._run(count))

    async def _run(self, count: UnseenCount) -> None:
        user_id = count.user_id
        try:
            while True:
                await self._send(user_id, count.count)
                await asyncio.sleep(self.interval)
                latest = self._quiet.get(user_id)
                if latest is None:
                    return
                self._quiet[user_id] = None
                count = latest
        finally:
            self._quiet.pop(user_id, None)

    async def _send(self, user_id: str, badge: int) -> None:
        for channel in self.channels:
            try:
                await channel.send_badge(user_id, badge)
            except Exception as exc:  # a badge is best effort: the next change corrects it
                logger.warning("badge update for %s on %s failed: %s", user_id, channel.name, exc)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._quiet.clear()
