"""The pipeline store contract of the status-events facet (delivery-status webhooks): every
change of a delivery written as an event per configured endpoint in the change's transaction,
claimed under leases oldest-first per delivery and endpoint, retried, failed, listed, pruned and
erased. Deliveries change through the messages and claims facets. Every backend passes it (the
``pstore`` fixture of :mod:`contract.pipeline_store.backends` runs each test on each)."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from contract.pipeline_store.backends import (
    LONG,
    TINY,
    create,
    new_message,
    one_delivery,
    postgres_template,
    pstore,
    sent,
)
from tidings.core.models import utcnow
from tidings.delivery.models import PENDING, Outcome
from tidings.delivery.status_types import (
    ENDPOINT_REMOVED,
    EVENT_DELIVERED,
    EVENT_FAILED,
    EVENT_PENDING,
    StatusEvent,
    StatusResult,
    event_type,
)
from tidings.delivery.stores.base import PipelineStore

__all__ = ["postgres_template", "pstore"]  # the fixtures

A = "https://a.example/status"
B = "https://b.example/status"


async def events(store: PipelineStore, endpoint: str | None = None) -> list[StatusEvent]:
    """Every event (of ``endpoint``), oldest first."""
    found = sorted(await store.list_status_events(None, 1000), key=lambda e: e.id)
    return [e for e in found if endpoint is None or e.endpoint == endpoint]


def kinds(found: list[StatusEvent]) -> list[str]:
    return [e.type for e in found]


def delivered(event: StatusEvent, status: int = 200) -> StatusResult:
    return StatusResult(event.id, event.attempts, EVENT_DELIVERED, status, None)


async def email_message(store: PipelineStore, user: str = "alice") -> str:
    """A message to ``user`` on email (with an address); its delivery's id."""
    await store.set_contact(user, "email", f"{user}@example.org")
    message, _, _ = await create(store, new_message((user,), ("email",)))
    return (await one_delivery(store, message.message_id)).delivery_id


async def test_no_endpoints_no_events(pstore: PipelineStore) -> None:
    """Without endpoints, changes write no event."""
    delivery_id = await email_message(pstore)
    [claim] = await pstore.claim(["email"], "w", 10, LONG)
    assert claim.delivery_id == delivery_id
    await pstore.complete("w", claim, sent())
    assert await events(pstore) == []
    assert await pstore.claim_status_events("d", 10, LONG) == []
    assert await pstore.status_event_counts() == {EVENT_PENDING: 0, EVENT_FAILED: 0}


async def test_each_change_is_an_event_for_each_endpoint(pstore: PipelineStore) -> None:
    """pending, active and sent: one event each per endpoint, in order, with the delivery as
    it was at the change; one event id per change, shared by the endpoints."""
    await pstore.set_status_endpoints([A, B])
    delivery_id = await email_message(pstore)
    [claim] = await pstore.claim(["email"], "w", 10, LONG)
    await pstore.complete("w", claim, sent("prov-9"))
    for endpoint in (A, B):
        found = await events(pstore, endpoint)
        assert kinds(found) == ["delivery.pending", "delivery.active", "delivery.sent"]
        assert [e.reason for e in found] == ["queued", "claimed", "sent"]
        assert [e.delivery_attempts for e in found] == [0, 1, 1]
        assert all(e.state == EVENT_PENDING and e.attempts == 0 for e in found)
        last = found[-1]
        assert (last.delivery_id, last.user_id, last.channel) == (delivery_id, "alice", "email")
        assert last.message_id == claim.message_id and last.provider_id == "prov-9"
        payload = last.payload()
        assert payload["type"] == "delivery.sent"
        assert payload["data"]["state"] == "sent" and payload["data"]["provider_id"] == "prov-9"
        assert payload["data"]["detail"] == "prov-9" and payload["timestamp"].endswith("Z")
    ids_a = [e.event_id for e in await events(pstore, A)]
    assert ids_a == [e.event_id for e in await events(pstore, B)]
    assert len(set(ids_a)) == 3


async def test_notes_of_a_try_make_no_event(pstore: PipelineStore) -> None:
    """A try's notes (a token's outcome, still active) are history, not changes."""
    await pstore.set_status_endpoints([A])
    await email_message(pstore)
    [claim] = await pstore.claim(["email"], "w", 10, LONG)
    outcome = Outcome("sent", "sent", provider_id="p", notes=(("token_sent", "…abcd"),))
    await pstore.complete("w", claim, outcome)
    assert kinds(await events(pstore)) == ["delivery.pending", "delivery.active", "delivery.sent"]


async def test_failed_deleted_retried_and_stale_changes(pstore: PipelineStore) -> None:
    """A delivery refused at creation, one deleted, one retried and one whose lease lapsed
    each give their events."""
    await pstore.set_status_endpoints([A])
    refused, _, _ = await create(pstore, new_message(("nobody",), ("email",)))
    failed_id = (await one_delivery(pstore, refused.message_id)).delivery_id
    gone, _, _ = await create(pstore, new_message(("bob",), ("in_app",)))
    await pstore.delete_message(gone.message_id, None)
    await pstore.retry_message(refused.message_id, None)
    found = await events(pstore)
    assert [(e.type, e.reason) for e in found] == [
        ("delivery.failed", "no_address"),
        ("delivery.pending", "queued"),
        ("delivery.deleted", "deleted_by_request"),
        ("delivery.pending", "retried_by_request"),
    ]
    assert found[0].delivery_id == found[3].delivery_id == failed_id
    await pstore.claim(["email"], "w", 10, TINY)
    await asyncio.sleep(TINY * 3)
    assert await pstore.requeue_stale() == 1
    assert kinds(await events(pstore))[-2:] == ["delivery.active", "delivery.stale"]


async def test_an_endpoint_gets_a_deliverys_events_one_at_a_time(pstore: PipelineStore) -> None:
    """Only the oldest pending event of a delivery for an endpoint is claimed; the next one
    once it is delivered (or failed). Endpoints do not wait for each other."""
    await pstore.set_status_endpoints([A, B])
    await email_message(pstore)
    [claim] = await pstore.claim(["email"], "w", 10, LONG)
    await pstore.complete("w", claim, sent())
    first = await pstore.claim_status_events("d", 10, LONG)
    assert sorted((e.endpoint, e.type) for e in first) == [
        (A, "delivery.pending"),
        (B, "delivery.pending"),
    ]
    assert all(e.attempts == 1 for e in first)
    assert await pstore.claim_status_events("d", 10, LONG) == []  # leased, and the rest wait
    head_a = next(e for e in first if e.endpoint == A)
    assert await pstore.complete_status_events("d", [delivered(head_a)]) == 1
    [second] = await pstore.claim_status_events("d", 10, LONG)
    assert (second.endpoint, second.type) == (A, "delivery.active")
    await pstore.complete_status_events("d", [delivered(second)])
    [third] = await pstore.claim_status_events("d", 10, LONG)
    assert (third.endpoint, third.type) == (A, "delivery.sent")
    await pstore.complete_status_events("d", [delivered(third)])
    done = await events(pstore, A)
    assert all(e.state == EVENT_DELIVERED and e.delivered_at is not None for e in done)
    assert all(e.last_status == 200 and e.attempts == 1 for e in done)


async def test_a_retried_event_holds_back_the_later_ones(pstore: PipelineStore) -> None:
    """A failed try is recorded (status, error, tries) and the event waits until its retry
    time; the delivery's later events wait at least as long."""
    await pstore.set_status_endpoints([A])
    await email_message(pstore)
    await pstore.claim(["email"], "w", 10, LONG)
    [head] = await pstore.claim_status_events("d", 10, LONG)
    later = utcnow() + timedelta(hours=1)
    retry = StatusResult(head.id, head.attempts, EVENT_PENDING, 500, "HTTP 500", later)
    assert await pstore.complete_status_events("d", [retry]) == 1
    assert await pstore.claim_status_events("d", 10, LONG) == []
    found = await events(pstore)
    assert (found[0].attempts, found[0].last_status, found[0].last_error) == (1, 500, "HTTP 500")
    assert found[0].last_attempt_at is not None and found[0].delivered_at is None
    assert all(e.available_at >= later - timedelta(seconds=1) for e in found)
    soon = StatusResult(head.id, head.attempts, EVENT_PENDING, 503, "again", utcnow())
    assert await pstore.complete_status_events("d", [soon]) == 0  # not leased any more


async def test_a_failed_event_is_kept_and_lets_the_next_go(pstore: PipelineStore) -> None:
    """An event given up is failed, listed with its last answer; the next event goes."""
    await pstore.set_status_endpoints([A])
    await email_message(pstore)
    await pstore.claim(["email"], "w", 10, LONG)
    [head] = await pstore.claim_status_events("d", 10, LONG)
    given_up = StatusResult(head.id, head.attempts, EVENT_FAILED, 410, "HTTP 410 Gone")
    await pstore.complete_status_events("d", [given_up])
    [failed] = await pstore.list_status_events(EVENT_FAILED, 10)
    assert (failed.event_id, failed.last_status, failed.last_error) == (
        head.event_id,
        410,
        "HTTP 410 Gone",
    )
    assert failed.to_dict()["next_attempt_at"] is None
    [following] = await pstore.claim_status_events("d", 10, LONG)
    assert following.type == "delivery.active"
    assert await pstore.status_event_counts() == {EVENT_PENDING: 1, EVENT_FAILED: 1}
    assert [e.type for e in await pstore.list_status_events(EVENT_PENDING, 10)] == [
        "delivery.active"
    ]


async def test_an_expired_lease_is_taken_over(pstore: PipelineStore) -> None:
    """A dispatcher that vanished: its events are claimed again once the lease lapses (same
    event id, another try), and its late result is ignored."""
    await pstore.set_status_endpoints([A])
    await email_message(pstore)
    [first] = await pstore.claim_status_events("gone", 10, TINY)
    assert await pstore.claim_status_events("other", 10, LONG) == []
    await asyncio.sleep(TINY * 3)
    [again] = await pstore.claim_status_events("other", 10, LONG)
    assert (again.event_id, again.attempts) == (first.event_id, 2)
    assert await pstore.complete_status_events("gone", [delivered(first)]) == 0
    assert await pstore.complete_status_events("other", [delivered(again)]) == 1


async def test_concurrent_claims_never_share_an_event(pstore: PipelineStore) -> None:
    """Dispatchers claiming at once each get distinct events."""
    await pstore.set_status_endpoints([A])
    await create(pstore, new_message([f"u{i:02}" for i in range(30)]))
    batches = await asyncio.gather(
        *(pstore.claim_status_events(f"d{i}", 5, LONG) for i in range(8))
    )
    ids = [e.id for batch in batches for e in batch]
    ids += [e.id for e in await pstore.claim_status_events("late", 100, LONG)]
    assert len(ids) == len(set(ids)) == 30


async def test_an_endpoint_taken_out_fails_its_pending_events(pstore: PipelineStore) -> None:
    """Setting the endpoints again fails the pending events of those left out; later changes
    make events for the new list only."""
    await pstore.set_status_endpoints([A, B])
    await email_message(pstore)
    await pstore.set_status_endpoints([A])
    [dropped] = await pstore.list_status_events(EVENT_FAILED, 10)
    assert (dropped.endpoint, dropped.last_error) == (B, ENDPOINT_REMOVED)
    await pstore.claim(["email"], "w", 10, LONG)
    assert [(e.endpoint, e.type) for e in await events(pstore)] == [
        (A, "delivery.pending"),
        (B, "delivery.pending"),
        (A, "delivery.active"),
    ]
    await pstore.set_status_endpoints([])
    await pstore.claim(["in_app"], "w", 10, LONG)
    assert await pstore.claim_status_events("d", 10, LONG) == []
    assert await pstore.status_event_counts() == {EVENT_PENDING: 0, EVENT_FAILED: 3}


async def test_erasure_deletes_the_users_events(pstore: PipelineStore) -> None:
    """Erasing a user deletes their events, pending or not; others' stay."""
    await pstore.set_status_endpoints([A])
    await email_message(pstore, "alice")
    await email_message(pstore, "bob")
    [head, _] = await pstore.claim_status_events("d", 10, LONG)
    await pstore.complete_status_events("d", [delivered(head)])
    await pstore.erase_user("alice")
    assert {e.user_id for e in await events(pstore)} == {"bob"}


async def test_prune_deletes_old_done_events_only(pstore: PipelineStore) -> None:
    """Pruning removes delivered and failed events of changes before the time, never a
    pending one."""
    await pstore.set_status_endpoints([A])
    await create(pstore, new_message(["u1", "u2", "u3"]))
    first, second, _ = await pstore.claim_status_events("d", 10, LONG)
    await pstore.complete_status_events(
        "d",
        [delivered(first), StatusResult(second.id, second.attempts, EVENT_FAILED, None, "x")],
    )
    assert await pstore.prune_status_events(utcnow() - timedelta(hours=1)) == 0
    assert await pstore.prune_status_events(utcnow() + timedelta(seconds=1)) == 2
    assert [e.state for e in await events(pstore)] == [EVENT_PENDING]


def test_types_follow_states_and_reported_kinds() -> None:
    """The one mapping from a history entry to an event type."""
    assert event_type(PENDING, "queued") == "delivery.pending"
    assert event_type("active", "claimed") == "delivery.active"
    assert event_type("active", "token_sent") is None
    assert event_type("failed", "rate_limited") == "delivery.failed"
    assert event_type("sent", "bounced") == "delivery.bounced"
    assert event_type("sent", "delivered") == "delivery.delivered"
    assert event_type("failed", "undelivered") == "delivery.failed"
    assert event_type("sent", "soft_bounce") is None
