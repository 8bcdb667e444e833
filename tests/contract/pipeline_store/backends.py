"""The backends the pipeline's store contract runs on, and what its tests share.

The pipeline's store (:class:`tidings.delivery.stores.base.PipelineStore`) is four facets, and
each has its suite here: ``test_pipeline_messages`` (messages, their deliveries, idempotency,
recipients, rate-limit counts, delete and retry), ``test_pipeline_claims`` (workers' claims,
leases, outcomes, stale work, depths), ``test_pipeline_templates`` and
``test_pipeline_preferences`` (channel switches, topic subscriptions, contact points). A new
backend adds a parameter to the ``pstore`` fixture and passes one suite at a time.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from conftest import POSTGRES_URL, create_database, drop_database
from tidings.core.models import utcnow
from tidings.delivery.channels.base import CHANNEL_NAMES
from tidings.delivery.models import (
    SENT,
    Content,
    Delivery,
    Message,
    NewMessage,
    Outcome,
    PlannedDelivery,
)
from tidings.delivery.planner import RateLimit, Recipient, counted_channels, plan
from tidings.delivery.stores.base import PipelineStore
from tidings.delivery.stores.postgres import PostgresPipelineStore
from tidings.delivery.stores.sqlite import SqlitePipelineStore
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
