"""The PipelineStore contract (tidings.delivery.store): every backend passes the same tests."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from conftest import POSTGRES_URL, create_database, drop_database
from tidings.core.models import utcnow
from tidings.delivery.channels.base import CHANNEL_NAMES
from tidings.delivery.models import (
    ACTIVE,
    DELETED,
    FAILED,
    PENDING,
    SENT,
    STALE,
    Content,
    Delivery,
    Message,
    NewMessage,
    Outcome,
    PlannedDelivery,
)
from tidings.delivery.planner import RateLimit, Recipient, counted_channels, plan
from tidings.delivery.postgres import PostgresPipelineStore
from tidings.delivery.sqlite import SqlitePipelineStore
from tidings.delivery.store import PipelineStore
from tidings.errors import Conflict, InvalidArgument
from tidings.storage import create_store

LONG = 30.0  # a lease that does not lapse during a test
TINY = 0.05  # a lease that lapses after a short sleep
SHORT = 0.25  # a lease that outlasts a few store calls, then lapses after a sleep


class PostgresTemplate:
    """A migrated PostgreSQL database made once per module; each test gets a copy of it.

    Copying a template is much faster than creating a database and migrating it again.
    """

    def __init__(self) -> None:
        self.url: str | None = None

    def clone(self) -> str:
        if self.url is None:
            url = create_database()
            asyncio.run(self._migrate(url))
            self.url = url
        base, _, template = self.url.rpartition("/")
        name = f"tidings_t_{uuid.uuid4().hex[:12]}"

        async def copy() -> None:
            conn = await asyncpg.connect(POSTGRES_URL)
            try:
                await conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
            finally:
                await conn.close()

        asyncio.run(copy())
        return f"{base}/{name}"

    @staticmethod
    async def _migrate(url: str) -> None:
        async with create_store(url):
            pass

    def drop(self) -> None:
        if self.url is not None:
            drop_database(self.url)


@pytest.fixture(scope="module")
def postgres_template() -> Iterator[PostgresTemplate]:
    template = PostgresTemplate()
    yield template
    template.drop()


@pytest.fixture(params=["sqlite", "postgres"])
async def pstore(
    request: pytest.FixtureRequest, tmp_path: Path, postgres_template: PostgresTemplate
) -> AsyncIterator[PipelineStore]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/pipeline.db"
    else:
        url = await asyncio.to_thread(postgres_template.clone)
    try:
        async with create_store(url) as store:
            if request.param == "sqlite":
                yield SqlitePipelineStore(store)  # type: ignore[arg-type]
            else:
                yield PostgresPipelineStore(store)  # type: ignore[arg-type]
    finally:
        if request.param == "postgres":
            await asyncio.to_thread(drop_database, url)


def new_message(
    users: Iterable[str] | None = ("alice",),
    channels: Iterable[str] = ("in_app",),
    *,
    client_id: str = "svc-a",
    topic: str | None = None,
    key: str | None = None,
    body: str = "body-1",
    critical: bool = False,
    data: Any = None,
    template_id: str | None = None,
    content: Content | None = None,
) -> NewMessage:
    if template_id is None and content is None:
        content = Content(text="hello {{ user_id }}", subject="hi")
    return NewMessage(
        client_id=client_id,
        channels=tuple(channels),
        user_ids=None if users is None else tuple(users),
        topic=topic,
        template_id=template_id,
        content=content,
        data={"order": 42} if data is None else data,
        critical=critical,
        idempotency_key=key,
        body_hash=body,
    )


class RecordingPlanner:
    """Decides with :func:`tidings.delivery.planner.plan` and records the recipients it got."""

    def __init__(
        self,
        message: NewMessage,
        limits: Mapping[str, RateLimit] | None = None,
        available: Mapping[str, bool] | None = None,
    ) -> None:
        self.message = message
        self.limits = dict(limits or {})
        self.available = dict(available or dict.fromkeys(CHANNEL_NAMES, True))
        self.seen: list[Recipient] = []
        self.calls = 0

    def __call__(self, recipients: list[Recipient]) -> list[PlannedDelivery]:
        self.calls += 1
        recipients = list(recipients)
        self.seen.extend(recipients)
        return plan(
            self.message,
            recipients,
            limits=self.limits,
            available=self.available,
            needs_address={ch: ch != "in_app" for ch in CHANNEL_NAMES},
            validate=lambda channel, raw: raw,
        )

    def by_user(self) -> dict[str, Recipient]:
        return {r.user_id: r for r in self.seen}


async def create(
    store: PipelineStore,
    message: NewMessage,
    *,
    limits: Mapping[str, RateLimit] | None = None,
    max_recipients: int = 1000,
    planner: RecordingPlanner | None = None,
) -> tuple[Message, bool, RecordingPlanner]:
    planner = planner or RecordingPlanner(message, limits)
    now = utcnow()
    limits = planner.limits
    since = {ch: limit.since(now) for ch, limit in limits.items()}
    created, fresh = await store.create_message(
        message, counted_channels(message, limits), since, planner, max_recipients
    )
    return created, fresh, planner


async def deliveries(store: PipelineStore, message_id: str) -> dict[str, Delivery]:
    got = await store.get_message(message_id, None)
    assert got is not None and got.deliveries is not None
    return {d.delivery_id: d for d in got.deliveries}


async def one_delivery(store: PipelineStore, message_id: str) -> Delivery:
    found = list((await deliveries(store, message_id)).values())
    assert len(found) == 1
    return found[0]


def sent(provider_id: str = "prov-1") -> Outcome:
    return Outcome(SENT, "sent", provider_id=provider_id)


# create_message


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


# Idempotency


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


# get_message / list_messages


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


# claim / renew / complete


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


# delete_message / retry_message


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


# Templates


async def test_template_lifecycle(pstore: PipelineStore) -> None:
    """put creates version 1, put again replaces as version 2; get, list and delete follow."""
    first = Content(text="hi {{ name }}", subject="s1", html="<p>{{ name }}</p>")
    second = Content(text="hello {{ name }}")
    template, created = await pstore.put_template("greet", first)
    assert created and template.version == 1
    assert template.template_id == "greet" and template.content == first
    replaced, created = await pstore.put_template("greet", second)
    assert not created and replaced.version == 2
    assert replaced.created_at == template.created_at
    assert replaced.updated_at >= template.updated_at
    got = await pstore.get_template("greet")
    assert got is not None
    assert (got.content, got.version) == (second, 2)
    await pstore.put_template("other", first)
    listed = {t.template_id: t for t in await pstore.list_templates()}
    assert set(listed) == {"greet", "other"}
    assert listed["greet"].version == 2 and listed["other"].content == first
    assert await pstore.delete_template("greet") is True
    assert await pstore.get_template("greet") is None
    assert await pstore.delete_template("greet") is False
    assert [t.template_id for t in await pstore.list_templates()] == ["other"]
    assert await pstore.get_template("never") is None


# Preferences


async def test_preferences_reflect_settings(pstore: PipelineStore) -> None:
    """preferences shows channel switches, topics and contacts; set_contact(None) removes."""
    empty = await pstore.preferences("alice")
    assert empty.user_id == "alice"
    assert (empty.channels, empty.topics, empty.contacts) == ({}, [], {})
    await pstore.set_channel("alice", "email", False)
    await pstore.set_channel("alice", "sms", False)
    await pstore.set_channel("alice", "sms", True)
    await pstore.set_topic("alice", "orders", True)
    await pstore.set_topic("alice", "news", True)
    await pstore.set_topic("alice", "news", False)
    subscription = {"endpoint": "https://push.example/x", "keys": {"p256dh": "k", "auth": "a"}}
    await pstore.set_contact("alice", "email", "alice@example.org")
    await pstore.set_contact("alice", "web_push", subscription)
    await pstore.set_contact("alice", "email", "alice@example.net")
    prefs = await pstore.preferences("alice")
    assert prefs.enabled("email") is False
    assert prefs.enabled("sms") is True
    assert prefs.enabled("in_app") is True
    assert prefs.channels.get("email") is False
    assert prefs.topics == ["orders"]
    assert prefs.contacts == {"email": "alice@example.net", "web_push": subscription}
    await pstore.set_contact("alice", "email", None)
    prefs = await pstore.preferences("alice")
    assert prefs.contacts == {"web_push": subscription}
    other = await pstore.preferences("bob")
    assert (other.channels, other.topics, other.contacts) == ({}, [], {})


async def test_removed_contact_is_no_address(pstore: PipelineStore) -> None:
    """After set_contact(None) the planner sees no contact and the delivery is no_address."""
    await pstore.set_contact("alice", "email", "alice@example.org")
    await pstore.set_contact("alice", "email", None)
    message, _, planner = await create(pstore, new_message(("alice",), ("email",)))
    assert planner.by_user()["alice"].contacts.get("email") is None
    delivery = await one_delivery(pstore, message.message_id)
    assert (delivery.state, delivery.reason) == (FAILED, "no_address")


# Depths


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


# Rate-limit counting


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
