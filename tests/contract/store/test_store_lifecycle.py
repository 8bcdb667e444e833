"""The store contract of the store as a whole (storage/base.py): start before use, ping while
started and not after close, and the calls that span facets at a connect (attach, open_socket:
a device's binding, the socket's registry row, the count and the session's topics in one call).
Every backend passes it (the ``store`` fixture of :mod:`contract.store.backends` runs each test
on each)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from contract.store.backends import store
from tidings.core.models import Presence, utcnow
from tidings.errors import StoreError, TooManyConnections
from tidings.storage import Store, create_store

__all__ = ["store"]  # the fixture


async def test_unstarted_store_refuses(tmp_path: Path) -> None:
    """Calls before start() raise a StoreError naming the mistake. Probed through the
    notifications facet (count)."""
    store = create_store(f"sqlite:///{tmp_path}/x.db")
    with pytest.raises(StoreError, match="not started"):
        await store.count("u")


async def test_attach_registers_the_socket_and_returns_count_and_topics(store: Store) -> None:
    """attach() registers the socket (as add_presence), and returns the user's count and the
    session's topics in order; another session's topics are not included. Spans facets: setup
    through notifications (create_notification) and topics (subscribe_session), checked through
    cluster (presence)."""
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
    session's topics. A device id of another user is not taken over: a new one is bound.
    Spans facets: setup through notifications (create_notification) and topics
    (subscribe_session), checked through cluster (presence)."""
    await store.create_notification("u1", {"n": 1})
    await store.subscribe_session("u1", "tab-1", ["news"])
    since = utcnow()
    device, count, topics, _ = await store.open_socket(
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
    again, _, _, _ = await store.open_socket(
        "u1", "dev-one-1", socket_id="sock-2", session_id=None, node_id="n", connected_since=since
    )
    assert again.connection_id == "dev-one-1" and again.created_at == device.created_at
    sockets = {p.socket_id: p for p in await store.presence(user_id="u1")}
    assert sockets["sock-1"].connection_id == "dev-one-1"
    assert sockets["sock-2"].session_id == "dev-one-1"  # no session: the device's
    foreign, count, topics, _ = await store.open_socket(
        "u2", "dev-one-1", socket_id="sock-3", session_id=None, node_id="n", connected_since=since
    )
    assert foreign.user_id == "u2" and foreign.connection_id != "dev-one-1"
    assert ((count.count, count.version), topics) == ((0, 0), [])
    (mine,) = await store.presence(user_id="u2")
    assert (mine.socket_id, mine.connection_id) == ("sock-3", foreign.connection_id)
    fresh, _, _, _ = await store.open_socket(
        "u2", None, socket_id="sock-4", session_id=None, node_id="n", connected_since=since
    )
    assert fresh.connection_id not in ("dev-one-1", foreign.connection_id)


async def test_open_socket_over_the_cap_binds_but_registers_nothing(store: Store) -> None:
    """Over ``max_sockets`` open_socket() raises TooManyConnections carrying the device, which
    stays bound; the socket is not registered. Spans facets: checked through devices
    (bind_device) and cluster (presence)."""
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


async def test_ping_answers_while_started_and_refuses_after_close(store: Store) -> None:
    """``ping`` returns while the store is started; once it is closed it raises a StoreError
    (the node's readiness reads this)."""
    await store.ping()
    await store.close()
    with pytest.raises(StoreError):
        await store.ping()


async def test_concurrent_opens_each_get_their_own_outcome(store: Store) -> None:
    """Sockets opening at the same moment (a reconnect storm, which stores may serve as one
    group) each get what a lone open_socket() would: known devices keep their ids and cursors,
    a new id is bound, another user's id and a malformed one are replaced, two sockets of one
    device both register, a known device over the cap is refused with the device and registers
    nothing, and each socket gets its own user's count and its own session's topics. Spans
    facets: setup through notifications and topics, checked through cluster (presence)."""
    since = utcnow()
    known = [await store.bind_device(f"u{i}", f"known-device-{i}") for i in range(6)]
    await store.create_notification("u1", {"n": 1})
    await store.create_notification("u2", {"n": 1})
    await store.create_notification("u2", {"n": 2})
    await store.subscribe_session("u1", "tab-a", ["pets"])
    await store.subscribe_session("u1", "tab-b", ["news"])
    for n in range(2):  # u5 already holds two sockets
        await store.open_socket(
            "u5", None, socket_id=f"held-{n}", session_id=None, node_id="n", connected_since=since
        )

    def opening(user: str, cid: str | None, socket: str, session: str | None = None) -> object:
        return store.open_socket(
            user,
            cid,
            socket_id=socket,
            session_id=session,
            node_id="n",
            connected_since=since,
            max_sockets=2,
        )

    outcomes = await asyncio.gather(
        opening("u1", "known-device-1", "s1a", "tab-a"),
        opening("u1", "known-device-1", "s1b", "tab-b"),
        opening("u2", "known-device-2", "s2"),
        opening("u3", "brand-new-device", "s3"),
        opening("u4", "known-device-0", "s4"),  # u0's id
        opening("u0", "bad id!", "s0"),
        opening("u5", "known-device-5", "s5"),  # over the cap
        return_exceptions=True,
    )
    (d1a, c1a, t1a, _), (d1b, c1b, t1b, _), (d2, c2, t2, _) = outcomes[:3]  # type: ignore[misc]
    (d3, _, _, _), (d4, _, _, _), (d0, _, _, _) = outcomes[3:6]  # type: ignore[misc]
    assert d1a.connection_id == d1b.connection_id == "known-device-1"
    assert d1a.created_at == known[1].created_at and d1a.cursor == known[1].cursor
    assert (c1a.count, c1a.version, t1a) == (1, 1, ["pets"])
    assert (c1b.count, c1b.version, t1b) == (1, 1, ["news"])
    assert (d2.connection_id, c2.count, c2.version, t2) == ("known-device-2", 2, 2, [])
    assert (d3.connection_id, d3.user_id) == ("brand-new-device", "u3")
    assert d4.user_id == "u4" and d4.connection_id != "known-device-0"
    assert d0.user_id == "u0" and d0.connection_id != "bad id!"
    refused = outcomes[6]
    assert isinstance(refused, TooManyConnections)
    assert refused.device is not None and refused.device.connection_id == "known-device-5"
    sockets = {p.socket_id: p for p in await store.presence()}
    assert {"s1a", "s1b", "s2", "s3", "s4", "s0"} <= set(sockets)
    assert "s5" not in sockets
    assert (sockets["s1a"].session_id, sockets["s1b"].session_id) == ("tab-a", "tab-b")
    assert sockets["s2"].session_id == "known-device-2"
    assert sockets["s4"].connection_id == d4.connection_id
    await asyncio.gather(*(store.remove_presence(s) for s in ("s1a", "s1b", "s2", "nothing")))
    assert {p.socket_id for p in await store.presence()} == {"held-0", "held-1", "s3", "s4", "s0"}


async def test_open_socket_reads_the_first_page_of_the_queue_with_the_count(store: Store) -> None:
    """With ``queue`` > 0 open_socket() also returns the first notifications of the device's
    queue (those after its cursor it has not acknowledged, oldest first, at most ``queue``),
    read with the count, alone or grouped with other opens; none over the cap, none for a
    new device whose queue starts after the user's latest notification, none when not asked.
    Spans facets: setup through notifications and devices (ack)."""
    since = utcnow()
    device = await store.bind_device("u1", "queued-device-1")
    other = await store.bind_device("u2", "queued-device-2")
    notes = [(await store.create_notification("u1", {"n": n})).notification for n in range(5)]
    await store.create_notification("u2", {"n": 0})
    await store.ack(device.connection_id, "u1", [notes[1].notification_id])

    def opening(
        user: str, cid: str | None, socket: str, queue: int, most: int | None = None
    ) -> Any:
        return store.open_socket(
            user,
            cid,
            socket_id=socket,
            session_id=None,
            node_id="n",
            connected_since=since,
            max_sockets=most,
            queue=queue,
        )

    alone = await opening("u1", "queued-device-1", "q-1", 3)
    assert [n.notification_id for n in alone.queue] == [notes[i].notification_id for i in (0, 2, 3)]
    assert (alone.counts.count, alone.counts.version) == (5, 5)
    grouped = await asyncio.gather(
        opening("u1", "queued-device-1", "q-2", 100),
        opening("u2", "queued-device-2", "q-3", 100),
        opening("u1", "queued-device-1", "q-4", 0),
        opening("u2", "queued-device-2", "q-5", 100, most=2),  # u2 holds q-3 (maybe) and this
        opening("u1", "brand-new-queued", "q-6", 100),
        return_exceptions=True,
    )
    assert [n.data for n in grouped[0].queue] == [{"n": n} for n in (0, 2, 3, 4)]
    assert [n.data for n in grouped[1].queue] == [{"n": 0}]
    assert grouped[2].queue == []
    assert isinstance(grouped[3], TooManyConnections) or [n.data for n in grouped[3].queue] == [
        {"n": 0}
    ]
    assert grouped[4].device.connection_id == "brand-new-queued" and grouped[4].queue == []
    await opening("u2", "queued-device-2", "q-7", 0)
    with pytest.raises(TooManyConnections):
        await opening("u2", "queued-device-2", "q-8", 100, most=2)
    assert other.connection_id == "queued-device-2"
