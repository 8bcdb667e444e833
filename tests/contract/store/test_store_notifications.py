"""The store contract of the notifications facet (storage/facets/notifications.py): creating one
and many notifications, idempotency, unseen, mark-seen, counts and their versions, the
notification log. Every backend passes it (the ``store`` fixture of
:mod:`contract.store.backends` runs each test on each)."""

from __future__ import annotations

import asyncio

import pytest

from contract.store.backends import store
from tidings.core.models import NewNotification
from tidings.errors import Conflict, InvalidArgument, NotFound
from tidings.storage import Store

__all__ = ["store"]  # the fixture


async def test_new_user_has_zero_count(store: Store) -> None:
    """An unknown user has count 0 at version 0."""
    count = await store.count("nobody")
    assert (count.count, count.version) == (0, 0)


async def test_create_bumps_count_and_version(store: Store) -> None:
    """Each created notification raises the count and the version by one."""
    first = await store.create_notification("u1", {"n": 1})
    second = await store.create_notification("u1", {"n": 2})
    assert first.created and second.created
    assert first.count is not None and second.count is not None
    assert (first.count.count, first.count.version) == (1, 1)
    assert (second.count.count, second.count.version) == (2, 2)
    assert await store.count("u1") == second.count


async def test_counts_of_many_users_in_one_read(store: Store) -> None:
    """counts answers every user asked for: their count and version, 0 at 0 for one unknown."""
    await store.create_notification("u1", {"n": 1})
    await store.create_notification("u1", {"n": 2})
    await store.create_notification("u2", {"n": 1})
    found = await store.counts(["u1", "u2", "nobody"])
    assert {u: (c.user_id, c.count, c.version) for u, c in found.items()} == {
        "u1": ("u1", 2, 2),
        "u2": ("u2", 1, 1),
        "nobody": ("nobody", 0, 0),
    }
    many = [f"user-{n}" for n in range(1200)]
    assert len(await store.counts(many)) == 1200


async def test_create_is_idempotent_by_id(store: Store) -> None:
    """The same notification_id and content returns the first notification, writing nothing."""
    first = await store.create_notification("u1", {"a": 1, "b": 2}, "n-1")
    again = await store.create_notification("u1", {"b": 2, "a": 1}, "n-1")
    assert not again.created and again.count is None
    assert again.notification == first.notification
    assert (await store.count("u1")).count == 1


async def test_create_conflicts_on_other_content_or_user(store: Store) -> None:
    """A notification_id reused for other data or another user is a conflict."""
    await store.create_notification("u1", {"a": 1}, "n-1")
    with pytest.raises(Conflict):
        await store.create_notification("u1", {"a": 2}, "n-1")
    with pytest.raises(Conflict):
        await store.create_notification("u2", {"a": 1}, "n-1")
    assert (await store.count("u2")).count == 0


async def test_unseen_in_creation_order_with_limit(store: Store) -> None:
    """unseen() returns the oldest unseen notifications first, at most ``limit``."""
    for i in range(5):
        await store.create_notification("u1", {"i": i})
    page = await store.unseen("u1", 3)
    assert [n.data["i"] for n in page] == [0, 1, 2]
    assert all(n.seen_date is None and n.user_id == "u1" for n in page)


async def test_mark_seen_changes_count_once(store: Store) -> None:
    """Marking seen lowers the count by the number changed; repeating changes nothing."""
    ids = [
        (await store.create_notification("u1", i)).notification.notification_id for i in range(3)
    ]
    result = await store.mark_seen("u1", ids[:2])
    assert sorted(result.marked) == sorted(ids[:2])
    assert result.count is not None and (result.count.count, result.count.version) == (1, 4)
    again = await store.mark_seen("u1", ids[:2])
    assert again.marked == [] and again.count is None
    assert [n.notification_id for n in await store.unseen("u1", 10)] == [ids[2]]


async def test_mark_seen_refuses_foreign_and_unknown_ids(store: Store) -> None:
    """Another user's or unknown ids raise NotFound and nothing at all is marked."""
    mine = (await store.create_notification("u1", "m")).notification.notification_id
    theirs = (await store.create_notification("u2", "t")).notification.notification_id
    with pytest.raises(NotFound) as info:
        await store.mark_seen("u1", [mine, theirs, "nope"])
    assert sorted(info.value.ids) == sorted([theirs, "nope"])
    assert (await store.count("u1")).count == 1
    assert (await store.count("u2")).count == 1
    assert len(await store.unseen("u2", 10)) == 1


async def test_concurrent_writes_are_all_committed(store: Store) -> None:
    """Many concurrent notifies (grouped into few transactions) each count exactly once."""
    results = await asyncio.gather(*(store.create_notification("u1", i) for i in range(200)))
    versions = sorted(r.count.version for r in results if r.count)
    assert versions == list(range(1, 201))
    assert (await store.count("u1")).count == 200


async def test_failed_item_does_not_spoil_its_batch(store: Store) -> None:
    """A conflict inside a group commit fails only that call."""
    await store.create_notification("u1", "x", "taken")
    outcomes = await asyncio.gather(
        store.create_notification("u1", "a"),
        store.create_notification("u1", "other", "taken"),
        store.create_notification("u1", "b"),
        return_exceptions=True,
    )
    assert isinstance(outcomes[1], Conflict)
    assert (await store.count("u1")).count == 3


async def test_notification_log_follows_every_user(store: Store) -> None:
    """A consumer reads every notification after its own position, each once, in pages."""
    await store.create_notification("alice", 1)
    await store.create_notification("bob", 2)
    first, position = await store.notification_log("", 1)
    rest, position = await store.notification_log(position, 10)
    assert [(n.user_id, n.data) for n in first + rest] == [("alice", 1), ("bob", 2)]
    await store.create_notification("alice", 3)
    more, again = await store.notification_log(position, 10)
    assert [n.data for n in more] == [3]
    assert await store.notification_log(again, 10) == ([], again)
    with pytest.raises(InvalidArgument):
        await store.notification_log("not-a-position", 10)


async def test_notification_log_skips_nothing_under_concurrent_writers(store: Store) -> None:
    """While many users' notifications commit concurrently, a follower misses none."""
    seen: list[str] = []
    done = asyncio.Event()

    async def follow() -> None:
        position = ""
        while True:
            finished = done.is_set()
            notes, position = await store.notification_log(position, 50)
            seen.extend(n.notification_id for n in notes)
            if finished and not notes:
                return
            await asyncio.sleep(0)

    follower = asyncio.create_task(follow())
    results = await asyncio.gather(
        *(store.create_notification(f"user-{i % 16}", i) for i in range(400))
    )
    done.set()
    await follower
    assert sorted(seen) == sorted(r.notification.notification_id for r in results)


async def test_one_users_notifications_commit_in_seq_order(store: Store) -> None:
    """Concurrent notifies of one user get seqs in the order they commit (their versions), so a
    device cursor can never step over a notification that becomes visible later."""
    results = await asyncio.gather(*(store.create_notification("u1", i) for i in range(100)))
    by_version = sorted(results, key=lambda r: r.count.version if r.count else 0)
    seqs = [r.notification.seq for r in by_version]
    assert seqs == sorted(seqs)


async def test_batch_creates_idempotently_and_reports_conflicts(store: Store) -> None:
    """create_notifications writes every new item, returns existing ones for repeated ids
    (also within the batch), refuses reused ids per item, and gives each created item the count
    its user had right after it, as if they had been created one by one."""
    await store.create_notification("u1", {"a": 1}, "taken")
    results = await store.create_notifications(
        [
            NewNotification("u1", {"n": 1}),
            NewNotification("u2", {"n": 2}, "b-1"),
            NewNotification("u1", {"a": 1}, "taken"),  # same content: the existing one
            NewNotification("u2", {"other": 1}, "taken"),  # another user: conflict
            NewNotification("u2", {"n": 2}, "b-1"),  # repeated in the batch: existing
            NewNotification("u1", {"n": 3}),
        ]
    )
    assert [type(r).__name__ for r in results] == [
        "NotifyResult",
        "NotifyResult",
        "NotifyResult",
        "Conflict",
        "NotifyResult",
        "NotifyResult",
    ]
    created = [r for r in results if not isinstance(r, Conflict) and r.created]
    assert [r.notification.data for r in created] == [{"n": 1}, {"n": 2}, {"n": 3}]
    assert [(r.notification.user_id, r.count.count, r.count.version) for r in created] == [  # type: ignore[union-attr]
        ("u1", 2, 2),
        ("u2", 1, 1),
        ("u1", 3, 3),
    ]
    assert (await store.count("u1")).count == 3
    assert (await store.count("u2")).count == 1
    assert not results[2].created and not results[4].created  # type: ignore[union-attr]
    unseen = await store.unseen("u1", 10)
    assert [n.data for n in unseen] == [{"a": 1}, {"n": 1}, {"n": 3}]
    seqs = [n.seq for n in unseen]
    assert seqs == sorted(seqs)


async def test_concurrent_batches_sharing_users_all_commit(store: Store) -> None:
    """Batches that touch the same users at once neither deadlock nor lose a count: every item
    is written, each user's count is the number of its items, and its seqs keep their order."""
    batches = [
        [NewNotification(f"u{(b + k) % 5}", {"b": b, "k": k}) for k in range(40)] for b in range(6)
    ]
    async with asyncio.timeout(30):
        results = await asyncio.gather(*(store.create_notifications(b) for b in batches))
    assert all(not isinstance(r, Conflict) and r.created for rs in results for r in rs)
    expected = {f"u{u}": 0 for u in range(5)}
    for batch in batches:
        for item in batch:
            expected[item.user_id] += 1
    for user_id, n in expected.items():
        assert (await store.count(user_id)).count == n
        seqs = [note.seq for note in await store.unseen(user_id, 1000)]
        assert len(seqs) == n and seqs == sorted(seqs)


async def test_a_large_batch_is_written_whole_and_in_order(store: Store) -> None:
    """A batch larger than one insert statement takes (the SQLite store writes up to 500 rows
    per statement) keeps every item, in order, with increasing seqs; a later notification
    still gets a larger seq than all of them."""
    items = [NewNotification(f"u{k % 7}", {"k": k}) for k in range(1234)]
    results = await store.create_notifications(items)
    assert all(not isinstance(r, Conflict) and r.created for r in results)
    notes = [r.notification for r in results]  # type: ignore[union-attr]
    assert [n.data for n in notes] == [{"k": k} for k in range(1234)]
    seqs = [n.seq for n in notes]
    assert seqs == sorted(seqs) and len(set(seqs)) == 1234
    assert len({n.notification_id for n in notes}) == 1234
    later = await store.create_notification("u1", {"after": True})
    assert later.notification.seq > seqs[-1]
    stored = [n for user in range(7) for n in await store.unseen(f"u{user}", 1000)]
    assert sorted((n.seq, n.data["k"]) for n in stored if "k" in n.data) == [
        (seq, k) for k, seq in enumerate(seqs)
    ]
