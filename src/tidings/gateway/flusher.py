"""The write and keepalive scheduling that a server's WebSocket sockets share, per event loop.

:class:`Flusher` writes the frames each socket got during one turn of the loop at its end,
and pings every open socket from one timer. :class:`Flushers` holds a server's options and its
flushers: a server builds one (``FrontConfig(coalesce_delay=…)``, from
``TIDINGS_FANOUT_COALESCE_MS``) and its sockets find their loop's flusher through it, so two
servers in one process keep their own settings and nothing is process-wide.
"""

from __future__ import annotations

import asyncio
import math
import weakref
from typing import Any, Protocol

#: seconds a fanning-out node lets frames wait to share a write, by default
COALESCE_DELAY = 0.005

#: the keepalive pings a node's sockets in this many groups, one group every
#: ``interval / PING_GROUPS`` seconds: each socket is pinged once an interval, but a tick never
#: writes to every socket at once and the pongs do not all come back in the same moment
PING_GROUPS = 8

#: a flush that writes to at least this many sockets means the node is fanning out
FANOUT_SOCKETS = 256
#: how long after such a flush the node still counts as fanning out (seconds)
FANOUT_WINDOW = 0.05


class Socket(Protocol):
    """What a flusher uses of a WebSocket connection."""

    def _flush(self) -> None: ...

    def _keepalive(self) -> None: ...


class Flusher:
    """Per event loop: writes the frames each socket got during one turn of the loop, at its
    end; and pings every open socket from one timer (a timer per socket costs 600 bytes), a
    group of them at each tick (``PING_GROUPS``).

    While the node fans out (a flush wrote to ``FANOUT_SOCKETS`` sockets or more in the last
    ``FANOUT_WINDOW`` seconds) the next flush waits ``coalesce`` seconds, or as long as the last
    fan-out's flush took (at most four times ``coalesce``), so that the frames of the following
    messages share the same ``write``: the system call per socket is most of a fan-out's cost
    (docs/benchmarks.md). A node that is not fanning out writes at the end of the loop's turn,
    so a notification's latency does not change."""

    __slots__ = (
        "busy_at",
        "coalesce",
        "cost",
        "dirty",
        "groups",
        "loop",
        "next_group",
        "pinger",
        "scheduled",
        "tick",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop, coalesce: float = COALESCE_DELAY) -> None:
        self.loop = loop
        self.dirty: list[Socket] = []
        self.scheduled = False
        #: open sockets by keepalive group; ``next_group`` takes the next one watched, ``tick``
        #: is pinged next
        self.groups: list[set[Socket]] = [set() for _ in range(PING_GROUPS)]
        self.next_group = 0
        self.tick = 0
        self.pinger: asyncio.TimerHandle | None = None
        self.coalesce = coalesce
        self.busy_at = -math.inf
        #: seconds the last fan-out's flush took
        self.cost = 0.0

    def watch(self, socket: Socket, interval: float) -> None:
        self.groups[self.next_group].add(socket)
        self.next_group = (self.next_group + 1) % PING_GROUPS
        if self.pinger is None:
            self.pinger = self.loop.call_later(interval / PING_GROUPS, self.ping, interval)

    def unwatch(self, socket: Socket) -> None:
        for group in self.groups:
            group.discard(socket)

    def ping(self, interval: float) -> None:
        """Ping one group. A socket is pinged a whole interval before the ping that finds it
        silent, whenever it joined its group."""
        group = self.groups[self.tick]
        self.tick = (self.tick + 1) % PING_GROUPS
        for socket in tuple(group):
            socket._keepalive()
        self.pinger = (
            self.loop.call_later(interval / PING_GROUPS, self.ping, interval)
            if any(self.groups)
            else None
        )

    def add(self, socket: Socket) -> None:
        self.dirty.append(socket)
        if not self.scheduled:
            self.scheduled = True
            if self.coalesce > 0 and self.loop.time() - self.busy_at < FANOUT_WINDOW:
                # Wait as long as the last fan-out's writes took (at least ``coalesce``, at
                # most four times it): a slower machine then gathers as many messages per write.
                self.loop.call_later(
                    min(max(self.coalesce, self.cost), 4 * self.coalesce), self.flush
                )
            else:
                self.loop.call_soon(self.flush)

    def flush(self) -> None:
        self.scheduled = False
        dirty, self.dirty = self.dirty, []
        started = self.loop.time()
        for socket in dirty:
            socket._flush()
        if len(dirty) >= FANOUT_SOCKETS:
            self.busy_at = now = self.loop.time()
            self.cost = now - started


class Flushers:
    """A server's write options and the :class:`Flusher` of each event loop it serves on.

    ``coalesce``: seconds a fanning-out node lets frames wait to share a write (0: never).

    Why a dict by loop rather than one flusher: uvicorn hands each protocol the server's
    config (which holds this object) and the loop, and a config may be served more than once,
    on different loops (tests, ``uvicorn.run`` after ``asyncio.run``); a flusher's timers
    belong to one loop. The keys are weak, so a loop that is gone takes its flusher along."""

    __slots__ = ("_by_loop", "coalesce")

    def __init__(self, coalesce: float = COALESCE_DELAY) -> None:
        self.coalesce = coalesce
        self._by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Flusher] = (
            weakref.WeakKeyDictionary()
        )

    def for_loop(self, loop: asyncio.AbstractEventLoop) -> Flusher:
        flusher = self._by_loop.get(loop)
        if flusher is None:
            flusher = self._by_loop[loop] = Flusher(loop, self.coalesce)
        return flusher


def flushers_of(config: Any) -> Flushers:
    """The :class:`Flushers` of a uvicorn config: ``config.ws_flushers`` (a ``FrontConfig``
    has one, from its ``coalesce_delay``); a plain ``uvicorn.Config`` gets one with the
    defaults, kept on it so that its sockets share it."""
    flushers: Flushers | None = getattr(config, "ws_flushers", None)
    if flushers is None:
        flushers = Flushers()
        config.ws_flushers = flushers
    return flushers


class FrameWriter(asyncio.Protocol):
    """The write side of a WebSocket connection: frames of one turn of the loop go out in one
    ``write`` (by the loop's :class:`Flusher`), and the transport's flow control (the state
    of its write buffer) is kept for the caller to respect."""

    __slots__ = ("_flusher", "_pending", "_writable", "_write_paused", "loop", "transport")

    def __init__(self, config: Any, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: Any = None
        #: frames written this turn of the loop (flushed at its end by the flusher)
        self._pending: list[bytes] | None = None
        self._flusher = flushers_of(config).for_loop(loop)
        self._write_paused = False
        #: resolved when the write buffer drains (only while someone waits for it)
        self._writable: asyncio.Future[None] | None = None

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._resume_writers()

    def _resume_writers(self) -> None:
        waiter = self._writable
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _later(self, data: bytes) -> None:
        """Write at the end of this turn of the loop, with whatever else this socket gets."""
        pending = self._pending
        if pending is None:
            self._pending = [data]
            self._flusher.add(self)
        else:
            pending.append(data)
            if len(pending) > 64:
                self._flush()

    def _flush(self) -> None:
        pending = self._pending
        if pending is not None:
            self._pending = None
            if not self.transport.is_closing():
                self.transport.write(pending[0] if len(pending) == 1 else b"".join(pending))

    def _keepalive(self) -> None:
        """Called by the flusher once per ping interval while watched."""

    def _out(self, data: bytes) -> None:
        """Write now, after what is pending (for everything but text frames)."""
        self._flush()
        self.transport.write(data)

    def _close_transport(self) -> None:
        self._flush()
        self.transport.close()
