"""One device connection: a bounded outbound queue drained by its own writer.

Producers (bus events, replies) never await the socket: :meth:`Connection.push` appends to a
queue and returns. The writer sends everything queued in one pass, so a burst costs one task
switch, and a client that stops reading stalls only its own writer. When its queue is full the
connection is closed with 1013 (try again later): on reconnection the device gets the current
count, so nothing it needs is lost.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from tidings.core.models import Presence, utcnow
from tidings.gateway import protocol
from tidings.storage._common import new_id

logger = logging.getLogger("tidings.gateway")

Send = Callable[[dict[str, Any]], Awaitable[None]]


class Connection:
    """A device connected to this node."""

    __slots__ = (
        "_closed",
        "_drained",
        "_queue",
        "_queued_bytes",
        "_send",
        "_wakeup",
        "_writer",
        "claims",
        "close_code",
        "close_reason",
        "connected_since",
        "connection_id",
        "deliver",
        "delivered_upto",
        "delivery",
        "delivery_again",
        "last_version",
        "max_queue",
        "pause_bytes",
        "replaying",
        "session_id",
        "socket_id",
        "topic_seq",
        "topics",
        "user_id",
    )

    def __init__(
        self,
        send: Send,
        *,
        connection_id: str,
        user_id: str,
        session_id: str,
        max_queue: int = 1024,
        pause_bytes: int = 4 * 1024 * 1024,
        deliver: bool = False,
        claims: dict[str, Any] | None = None,
    ) -> None:
        self._send = send
        self.connection_id = connection_id
        self.user_id = user_id
        self.session_id = session_id
        #: the device token's claims (topic policies may read them)
        self.claims = claims or {}
        #: topics this socket receives, the last seq sent of each, and topics being replayed
        #: (live messages wait in the list meanwhile, to keep order)
        self.topics: set[str] = set()
        self.topic_seq: dict[str, int] = {}
        self.replaying: dict[str, list[tuple[int, str]]] = {}
        #: deliver mode: notifications are pushed and must be acknowledged
        self.deliver = deliver
        #: highest log position pushed on this socket (deliver mode)
        self.delivered_upto = 0
        self.delivery: asyncio.Task[None] | None = None
        self.delivery_again = False
        #: this socket's row in the cluster's notification_registry
        self.socket_id = new_id()
        self.connected_since = utcnow()
        self.max_queue = max_queue
        #: version of the last count sent; older counts are dropped so the badge never regresses
        self.last_version = -1
        #: reading from the client pauses while more than this many bytes wait to be sent
        self.pause_bytes = pause_bytes
        self._queue: deque[str] = deque()
        self._queued_bytes = 0
        self._drained = asyncio.Event()
        self._drained.set()
        self._wakeup = asyncio.Event()
        self._closed = False
        self._writer: asyncio.Task[None] | None = None
        self.close_code: int | None = None
        self.close_reason = ""

    def presence(self, node_id: str) -> Presence:
        return Presence(
            self.socket_id,
            self.connection_id,
            self.user_id,
            self.session_id,
            node_id,
            self.connected_since,
        )

    @property
    def closed(self) -> bool:
        return self._closed

    def push(self, text: str) -> None:
        """Queue a frame. A full queue closes the connection as too slow."""
        if self._closed:
            return
        if len(self._queue) >= self.max_queue:
            logger.warning(
                "closing slow connection %s of user %s: %d frames queued",
                self.connection_id,
                self.user_id,
                len(self._queue),
            )
            self.close(protocol.CLOSE_TRY_AGAIN_LATER, "client too slow")
            return
        self._queue.append(text)
        self._queued_bytes += len(text)
        if self._queued_bytes > self.pause_bytes:
            self._drained.clear()
        self._wakeup.set()

    def push_count(self, count: int, version: int, text: str | None = None) -> None:
        """Queue a count frame unless the device already has this version or a newer one."""
        if version <= self.last_version:
            return
        self.last_version = version
        self.push(text if text is not None else protocol.count_changed(count, version))

    def push_topic(self, topic: str, seq: int, text: str) -> None:
        """Queue a topic message unless this socket already had it (or is replaying)."""
        waiting = self.replaying.get(topic)
        if waiting is not None:
            waiting.append((seq, text))
        elif seq > self.topic_seq.get(topic, 0):
            self.topic_seq[topic] = seq
            self.push(text)

    def close(
        self, code: int = protocol.CLOSE_NORMAL, reason: str = "", *, flush: bool = False
    ) -> None:
        """Ask the writer to stop. Frames still queued are dropped, or with ``flush`` sent
        first (for a close the client asked for, never for a slow one)."""
        if self._closed:
            return
        self._closed = True
        self.close_code = code
        self.close_reason = reason
        if self.delivery is not None and not self.delivery.done():
            self.delivery.cancel()
        if flush:
            self._wakeup.set()
            return
        self._queue.clear()
        self._queued_bytes = 0
        self._drained.set()
        self._wakeup.set()
        # A writer blocked on a client that stopped reading would never see the flag.
        if self._writer is not None and not self._writer.done():
            self._writer.cancel()

    async def wait_writable(self) -> None:
        """Return once the queued bytes are under ``pause_bytes`` (or the connection closed)."""
        await self._drained.wait()

    def start_writer(self) -> asyncio.Task[None]:
        """Start the task that drains the queue into the socket."""
        self._writer = asyncio.create_task(self._write_loop())
        return self._writer

    async def _write_loop(self) -> None:
        queue, send = self._queue, self._send
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while queue:
                text = queue.popleft()
                await send({"type": "websocket.send", "text": text})
                self._queued_bytes -= len(text)
                if self._queued_bytes <= self.pause_bytes:
                    self._drained.set()
            if self._closed:
                return
