"""The Tidings facade in-process: notify, counts, mark seen, restarts."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from tidings import Tidings
from tidings.auth.topics import TopicPolicy
from tidings.bus import create_bus
from tidings.core.counters import Counters
from tidings.errors import InvalidArgument, NotFound, PayloadTooLarge
from tidings.fanout.connection import Connection
from tidings.fanout.registry import Registry
from tidings.services.counts import Counts
from tidings.services.events import BusEvents
from tidings.services.queues import Queues
from tidings.services.republish import Republisher
from tidings.services.topics import Topics
from tidings.storage import create_store

SECRET = "facade-secret-" + "y" * 32


def make(tmp_path: Path, **overrides: object) -> Tidings:
    return Tidings(store=f"sqlite:///{tmp_path}/t.db", jwt_secret=SECRET, **overrides)


async def eventually(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


class Sink:
    """A fake socket that records what a Connection writes."""

    def __init__(self) -> None:
        self.frames: list[str] = []
        #: close frames, as (code, reason)
        self.closes: list[tuple[object, object]] = []

    async def __call__(self, message: dict[str, object]) -> None:
        if message["type"] == "websocket.close":
            self.closes.append((message["code"], message["reason"]))
        else:
            self.frames.append(str(message["text"]))


async def test_notify_persists_and_counts(tmp_path: Path) -> None:
    """notify() commits the notification and returns the new count."""
    async with make(tmp_path) as tidings:
        result = await tidings.notify("alice", {"text": "hi"})
        assert result.created and result.count is not None
        assert (result.count.count, result.count.version) == (1, 1)
        unseen = await tidings.unseen("alice")
        assert [n.data for n in unseen] == [{"text": "hi"}]


async def test_count_events_reach_local_connections(tmp_path: Path) -> None:
    """A registered connection is pushed every change of its user's count, not others'."""
    async with make(tmp_path) as tidings:
        sink, other_sink = Sink(), Sink()
        mine = Connection(
            sink, connection_id="c1", user_id="alice", session_id="s", counters=Counters()
        )
        other = Connection(
            other_sink, connection_id="c2", user_id="bob", session_id="s", counters=Counters()
        )
        await tidings.registry.add(mine)
        await tidings.registry.add(other)
        mine.open()
        other.open()
        result = await tidings.notify("alice", "x")
        await tidings.mark_seen("alice", [result.notification.notification_id])
        await eventually(lambda: len(sink.frames) >= 2)
        mine.close()
        other.close()
        await asyncio.wait_for(asyncio.gather(mine.finished(), other.finished()), 2)
        assert sink.frames == [
            '{"type":"newNotificationCountChanged","count":1,"version":1,"unread":1}',
            '{"type":"newNotificationCountChanged","count":0,"version":2,"unread":1}',
        ]
        assert other_sink.frames == []


async def test_stale_versions_are_not_pushed(tmp_path: Path) -> None:
    """A count older than what the device has is dropped."""
    sink = Sink()
    conn = Connection(sink, connection_id="c", user_id="u", session_id="s", counters=Counters())
    conn.push_count(2, 5)
    conn.push_count(1, 4)
    conn.push_count(3, 6)
    conn.open()
    await eventually(lambda: len(sink.frames) >= 2)
    conn.close()
    await asyncio.wait_for(conn.finished(), 2)
    assert sink.frames == [
        '{"type":"newNotificationCountChanged","count":2,"version":5,"unread":0}',
        '{"type":"newNotificationCountChanged","count":3,"version":6,"unread":0}',
    ]


async def test_frames_queued_before_open_go_after_the_first_frame() -> None:
    """Events that reach a socket before it is opened (it is registered before its device is
    bound) wait in its queue and go out after the frame given to open(), in order; with
    nothing queued that frame is written at once."""
    sink = Sink()
    conn = Connection(sink, connection_id="", user_id="u", session_id="", counters=Counters())
    conn.push_count(1, 1)
    conn.push_count(2, 2)
    conn.open('{"type":"welcome"}')
    await eventually(lambda: len(sink.frames) >= 3)
    assert sink.frames == [
        '{"type":"welcome"}',
        '{"type":"newNotificationCountChanged","count":1,"version":1,"unread":0}',
        '{"type":"newNotificationCountChanged","count":2,"version":2,"unread":0}',
    ]
    quiet_sink = Sink()
    quiet = Connection(
        quiet_sink, connection_id="c", user_id="u", session_id="s", counters=Counters()
    )
    quiet.open('{"type":"welcome"}')
    assert quiet_sink.frames == ['{"type":"welcome"}'] and quiet.queued == 0
    for c in (conn, quiet):
        c.close()
    await asyncio.wait_for(asyncio.gather(conn.finished(), quiet.finished()), 2)


async def test_a_connection_closed_by_the_node_sends_one_close_frame() -> None:
    """Closed by the node, an open connection sends its close frame (after the frames of a
    flushing close), once; closed before it was opened, at the open; a client that left
    (abort) gets none."""
    sink = Sink()
    conn = Connection(sink, connection_id="c", user_id="u", session_id="s", counters=Counters())
    conn.open()
    conn.push("a")
    conn.close(1013, "client too slow")
    conn.close(1000, "again")  # already closed: nothing more
    await asyncio.wait_for(conn.finished(), 2)
    assert sink.frames == ["a"] and sink.closes == [(1013, "client too slow")]

    early = Sink()
    conn = Connection(early, connection_id="c", user_id="u", session_id="s", counters=Counters())
    conn.push("queued")
    conn.close(4429, "too many")
    assert early.closes == []
    conn.open('{"type":"welcome"}')
    await asyncio.wait_for(conn.finished(), 2)
    assert early.closes == [(4429, "too many")]

    gone = Sink()
    conn = Connection(gone, connection_id="c", user_id="u", session_id="s", counters=Counters())
    conn.open()
    conn.abort()
    await asyncio.wait_for(conn.finished(), 2)
    assert gone.closes == [] and conn.close_code is None


async def test_full_queue_closes_slow_connection() -> None:
    """A connection whose queue overflows is closed with 1013, not allowed to grow."""
    conn = Connection(
        Sink(), connection_id="c", user_id="u", session_id="s", max_queue=3, counters=Counters()
    )
    for i in range(4):
        conn.push(str(i))
    assert conn.closed and conn.close_code == 1013


async def test_restart_keeps_notifications_and_counts(tmp_path: Path) -> None:
    """Closing and reopening on the same file keeps every notification and count."""
    async with make(tmp_path) as tidings:
        for i in range(3):
            await tidings.notify("alice", i)
        first = (await tidings.unseen("alice"))[0]
        await tidings.mark_seen("alice", [first.notification_id])
    async with make(tmp_path) as tidings:
        count = await tidings.count("alice")
        assert (count.count, count.version) == (2, 4)
        assert [n.data for n in await tidings.unseen("alice")] == [1, 2]


async def test_bad_arguments_change_nothing(tmp_path: Path) -> None:
    """Bad user ids, non-JSON or oversized data and foreign ids are refused."""
    async with make(tmp_path, max_notification_size=100) as tidings:
        with pytest.raises(InvalidArgument):
            await tidings.notify("", "x")
        with pytest.raises(InvalidArgument):
            await tidings.notify("u", object())
        with pytest.raises(PayloadTooLarge):
            await tidings.notify("u", "x" * 200)
        theirs = await tidings.notify("bob", "secret")
        with pytest.raises(NotFound):
            await tidings.mark_seen("alice", [theirs.notification.notification_id])
        assert (await tidings.count("bob")).count == 1
        assert (await tidings.count("u")).count == 0


async def test_generated_device_secret_is_shared_through_the_store(tmp_path: Path) -> None:
    """Without TIDINGS_JWT_SECRET a key is generated once and reused by the next start."""
    url = f"sqlite:///{tmp_path}/k.db"
    async with Tidings(store=url, jwt_secret=None) as one:
        token = one.authenticator.issue("alice")  # type: ignore[attr-defined]
    async with Tidings(store=url, jwt_secret=None) as two:
        assert (await two.authenticator.authenticate(token)).user_id == "alice"


async def test_cancelled_notify_still_publishes_its_count(tmp_path: Path) -> None:
    """A caller cancelled mid-notify does not leave devices with a stale count."""
    async with make(tmp_path) as tidings:
        sink = Sink()
        conn = Connection(
            sink, connection_id="c1", user_id="alice", session_id="s", counters=Counters()
        )
        await tidings.registry.add(conn)
        conn.open()
        task = asyncio.create_task(tidings.notify("alice", "x"))
        await asyncio.sleep(0)
        task.cancel()
        await eventually(lambda: len(sink.frames) == 1)
        assert (await tidings.count("alice")).count == 1
        conn.close()
        await asyncio.wait_for(conn.finished(), 2)


async def test_mark_seen_caps_ids(tmp_path: Path) -> None:
    """More ids than a frame may carry is refused before touching the store."""
    async with make(tmp_path) as tidings:
        with pytest.raises(InvalidArgument):
            await tidings.mark_seen("alice", [str(i) for i in range(1001)])


async def test_reading_pauses_while_answers_pile_up() -> None:
    """wait_writable blocks once queued bytes pass pause_bytes, and resumes as they drain."""
    sink = Sink()
    conn = Connection(
        sink, connection_id="c", user_id="u", session_id="s", pause_bytes=10, counters=Counters()
    )
    conn.push("x" * 20)
    waiter = asyncio.create_task(conn.wait_writable())
    await asyncio.sleep(0.01)
    assert not waiter.done()
    conn.open()
    await asyncio.wait_for(waiter, 2)
    conn.close()
    await asyncio.wait_for(conn.finished(), 2)


class PausingSink:
    """A fake ASGI send that suspends while 'paused', like a server under flow control."""

    def __init__(self) -> None:
        self.frames: list[str] = []
        self.open = asyncio.Event()
        self.open.set()

    async def __call__(self, message: dict[str, object]) -> None:
        await self.open.wait()
        self.frames.append(str(message["text"]))


async def test_frames_keep_their_order_when_the_server_makes_sends_wait() -> None:
    """Sends done in push() directly, and those finished later in a task, stay in order."""
    sink = PausingSink()
    conn = Connection(sink, connection_id="c", user_id="u", session_id="s", counters=Counters())
    conn.open()
    conn.push("1")  # completes at once
    sink.open.clear()
    conn.push("2")  # suspends: finished in a task
    conn.push("3")  # queued behind it
    conn.push("4")
    await asyncio.sleep(0.05)
    assert sink.frames == ["1"]
    sink.open.set()
    await eventually(lambda: len(sink.frames) == 4)
    assert sink.frames == ["1", "2", "3", "4"]
    conn.push("5")
    await eventually(lambda: len(sink.frames) == 5)
    conn.close()
    await asyncio.wait_for(conn.finished(), 2)


async def test_a_send_that_fails_closes_the_connection() -> None:
    """A client gone mid-send closes the connection instead of raising into the producer."""

    async def broken(message: dict[str, object]) -> None:
        raise OSError("client disconnected")

    conn = Connection(broken, connection_id="c", user_id="u", session_id="s", counters=Counters())
    conn.open()
    conn.push("x")
    assert conn.closed
    await asyncio.wait_for(conn.finished(), 2)


async def test_counts_service_works_without_a_node(tmp_path: Path) -> None:
    """The counts service, given a store, a bus and a registry, notifies and pushes counts."""
    store = create_store(f"sqlite:///{tmp_path}/s.db")
    bus = create_bus(f"memory://{uuid.uuid4().hex}")
    registry = Registry(bus)
    queues = Queues(store, bus, registry, node_id="n")
    republisher = Republisher(bus)
    counts = Counts(
        store,
        bus,
        registry,
        queues,
        republisher,
        Counters(),
        node_id="n",
        max_data_size=1024,
        max_batch_size=10,
        max_unseen_page=10,
        max_unseen_bytes=4096,
    )
    topics = Topics(
        store,
        bus,
        registry,
        TopicPolicy(),
        republisher,
        asyncio.ensure_future,
        node_id="n",
        ttl=60.0,
        ttls={},
        max_data_size=1024,
        max_topics_per_session=10,
        max_sessions_per_user=10,
    )
    events = BusEvents(
        registry, counts, topics, queues, Counters(), asyncio.ensure_future, node_id="n"
    )
    bus.on_message = events.on_message
    await store.start()
    await bus.start()
    try:
        sink = Sink()
        conn = Connection(
            sink, connection_id="c", user_id="alice", session_id="s", counters=Counters()
        )
        await registry.add(conn)
        conn.open()
        with pytest.raises(PayloadTooLarge):
            await counts.notify("alice", "x" * 2000)
        result = await counts.notify("alice", "hi")
        assert result.count is not None and result.count.count == 1
        await eventually(lambda: len(sink.frames) == 1)
        assert sink.frames == [
            '{"type":"newNotificationCountChanged","count":1,"version":1,"unread":1}'
        ]
        conn.close()
        await asyncio.wait_for(conn.finished(), 2)
    finally:
        await bus.close()
        await store.close()
