"""The pipeline store contract of digests (docs/pipeline.md, "Digest"): the first message with
a key opens a digest whose delivery waits for the window; later ones join it while it waits
unclaimed; its claim is rendered over every message still in it; the deliveries in it end as it
ends; a deleted digest delivery hands the digest to the next one in it; a retried one leaves
it; erasure forgets it. Every backend passes it (the ``pstore`` fixture)."""

from __future__ import annotations

import asyncio
from typing import Any

from contract.pipeline_store.backends import (
    LONG,
    RecordingPlanner,
    create,
    new_message,
    one_delivery,
    postgres_template,
    pstore,
    sent,
)
from tidings.core.models import utcnow
from tidings.delivery.models import (
    DELETED,
    FAILED,
    PENDING,
    SENT,
    Digest,
    Message,
    NewMessage,
    Outcome,
    PlannedDelivery,
)
from tidings.delivery.planner import Recipient
from tidings.delivery.steps import DIGEST, DIGESTED, scheduled
from tidings.delivery.stores.base import PipelineStore

__all__ = ["postgres_template", "pstore"]  # the fixtures

WINDOW = 0.4  # seconds a digest stays open in these tests


class DigestPlanner(RecordingPlanner):
    """Plans as the pipeline does: the planner's decisions, then the steps' times."""

    def __call__(self, recipients: list[Recipient]) -> list[PlannedDelivery]:
        planned = super().__call__(recipients)
        return scheduled(
            planned,
            None,
            {},
            critical=False,
            now=utcnow(),
            digest=self.message.digest,
            digests={r.user_id: r.digests for r in recipients if r.digests},
        )


def digested(
    n: int, *, users: tuple[str, ...] = ("alice",), key: str = "comments", window: float = WINDOW
) -> NewMessage:
    message = new_message(users, ("email",), data={"n": n}, body=f"body-{n}")
    return NewMessage(
        **{
            **{f: getattr(message, f) for f in message.__dataclass_fields__},
            "digest": Digest(key, window, ("email",)),
        }
    )


async def post(store: PipelineStore, n: int, **given: Any) -> Message:
    message = digested(n, **given)
    created, _, _ = await create(store, message, planner=DigestPlanner(message))
    return created


async def contacts(store: PipelineStore, *users: str) -> None:
    for user in users:
        await store.set_contact(user, "email", f"{user}@example.org")


async def test_later_messages_join_the_open_digest_and_end_as_it_ends(
    pstore: PipelineStore,
) -> None:
    await contacts(pstore, "alice")
    first = await post(pstore, 1)
    others = [await post(pstore, n) for n in (2, 3)]
    opening = await one_delivery(pstore, first.message_id)
    assert (opening.state, opening.history[0].reason) == (PENDING, DIGEST)
    for other in others:
        joined = await one_delivery(pstore, other.message_id)
        assert (joined.state, joined.reason) == (PENDING, DIGESTED)
        assert opening.delivery_id in (joined.history[0].detail or "")
    assert await pstore.claim(["email"], "w", 10, LONG) == []  # the window is open
    await asyncio.sleep(WINDOW + 0.1)
    [claim] = await pstore.claim(["email"], "w", 10, LONG)  # one delivery sends all three
    assert claim.delivery_id == opening.delivery_id and claim.digest
    items = await pstore.digest_items([claim.delivery_id])
    assert items == {claim.delivery_id: [{"n": 1}, {"n": 2}, {"n": 3}]}
    assert await pstore.complete("w", claim, sent()) is True
    for message in (first, *others):
        done = await one_delivery(pstore, message.message_id)
        assert done.state == SENT and done.sent_at is not None
    last = (await one_delivery(pstore, others[-1].message_id)).history[-1]
    assert (last.state, last.detail) == (SENT, f"in the digest of delivery {claim.delivery_id}")


async def test_a_digest_is_per_user_and_key_and_closes_with_its_window(
    pstore: PipelineStore,
) -> None:
    await contacts(pstore, "alice", "bob")
    await post(pstore, 1, users=("alice", "bob"))
    await post(pstore, 2, users=("bob",), key="likes")  # another key: its own digest
    await post(pstore, 3, users=("alice",))
    await asyncio.sleep(WINDOW + 0.1)
    late = await post(pstore, 4, users=("alice",))  # the window closed: a new digest
    assert (await one_delivery(pstore, late.message_id)).reason == DIGEST
    claims = await pstore.claim(["email"], "w", 10, LONG)
    assert sorted((c.user_id, c.data["n"]) for c in claims) == [
        ("alice", 1),
        ("bob", 1),
        ("bob", 2),
    ]
    items = await pstore.digest_items([c.delivery_id for c in claims])
    by_user = {(c.user_id, c.data["n"]): items[c.delivery_id] for c in claims}
    assert by_user[("alice", 1)] == [{"n": 1}, {"n": 3}]
    assert by_user[("bob", 1)] == [{"n": 1}]
    assert by_user[("bob", 2)] == [{"n": 2}]


async def test_a_claimed_digest_takes_no_more_messages(pstore: PipelineStore) -> None:
    await contacts(pstore, "alice")
    await post(pstore, 1, window=0.2)
    await asyncio.sleep(0.3)
    [claim] = await pstore.claim(["email"], "w", 10, LONG)
    later = await post(pstore, 2, window=0.2)  # its digest is being sent: a new one opens
    assert (await one_delivery(pstore, later.message_id)).reason == DIGEST
    assert await pstore.digest_items([claim.delivery_id]) == {claim.delivery_id: [{"n": 1}]}


async def test_a_failed_digest_fails_the_deliveries_in_it(pstore: PipelineStore) -> None:
    await contacts(pstore, "alice")
    await post(pstore, 1)
    joined = await post(pstore, 2)
    await asyncio.sleep(WINDOW + 0.1)
    [claim] = await pstore.claim(["email"], "w", 10, LONG)
    await pstore.complete("w", claim, Outcome(FAILED, "rejected", "550 no such user"))
    failed = await one_delivery(pstore, joined.message_id)
    assert (failed.state, failed.reason) == (FAILED, "rejected")
    assert failed.history[-1].detail == f"in the digest of delivery {claim.delivery_id}"


async def test_a_retried_digest_leaves_those_in_it_waiting(pstore: PipelineStore) -> None:
    await contacts(pstore, "alice")
    await post(pstore, 1)
    joined = await post(pstore, 2)
    await asyncio.sleep(WINDOW + 0.1)
    [claim] = await pstore.claim(["email"], "w", 10, LONG)
    await pstore.complete("w", claim, Outcome(PENDING, "retry", "451 later", retry_at=utcnow()))
    assert (await one_delivery(pstore, joined.message_id)).state == PENDING
    [again] = await pstore.claim(["email"], "w", 10, LONG)
    assert again.delivery_id == claim.delivery_id
    assert await pstore.digest_items([again.delivery_id]) == {
        again.delivery_id: [{"n": 1}, {"n": 2}]
    }


async def test_deleting_the_digests_delivery_hands_it_to_the_next(pstore: PipelineStore) -> None:
    await contacts(pstore, "alice")
    first = await post(pstore, 1)
    second = await post(pstore, 2)
    third = await post(pstore, 3)
    await pstore.delete_message(first.message_id, None)
    took = await one_delivery(pstore, second.message_id)
    assert (took.state, took.reason) == (PENDING, DIGEST)
    assert took.history[-1].detail is not None and "deleted" in took.history[-1].detail
    assert await pstore.claim(["email"], "w", 10, LONG) == []  # still at the window's end
    fourth = await post(pstore, 4)  # the digest is still open: it joins
    assert (await one_delivery(pstore, fourth.message_id)).reason == DIGESTED
    await pstore.delete_message(third.message_id, None)  # one in it leaves it
    await asyncio.sleep(WINDOW + 0.1)
    [claim] = await pstore.claim(["email"], "w", 10, LONG)
    assert claim.delivery_id == took.delivery_id and claim.digest
    assert await pstore.digest_items([claim.delivery_id]) == {
        claim.delivery_id: [{"n": 2}, {"n": 4}]
    }
    await pstore.complete("w", claim, sent())
    assert (await one_delivery(pstore, fourth.message_id)).state == SENT
    assert (await one_delivery(pstore, third.message_id)).state == DELETED
    assert (await one_delivery(pstore, first.message_id)).state == DELETED


async def test_a_retried_delivery_leaves_its_digest(pstore: PipelineStore) -> None:
    await contacts(pstore, "alice")
    await post(pstore, 1)
    joined = await post(pstore, 2)
    await asyncio.sleep(WINDOW + 0.1)
    [claim] = await pstore.claim(["email"], "w", 10, LONG)
    await pstore.complete("w", claim, Outcome(FAILED, "rejected", "550"))
    await pstore.retry_message(joined.message_id, None)
    [alone] = await pstore.claim(["email"], "w", 10, LONG)
    assert alone.message_id == joined.message_id and not alone.digest


async def test_erasing_a_user_forgets_their_digests(pstore: PipelineStore) -> None:
    await contacts(pstore, "alice")
    await post(pstore, 1)
    await pstore.erase_user("alice")
    await contacts(pstore, "alice")
    fresh = await post(pstore, 2)
    assert (await one_delivery(pstore, fresh.message_id)).reason == DIGEST
