"""The store contract of retention (RetentionStore): removing by age and beyond a number kept
per user, within a scope of categories, with the users' counts lowered in the same transaction.
Every backend passes it."""

from __future__ import annotations

from datetime import timedelta

from contract.store.backends import store
from tidings.core.models import RetentionScope, UnseenCount, utcnow
from tidings.storage import Store

__all__ = ["store"]  # the fixture

EVERYTHING = RetentionScope()


def shape(count: UnseenCount) -> tuple[int, int, int, dict[str, int]]:
    return count.count, count.unread, count.version, count.categories or {}


async def test_the_log_position_before_a_time_is_found_by_probes(store: Store) -> None:
    assert await store.log_position_before(utcnow()) == 0
    made = [(await store.create_notification(f"u{n % 3}", n)).notification for n in range(9)]
    assert await store.log_position_before(utcnow() + timedelta(seconds=1)) == made[-1].seq
    assert await store.log_position_before(made[0].creation_date) == 0
    assert await store.log_position_before(made[4].creation_date + timedelta(microseconds=1)) in (
        made[4].seq,
        made[5].seq,  # created in the same microsecond
    )


async def test_removing_a_range_lowers_counts_once_per_user(store: Store) -> None:
    ids = []
    for n, (user, category) in enumerate(
        [("ann", "orders"), ("bob", None), ("ann", "social"), ("ann", "orders"), ("bob", None)]
    ):
        ids.append((await store.create_notification(user, n, category=category)).notification)
    await store.change_state("ann", "read", [ids[0].notification_id])
    before = await store.count("ann")
    done = await store.remove_in_range(EVERYTHING, 0, ids[3].seq, 10)
    assert done.removed == 4 and done.last == ids[3].seq
    counts = {c.user_id: c for c in done.counts}
    # ann lost a read one (n=0) and two unread, unseen (n=2, n=3): one change.
    assert shape(counts["ann"]) == (0, 0, before.version + 1, {})
    assert shape(counts["bob"]) == (1, 1, 3, {})
    assert await store.count("ann") == counts["ann"]
    left = await store.history("bob", "all", None, None, 10)
    assert [n.notification_id for n in left] == [ids[4].notification_id]
    # Only what is still there, and only up to the limit, oldest first.
    assert (await store.remove_in_range(EVERYTHING, 0, ids[3].seq, 10)).removed == 0


async def test_a_range_removal_keeps_to_its_scope(store: Store) -> None:
    for category in ("legal", "promo", None, "promo", "legal"):
        await store.create_notification("ann", {}, category=category)
    top = await store.log_position_before(utcnow() + timedelta(seconds=1))
    general = RetentionScope(None, ("legal",))
    done = await store.remove_in_range(general, 0, top, 2)
    assert done.removed == 2  # the limit: "promo" and the one without a category
    assert shape(done.counts[0]) == (3, 3, 6, {"legal": 2, "promo": 1})
    assert (await store.remove_in_range(general, done.last, top, 10)).removed == 1
    legal = await store.remove_in_range(RetentionScope(("legal",)), 0, top, 10)
    assert legal.removed == 2 and shape(legal.counts[0]) == (0, 0, 8, {})


async def test_removing_beyond_a_number_kept_per_user(store: Store) -> None:
    made = [
        (await store.create_notification("ann", n, category="c" if n % 2 else None)).notification
        for n in range(6)
    ]
    await store.create_notification("bob", "bob's")
    await store.mark_all_seen("ann")
    done = await store.remove_beyond("ann", EVERYTHING, 4, 1)
    assert done.removed == 1 and done.last == made[1].seq  # the newest beyond the four
    assert shape(done.counts[0])[:2] == (0, 5)  # seen already: unread fell, unseen did not
    done = await store.remove_beyond("ann", EVERYTHING, 4, 10)
    assert done.removed == 1
    kept = await store.history("ann", "all", None, None, 10)
    assert [n.data for n in kept] == [5, 4, 3, 2]
    assert (await store.remove_beyond("ann", RetentionScope(("c",)), 1, 10)).removed == 1
    assert [n.data for n in await store.history("ann", "all", None, None, 10)] == [5, 4, 2]
    assert (await store.remove_beyond("ann", EVERYTHING, 4, 10)).counts == []
    assert len(await store.history("bob", "all", None, None, 10)) == 1
    users, last = await store.users_notified_after(made[4].seq, 10)
    assert users == ["ann", "bob"] and last > made[5].seq
    assert await store.users_notified_after(last, 10) == ([], last)


async def test_what_left_a_devices_queue_is_counted_for_it(store: Store) -> None:
    """Removed notifications still waiting in a device's queue (after its cursor, not acked)
    are counted for that device, once; taking the number starts it again from 0."""
    away = await store.bind_device("ann", None)
    back = await store.bind_device("ann", None)
    made = [(await store.create_notification("ann", n)).notification for n in range(5)]
    later = await store.bind_device("ann", None)  # its queue starts after the five
    await store.ack(back.connection_id, "ann", [made[0].notification_id, made[2].notification_id])
    done = await store.remove_in_range(EVERYTHING, 0, made[3].seq, 10)
    assert done.removed == 4
    assert await store.take_retained(away.connection_id, "ann") == 4
    assert await store.take_retained(away.connection_id, "ann") == 0
    assert await store.take_retained(back.connection_id, "ann") == 2  # two were acked
    assert await store.take_retained(later.connection_id, "ann") == 0
    assert await store.take_retained(away.connection_id, "bob") == 0  # not bob's device
    pending = await store.pending(away.connection_id, "ann", 0, 10)
    assert [n.notification_id for n in pending] == [made[4].notification_id]
