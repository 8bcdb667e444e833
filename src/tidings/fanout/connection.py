"""One device connection: a bounded outbound queue, drained by a writer only when needed.

Producers (bus events, replies) never await the socket: :meth:`Connection.push` returns at
once. When nothing is queued the frame is written right there: on tidings' own transport
(:mod:`tidings.gateway.transport`) by a plain call (``write_text``), on any other ASGI server by
starting its ``send`` eagerly (:mod:`tidings.fanout.eager`), which completes without waiting
unless the socket's buffer is full. That is most of the cost of a fan-out to a thousand
sockets; a fan-out pushes one :class:`~tidings.fanout.broadcast.Broadcast` to every socket so
that its frame is encoded once. Otherwise frames queue up and a writer task, started for the
occasion and gone once the queue is empty, sends them, so a client that stops reading stalls
only its own writer. When its queue is full the connection is closed with 1013
(try again later): on reconnection the device gets the current count, so nothing it needs is
lost.

An idle connection holds no task, event or future of its own: waiting (for room in the queue,
for the connection to end) creates a future for the occasion.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from tidings.core.codes import CloseCode
from tidings.core.counters import Counters
from tidings.core.ids import new_id
from tidings.core.models import Presence, utcnow
from tidings.fanout import codec as protocol
from tidings.fanout.broadcast import Text, text_of
from tidings.fanout.eager import send_eagerly

logger = logging.getLogger("tidings.gateway")

Send = Callable[[dict[str, Any]], Awaitable[None]]


class Connection:
    """A device connected to this node."""

    __slots__ = (
        "_closed",
        "_closer",
        "_direct",
        "_done",
        "_flush",
        "_live",
        "_queue",
        "_queued_bytes",
        "_send",
        "_space",
        "_writer",
        "claims",
        "close_code",
        "close_reason",
        "connected_since",
        "connection_id",
        "counters",
        "deliver",
        "delivered_upto",
        "delivery",
        "delivery_again",
        "erased_below",
        "last_version",
        "max_queue",
        "pause_bytes",
        "replaying",
        "session_id",
        "socket_id",
        "topic_above",
        "topic_seq",
        "topic_start",
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
        counters: Counters,
        max_queue: int = 1024,
        pause_bytes: int = 4 * 1024 * 1024,
        deliver: bool = False,
        claims: dict[str, Any] | None = None,
    ) -> None:
        self._send = send
        #: what this connection counts: its node's (``frames_out``, ``slow_closed``)
        self.counters = counters
        # tidings' own transport writes a text frame synchronously (False: buffer full)
        self._direct: Callable[[Text], bool] | None = getattr(
            getattr(send, "__self__", None), "write_text", None
        )
        self.connection_id = connection_id
        self.user_id = user_id
        self.session_id = session_id
        #: the device token's claims (topic policies may read them)
        self.claims = claims or {}
        #: topics this socket receives, the last seq sent of each, and topics being replayed
        #: (live messages wait in the list meanwhile, to keep order)
        self.topics: set[str] = set()
        #: per topic: every seq up to topic_seq was sent (or is not for this socket), and the
        #: seqs above it that were sent; messages may arrive out of order across publishers
        self.topic_seq: dict[str, int] = {}
        self.topic_above: dict[str, set[int]] = {}
        self.replaying: dict[str, list[tuple[int, Text]]] = {}
        #: per topic, its last seq when this socket joined it: a catch-up after a bus outage
        #: starts there, not at the topic's beginning (None until the socket follows a topic)
        self.topic_start: dict[str, int] | None = None
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
        #: set when its user was erased before this socket had its first count: the socket
        #: closes if that count is older than the erasure (it was opened before it)
        self.erased_below = 0
        #: reading from the client pauses while more than this many bytes wait to be sent
        self.pause_bytes = pause_bytes
        #: frames waiting to be sent (a deque only while there are some: an empty one costs
        #: 600 bytes, and most connections never queue)
        self._queue: deque[Text] | None = None
        self._queued_bytes = 0
        #: frames may be written (set by open(); before it they queue)
        self._live = False
        self._closed = False
        self._flush = False
        #: the task sending queued frames, while there are any
        self._writer: asyncio.Task[None] | None = None
        #: resolved when the queue shrinks (someone waits for room)
        self._space: asyncio.Future[None] | None = None
        #: resolved once the connection is closed and its writer has stopped (created only
        #: when someone waits for that)
        self._done: asyncio.Future[None] | None = None
        #: the task sending the close frame of a connection the node closed
        self._closer: asyncio.Task[None] | None = None
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

    def log_fields(self) -> dict[str, object]:
        """This connection's fields in log records (see :mod:`tidings.logs`)."""
        return {"connection_id": self.connection_id, "user_id": self.user_id}

    @property
    def queued(self) -> int:
        """Frames waiting to be written."""
        return len(self._queue) if self._queue else 0

    def push(self, text: Text) -> None:
        """Send or queue a text frame (a :class:`~tidings.fanout.broadcast.Broadcast` when the
        same text goes to many sockets). A full queue closes the connection as too slow."""
        if self._closed:
            return
        self.counters.frames_out += 1
        if self._live and self._writer is None and not self._queue:
            direct = self._direct
            if direct is None:
                self._send_now(text_of(text))
                return
            if direct(text):
                return
        queue = self._queue
        if queue is None:
            queue = self._queue = deque()
        elif len(queue) >= self.max_queue:
            self._too_slow(len(queue), "queued")
            return
        queue.append(text)
        self._queued_bytes += len(text)
        if self._live and self._writer is None:
            self._writer = asyncio.ensure_future(self._write_loop())

    def _too_slow(self, frames: int, where: str) -> None:
        logger.warning(
            "closing slow connection %s of user %s: %d frames %s",
            self.connection_id,
            self.user_id,
            frames,
            where,
            extra=self.log_fields(),
        )
        self.counters.slow_closed += 1
        self.close(CloseCode.TRY_AGAIN_LATER, "client too slow")

    def _send_now(self, text: str) -> None:
        """Send through the server's ``send``, eagerly; finish it in the writer only if it has
        to wait (:mod:`tidings.fanout.eager`)."""
        try:
            rest = send_eagerly(self._send({"type": "websocket.send", "text": text}))
        except Exception as exc:
            self._lost(exc)
            return
        if rest is not None:
            self._writer = asyncio.ensure_future(self._write_loop(rest))

    async def _write_loop(self, pending: Awaitable[None] | None = None) -> None:
        """Finish a send that had to wait (if any), then send what is queued, in order:
        directly while the socket's buffer has room, else through the server's ``send``."""
        send, direct = self._send, self._direct
        try:
            if pending is not None:
                await pending
            while (queue := self._queue) and (not self._closed or self._flush):
                text = queue[0]
                if direct is None or not direct(text):
                    await send({"type": "websocket.send", "text": text_of(text)})
                queue.popleft()
                if not queue:
                    self._queue = None
                self._queued_bytes -= len(text)
                self._wake()
        except asyncio.CancelledError:
            pass
        except Exception as exc:
            self._lost(exc)
        finally:
            self._writer = None
            if self._closed:
                self._settle()

    def _lost(self, exc: BaseException) -> None:
        logger.info(
            "connection %s lost while sending: %r", self.connection_id, exc, extra=self.log_fields()
        )
        self.close(CloseCode.GOING_AWAY, "connection lost")

    def _wake(self) -> None:
        space = self._space
        if space is not None:
            self._space = None
            if not space.done():
                space.set_result(None)

    async def _wait_space(self) -> None:
        space = self._space
        if space is None:
            space = self._space = asyncio.get_running_loop().create_future()
        await space

    def _settle(self) -> None:
        """Closed, and the writer stopped: send the close frame (if the node closed it and the
        socket is open) and wake whoever waits in :meth:`finished`."""
        self._wake()
        if self._live and self.close_code is not None and self._closer is None:
            self._closer = asyncio.ensure_future(self._send_close(self.close_code))
        if self._done is not None and not self._done.done():
            self._done.set_result(None)

    async def _send_close(self, code: int) -> None:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(2.0):
                await self._send(
                    {"type": "websocket.close", "code": code, "reason": self.close_reason}
                )

    async def finished(self) -> None:
        """Return once the connection is closed, a flushing close has sent its queue, and the
        close frame (if any) is written or given up on."""
        if not (self._closed and self._writer is None):
            if self._done is None:
                self._done = asyncio.get_running_loop().create_future()
            await self._done
        if self._closer is not None:
            await self._closer

    def push_count(self, count: int, version: int, text: Text | None = None) -> None:
        """Queue a count frame unless the device already has this version or a newer one."""
        if version <= self.last_version:
            return
        self.last_version = version
        self.push(text if text is not None else protocol.count_changed(count, version))

    def push_topic(self, topic: str, seq: int, text: Text) -> None:
        """Queue a topic message unless this socket already had it; while the topic is
        replayed, hold it back (at most ``max_queue`` frames, as the queue: a replay that
        cannot go on because the client does not read closes it as too slow)."""
        waiting = self.replaying.get(topic)
        if waiting is not None:
            if len(waiting) >= self.max_queue:
                self._too_slow(len(waiting), "held behind a replay")
                return
            waiting.append((seq, text))
        elif self.mark_topic(topic, seq):
            self.push(text)

    def mark_topic(self, topic: str, seq: int) -> bool:
        """Record ``seq`` of ``topic`` as handled; False if it already was."""
        floor = self.topic_seq.get(topic, 0)
        if seq == floor + 1 and not self.topic_above.get(topic):
            self.topic_seq[topic] = seq  # the usual case: the next one, in order
            return True
        above = self.topic_above.setdefault(topic, set())
        if seq <= floor or seq in above:
            return False
        above.add(seq)
        while floor + 1 in above:
            floor += 1
            above.discard(floor)
        if len(above) > 1024:  # a seq still missing after 1024 later ones is given up on
            floor = max(above)
            above.clear()
        self.topic_seq[topic] = floor
        return True

    def skip_topic_until(self, topic: str, seq: int) -> None:
        """Everything of ``topic`` up to ``seq`` counts as handled (the client has it)."""
        floor = self.topic_seq.get(topic, 0)
        if seq <= floor:
            return
        above = {s for s in self.topic_above.get(topic, ()) if s > seq}
        floor = seq
        while floor + 1 in above:
            floor += 1
            above.discard(floor)
        self.topic_seq[topic] = floor
        self.topic_above[topic] = above

    def forget_topic(self, topic: str) -> None:
        self.topic_seq.pop(topic, None)
        self.topic_above.pop(topic, None)

    async def wait_room(self, frames: int) -> None:
        """Return once ``frames`` more fit in the queue (pacing for backlogs and replays)."""
        while not self._closed and (
            len(self._queue or ()) + frames > self.max_queue
            or self._queued_bytes > self.pause_bytes
        ):
            await self._wait_space()

    async def wait_writable(self) -> None:
        """Return once the queued bytes are under ``pause_bytes`` (or the connection closed)."""
        while not self._closed and self._queued_bytes > self.pause_bytes:
            await self._wait_space()

    def open(self, first: Text | None = None) -> None:
        """Start writing, ``first`` ahead of the frames pushed before (they waited until now).
        A connection closed by the node sends its close frame once its writer is done; wait
        for all that with :meth:`finished`."""
        if first is not None and self._queue and not self._closed:
            self._queue.appendleft(first)
            self._queued_bytes += len(first)
            self.counters.frames_out += 1
            first = None
        self._live = True
        if first is not None:
            self.push(first)
        if self._closed and self._writer is None and not (self._flush and self._queue):
            self._settle()
        elif self._queue and self._writer is None:
            self._writer = asyncio.ensure_future(self._write_loop())

    def close(self, code: int = CloseCode.NORMAL, reason: str = "", *, flush: bool = False) -> None:
        """Stop sending. Frames still queued are dropped, or with ``flush`` sent first (for a
        close the client asked for, never for a slow one)."""
        self._stop(code, reason, flush)

    def abort(self) -> None:
        """The client is gone: stop without a close frame (``close_code`` stays None)."""
        self._stop(None, "", False)

    def _stop(self, code: int | None, reason: str, flush: bool) -> None:
        if self._closed:
            return
        self._closed = True
        self._flush = flush
        self.close_code = code
        self.close_reason = reason
        if self.delivery is not None and not self.delivery.done():
            self.delivery.cancel()
        if not flush:
            self._queue = None
            self._queued_bytes = 0
            # A writer blocked on a client that stopped reading would never see the flag.
            if self._writer is not None:
                self._writer.cancel()
                return  # it settles when it ends
        if self._writer is None:
            if flush and self._queue and self._live:
                self._writer = asyncio.ensure_future(self._write_loop())
            else:
                self._settle()
