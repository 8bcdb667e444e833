"""The pipeline store contract of the erasure facet: erase_user removes one user's deliveries
(with their history and outbox rows), contact points, preferences and topic subscriptions, and
their id from the messages that named them; another user's rows stay. Every backend passes it
(the ``pstore`` fixture of :mod:`contract.pipeline_store.backends` runs each test on each)."""

from __future__ import annotations

from contract.pipeline_store.backends import (
    LONG,
    create,
    deliveries,
    new_message,
    postgres_template,
    pstore,
)
from tidings.delivery.models import QuietHours
from tidings.delivery.stores.base import PipelineStore

__all__ = ["postgres_template", "pstore"]  # the fixtures


async def test_erase_user_removes_the_users_rows_only(pstore: PipelineStore) -> None:
    for user in ("ann", "bob"):
        await pstore.set_contact(user, "email", f"{user}@example.org")
        await pstore.set_channel(user, "sms", False)
        await pstore.set_topic(user, "news", True)
        await pstore.set_quiet_hours(user, QuietHours("Europe/Paris", "22:00", "07:00"))
    message, _, _ = await create(pstore, new_message(("ann", "bob"), ("in_app", "email")))
    # One of ann's deliveries claimed (in the outbox, leased): it goes too.
    await pstore.claim(["email"], "w", 10, LONG)
    bob_prefs = await pstore.preferences("bob")

    erased = await pstore.erase_user("ann")

    assert erased == {"deliveries": 2, "contacts": 1, "preferences": 3}  # quiet hours too
    assert await pstore.preferences("ann") == type(bob_prefs)("ann")
    assert await pstore.preferences("bob") == bob_prefs
    left = await deliveries(pstore, message.message_id)
    assert {d.user_id for d in left.values()} == {"bob"} and len(left) == 2
    got = await pstore.get_message(message.message_id, None)
    assert got is not None and got.recipients["user_ids"] == ["bob"]
    # Nothing of ann's is queued for a worker any more; bob's in-app delivery still is.
    claims = await pstore.claim(["in_app", "email"], "w2", 10, LONG)
    assert {c.user_id for c in claims} == {"bob"}
    assert await pstore.erase_user("ann") == {"deliveries": 0, "contacts": 0, "preferences": 0}
