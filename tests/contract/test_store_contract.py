"""The Store contract: every backend passes the same tests."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from conftest import create_database, drop_database
from tidings.core.models import NewNotification, Presence, utcnow
from tidings.errors import Conflict, InvalidArgument, NotFound, StoreError, TooManyConnections
from tidings.storage import Store, create_store


@pytest.fixture(params=["sqlite", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/contract.db"
    else:
        url = await asyncio.to_thread(create_database)
    try:
        async with create_store(url) as store:
            yield store
    finally:
        if request.param == "postgres":
            await asyncio.to_thread(drop_database, url)


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


async def test_clients_roundtrip(store: Store) -> None:
    """Clients are stored with their hash and scopes, listed and deleted."""
    await store.create_client("c1", "app", {"notify", "publish"}, "hash")
    client = await store.get_client("c1")
    assert client is not None and client.scopes == {"notify", "publish"}
    assert client.secret_hash == "hash"
    assert [c.client_id for c in await store.list_clients()] == ["c1"]
    assert await store.delete_client("c1")
    assert await store.get_client("c1") is None
    assert not await store.delete_client("c1")


async def test_keys_are_created_once(store: Store) -> None:
    """get_or_create_key keeps the first value."""
    first = await store.get_or_create_key("k", lambda: "one")
    second = await store.get_or_create_key("k", lambda: "two")
    assert first == second == "one"


async def test_unstarted_store_refuses(tmp_path: Path) -> None:
    """Calls before start() raise a StoreError naming the mistake."""
    store = create_store(f"sqlite:///{tmp_path}/x.db")
    with pytest.raises(StoreError, match="not started"):
        await store.count("u")


def presence(socket_id: str, user_id: str, node_id: str) -> Presence:
    return Presence(socket_id, f"cid-{socket_id}", user_id, "session", node_id, utcnow())


async def test_heartbeat_registers_then_refreshes(store: Store) -> None:
    """The first heartbeat creates the node (False); later ones refresh it (True)."""
    assert await store.heartbeat("n1", "http://a:1") is False
    assert await store.heartbeat("n1", "http://a:1") is True
    nodes = await store.list_nodes()
    assert [(n.node_id, n.uri) for n in nodes] == [("n1", "http://a:1")]


async def test_presence_by_user_and_node(store: Store) -> None:
    """Sockets are listed by user or by node; re-adding one is harmless; removal forgets it."""
    await store.add_presence([presence("s1", "alice", "n1"), presence("s2", "alice", "n2")])
    await store.add_presence([presence("s3", "bob", "n1"), presence("s1", "alice", "n1")])
    assert {p.socket_id for p in await store.presence(user_id="alice")} == {"s1", "s2"}
    assert {p.socket_id for p in await store.presence(node_id="n1")} == {"s1", "s3"}
    assert len(await store.presence()) == 3
    await store.remove_presence("s1")
    assert {p.socket_id for p in await store.presence(user_id="alice")} == {"s2"}


async def test_reaping_removes_silent_nodes_and_their_sockets(store: Store) -> None:
    """A node silent past the limit is reaped with its sockets; live nodes stay."""
    await store.heartbeat("dead", "u")
    await asyncio.sleep(0.3)
    await store.heartbeat("alive", "u")
    await store.add_presence([presence("s1", "alice", "dead"), presence("s2", "bob", "alive")])
    assert await store.reap_nodes(stale_after=0.2) == ["dead"]
    assert [n.node_id for n in await store.list_nodes()] == ["alive"]
    assert [p.socket_id for p in await store.presence()] == ["s2"]
    assert await store.heartbeat("dead", "u") is False  # it comes back as a new node


async def test_remove_node_forgets_its_sockets(store: Store) -> None:
    """A clean shutdown removes the node and its registry rows."""
    await store.heartbeat("n1", "u")
    await store.add_presence([presence("s1", "alice", "n1")])
    await store.remove_node("n1")
    assert await store.list_nodes() == [] and await store.presence() == []


async def test_new_device_queue_starts_after_existing_notifications(store: Store) -> None:
    """A device registered now waits for what comes next, not for the user's history."""
    await store.create_notification("alice", "old")
    device = await store.bind_device("alice", None)
    assert await store.pending(device.connection_id, "alice", 0, 100) == []
    new = (await store.create_notification("alice", "new")).notification
    pending = await store.pending(device.connection_id, "alice", 0, 100)
    assert [n.notification_id for n in pending] == [new.notification_id]
    assert pending[0].seq == new.seq > 0


async def test_queue_keeps_order_and_empties_only_by_ack(store: Store) -> None:
    """Pending notifications come in creation order and leave only when acknowledged."""
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
    """One device acknowledging does not empty another's queue."""
    phone = await store.bind_device("alice", None)
    laptop = await store.bind_device("alice", None)
    note = (await store.create_notification("alice", "x")).notification
    await store.ack(phone.connection_id, "alice", [note.notification_id])
    assert await store.pending(phone.connection_id, "alice", 0, 10) == []
    assert len(await store.pending(laptop.connection_id, "alice", 0, 10)) == 1


async def test_ack_refuses_foreign_ids_and_devices(store: Store) -> None:
    """Another user's notifications or devices cannot be acknowledged."""
    mine = await store.bind_device("alice", None)
    theirs = await store.bind_device("bob", None)
    bob_note = (await store.create_notification("bob", "b")).notification
    with pytest.raises(NotFound):
        await store.ack(mine.connection_id, "alice", [bob_note.notification_id])
    with pytest.raises(NotFound):
        await store.ack(theirs.connection_id, "alice", [bob_note.notification_id])
    assert len(await store.pending(theirs.connection_id, "bob", 0, 10)) == 1


async def test_pending_after_seq_pages_through_the_queue(store: Store) -> None:
    """after_seq skips what was already sent on this connection."""
    device = await store.bind_device("alice", None)
    notes = [(await store.create_notification("alice", i)).notification for i in range(6)]
    page = await store.pending(device.connection_id, "alice", 0, 4)
    rest = await store.pending(device.connection_id, "alice", page[-1].seq, 4)
    assert [n.data for n in page + rest] == [n.data for n in notes]


async def test_trim_by_length_and_age_reports_the_gap(store: Store) -> None:
    """Operator limits drop the oldest queued notifications and say how many."""
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
    """Forgetting a device deletes its queue; its id is then unknown."""
    device = await store.bind_device("alice", None)
    await store.create_notification("alice", 1)
    assert not await store.forget_device("bob", device.connection_id)
    assert await store.forget_device("alice", device.connection_id)
    with pytest.raises(NotFound):
        await store.pending(device.connection_id, "alice", 0, 10)


async def test_topic_sequence_and_replay(store: Store) -> None:
    """Each topic numbers its messages; a replay after seq N returns the rest in order."""
    for i in range(5):
        message = await store.append_topic_message("pet", {"i": i}, "s1", ttl=60)
        assert message.seq == i + 1
    await store.append_topic_message("owner", "x", None, ttl=60)
    replay = await store.topic_messages("pet", since=2, limit=100)
    assert [m.data["i"] for m in replay.messages] == [2, 3, 4]
    assert replay.recovered and replay.last_seq == 5
    assert replay.messages[0].origin_session_id == "s1"
    assert (await store.topic_messages("pet", since=5, limit=100)).recovered
    nothing = await store.topic_messages("never", since=0, limit=10)
    assert nothing.messages == [] and nothing.recovered


async def test_replay_past_retention_is_not_recovered(store: Store) -> None:
    """When the messages after ``since`` expired, the replay says so."""
    await store.append_topic_message("pet", 1, None, ttl=0.1)
    await store.append_topic_message("pet", 2, None, ttl=0.1)
    await asyncio.sleep(0.3)
    await store.append_topic_message("pet", 3, None, ttl=60)
    replay = await store.topic_messages("pet", since=0, limit=10)
    assert [m.data for m in replay.messages] == [3] and not replay.recovered
    assert (await store.topic_messages("pet", since=2, limit=10)).recovered
    assert await store.expire(session_idle=3600) == 2
    replay = await store.topic_messages("pet", since=1, limit=10)
    assert not replay.recovered and [m.seq for m in replay.messages] == [3]


async def test_session_subscriptions_are_per_user_and_session(store: Store) -> None:
    """Subscriptions are kept per (user, session) and can be removed."""
    await store.subscribe_session("alice", "tab", ["pet", "owner"])
    await store.subscribe_session("alice", "tab", ["pet"])
    await store.subscribe_session("bob", "tab", ["zoo"])
    assert await store.session_topics("alice", "tab") == ["owner", "pet"]
    await store.unsubscribe_session("alice", "tab", ["owner", "never"])
    assert await store.session_topics("alice", "tab") == ["pet"]
    assert await store.session_topics("bob", "tab") == ["zoo"]
    assert await store.session_topics("alice", "other") == []


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


async def test_operator_views(store: Store) -> None:
    """Recent notifications come newest first; queue depth counts what a device still owes."""
    device = await store.bind_device("alice", None)
    notes = [(await store.create_notification("alice", i)).notification for i in range(4)]
    assert [n.data for n in await store.recent_notifications(2)] == [3, 2]
    assert await store.queue_depth(device.connection_id, "alice") == 4
    await store.ack(device.connection_id, "alice", [notes[3].notification_id])
    assert await store.queue_depth(device.connection_id, "alice") == 3
    assert await store.queue_depth("nope-nope-nope", "alice") == 0


async def test_queue_depths_in_one_call(store: Store) -> None:
    """Depths of many devices come back together; unknown or foreign devices are left out."""
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


async def test_attach_registers_the_socket_and_returns_count_and_topics(store: Store) -> None:
    """attach() registers the socket (as add_presence), and returns the user's count and the
    session's topics in order; another session's topics are not included."""
    await store.create_notification("u1", {"n": 1})
    await store.create_notification("u1", {"n": 2})
    await store.subscribe_session("u1", "tab-1", ["pet", "news"])
    await store.subscribe_session("u1", "tab-2", ["other"])
    socket = Presence("sock-1", "dev-1", "u1", "tab-1", "node-a", utcnow())
    count, topics = await store.attach(socket)
    assert (count.count, count.version) == (2, 2)
    assert topics == ["news", "pet"]
    assert [p.socket_id for p in await store.presence(user_id="u1")] == ["sock-1"]
    fresh = Presence("sock-2", "dev-2", "nobody", "s", "node-a", utcnow())
    count, topics = await store.attach(fresh)
    assert (count.count, count.version, topics) == (0, 0, [])


async def test_open_socket_binds_the_device_and_registers_the_socket(store: Store) -> None:
    """open_socket() binds the device as bind_device() would and registers the socket under
    the bound id, in the session given or else the device's own; it returns the count and the
    session's topics. A device id of another user is not taken over: a new one is bound."""
    await store.create_notification("u1", {"n": 1})
    await store.subscribe_session("u1", "tab-1", ["news"])
    since = utcnow()
    device, count, topics = await store.open_socket(
        "u1",
        "dev-one-1",
        socket_id="sock-1",
        session_id="tab-1",
        node_id="n",
        connected_since=since,
    )
    assert (device.connection_id, device.user_id) == ("dev-one-1", "u1")
    assert device.cursor == 1  # the queue starts after the user's latest notification
    assert ((count.count, count.version), topics) == ((1, 1), ["news"])
    again, _, _ = await store.open_socket(
        "u1", "dev-one-1", socket_id="sock-2", session_id=None, node_id="n", connected_since=since
    )
    assert again.connection_id == "dev-one-1" and again.created_at == device.created_at
    sockets = {p.socket_id: p for p in await store.presence(user_id="u1")}
    assert sockets["sock-1"].connection_id == "dev-one-1"
    assert sockets["sock-2"].session_id == "dev-one-1"  # no session: the device's
    foreign, count, topics = await store.open_socket(
        "u2", "dev-one-1", socket_id="sock-3", session_id=None, node_id="n", connected_since=since
    )
    assert foreign.user_id == "u2" and foreign.connection_id != "dev-one-1"
    assert ((count.count, count.version), topics) == ((0, 0), [])
    (mine,) = await store.presence(user_id="u2")
    assert (mine.socket_id, mine.connection_id) == ("sock-3", foreign.connection_id)
    fresh, _, _ = await store.open_socket(
        "u2", None, socket_id="sock-4", session_id=None, node_id="n", connected_since=since
    )
    assert fresh.connection_id not in ("dev-one-1", foreign.connection_id)


async def test_open_socket_over_the_cap_binds_but_registers_nothing(store: Store) -> None:
    """Over ``max_sockets`` open_socket() raises TooManyConnections carrying the device, which
    stays bound; the socket is not registered."""
    since = utcnow()
    for n in range(2):
        await store.open_socket(
            "u1", None, socket_id=f"s{n}", session_id=None, node_id="n", connected_since=since
        )
    with pytest.raises(TooManyConnections) as refused:
        await store.open_socket(
            "u1",
            "dev-late-1",
            socket_id="s-late",
            session_id=None,
            node_id="n",
            connected_since=since,
            max_sockets=2,
        )
    assert refused.value.device is not None
    assert refused.value.device.connection_id == "dev-late-1"
    assert (
        await store.bind_device("u1", "dev-late-1")
    ).created_at == refused.value.device.created_at
    assert sorted(p.socket_id for p in await store.presence(user_id="u1")) == ["s0", "s1"]


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
