"""The pipeline store contract of categories: a user's switch per (category, channel) is kept,
shown in the preferences, mutes that channel for messages of the category (deleted, reason
``category_disabled``) and nothing else, and is erased with the user. Every backend passes it
(the ``pstore`` fixture)."""

from __future__ import annotations

from dataclasses import replace

from contract.pipeline_store.backends import create, new_message, postgres_template, pstore
from tidings.delivery.models import DELETED, PENDING
from tidings.delivery.stores.base import PipelineStore

__all__ = ["postgres_template", "pstore"]  # the fixtures


async def test_a_category_turned_off_mutes_that_channel_for_its_messages(
    pstore: PipelineStore,
) -> None:
    for user in ("alice", "bob"):
        await pstore.set_contact(user, "email", f"{user}@example.org")
    await pstore.set_category("alice", "comments", "email", False)
    await pstore.set_category("alice", "orders", "email", True)
    shown = await pstore.preferences("alice")
    assert shown.categories == {"comments": {"email": False}, "orders": {"email": True}}
    message = replace(new_message(("alice", "bob"), ("in_app", "email")), category="comments")
    created, _, _ = await create(pstore, message)
    got = await pstore.get_message(created.message_id, None)
    assert got is not None and got.deliveries is not None
    states = {(d.user_id, d.channel): (d.state, d.reason) for d in got.deliveries}
    assert states[("alice", "email")] == (DELETED, "category_disabled")
    assert states[("alice", "in_app")][0] == PENDING
    assert states[("bob", "email")][0] == PENDING
    other = replace(new_message(("alice",), ("email",), body="b2"), category="orders")
    created, _, _ = await create(pstore, other)
    got = await pstore.get_message(created.message_id, None)
    assert got is not None and got.deliveries is not None
    assert got.deliveries[0].state == PENDING
    await pstore.set_category("alice", "comments", "email", True)
    assert (await pstore.preferences("alice")).categories["comments"] == {"email": True}


async def test_claims_carry_the_category_and_erasure_forgets_the_switches(
    pstore: PipelineStore,
) -> None:
    await pstore.set_contact("alice", "email", "alice@example.org")
    message = replace(new_message(("alice",), ("email",)), category="news", transactional=True)
    await create(pstore, message)
    [claim] = await pstore.claim(["email"], "w", 10, 30.0)
    assert (claim.category, claim.transactional) == ("news", True)
    await pstore.set_category("alice", "news", "email", False)
    await pstore.erase_user("alice")
    assert (await pstore.preferences("alice")).categories == {}
