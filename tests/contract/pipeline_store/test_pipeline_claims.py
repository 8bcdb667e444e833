"""The pipeline store contract of the claims facet: what workers claim, their leases and renewals,
outcomes, stale work re-queued with backoff, depths per channel and state. Deliveries to claim
are written through the messages facet. Every backend passes it (the ``pstore`` fixture of
:mod:`contract.pipeline_store.backends` runs each test on each)."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from contract.pipeline_store.backends import (
    LONG,
    SHORT,
    TINY,
    create,
    deliveries,
    new_message,
    one_delivery,
    postgres_template,
    pstore,
    sent,
)
from tidings.core.models import utcnow
from tidings.delivery.models import ACTIVE, FAILED, PENDING, SENT, STALE, Outcome
from tidings.delivery.stores.base import PipelineStore

__all__ = ["postgres_template", "pstore"]  # the fixtures


async def test_claim_carries_what_a_worker_needs(pstore: PipelineStore) -> None:
    """A claim holds the delivery's address and the message's content, data and critical."""
    await pstore.set_contact("alice", "email", "alice@example.org")
    msg = new_message(("alice",), ("email",), critical=True, data={"n": 1})
    message, _, _ = await create(pstore, msg)
    [claim] = await pstore.claim(["email"], "w", 10, LONG)
    assert claim.message_id == message.message_id
    assert (claim.user_id, claim.channel, claim.address) == ("alice", "email", "alice@example.org")
    assert claim.attempt == 1
    assert claim.content == msg.content and claim.template_id is None
    assert claim.data == {"n": 1}
    assert claim.critical is True


async def test_claim_only_given_channels(pstore: PipelineStore) -> None:
    """claim takes deliveries of the channels asked for only."""
    await pstore.set_contact("alice", "email", "alice@example.org")
    await create(pstore, new_message(("alice",), ("in_app", "email")))
    claims = await pstore.claim(["email"], "w", 10, LONG)
    assert [c.channel for c in claims] == ["email"]
    claims = await pstore.claim(["in_app"], "w", 10, LONG)
    assert [c.channel for c in claims] == ["in_app"]


async def test_claim_respects_limit(pstore: PipelineStore) -> None:
    """claim returns at most ``limit`` deliveries, the rest stay queued."""
    await create(pstore, new_message([f"u{i}" for i in range(5)]))
    first = await pstore.claim(["in_app"], "w", 2, LONG)
    rest = await pstore.claim(["in_app"], "w", 10, LONG)
    assert len(first) == 2 and len(rest) == 3
    assert not {c.delivery_id for c in first} & {c.delivery_id for c in rest}


async def test_concurrent_claims_never_share_a_delivery(pstore: PipelineStore) -> None:
    """Concurrent claimers each get distinct deliveries; all become active with 1 attempt."""
    message, _, _ = await create(pstore, new_message([f"u{i:02}" for i in range(30)]))
    batches = await asyncio.gather(
        *(pstore.claim(["in_app"], f"worker-{i}", 5, LONG) for i in range(10))
    )
    ids = [c.delivery_id for batch in batches for c in batch]
    assert len(ids) == len(set(ids))
    assert all(len(batch) <= 5 for batch in batches)
    ids += [c.delivery_id for c in await pstore.claim(["in_app"], "late", 30, LONG)]
    assert len(ids) == len(set(ids)) == 30
    found = await deliveries(pstore, message.message_id)
    assert set(found) == set(ids)
    assert all(d.state == ACTIVE and d.attempts == 1 for d in found.values())
    for batch in batches:
        assert all(c.attempt == 1 for c in batch)


async def test_nothing_claimable_twice_while_leased(pstore: PipelineStore) -> None:
    """While leases last, a second claim (and a stale sweep) returns nothing."""
    await create(pstore, new_message(("alice", "bob")))
    assert len(await pstore.claim(["in_app"], "w1", 10, LONG)) == 2
    assert await pstore.claim(["in_app"], "w2", 10, LONG) == []
    assert await pstore.requeue_stale() == 0
    assert await pstore.claim(["in_app"], "w2", 10, LONG) == []


async def test_renew_returns_only_held_ids(pstore: PipelineStore) -> None:
    """renew answers the ids the owner holds, none for another owner or after a takeover."""
    await create(pstore, new_message(("alice", "bob")))
    claims = await pstore.claim(["in_app"], "w1", 10, SHORT)
    ids = {c.delivery_id for c in claims}
    assert await pstore.renew("w1", claims, SHORT) == ids
    assert await pstore.renew("w2", claims, LONG) == set()
    await asyncio.sleep(SHORT + 0.1)
    assert await pstore.requeue_stale() == 2
    assert await pstore.renew("w1", claims, LONG) == set()


async def test_renew_keeps_the_lease(pstore: PipelineStore) -> None:
    """A renewed lease outlives its original length: the stale sweep leaves it alone."""
    await create(pstore, new_message(("alice",)))
    claims = await pstore.claim(["in_app"], "w1", 10, 0.3)
    assert await pstore.renew("w1", claims, LONG) == {claims[0].delivery_id}
    await asyncio.sleep(0.4)
    assert await pstore.requeue_stale() == 0
    assert await pstore.claim(["in_app"], "w2", 10, LONG) == []
    assert await pstore.complete("w1", claims[0], sent())


async def test_complete_by_wrong_owner_writes_nothing(pstore: PipelineStore) -> None:
    """complete by another owner returns False and leaves the delivery as it was."""
    message, _, _ = await create(pstore, new_message())
    [claim] = await pstore.claim(["in_app"], "w1", 10, LONG)
    before = await one_delivery(pstore, message.message_id)
    assert await pstore.complete("w2", claim, sent()) is False
    after = await one_delivery(pstore, message.message_id)
    assert after == before
    assert after.state == ACTIVE and after.sent_at is None and after.provider_id is None


async def test_complete_with_older_attempt_is_ignored(pstore: PipelineStore) -> None:
    """After a lapse and a re-claim, completing the older attempt returns False."""
    message, _, _ = await create(pstore, new_message())
    [old] = await pstore.claim(["in_app"], "w1", 10, TINY)
    await asyncio.sleep(TINY * 3)
    assert await pstore.requeue_stale() == 1
    [new] = await pstore.claim(["in_app"], "w1", 10, LONG)
    assert new.delivery_id == old.delivery_id and new.attempt == 2
    before = await one_delivery(pstore, message.message_id)
    assert await pstore.complete("w1", old, sent("old")) is False
    assert await one_delivery(pstore, message.message_id) == before
    assert await pstore.complete("w1", new, sent("new")) is True
    delivery = await one_delivery(pstore, message.message_id)
    assert (delivery.state, delivery.provider_id, delivery.attempts) == (SENT, "new", 2)


async def test_complete_sent_removes_from_queue(pstore: PipelineStore) -> None:
    """A sent delivery records sent_at and provider_id and is never claimed again."""
    message, _, _ = await create(pstore, new_message())
    [claim] = await pstore.claim(["in_app"], "w", 10, SHORT)
    start = utcnow()
    assert await pstore.complete("w", claim, sent("<id@tidings>")) is True
    delivery = await one_delivery(pstore, message.message_id)
    assert (delivery.state, delivery.reason) == (SENT, "sent")
    assert delivery.provider_id == "<id@tidings>"
    assert delivery.sent_at is not None
    assert start - timedelta(seconds=5) <= delivery.sent_at <= utcnow() + timedelta(seconds=5)
    await asyncio.sleep(SHORT + 0.1)
    assert await pstore.requeue_stale() == 0
    assert await pstore.claim(["in_app"], "w", 10, LONG) == []
    assert await pstore.renew("w", [claim], LONG) == set()
    got = await pstore.get_message(message.message_id, None)
    assert got is not None and got.state == SENT and got.counts.get(SENT) == 1
    assert await pstore.complete("w", claim, sent("again")) is False


async def test_complete_many_records_each_outcome_in_one_call(pstore: PipelineStore) -> None:
    """complete_many records a sent, a retried and a failed delivery with their notes, and
    answers False, writing nothing, for a claim that is not the caller's."""
    message, _, _ = await create(pstore, new_message(["u1", "u2", "u3", "u4"]))
    claims = await pstore.claim(["in_app"], "w", 10, LONG)
    by_user = {c.user_id: c for c in claims}
    later = utcnow() + timedelta(seconds=60)
    foreign = by_user["u4"]
    before = (await deliveries(pstore, message.message_id))[foreign.delivery_id]
    answers = await pstore.complete_many(
        "w",
        [
            (by_user["u1"], Outcome(SENT, "sent", provider_id="p-1", notes=(("token_sent", "a"),))),
            (by_user["u2"], Outcome(PENDING, "retry", "busy", retry_at=later)),
            (by_user["u3"], Outcome(FAILED, "rejected", "no")),
        ],
    )
    assert answers == [True, True, True]
    assert await pstore.complete_many("other", [(foreign, sent())]) == [False]
    found = await deliveries(pstore, message.message_id)
    one, two, three = (found[by_user[u].delivery_id] for u in ("u1", "u2", "u3"))
    assert (one.state, one.provider_id) == (SENT, "p-1") and one.sent_at is not None
    assert [(h.state, h.reason, h.detail) for h in one.history[-2:]] == [
        (ACTIVE, "token_sent", "a"),
        (SENT, "sent", "p-1"),
    ]
    assert (two.state, two.last_error, two.sent_at) == (PENDING, "busy", None)
    assert (three.state, three.reason, three.last_error) == (FAILED, "rejected", "no")
    assert found[foreign.delivery_id] == before
    # The retried one is due again only later; the others left the queue.
    assert await pstore.claim(["in_app"], "w2", 10, LONG) == []
    assert await pstore.complete_many("w", []) == []


async def test_retry_outcome_waits_until_retry_at(pstore: PipelineStore) -> None:
    """A retry is pending and not claimable before retry_at, and claimable (attempt 2) after."""
    message, _, _ = await create(pstore, new_message())
    [claim] = await pstore.claim(["in_app"], "w", 10, LONG)
    retry = Outcome(
        PENDING, "retry", error="451 try later", retry_at=utcnow() + timedelta(seconds=0.4)
    )
    assert await pstore.complete("w", claim, retry) is True
    delivery = await one_delivery(pstore, message.message_id)
    assert (delivery.state, delivery.reason) == (PENDING, "retry")
    assert delivery.last_error == "451 try later"
    assert delivery.attempts == 1
    assert delivery.history[-1].reason == "retry"
    assert await pstore.claim(["in_app"], "w", 10, LONG) == []
    assert await pstore.requeue_stale() == 0
    assert (await one_delivery(pstore, message.message_id)).state == PENDING
    await asyncio.sleep(0.5)
    [again] = await pstore.claim(["in_app"], "w", 10, LONG)
    assert again.delivery_id == claim.delivery_id and again.attempt == 2


async def test_failed_outcome_is_final(pstore: PipelineStore) -> None:
    """A failed completion ends the delivery: never claimed nor re-queued again."""
    message, _, _ = await create(pstore, new_message())
    [claim] = await pstore.claim(["in_app"], "w", 10, SHORT)
    outcome = Outcome(FAILED, "rejected", error="550 no such user")
    assert await pstore.complete("w", claim, outcome) is True
    delivery = await one_delivery(pstore, message.message_id)
    assert (delivery.state, delivery.reason, delivery.last_error) == (
        FAILED,
        "rejected",
        "550 no such user",
    )
    assert delivery.sent_at is None
    await asyncio.sleep(SHORT + 0.1)
    assert await pstore.requeue_stale() == 0
    assert await pstore.claim(["in_app"], "w", 10, LONG) == []
    got = await pstore.get_message(message.message_id, None)
    assert got is not None and got.state == FAILED


async def test_requeue_stale_after_lease_lapses(pstore: PipelineStore) -> None:
    """A lapsed lease makes the delivery stale (lease_expired), claimable with attempt 2."""
    message, _, _ = await create(pstore, new_message())
    [claim] = await pstore.claim(["in_app"], "dead-worker", 10, TINY)
    await asyncio.sleep(TINY * 3)
    assert await pstore.requeue_stale() == 1
    delivery = await one_delivery(pstore, message.message_id)
    assert (delivery.state, delivery.reason) == (STALE, "lease_expired")
    assert delivery.history[-1].state == STALE
    assert delivery.history[-1].reason == "lease_expired"
    got = await pstore.get_message(message.message_id, None)
    assert got is not None and got.state == STALE
    assert await pstore.requeue_stale() == 0
    assert await pstore.complete("dead-worker", claim, sent("late")) is False
    assert (await one_delivery(pstore, message.message_id)).state == STALE
    [again] = await pstore.claim(["in_app"], "other-worker", 10, LONG)
    assert again.delivery_id == claim.delivery_id
    assert again.attempt == 2
    delivery = await one_delivery(pstore, message.message_id)
    assert (delivery.state, delivery.attempts) == (ACTIVE, 2)
    assert await pstore.complete("dead-worker", claim, sent()) is False
    assert await pstore.complete("other-worker", again, sent()) is True


async def test_requeue_stale_backs_off_by_attempt(pstore: PipelineStore) -> None:
    """With a backoff, a stale delivery is due only after backoff(attempt) seconds."""
    await create(pstore, new_message(["u1", "u2"]))
    await pstore.claim(["in_app"], "dead", 10, TINY)
    await asyncio.sleep(TINY * 3)
    asked: list[int] = []

    def backoff(attempt: int) -> float:
        asked.append(attempt)
        return 0.3

    assert await pstore.requeue_stale(backoff) == 2
    assert asked == [1, 1]
    assert await pstore.claim(["in_app"], "other", 10, LONG) == []
    await asyncio.sleep(0.4)
    assert len(await pstore.claim(["in_app"], "other", 10, LONG)) == 2


async def test_concurrent_reclaims_after_sweep_never_share(pstore: PipelineStore) -> None:
    """Concurrent claims after a lapse and sweep still hand the delivery to one worker only."""
    await create(pstore, new_message([f"u{i}" for i in range(6)]))
    await pstore.claim(["in_app"], "dead", 10, TINY)
    await asyncio.sleep(TINY * 3)
    assert await pstore.requeue_stale() == 6
    batches = await asyncio.gather(*(pstore.claim(["in_app"], f"w{i}", 3, LONG) for i in range(6)))
    ids = [c.delivery_id for batch in batches for c in batch]
    assert len(ids) == len(set(ids)) == 6
    assert all(c.attempt == 2 for batch in batches for c in batch)


async def test_depths_counts_work_per_channel_and_state(pstore: PipelineStore) -> None:
    """depths counts deliveries per channel and state as they move through the queue."""
    assert not any((await pstore.depths()).values())
    for user in ("u1", "u2", "u3"):
        await pstore.set_contact(user, "email", f"{user}@example.org")
    await create(pstore, new_message(("u1", "u2", "u3"), ("in_app", "email")))
    depths = await pstore.depths()
    assert depths["in_app"].get(PENDING) == 3
    assert depths["email"].get(PENDING) == 3
    [claim] = await pstore.claim(["in_app"], "w", 1, LONG)
    depths = await pstore.depths()
    assert depths["in_app"].get(PENDING) == 2
    assert depths["in_app"].get(ACTIVE) == 1
    assert depths["email"].get(PENDING) == 3
    assert await pstore.complete("w", claim, sent())
    depths = await pstore.depths()
    assert depths["in_app"].get(PENDING) == 2
    assert depths["in_app"].get(ACTIVE, 0) == 0
