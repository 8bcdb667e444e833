"""The store contract of a user's counts: unseen, unread and unseen per category, kept by the
same statements as the changes, with one version for all of them. Every backend passes it."""

from __future__ import annotations

import asyncio

from contract.store.backends import store
from tidings.core.models import NewNotification, UnseenCount
from tidings.storage import Store

__all__ = ["store"]  # the fixture


def shape(count: UnseenCount | None) -> tuple[int, int, int, dict[str, int]]:
    assert count is not None
    return count.count, count.unread, count.version, count.categories or {}


async def test_counts_follow_every_change_with_one_version(store: Store) -> None:
    a = await store.create_notification("ann", {"n": 1}, category="orders")
    b = await store.create_notification("ann", {"n": 2}, category="orders")
    c = await store.create_notification("ann", {"n": 3}, category="social")
    d = await store.create_notification("ann", {"n": 4})
    assert shape(a.count) == (1, 1, 1, {"orders": 1})
    assert shape(b.count) == (2, 2, 2, {"orders": 2})
    assert shape(c.count) == (3, 3, 3, {"orders": 2, "social": 1})
    assert shape(d.count) == (4, 4, 4, {"orders": 2, "social": 1})
    ids = [r.notification.notification_id for r in (a, b, c, d)]

    seen = await store.mark_seen("ann", [ids[0], ids[3]])
    assert shape(seen.count) == (2, 4, 5, {"orders": 1, "social": 1})
    # Reading a seen notification changes unread only: still one change.
    read = await store.change_state("ann", "read", [ids[0]])
    assert shape(read.count) == (2, 3, 6, {"orders": 1, "social": 1})
    # Archiving an unseen one reads and sees it: its category leaves at zero.
    archived = await store.change_state("ann", "archive", [ids[2]])
    assert shape(archived.count) == (1, 2, 7, {"orders": 1})
    # Unarchiving keeps it read: no count moves, but it is a change (devices hear of it).
    back = await store.change_state("ann", "unarchive", [ids[2]])
    assert back.marked == [ids[2]] and shape(back.count) == (1, 2, 8, {"orders": 1})
    # So is archiving something already seen and read; asking again is none.
    assert shape((await store.change_state("ann", "archive", [ids[0]])).count)[2] == 9
    assert (await store.change_state("ann", "archive", [ids[0]])).count is None
    assert (await store.change_state("ann", "unarchive", [ids[1]])).count is None
    assert shape(await store.count("ann")) == (1, 2, 9, {"orders": 1})
    everything = await store.change_state("ann", "read", None)
    assert shape(everything.count) == (0, 0, 10, {})
    assert everything.count is not None and everything.count.categories is None
    assert (await store.change_state("ann", "read", None)).count is None
    assert shape(await store.count("nobody")) == (0, 0, 0, {})


async def test_mark_all_seen_leaves_unread_and_empties_categories(store: Store) -> None:
    for category in ("orders", "orders", None, "social"):
        await store.create_notification("ann", {}, category=category)
    result = await store.mark_all_seen("ann")
    assert shape(result.count) == (0, 4, 5, {})
    assert shape((await store.counts(["ann", "bob"]))["ann"]) == (0, 4, 5, {})
    assert shape((await store.counts(["ann", "bob"]))["bob"]) == (0, 0, 0, {})


async def test_a_batch_gives_each_notification_the_counts_right_after_it(store: Store) -> None:
    await store.create_notification("ann", {}, category="orders")
    results = await store.create_notifications(
        [
            NewNotification("ann", {"n": 1}, category="orders"),
            NewNotification("bob", {"n": 1}, category="orders"),
            NewNotification("ann", {"n": 2}, category="social"),
            NewNotification("ann", {"n": 3}),
        ]
    )
    counts = [shape(getattr(r, "count", None)) for r in results]
    assert counts == [
        (2, 2, 2, {"orders": 2}),
        (1, 1, 1, {"orders": 1}),
        (3, 3, 3, {"orders": 2, "social": 1}),
        (4, 4, 4, {"orders": 2, "social": 1}),
    ]
    assert shape(await store.count("ann")) == counts[3]


async def test_concurrent_changes_keep_counts_exact(store: Store) -> None:
    """Many writers at once (creations, marks, reads, archives): the counts end where the
    notifications' states say, and every result's version is distinct."""
    made = await asyncio.gather(
        *(
            store.create_notification("ann", {"n": n}, category=("a", "b", None)[n % 3])
            for n in range(30)
        )
    )
    ids = [r.notification.notification_id for r in made]
    changes = await asyncio.gather(
        store.mark_seen("ann", ids[0:10]),
        store.change_state("ann", "read", ids[5:15]),
        store.change_state("ann", "archive", ids[12:18]),
        store.mark_seen("ann", ids[8:20]),
        store.change_state("ann", "read", ids[25:27]),
        *(store.create_notification("ann", {"late": n}, category="a") for n in range(5)),
    )
    counts = [r.count for r in made] + [getattr(c, "count", None) for c in changes]
    versions = [c.version for c in counts if c is not None]
    assert len(versions) == len(set(versions))
    final = await store.count("ann")
    assert final.version == max(versions)
    notes = await store.history("ann", "all", None, None, 100)
    notes += await store.history("ann", "archived", None, None, 100)
    assert len(notes) == 35
    unseen = [n for n in notes if n.seen_date is None]
    per: dict[str, int] = {}
    for n in unseen:
        if n.category is not None:
            per[n.category] = per.get(n.category, 0) + 1
    assert shape(final) == (
        len(unseen),
        sum(1 for n in notes if n.read_date is None),
        final.version,
        per,
    )
