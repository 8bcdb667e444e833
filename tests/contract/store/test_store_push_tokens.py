"""The store contract of the push-tokens facet (storage/facets/push_tokens.py): each user's
addresses at APNs, FCM and Expo, one user per (platform, token) at a time. Every backend passes
it (the ``store`` fixture of :mod:`contract.store.backends` runs each test on each); setup and
checks through this facet only."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from contract.store.backends import store
from tidings.core.models import PushReceipt, utcnow
from tidings.storage import Store

__all__ = ["store"]  # the fixture

CAP = 100


async def test_register_list_and_register_again(store: Store) -> None:
    """A new token is created with an id; the same token again is the same registration (its
    app id updated), not created; the user's tokens list oldest first, by platform too."""
    first, created = await store.register_push_token(
        "ann", "apns", "a" * 64, "com.x", max_per_user=CAP
    )
    assert created and first.user_id == "ann" and first.last_used_at is None
    await asyncio.sleep(0.002)
    second, created = await store.register_push_token(
        "ann", "fcm", "f-token", None, max_per_user=CAP
    )
    again, created_again = await store.register_push_token(
        "ann", "apns", "a" * 64, "com.y", max_per_user=CAP
    )
    assert not created_again
    assert (again.token_id, again.app_id, again.created_at) == (
        first.token_id,
        "com.y",
        first.created_at,
    )
    listed = await store.push_tokens("ann")
    assert [(t.token_id, t.platform, t.app_id) for t in listed] == [
        (first.token_id, "apns", "com.y"),
        (second.token_id, "fcm", None),
    ]
    assert [t.token for t in await store.push_tokens("ann", "fcm")] == ["f-token"]
    assert await store.push_tokens("nobody") == []


async def test_a_token_registered_by_another_user_moves(store: Store) -> None:
    """One phone, two accounts: the token leaves the first user and is the second's under a
    new id; the same token on another platform is another registration."""
    ann, _ = await store.register_push_token("ann", "fcm", "shared", None, max_per_user=CAP)
    await store.register_push_token("ann", "expo", "shared", None, max_per_user=CAP)
    bob, created = await store.register_push_token("bob", "fcm", "shared", None, max_per_user=CAP)
    assert created and bob.token_id != ann.token_id and bob.user_id == "bob"
    assert [t.platform for t in await store.push_tokens("ann")] == ["expo"]
    assert [t.token_id for t in await store.push_tokens("bob")] == [bob.token_id]


async def test_delete_only_ones_own_registration(store: Store) -> None:
    """A user deletes their own registration by id; another user's id or an unknown one
    deletes nothing."""
    ann, _ = await store.register_push_token("ann", "apns", "b" * 64, None, max_per_user=CAP)
    assert not await store.delete_push_token("bob", ann.token_id)
    assert not await store.delete_push_token("ann", "no-such-id")
    assert len(await store.push_tokens("ann")) == 1
    assert await store.delete_push_token("ann", ann.token_id)
    assert await store.push_tokens("ann") == []
    assert not await store.delete_push_token("ann", ann.token_id)


async def test_provider_removal_and_last_use(store: Store) -> None:
    """A token the provider says is gone is removed whoever holds it; a send's use is
    recorded on the registrations it used."""
    used, _ = await store.register_push_token("ann", "fcm", "used", None, max_per_user=CAP)
    await store.register_push_token("ann", "fcm", "gone", None, max_per_user=CAP)
    assert await store.remove_push_token("fcm", "gone")
    assert not await store.remove_push_token("fcm", "gone")
    assert not await store.remove_push_token("apns", "used")  # platform and token together
    await store.touch_push_tokens([used.token_id, "unknown-id"])
    await store.touch_push_tokens([])
    [kept] = await store.push_tokens("ann")
    assert kept.token_id == used.token_id and kept.last_used_at is not None
    assert kept.last_used_at >= kept.created_at


async def test_past_the_cap_the_least_recently_used_goes(store: Store) -> None:
    """A user holds at most ``max_per_user`` tokens: a new one replaces the one used least
    recently (never used counts from its registration), and other users keep theirs."""
    tokens = []
    for n in range(3):
        made, _ = await store.register_push_token("ann", "fcm", f"t{n}", None, max_per_user=3)
        tokens.append(made)
        await asyncio.sleep(0.002)
    await store.register_push_token("bob", "fcm", "b0", None, max_per_user=3)
    await store.touch_push_tokens([tokens[0].token_id])  # t0 used just now; t1 is the oldest
    await asyncio.sleep(0.002)
    await store.register_push_token("ann", "fcm", "t3", None, max_per_user=3)
    assert sorted(t.token for t in await store.push_tokens("ann")) == ["t0", "t2", "t3"]
    assert [t.token for t in await store.push_tokens("bob")] == ["b0"]


async def test_concurrent_registrations_of_one_token_leave_one_holder(store: Store) -> None:
    """Two users registering the same token at once: exactly one holds it afterwards."""
    await asyncio.gather(
        *(
            store.register_push_token(user, "apns", "c" * 64, None, max_per_user=CAP)
            for user in ("ann", "bob", "cid", "dee")
        )
    )
    holders = [u for u in ("ann", "bob", "cid", "dee") if await store.push_tokens(u)]
    assert len(holders) == 1


async def test_tokens_of_many_users_in_one_read(store: Store) -> None:
    """push_tokens_of answers every user asked for, with their tokens of that platform only,
    oldest first; [] for a user with none."""
    a1, _ = await store.register_push_token("ann", "apns", "a1", None, max_per_user=CAP)
    await asyncio.sleep(0.002)
    a2, _ = await store.register_push_token("ann", "apns", "a2", None, max_per_user=CAP)
    await store.register_push_token("ann", "fcm", "f1", None, max_per_user=CAP)
    b1, _ = await store.register_push_token("bob", "apns", "b1", None, max_per_user=CAP)
    found = await store.push_tokens_of(["ann", "bob", "cid", "ann"], "apns")
    assert {user: [t.token_id for t in tokens] for user, tokens in found.items()} == {
        "ann": [a1.token_id, a2.token_id],
        "bob": [b1.token_id],
        "cid": [],
    }
    many = [f"user-{n}" for n in range(1200)]  # more than one statement's worth
    assert set(await store.push_tokens_of([*many, "bob"], "apns")) == {*many, "bob"}


async def test_push_receipts_wait_until_due_and_are_leased_to_one_checker(store: Store) -> None:
    """Receipts come out once due, oldest first, per platform; a leased one is not handed to
    another checker until its lease ends; dropped ones are gone; adding one again is
    harmless."""
    now = utcnow()
    kept = now + timedelta(days=1)
    old = [PushReceipt(f"r{n}", "ann", f"ExponentPushToken[{n}]", kept) for n in range(3)]
    await store.add_push_receipts("expo", old[:2], now - timedelta(seconds=2))
    await store.add_push_receipts("expo", old[2:], now - timedelta(seconds=1))
    await store.add_push_receipts(
        "expo", [PushReceipt("later", "ann", "t", kept)], now + timedelta(hours=1)
    )
    await store.add_push_receipts(
        "other", [PushReceipt("elsewhere", "ann", "t", kept)], now - timedelta(seconds=1)
    )
    await store.add_push_receipts("expo", old[:1], now - timedelta(seconds=5))  # again
    first = await store.due_push_receipts("expo", 2, 60.0)
    assert {r.receipt_id for r in first} == {"r0", "r1"}
    assert all(r.user_id == "ann" and r.keep_until is not None for r in first)
    assert [r.receipt_id for r in await store.due_push_receipts("expo", 10, 60.0)] == ["r2"]
    assert await store.due_push_receipts("expo", 10, 60.0) == []  # all leased or not due
    await store.drop_push_receipts(["r0", "r1", "r2"])
    assert [r.receipt_id for r in await store.due_push_receipts("other", 10, 0.05)] == ["elsewhere"]
    await asyncio.sleep(0.1)  # its lease ended: due again
    assert [r.receipt_id for r in await store.due_push_receipts("other", 10, 60.0)] == ["elsewhere"]


async def test_erasing_a_user_drops_their_receipts(store: Store) -> None:
    now = utcnow()
    receipt = PushReceipt("r-ann", "ann", "ExponentPushToken[a]", now + timedelta(days=1))
    await store.add_push_receipts("expo", [receipt], now - timedelta(seconds=1))
    await store.erase_user("ann")
    assert await store.due_push_receipts("expo", 10, 60.0) == []
