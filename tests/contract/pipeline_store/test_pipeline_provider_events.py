"""The pipeline store contract of ``record_provider_event``: what an email or SMS provider
reports after it took a message (delivered, bounced, complained about) lands on the delivery it
gave the id to. Every backend passes it (the ``pstore`` fixture runs each test on each)."""

from __future__ import annotations

from contract.pipeline_store.backends import (
    LONG,
    create,
    new_message,
    one_delivery,
    postgres_template,
    pstore,
    sent,
)
from tidings.delivery.models import FAILED, SENT
from tidings.delivery.stores.base import PipelineStore

__all__ = ["postgres_template", "pstore"]  # the fixtures


async def sent_email(store: PipelineStore, user: str, provider_id: str) -> str:
    """A delivery on ``email`` to ``user``, sent with ``provider_id``; its message's id."""
    await store.set_contact(user, "email", f"{user}@example.org")
    message, _, _ = await create(store, new_message((user,), ("email",)))
    [claim] = await store.claim(["email"], "w", 10, LONG)
    assert await store.complete("w", claim, sent(provider_id)) is True
    return message.message_id


async def test_delivered_adds_a_history_entry(pstore: PipelineStore) -> None:
    """delivered: an entry (sent, delivered, the provider's words); the state stays sent."""
    message_id = await sent_email(pstore, "alice", "ses-1")
    found = await pstore.record_provider_event("email", "ses-1", "delivered", "250 ok", fail=False)
    delivery = await one_delivery(pstore, message_id)
    assert found == [(delivery.delivery_id, "alice", True)]
    assert delivery.state == SENT
    last = delivery.history[-1]
    assert (last.state, last.reason, last.detail) == (SENT, "delivered", "250 ok")


async def test_bounce_fails_the_delivery_with_the_detail(pstore: PipelineStore) -> None:
    """A failing event ends a sent delivery failed, its reason and last_error the event's."""
    message_id = await sent_email(pstore, "alice", "pm-1")
    await pstore.record_provider_event(
        "email", "pm-1", "bounced", "HardBounce - 550 no such user", fail=True
    )
    delivery = await one_delivery(pstore, message_id)
    assert (delivery.state, delivery.reason) == (FAILED, "bounced")
    assert delivery.last_error == "HardBounce - 550 no such user"
    last = delivery.history[-1]
    assert (last.state, last.reason, last.detail) == (
        FAILED,
        "bounced",
        "HardBounce - 550 no such user",
    )
    message = await pstore.get_message(message_id, None, deliveries=False)
    assert message is not None and message.counts == {FAILED: 1}


async def test_repeated_event_is_recorded_once(pstore: PipelineStore) -> None:
    """Providers send an event again when unsure it arrived: the second changes nothing."""
    message_id = await sent_email(pstore, "alice", "tw-1")
    first = await pstore.record_provider_event("email", "tw-1", "complained", "abuse", fail=False)
    before = await one_delivery(pstore, message_id)
    again = await pstore.record_provider_event("email", "tw-1", "complained", "abuse", fail=False)
    assert [now for *_, now in first] == [True] and [now for *_, now in again] == [False]
    assert await one_delivery(pstore, message_id) == before


async def test_unknown_id_or_other_channel_finds_nothing(pstore: PipelineStore) -> None:
    """An id no delivery has, or a delivery of another channel, is left alone."""
    message_id = await sent_email(pstore, "alice", "shared-id")
    before = await one_delivery(pstore, message_id)
    assert await pstore.record_provider_event("email", "nope", "bounced", "x", fail=True) == []
    assert await pstore.record_provider_event("sms", "shared-id", "bounced", "x", fail=True) == []
    assert await one_delivery(pstore, message_id) == before


async def test_failing_event_on_a_failed_delivery_only_notes(pstore: PipelineStore) -> None:
    """A delivery that is not sent keeps its state; the event is still in its history."""
    message_id = await sent_email(pstore, "alice", "ses-2")
    await pstore.record_provider_event("email", "ses-2", "bounced", "first", fail=True)
    await pstore.record_provider_event("email", "ses-2", "bounced", "second", fail=True)
    delivery = await one_delivery(pstore, message_id)
    assert (delivery.state, delivery.last_error) == (FAILED, "first")
    assert [h.detail for h in delivery.history if h.reason == "bounced"] == ["first", "second"]
