"""The store contract of the users facet (storage/facets/users.py): erasing everything the store
holds about one user, and nothing of anyone else's. Every backend passes it (the ``store``
fixture of :mod:`contract.store.backends` runs each test on each)."""

from __future__ import annotations

import pytest

from contract.store.backends import store
from tidings.core.models import utcnow
from tidings.errors import NotFound
from tidings.storage import Store

__all__ = ["store"]  # the fixture

CAP = 100


async def fill(store: Store, user_id: str) -> str:
    """A user with two notifications, a device that acknowledged one, an open socket, a
    session with topics and a push token; the device's id."""
    first = (await store.create_notification(user_id, {"n": 1})).notification
    await store.create_notification(user_id, {"n": 2})
    device, _, _, _ = await store.open_socket(
        user_id,
        None,
        socket_id=f"socket-{user_id}",
        session_id=f"session-{user_id}",
        node_id="node-1",
        connected_since=utcnow(),
    )
    await store.create_notification(user_id, {"n": 3})
    pending = await store.pending(device.connection_id, user_id, 0, 100)
    await store.ack(device.connection_id, user_id, [pending[0].notification_id])
    await store.subscribe_session(user_id, f"session-{user_id}", ["news", "sports"])
    await store.register_push_token(user_id, "apns", f"token-{user_id}", None, max_per_user=CAP)
    assert first is not None
    return device.connection_id


async def everything_of(store: Store, user_id: str, device: str) -> tuple[object, ...]:
    """What the store holds of a user that :func:`fill` made."""
    return (
        await store.count(user_id),
        await store.unseen(user_id, 100),
        await store.pending(device, user_id, 0, 100),
        await store.presence(user_id=user_id),
        await store.session_topics(user_id, f"session-{user_id}"),
        await store.push_tokens(user_id),
    )


async def test_erase_removes_everything_of_the_user_and_nothing_else(store: Store) -> None:
    """After erase_user the user has no notifications, devices, sockets, sessions or push
    tokens, and a count of 0 at a higher version; another user keeps all of theirs."""
    ann_device = await fill(store, "ann")
    bob_device = await fill(store, "bob")
    bob_before = await everything_of(store, "bob", bob_device)
    before = await store.count("ann")

    erased = await store.erase_user("ann")

    assert erased == {
        "notifications": 3,
        "devices": 1,
        "sockets": 1,
        "sessions": 2,
        "push_tokens": 1,
    }
    assert await store.unseen("ann", 100) == []
    assert await store.presence(user_id="ann") == []
    assert await store.session_topics("ann", "session-ann") == []
    assert await store.push_tokens("ann") == []
    with pytest.raises(NotFound):
        await store.pending(ann_device, "ann", 0, 100)
    after = await store.count("ann")
    assert (after.count, after.version) == (0, before.version + 1)
    assert await everything_of(store, "bob", bob_device) == bob_before
    # The user's next notification counts from 0, above every version seen before.
    again = await store.create_notification("ann", {"n": 4})
    assert again.count is not None
    assert (again.count.count, again.count.version) == (1, before.version + 2)


async def test_erasing_twice_or_an_unknown_user_erases_nothing(store: Store) -> None:
    await fill(store, "ann")
    await store.erase_user("ann")
    zeros = dict.fromkeys(("notifications", "devices", "sockets", "sessions", "push_tokens"), 0)
    assert await store.erase_user("ann") == zeros
    assert await store.erase_user("nobody") == zeros
    # Its count is one change higher all the same: sockets opened before it are told apart.
    assert (await store.count("nobody")).version == 1
