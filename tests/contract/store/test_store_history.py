"""The store contract of a user's history (NotificationStore.history): newest first, pages that
continue before a log position, filters by state and category, and never another user's
notifications. Every backend passes it (the ``store`` fixture of :mod:`contract.store.backends`
runs each test on each)."""

from __future__ import annotations

import pytest

from contract.store.backends import store
from tidings.core.models import NewNotification
from tidings.errors import NotFound
from tidings.storage import Store

__all__ = ["store"]  # the fixture


async def test_pages_go_newest_first_and_continue_before_the_last_one(store: Store) -> None:
    made = [(await store.create_notification("ann", {"n": n})).notification for n in range(7)]
    await store.create_notification("bob", {"n": "bob's"})
    first = await store.history("ann", "all", None, None, 3)
    assert [n.data["n"] for n in first] == [6, 5, 4]
    second = await store.history("ann", "all", None, first[-1].seq, 3)
    third = await store.history("ann", "all", None, second[-1].seq, 3)
    assert [n.data["n"] for n in second + third] == [3, 2, 1, 0]
    assert await store.history("ann", "all", None, third[-1].seq, 3) == []
    assert {n.user_id for n in first + second + third} == {"ann"}
    newest = first[0]
    assert (newest.notification_id, newest.category, newest.read_date) == (
        made[-1].notification_id,
        None,
        None,
    )
    assert newest.archived_date is None and newest.seq == made[-1].seq


async def test_a_new_notification_does_not_move_a_page_already_begun(store: Store) -> None:
    for n in range(4):
        await store.create_notification("ann", {"n": n})
    first = await store.history("ann", "all", None, None, 2)
    await store.create_notification("ann", {"n": "new"})
    rest = await store.history("ann", "all", None, first[-1].seq, 10)
    assert [n.data["n"] for n in first + rest] == [3, 2, 1, 0]


async def test_filters_by_state_and_category(store: Store) -> None:
    notes = [(await store.create_notification("ann", {"n": n})).notification for n in range(3)]
    await store.mark_seen("ann", [notes[1].notification_id])
    unseen = await store.history("ann", "unseen", None, None, 10)
    assert [n.data["n"] for n in unseen] == [2, 0]
    seen = (await store.history("ann", "all", None, None, 10))[1]
    assert seen.seen_date is not None
    assert [n.data["n"] for n in await store.history("ann", "unread", None, None, 10)] == [2, 1, 0]
    assert await store.history("ann", "archived", None, None, 10) == []
    assert await store.history("ann", "all", "orders", None, 10) == []
    assert await store.history("nobody", "all", None, None, 10) == []


async def test_a_category_given_at_creation_is_kept_and_filters(store: Store) -> None:
    """create_notification and create_notifications keep a category; the history lists a
    category's notifications only, each with its category."""
    one = await store.create_notification("ann", {"n": 1}, None, "orders")
    assert one.notification.category == "orders"
    batch = await store.create_notifications(
        [
            NewNotification("ann", {"n": 2}, None, "social"),
            NewNotification("ann", {"n": 3}, None, "orders"),
            NewNotification("ann", {"n": 4}),
        ]
    )
    assert [r.notification.category for r in batch] == ["social", "orders", None]
    orders = await store.history("ann", "all", "orders", None, 10)
    assert [(n.data["n"], n.category) for n in orders] == [(3, "orders"), (1, "orders")]
    everything = await store.history("ann", "all", None, None, 10)
    assert [n.category for n in everything] == [None, "orders", "social", "orders"]


async def test_mark_all_seen_is_one_change_however_many(store: Store) -> None:
    """mark_all_seen marks every unseen notification of the user, in one change of the count
    (the version rises once); another user's stay unseen; again, it changes nothing."""
    notes = [(await store.create_notification("ann", {"n": n})).notification for n in range(5)]
    await store.create_notification("bob", {"n": "bob's"})
    await store.mark_seen("ann", [notes[0].notification_id])
    before = await store.count("ann")
    result = await store.mark_all_seen("ann")
    assert sorted(result.marked) == sorted(n.notification_id for n in notes[1:])
    assert result.count is not None
    assert (result.count.count, result.count.version) == (0, before.version + 1)
    assert await store.count("ann") == result.count
    assert await store.unseen("ann", 10) == []
    assert (await store.count("bob")).count == 1
    again = await store.mark_all_seen("ann")
    assert again.marked == [] and again.count is None
    assert (await store.mark_all_seen("nobody")).count is None


async def test_reading_archiving_and_unarchiving(store: Store) -> None:
    """Reading marks seen too (the unseen count falls, one version step); archiving marks seen
    and read and leaves the inbox; unarchiving brings it back, read; the filters follow. An
    unknown or another user's id changes nothing; again, nothing changes."""
    notes = [(await store.create_notification("ann", {"n": n})).notification for n in range(4)]
    bobs = (await store.create_notification("bob", {"n": "bob's"})).notification
    ids = [n.notification_id for n in notes]
    before = await store.count("ann")
    read = await store.change_state("ann", "read", ids[:2])
    assert sorted(read.marked) == sorted(ids[:2])
    assert read.count is not None
    assert (read.count.count, read.count.version) == (2, before.version + 1)
    unread = await store.history("ann", "unread", None, None, 10)
    assert [n.data["n"] for n in unread] == [3, 2]
    again = await store.change_state("ann", "read", ids[:2])
    assert again.marked == [] and again.count is None
    archived = await store.change_state("ann", "archive", ids[1:3])
    assert sorted(archived.marked) == sorted(ids[1:3])
    assert archived.count is not None and archived.count.count == 1  # n=2 was unseen
    assert [n.data["n"] for n in await store.history("ann", "archived", None, None, 10)] == [2, 1]
    assert [n.data["n"] for n in await store.history("ann", "all", None, None, 10)] == [3, 0]
    back = await store.change_state("ann", "unarchive", [ids[2]])
    assert back.marked == [ids[2]] and back.count is not None  # a change, counts as they were
    assert back.count.count == 1
    restored = (await store.history("ann", "all", None, None, 10))[1]
    assert restored.data["n"] == 2 and restored.read_date is not None
    assert restored.archived_date is None and restored.seen_date is not None
    for foreign in ([bobs.notification_id], [ids[3], "nope"]):
        with pytest.raises(NotFound):
            await store.change_state("ann", "read", foreign)
    assert (await store.count("ann")).count == 1
    everything = await store.change_state("ann", "read", None)
    assert everything.marked == [ids[3]] and everything.count is not None
    assert everything.count.count == 0
    assert (await store.count("bob")).count == 1
