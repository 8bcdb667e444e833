"""The pipeline store contract of the messages facet: a message and its deliveries written in one
transaction, idempotency by key, recipients from user ids or a topic's subscribers, what the
rate limits count, deletes and retries. Every backend passes it (the ``pstore`` fixture of
:mod:`contract.pipeline_store.backends` runs each test on each)."""

from __future__ import annotations

import asyncio

import pytest

from contract.pipeline_store.backends import (
    LONG,
    TINY,
    RecordingPlanner,
    create,
    deliveries,
    new_message,
    one_delivery,
    postgres_template,
    pstore,
    sent,
)
from tidings.core.models import utcnow
from tidings.delivery.models import ACTIVE, DELETED, FAILED, PENDING, SENT, STALE, Outcome
from tidings.delivery.planner import RateLimit
from tidings.delivery.stores.base import PipelineStore
from tidings.errors import Conflict, InvalidArgument, NotFound

__all__ = ["postgres_template", "pstore"]  # the fixtures


async def test_create_writes_deliveries_with_counts(pstore: PipelineStore) -> None:
    """A new message has one pending delivery per (user, channel) and matching counts."""
    await pstore.set_contact("alice", "email", "alice@example.org")
    await pstore.set_contact("bob", "email", "bob@example.org")
    msg = new_message(("alice", "bob"), ("in_app", "email"), data={"order": 7})
    message, created, _ = await create(pstore, msg)
    assert created
    assert message.counts.get(PENDING) == 4
    assert sum(message.counts.values()) == 4
    assert message.state == PENDING
    assert message.client_id == "svc-a"
    assert message.channels == ["in_app", "email"]
    assert message.recipients == {"user_ids": ["alice", "bob"]}
    got = await pstore.get_message(message.message_id, "svc-a")
    assert got is not None and got.deliveries is not None
    pairs = sorted((d.user_id, d.channel, d.state, d.reason) for d in got.deliveries)
    assert pairs == [
        ("alice", "email", PENDING, "queued"),
        ("alice", "in_app", PENDING, "queued"),
        ("bob", "email", PENDING, "queued"),
        ("bob", "in_app", PENDING, "queued"),
    ]
    assert all(d.attempts == 0 and d.sent_at is None for d in got.deliveries)
    assert got.data == {"order": 7}
    assert got.content == msg.content
    assert got.counts.get(PENDING) == 4


async def test_refused_deliveries_are_written_with_reason(pstore: PipelineStore) -> None:
    """Deliveries the planner refuses are written in their state with the reason."""
    await pstore.set_channel("bob", "in_app", False)
    msg = new_message(("alice", "bob"), ("in_app", "email"))
    message, _, _ = await create(pstore, msg)
    found = {
        (d.user_id, d.channel): d for d in (await deliveries(pstore, message.message_id)).values()
    }
    assert (found["alice", "in_app"].state, found["alice", "in_app"].reason) == (PENDING, "queued")
    assert (found["alice", "email"].state, found["alice", "email"].reason) == (FAILED, "no_address")
    assert (found["bob", "in_app"].state, found["bob", "in_app"].reason) == (
        DELETED,
        "channel_disabled",
    )
    assert message.counts.get(PENDING) == 1
    assert message.counts.get(FAILED) == 2
    assert message.counts.get(DELETED) == 1
    history = found["alice", "email"].history
    assert [(h.state, h.reason) for h in history] == [(FAILED, "no_address")]


async def test_planner_receives_switches_contacts_and_recent(pstore: PipelineStore) -> None:
    """The planner gets every recipient with its switches, contacts and recent counts."""
    await pstore.set_channel("alice", "email", False)
    await pstore.set_channel("bob", "sms", True)
    await pstore.set_contact("alice", "email", "alice@example.org")
    subscription = {"endpoint": "https://push.example/x", "keys": {"p256dh": "k", "auth": "a"}}
    await pstore.set_contact("bob", "web_push", subscription)
    msg = new_message(("alice", "bob", "carol"), ("email", "web_push"))
    limits = {"email": RateLimit(5, 3600), "web_push": RateLimit(5, 3600)}
    _, _, planner = await create(pstore, msg, limits=limits)
    users = planner.by_user()
    assert set(users) == {"alice", "bob", "carol"}
    assert len(planner.seen) == 3
    alice, bob, carol = users["alice"], users["bob"], users["carol"]
    assert alice.switches.get("email", True) is False
    assert alice.switches.get("web_push", True) is True
    assert bob.switches.get("sms", True) is True
    assert carol.switches.get("email", True) is True
    assert alice.contacts.get("email") == "alice@example.org"
    assert bob.contacts.get("web_push") == subscription
    assert bob.contacts.get("email") is None
    assert dict(carol.contacts) == {}
    for recipient in (alice, bob, carol):
        assert recipient.recent.get("email", 0) == 0
        assert recipient.recent.get("web_push", 0) == 0


async def test_topic_recipients_come_from_subscriptions(pstore: PipelineStore) -> None:
    """A topic message goes to exactly the users subscribed to the topic."""
    await pstore.set_topic("alice", "orders", True)
    await pstore.set_topic("bob", "orders", True)
    await pstore.set_topic("carol", "orders", True)
    await pstore.set_topic("carol", "orders", False)
    await pstore.set_topic("dave", "news", True)
    msg = new_message(None, ("in_app",), topic="orders")
    message, created, planner = await create(pstore, msg)
    assert created
    assert set(planner.by_user()) == {"alice", "bob"}
    assert message.recipients == {"topic": "orders"}
    users = sorted(d.user_id for d in (await deliveries(pstore, message.message_id)).values())
    assert users == ["alice", "bob"]


async def test_topic_over_max_recipients_writes_nothing(pstore: PipelineStore) -> None:
    """More subscribers than max_recipients raises InvalidArgument and writes nothing."""
    for user in ("u1", "u2", "u3"):
        await pstore.set_topic(user, "crowd", True)
    msg = new_message(None, ("in_app",), topic="crowd", key="k-crowd")
    with pytest.raises(InvalidArgument):
        await create(pstore, msg, max_recipients=2)
    assert await pstore.list_messages(None, 10) == []
    assert await pstore.claim(["in_app"], "w", 10, LONG) == []
    # The idempotency key was not taken: another body under it is not a conflict.
    other = new_message(None, ("in_app",), topic="crowd", key="k-crowd", body="body-2")
    message, created, _ = await create(pstore, other, max_recipients=3)
    assert created and message.counts.get(PENDING) == 3


async def test_topic_with_no_subscribers_creates_empty_message(pstore: PipelineStore) -> None:
    """A topic nobody subscribed to yields a message without deliveries."""
    message, created, planner = await create(pstore, new_message(None, topic="void"))
    assert created
    assert planner.seen == []
    assert sum(message.counts.values()) == 0
    assert await deliveries(pstore, message.message_id) == {}


async def test_same_key_and_body_returns_earlier_message(pstore: PipelineStore) -> None:
    """The same key and body_hash answers the first message, created False, writing nothing."""
    first, created, _ = await create(pstore, new_message(("alice",), key="k1"))
    again, created_again, _ = await create(pstore, new_message(("alice",), key="k1"))
    assert created and not created_again
    assert again.message_id == first.message_id
    assert again.idempotency_key == "k1"
    assert len(await pstore.list_messages(None, 10)) == 1
    assert len(await deliveries(pstore, first.message_id)) == 1


async def test_same_key_other_body_conflicts(pstore: PipelineStore) -> None:
    """The same key with another body_hash raises Conflict and writes nothing."""
    await create(pstore, new_message(("alice",), key="k1", body="body-1"))
    with pytest.raises(Conflict):
        await create(pstore, new_message(("bob",), key="k1", body="body-2"))
    assert len(await pstore.list_messages(None, 10)) == 1
    claims = await pstore.claim(["in_app"], "w", 10, LONG)
    assert [c.user_id for c in claims] == ["alice"]


async def test_concurrent_same_key_creates_one_message(pstore: PipelineStore) -> None:
    """Concurrent creates with one key and body make one message; all answer it."""
    results = await asyncio.gather(
        *(create(pstore, new_message(("alice",), key="race")) for _ in range(5))
    )
    assert sum(created for _, created, _ in results) == 1
    assert len({message.message_id for message, _, _ in results}) == 1
    assert len(await pstore.list_messages(None, 10)) == 1
    assert len(await pstore.claim(["in_app"], "w", 10, LONG)) == 1


async def test_same_key_from_other_client_is_another_message(pstore: PipelineStore) -> None:
    """Idempotency keys are per client: another client's same key makes a new message."""
    a, _, _ = await create(pstore, new_message(key="k1", client_id="svc-a"))
    b, created, _ = await create(pstore, new_message(key="k1", client_id="svc-b", body="other"))
    assert created
    assert a.message_id != b.message_id
    assert b.client_id == "svc-b"
    assert len(await pstore.list_messages(None, 10)) == 2


async def test_get_message_hides_other_clients_messages(pstore: PipelineStore) -> None:
    """Another client's id gets None; client_id None sees every message."""
    message, _, _ = await create(pstore, new_message(client_id="svc-a"))
    assert await pstore.get_message(message.message_id, "svc-b") is None
    mine = await pstore.get_message(message.message_id, "svc-a")
    anyone = await pstore.get_message(message.message_id, None)
    assert mine is not None and anyone is not None
    assert mine.message_id == anyone.message_id == message.message_id
    assert await pstore.get_message("no-such-message", None) is None


async def test_get_message_without_deliveries(pstore: PipelineStore) -> None:
    """deliveries=False answers the message and its counts but no deliveries."""
    message, _, _ = await create(pstore, new_message(("alice", "bob")))
    got = await pstore.get_message(message.message_id, None, deliveries=False)
    assert got is not None
    assert got.deliveries is None
    assert got.counts.get(PENDING) == 2


async def test_list_messages_newest_first_and_by_state(pstore: PipelineStore) -> None:
    """list_messages returns newest first, honours limit and filters by derived state."""
    ids = []
    for i in range(3):
        message, _, _ = await create(pstore, new_message((f"u{i}",), body=f"b{i}"))
        ids.append(message.message_id)
        await asyncio.sleep(0.002)
    listed = await pstore.list_messages(None, 10)
    assert [m.message_id for m in listed] == ids[::-1]
    assert [m.message_id for m in await pstore.list_messages(None, 2)] == ids[:0:-1]
    [claim] = await pstore.claim(["in_app"], "w", 1, LONG)
    assert await pstore.complete("w", claim, sent())
    sent_ones = await pstore.list_messages(SENT, 10)
    assert [m.message_id for m in sent_ones] == [claim.message_id]
    pending = await pstore.list_messages(PENDING, 10)
    assert {m.message_id for m in pending} == set(ids) - {claim.message_id}


async def test_history_entries_in_order(pstore: PipelineStore) -> None:
    """A delivery's history lists queued, claimed, sent in order, with rising timestamps."""
    message, _, _ = await create(pstore, new_message())
    [claim] = await pstore.claim(["in_app"], "w", 10, LONG)
    assert await pstore.complete("w", claim, sent())
    delivery = await one_delivery(pstore, message.message_id)
    assert [(h.state, h.reason) for h in delivery.history] == [
        (PENDING, "queued"),
        (ACTIVE, "claimed"),
        (SENT, "sent"),
    ]
    stamps = [h.at for h in delivery.history]
    assert stamps == sorted(stamps)


async def test_delete_message_removes_pending_and_stale_only(pstore: PipelineStore) -> None:
    """delete moves pending and stale to deleted; active and sent stay; deleted is not claimed."""
    message, _, _ = await create(pstore, new_message(("u1", "u2", "u3", "u4")))
    [done] = await pstore.claim(["in_app"], "w", 1, LONG)
    assert await pstore.complete("w", done, sent())
    [lapsing] = await pstore.claim(["in_app"], "w", 1, TINY)
    [busy] = await pstore.claim(["in_app"], "w", 1, LONG)
    await asyncio.sleep(TINY * 3)
    assert await pstore.requeue_stale() == 1
    before = await deliveries(pstore, message.message_id)
    assert before[lapsing.delivery_id].state == STALE
    [waiting] = [d for d in before.values() if d.state == PENDING]
    assert await pstore.delete_message(message.message_id, "svc-other") is None
    result = await pstore.delete_message(message.message_id, "svc-a")
    assert result is not None and result.message_id == message.message_id
    after = await deliveries(pstore, message.message_id)
    assert after[done.delivery_id].state == SENT
    assert after[busy.delivery_id].state == ACTIVE
    for delivery_id in (lapsing.delivery_id, waiting.delivery_id):
        assert (after[delivery_id].state, after[delivery_id].reason) == (
            DELETED,
            "deleted_by_request",
        )
        assert after[delivery_id].history[-1].reason == "deleted_by_request"
    assert await pstore.claim(["in_app"], "w2", 10, LONG) == []
    assert await pstore.complete("w", busy, sent()) is True
    final = await pstore.get_message(message.message_id, None)
    assert final is not None
    assert final.counts.get(SENT) == 2 and final.counts.get(DELETED) == 2
    assert final.state == SENT


async def test_delete_message_with_no_client_filter(pstore: PipelineStore) -> None:
    """client_id None may delete any message; an unknown id answers None."""
    message, _, _ = await create(pstore, new_message(("u1",)))
    result = await pstore.delete_message(message.message_id, None)
    assert result is not None and result.state == DELETED
    assert await pstore.delete_message("no-such-message", None) is None
    assert await pstore.claim(["in_app"], "w", 10, LONG) == []


async def test_retry_message_requeues_failed(pstore: PipelineStore) -> None:
    """retry_message queues failed deliveries again with attempts reset; sent ones stay sent."""
    message, _, _ = await create(pstore, new_message(("u1", "u2")))
    first, second = await pstore.claim(["in_app"], "w", 10, LONG)
    assert await pstore.complete("w", first, Outcome(FAILED, "rejected", error="nope"))
    assert await pstore.complete("w", second, sent())
    assert await pstore.retry_message(message.message_id, "svc-other") is None
    result = await pstore.retry_message(message.message_id, "svc-a")
    assert result is not None and result.counts.get(PENDING) == 1
    found = await deliveries(pstore, message.message_id)
    retried = found[first.delivery_id]
    assert (retried.state, retried.reason, retried.attempts) == (
        PENDING,
        "retried_by_request",
        0,
    )
    assert retried.history[-1].reason == "retried_by_request"
    assert found[second.delivery_id].state == SENT
    [again] = await pstore.claim(["in_app"], "w", 10, LONG)
    assert again.delivery_id == first.delivery_id and again.attempt == 1


async def test_retry_message_requeues_deliveries_refused_at_creation(
    pstore: PipelineStore,
) -> None:
    """A delivery failed at creation (no_address) is queued again by retry_message."""
    await pstore.set_contact("u1", "email", "u1@example.org")
    message, _, _ = await create(pstore, new_message(("u1", "u2"), ("email",)))
    assert message.counts.get(FAILED) == 1
    result = await pstore.retry_message(message.message_id, None)
    assert result is not None
    assert result.counts.get(PENDING) == 2 and not result.counts.get(FAILED)
    claims = await pstore.claim(["email"], "w", 10, LONG)
    assert sorted(c.user_id for c in claims) == ["u1", "u2"]


async def test_recent_counts_queued_deliveries_within_since(pstore: PipelineStore) -> None:
    """Deliveries created pending count in ``recent`` for later messages within ``since``."""
    for user in ("alice", "bob"):
        await pstore.set_contact(user, "email", f"{user}@example.org")
    limits = {"email": RateLimit(10, 3600)}
    await create(pstore, new_message(("alice",), ("email",), body="m1"), limits=limits)
    await create(pstore, new_message(("alice", "bob"), ("email",), body="m2"), limits=limits)
    _, _, planner = await create(
        pstore, new_message(("alice", "bob"), ("email", "in_app"), body="m3"), limits=limits
    )
    users = planner.by_user()
    assert users["alice"].recent.get("email", 0) == 2
    assert users["bob"].recent.get("email", 0) == 1
    # in_app deliveries are not counted channels
    assert users["alice"].recent.get("in_app", 0) == 0


async def test_recent_ignores_deliveries_before_since(pstore: PipelineStore) -> None:
    """Deliveries created before ``since`` are not counted."""
    await pstore.set_contact("alice", "email", "alice@example.org")
    limits = {"email": RateLimit(10, 3600)}
    await create(pstore, new_message(("alice",), ("email",), body="m1"), limits=limits)
    await asyncio.sleep(0.01)
    msg = new_message(("alice",), ("email",), body="m2")
    planner = RecordingPlanner(msg, limits)
    since = {"email": utcnow()}
    await pstore.create_message(msg, ["email"], since, planner, 1000)
    assert planner.seen[0].recent.get("email", 0) == 0


async def test_refused_deliveries_do_not_count(pstore: PipelineStore) -> None:
    """A delivery refused at creation (rate_limited) does not count for later messages."""
    await pstore.set_contact("alice", "email", "alice@example.org")
    limits = {"email": RateLimit(1, 3600)}
    first, _, _ = await create(
        pstore, new_message(("alice",), ("email",), body="m1"), limits=limits
    )
    assert first.counts.get(PENDING) == 1
    second, _, p2 = await create(
        pstore, new_message(("alice",), ("email",), body="m2"), limits=limits
    )
    assert p2.seen[0].recent.get("email", 0) == 1
    delivery = await one_delivery(pstore, second.message_id)
    assert (delivery.state, delivery.reason) == (FAILED, "rate_limited")
    _, _, p3 = await create(pstore, new_message(("alice",), ("email",), body="m3"), limits=limits)
    assert p3.seen[0].recent.get("email", 0) == 1


async def test_critical_deliveries_count(pstore: PipelineStore) -> None:
    """A critical message passes the limit and its delivery still counts."""
    await pstore.set_contact("alice", "email", "alice@example.org")
    limits = {"email": RateLimit(1, 3600)}
    await create(pstore, new_message(("alice",), ("email",), body="m1"), limits=limits)
    crit, _, _ = await create(
        pstore, new_message(("alice",), ("email",), body="m2", critical=True), limits=limits
    )
    assert crit.counts.get(PENDING) == 1
    _, _, p3 = await create(pstore, new_message(("alice",), ("email",), body="m3"), limits=limits)
    assert p3.seen[0].recent.get("email", 0) == 2


async def test_sent_deliveries_still_count(pstore: PipelineStore) -> None:
    """A delivery counts for the period whatever became of it (sent)."""
    await pstore.set_contact("alice", "email", "alice@example.org")
    limits = {"email": RateLimit(10, 3600)}
    await create(pstore, new_message(("alice",), ("email",), body="m1"), limits=limits)
    [claim] = await pstore.claim(["email"], "w", 10, LONG)
    assert await pstore.complete("w", claim, sent())
    _, _, planner = await create(
        pstore, new_message(("alice",), ("email",), body="m2"), limits=limits
    )
    assert planner.seen[0].recent.get("email", 0) == 1


async def test_concurrent_messages_cannot_both_pass_the_limit(pstore: PipelineStore) -> None:
    """Messages created at once see each other's deliveries: one passes a limit of one."""
    await pstore.set_contact("alice", "email", "alice@example.org")
    limits = {"email": RateLimit(1, 3600)}
    results = await asyncio.gather(
        *(
            create(pstore, new_message(("alice",), ("email",), body=f"m{i}"), limits=limits)
            for i in range(4)
        )
    )
    queued = [message for message, _, _ in results if message.counts.get(PENDING)]
    assert len(queued) == 1
    assert sum(message.counts.get(FAILED, 0) for message, _, _ in results) == 3
    assert len(await pstore.claim(["email"], "w", 10, LONG)) == 1


async def test_a_users_latest_deliveries_across_messages(pstore: PipelineStore) -> None:
    first, _, _ = await create(pstore, new_message(["alice", "bob"], body="b1"))
    second, _, _ = await create(pstore, new_message(["alice"], body="b2", key="k2"))
    found = await pstore.deliveries_of_user("alice", 10)
    assert [d.message_id for d in found] == [second.message_id, first.message_id]
    assert {d.user_id for d in found} == {"alice"} and all(not d.history for d in found)
    assert len(await pstore.deliveries_of_user("alice", 1)) == 1
    assert [d.message_id for d in await pstore.deliveries_of_user("bob", 10)] == [first.message_id]
    assert await pstore.deliveries_of_user("nobody", 10) == []


async def test_one_delivery_retried_or_deleted(pstore: PipelineStore) -> None:
    """With a delivery_id, retry and delete touch that delivery only; one of another message
    (or unknown) is NotFound and nothing changes."""
    message, _, _ = await create(pstore, new_message(("u1", "u2", "u3", "u4")))
    other, _, _ = await create(pstore, new_message(("u9",), body="b9", key="k9"))
    claims = await pstore.claim(["in_app"], "w", 2, LONG)
    for claim in claims:
        assert await pstore.complete("w", claim, Outcome(FAILED, "rejected", error="nope"))
    failed = [c.delivery_id for c in claims]
    result = await pstore.retry_message(message.message_id, "svc-a", failed[0])
    assert result is not None
    states = {i: d.state for i, d in (await deliveries(pstore, message.message_id)).items()}
    assert states[failed[0]] == PENDING and states[failed[1]] == FAILED
    waiting = [i for i, s in states.items() if s == PENDING and i != failed[0]]
    await pstore.delete_message(message.message_id, "svc-a", waiting[0])
    states = {i: d.state for i, d in (await deliveries(pstore, message.message_id)).items()}
    assert states[waiting[0]] == DELETED and states[waiting[1]] == PENDING
    assert states[failed[0]] == PENDING  # not the one named
    foreign = (await one_delivery(pstore, other.message_id)).delivery_id
    for call in (pstore.retry_message, pstore.delete_message):
        for delivery_id in (foreign, "no-such-delivery"):
            with pytest.raises(NotFound):
                await call(message.message_id, "svc-a", delivery_id)
    assert (await one_delivery(pstore, other.message_id)).state == PENDING
