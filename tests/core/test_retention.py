"""Retention of history on a node: the sweep removes what the rules say (by number per user,
by age, per category), and the devices get the lowered counts."""

from __future__ import annotations

import asyncio
from pathlib import Path

from core.test_facade import Sink, eventually, make
from tidings.core.counters import Counters
from tidings.fanout.connection import Connection
from tidings.services.retention import Retention


def retention(tidings: object) -> Retention:
    found = tidings.cluster.retention  # type: ignore[attr-defined]
    assert isinstance(found, Retention)
    return found


async def test_a_user_keeps_the_newest_and_devices_get_the_count(tmp_path: Path) -> None:
    async with make(
        tmp_path, history_max=3, history_categories={"legal": {"max": 1}, "other": {}}
    ) as tidings:
        sweep = retention(tidings)
        await sweep.sweep()  # the first sweep: from here on
        sink = Sink()
        conn = Connection(
            sink, connection_id="c", user_id="ann", session_id="s", counters=Counters()
        )
        await tidings.registry.add(conn)
        conn.open()
        for n in range(5):
            await tidings.notify("ann", {"n": n})
        for n in range(2):
            await tidings.notify("ann", {"legal": n}, category="legal")
        await tidings.notify("bob", {"n": "bob's"})
        await eventually(lambda: len(sink.frames) == 7)
        assert await sweep.sweep() == 3  # two of the general rule's five, one legal
        history, _ = await tidings.history.page("ann", "all", None, None, 10)
        assert [n.data for n in history] == [
            {"legal": 1},
            {"n": 4},
            {"n": 3},
            {"n": 2},
        ]
        # Each rule's removal is one change of the counts.
        await eventually(lambda: len(sink.frames) == 9)
        assert '"count":5,"version":8,"unread":5,"categories":{"legal":2}' in sink.frames[-2]
        assert '"count":4,"version":9,"unread":4,"categories":{"legal":1}' in sink.frames[-1]
        assert await sweep.sweep() == 0
        assert (await tidings.count("bob")).count == 1
        conn.close()
        await asyncio.wait_for(conn.finished(), 2)


async def test_old_notifications_go_by_category(tmp_path: Path) -> None:
    async with make(tmp_path, history_categories={"promo": {"max_age": 0.3}}) as tidings:
        sweep = retention(tidings)
        await tidings.notify("ann", {"promo": 1}, category="promo")
        kept = await tidings.notify("ann", {"plain": 1})
        await asyncio.sleep(0.4)
        await tidings.notify("ann", {"promo": 2}, category="promo")
        assert await sweep.sweep() == 1
        history, _ = await tidings.history.page("ann", "all", None, None, 10)
        assert [n.data for n in history] == [{"promo": 2}, {"plain": 1}]
        count = await tidings.count("ann")
        assert (count.count, count.categories) == (2, {"promo": 1})
        assert kept.count is not None and count.version == kept.count.version + 2


async def test_a_device_away_is_told_what_retention_took_from_its_queue(tmp_path: Path) -> None:
    async with make(tmp_path, history_max=2) as tidings:
        sweep = retention(tidings)
        await sweep.sweep()
        device = await tidings.store.bind_device("ann", None)
        made = [await tidings.notify("ann", {"n": n}) for n in range(5)]
        assert await sweep.sweep() == 3
        sink = Sink()
        conn = Connection(
            sink,
            connection_id=device.connection_id,
            user_id="ann",
            session_id="s",
            counters=Counters(),
            deliver=True,
        )
        await tidings.registry.add(conn)
        conn.open()
        await tidings.queues.open_queue(conn)
        await eventually(lambda: len(sink.frames) >= 3)
        assert sink.frames[0] == '{"type":"queueGap","reason":"retention","skipped":3}'
        kept = [r.notification.notification_id for r in made[3:]]
        assert all(nid in frame for nid, frame in zip(kept, sink.frames[1:3], strict=True))
        conn.close()
        await asyncio.wait_for(conn.finished(), 2)
