"""The store contract of the devices facet (storage/facets/devices.py): binding device ids, each
device's durable queue (pending, ack, trim, forget) and its depth. The queues fill through the
notifications facet. Every backend passes it (the ``store`` fixture of
:mod:`contract.store.backends` runs each test on each)."""

from __future__ import annotations

import asyncio

import pytest

from contract.store.backends import store
from tidings.errors import NotFound
from tidings.storage import Store

__all__ = ["store"]  # the fixture


async def test_bind_device_keeps_own_id_and_refuses_foreign(store: Store) -> None:
    """A device id stays with its user; another user presenting it gets a new one."""
    first = await store.bind_device("u1", None)
    again = await store.bind_device("u1", first.connection_id)
    assert again.connection_id == first.connection_id
    stolen = await store.bind_device("u2", first.connection_id)
    assert stolen.connection_id != first.connection_id and stolen.user_id == "u2"
    chosen = await store.bind_device("u1", "my-own-device-id")
    assert chosen.connection_id == "my-own-device-id"
    malformed = await store.bind_device("u1", "bad id!")
    assert malformed.connection_id != "bad id!"


async def test_new_device_queue_starts_after_existing_notifications(store: Store) -> None:
    """A device registered now waits for what comes next, not for the user's history. Setup
    through the notifications facet (create_notification fills the queue)."""
    await store.create_notification("alice", "old")
    device = await store.bind_device("alice", None)
    assert await store.pending(device.connection_id, "alice", 0, 100) == []
    new = (await store.create_notification("alice", "new")).notification
    pending = await store.pending(device.connection_id, "alice", 0, 100)
    assert [n.notification_id for n in pending] == [new.notification_id]
    assert pending[0].seq == new.seq > 0


async def test_queue_keeps_order_and_empties_only_by_ack(store: Store) -> None:
    """Pending notifications come in creation order and leave only when acknowledged. Setup
    through the notifications facet (create_notification fills the queue)."""
    device = await store.bind_device("alice", None)
    ids = [
        (await store.create_notification("alice", i)).notification.notification_id for i in range(5)
    ]
    cid = device.connection_id
    assert [n.notification_id for n in await store.pending(cid, "alice", 0, 100)] == ids
    result = await store.ack(cid, "alice", ids[:2])
    assert result.acked == ids[:2]
    assert [n.notification_id for n in await store.pending(cid, "alice", 0, 100)] == ids[2:]
    # Out of order: the 5th is acknowledged before the 3rd and 4th.
    await store.ack(cid, "alice", [ids[4]])
    assert [n.notification_id for n in await store.pending(cid, "alice", 0, 100)] == ids[2:4]
    await store.ack(cid, "alice", ids[2:4])
    assert await store.pending(cid, "alice", 0, 100) == []
    again = await store.ack(cid, "alice", ids)  # repeating acks is harmless
    assert again.cursor == result.cursor + 3


async def test_devices_of_one_user_have_independent_queues(store: Store) -> None:
    """One device acknowledging does not empty another's queue. Setup through the notifications
    facet (create_notification fills the queue)."""
    phone = await store.bind_device("alice", None)
    laptop = await store.bind_device("alice", None)
    note = (await store.create_notification("alice", "x")).notification
    await store.ack(phone.connection_id, "alice", [note.notification_id])
    assert await store.pending(phone.connection_id, "alice", 0, 10) == []
    assert len(await store.pending(laptop.connection_id, "alice", 0, 10)) == 1


async def test_ack_refuses_foreign_ids_and_devices(store: Store) -> None:
    """Another user's notifications or devices cannot be acknowledged. Setup through the
    notifications facet (create_notification fills the queue)."""
    mine = await store.bind_device("alice", None)
    theirs = await store.bind_device("bob", None)
    bob_note = (await store.create_notification("bob", "b")).notification
    with pytest.raises(NotFound):
        await store.ack(mine.connection_id, "alice", [bob_note.notification_id])
    with pytest.raises(NotFound):
        await store.ack(theirs.connection_id, "alice", [bob_note.notification_id])
    assert len(await store.pending(theirs.connection_id, "bob", 0, 10)) == 1


async def test_pending_after_seq_pages_through_the_queue(store: Store) -> None:
    """after_seq skips what was already sent on this connection. Setup through the notifications
    facet (create_notification fills the queue)."""
    device = await store.bind_device("alice", None)
    notes = [(await store.create_notification("alice", i)).notification for i in range(6)]
    page = await store.pending(device.connection_id, "alice", 0, 4)
    rest = await store.pending(device.connection_id, "alice", page[-1].seq, 4)
    assert [n.data for n in page + rest] == [n.data for n in notes]


async def test_trim_by_length_and_age_reports_the_gap(store: Store) -> None:
    """Operator limits drop the oldest queued notifications and say how many. Setup through the
    notifications facet (create_notification fills the queue)."""
    device = await store.bind_device("alice", None)
    cid = device.connection_id
    for i in range(10):
        await store.create_notification("alice", i)
    assert await store.trim_queue(cid, "alice", max_length=None, max_age=None) is None
    gap = await store.trim_queue(cid, "alice", max_length=4, max_age=None)
    assert gap is not None and (gap.reason, gap.skipped) == ("max_length", 6)
    assert [n.data for n in await store.pending(cid, "alice", 0, 100)] == [6, 7, 8, 9]
    await asyncio.sleep(0.2)
    await store.create_notification("alice", 10)
    gap = await store.trim_queue(cid, "alice", max_length=None, max_age=0.1)
    assert gap is not None and (gap.reason, gap.skipped) == ("max_age", 4)
    assert [n.data for n in await store.pending(cid, "alice", 0, 100)] == [10]


async def test_forgotten_device_loses_its_queue(store: Store) -> None:
    """Forgetting a device deletes its queue; its id is then unknown. Setup through the
    notifications facet (create_notification fills the queue)."""
    device = await store.bind_device("alice", None)
    await store.create_notification("alice", 1)
    assert not await store.forget_device("bob", device.connection_id)
    assert await store.forget_device("alice", device.connection_id)
    with pytest.raises(NotFound):
        await store.pending(device.connection_id, "alice", 0, 10)


async def test_operator_views(store: Store) -> None:
    """Recent notifications come newest first; queue depth counts what a device still owes. Setup
    through the notifications facet (create_notification), which it also checks:
    recent_notifications is that facet's operator view, kept next to queue_depth as in the old
    suite."""
    device = await store.bind_device("alice", None)
    notes = [(await store.create_notification("alice", i)).notification for i in range(4)]
    assert [n.data for n in await store.recent_notifications(2)] == [3, 2]
    assert await store.queue_depth(device.connection_id, "alice") == 4
    await store.ack(device.connection_id, "alice", [notes[3].notification_id])
    assert await store.queue_depth(device.connection_id, "alice") == 3
    assert await store.queue_depth("nope-nope-nope", "alice") == 0


async def test_queue_depths_in_one_call(store: Store) -> None:
    """Depths of many devices come back together; unknown or foreign devices are left out. Setup
    through the notifications facet (create_notification fills the queue)."""
    phone = await store.bind_device("alice", None)
    laptop = await store.bind_device("alice", None)
    bobs = await store.bind_device("bob", None)
    first = (await store.create_notification("alice", 1)).notification
    await store.create_notification("alice", 2)
    await store.ack(phone.connection_id, "alice", [first.notification_id])
    depths = await store.queue_depths(
        [
            (phone.connection_id, "alice"),
            (laptop.connection_id, "alice"),
            (bobs.connection_id, "alice"),
            ("unknown-device-id", "alice"),
        ]
    )
    assert depths == {phone.connection_id: 1, laptop.connection_id: 2}
    assert await store.queue_depths([]) == {}


async def test_a_users_devices_connected_or_not(store: Store) -> None:
    first = await store.bind_device("alice", None)
    second = await store.bind_device("alice", None)
    await store.bind_device("bob", None)
    again = await store.bind_device("alice", first.connection_id)  # seen last
    found = await store.devices_of("alice")
    assert [d.connection_id for d in found] == [again.connection_id, second.connection_id]
    assert {d.user_id for d in found} == {"alice"}
    assert len(await store.devices_of("alice", limit=1)) == 1
    assert await store.devices_of("nobody") == []


async def test_concurrent_acks_and_reads_each_get_their_own_outcome(store: Store) -> None:
    """Acknowledgements and queue reads made at the same moment (which stores may serve as one
    group) each get what a lone call would: a device acknowledging twice at once (out of
    order) ends with an empty queue, a refused ack (an unknown id mixed with a good one, an
    unknown or another user's device) changes nothing, and other devices' queues are their
    own. Setup through the notifications facet (create_notification fills the queues)."""
    devices = [await store.bind_device(f"u{i}", None) for i in range(4)]
    notes = {
        i: [(await store.create_notification(f"u{i}", n)).notification for n in range(6)]
        for i in range(4)
    }
    cid = [d.connection_id for d in devices]
    ids = {i: [n.notification_id for n in notes[i]] for i in range(4)}
    outcomes = await asyncio.gather(
        store.ack(cid[0], "u0", ids[0][3:]),  # the later half first
        store.ack(cid[0], "u0", ids[0][:3]),
        store.ack(cid[1], "u1", [ids[1][0], "no-such-id"]),
        store.ack(cid[2], "u2", ids[2][:2] + ids[2][4:]),  # a hole at 2 and 3
        store.ack(cid[3], "u0", ids[0][:1]),  # u0's id on u3's device, as u0
        store.ack("unknown-device-x", "u3", ids[3][:1]),
        store.pending(cid[1], "u1", 0, 100),
        store.pending("unknown-device-y", "u1", 0, 100),
        store.pending(cid[3], "u3", notes[3][1].seq, 2),
        return_exceptions=True,
    )
    assert outcomes[0].acked == ids[0][3:] and outcomes[1].acked == ids[0][:3]
    assert isinstance(outcomes[2], NotFound) and outcomes[2].ids == ["no-such-id"]
    assert outcomes[3].cursor == notes[2][1].seq
    assert isinstance(outcomes[4], NotFound) and isinstance(outcomes[5], NotFound)
    assert [n.notification_id for n in outcomes[6]] == ids[1]
    assert isinstance(outcomes[7], NotFound)
    assert [n.notification_id for n in outcomes[8]] == ids[3][2:4]
    assert await store.pending(cid[0], "u0", 0, 100) == []
    assert [n.notification_id for n in await store.pending(cid[1], "u1", 0, 100)] == ids[1]
    assert [n.notification_id for n in await store.pending(cid[2], "u2", 0, 100)] == ids[2][2:4]
    assert [n.notification_id for n in await store.pending(cid[3], "u3", 0, 100)] == ids[3]
    await store.ack(cid[2], "u2", ids[2][2:4])  # the hole filled: the cursor takes all
    assert (await store.ack(cid[2], "u2", [])).cursor == notes[2][5].seq
    assert await store.queue_depths([(cid[2], "u2"), (cid[0], "u0")]) == {cid[2]: 0, cid[0]: 0}


async def test_notification_state_says_seen_read_and_acknowledged(store: Store) -> None:
    """notification_state: seen and read dates, and whether a device of the user that existed
    when the notification was created acknowledged it (a device bound later starts after it,
    which is no acknowledgement); None for an unknown id or another user's. Setup through the
    notifications facet (create_notification, mark_seen, change_state)."""
    early = await store.bind_device("sam", None)
    first = (await store.create_notification("sam", 1)).notification
    second = (await store.create_notification("sam", 2)).notification
    fresh = await store.notification_state("sam", first.notification_id)
    assert fresh is not None and fresh == (None, None, False)
    await store.bind_device("sam", None)  # later: its cursor is past both, no ack
    assert (await store.notification_state("sam", first.notification_id)).acked is False  # type: ignore[union-attr]
    await store.mark_seen("sam", [first.notification_id])
    await store.ack(early.connection_id, "sam", [second.notification_id])
    seen = await store.notification_state("sam", first.notification_id)
    assert seen is not None and seen.seen_date is not None and seen.read_date is None
    assert seen.acked is False
    acked = await store.notification_state("sam", second.notification_id)
    assert acked is not None and acked.acked is True and acked.seen_date is None
    assert await store.notification_state("other", first.notification_id) is None
    assert await store.notification_state("sam", "no-such-id") is None
