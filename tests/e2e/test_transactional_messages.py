"""Messages posted in the application's own transaction (embedded, PostgreSQL):
``pipeline.post(..., conn=...)`` writes the message and its deliveries in that transaction. One
that commits is sent at once (the commit wakes the workers; their poll interval here is 30 s),
one that rolls back leaves no message and sends nothing. Real PostgreSQL, a real SMTP server
(aiosmtpd), the application's asyncpg and SQLAlchemy connections."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator

import asyncpg
import pytest
from pipeline_support import SmtpSink, sink
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from conftest import JWT_SECRET, create_database, drop_database
from tidings import Tidings
from tidings.delivery.models import Content
from tidings.errors import ConfigurationError, Conflict, InvalidArgument

ORDERS = "CREATE TABLE IF NOT EXISTS orders (id BIGSERIAL PRIMARY KEY, user_id TEXT, item TEXT)"
SHIPPED = Content(text="Order {{ order }} shipped", subject="Shipped")


@pytest.fixture(scope="module")
def database() -> Iterator[str]:
    url = create_database()
    yield url
    drop_database(url)


@pytest.fixture
async def shop(database: str, sink: SmtpSink) -> AsyncIterator[Tidings]:
    tidings = Tidings(
        store=database,
        bus="memory://",
        jwt_secret=JWT_SECRET,
        smtp_url=sink.url,
        pipeline_poll_interval=30.0,  # only a wake sends at once
        node_id=f"shop-{uuid.uuid4().hex[:6]}",
    )
    conn = await asyncpg.connect(database)
    try:
        await conn.execute(ORDERS)
    finally:
        await conn.close()
    await tidings.start()
    try:
        yield tidings
    finally:
        await tidings.close()


async def customer(tidings: Tidings) -> tuple[str, str]:
    user = f"buyer-{uuid.uuid4().hex[:8]}"
    address = f"{user}@example.org"
    await tidings.pipeline.set_contact(user, "email", address)
    return user, address


async def emailed(sink: SmtpSink, address: str, timeout: float = 5.0) -> float:
    """Seconds until the sink accepted an email to ``address``."""
    started = time.monotonic()
    while not sink.accepted(address=address):
        assert time.monotonic() - started < timeout, "no email"
        await asyncio.sleep(0.01)
    return time.monotonic() - started


async def test_a_committed_order_is_emailed_at_once_a_rolled_back_one_never(
    shop: Tidings, sink: SmtpSink, database: str
) -> None:
    user, address = await customer(shop)
    conn = await asyncpg.connect(database)
    try:
        async with conn.transaction():
            order = await conn.fetchval(
                "INSERT INTO orders (user_id, item) VALUES ($1, 'tea') RETURNING id", user
            )
            message = await shop.pipeline.post(
                ["in_app", "email"],
                user_ids=[user],
                content=SHIPPED,
                data={"order": order},
                conn=conn,
            )
            assert await shop.pipeline.store.get_message(message.message_id, None) is None
        took = await emailed(sink, address)
        assert took < 2.0, f"sent {took:.1f} s after the commit: not woken"
        [record] = sink.accepted(address=address)
        assert record.message["Subject"] == "Shipped"
        assert (await shop.count(user)).count == 1  # the in-app notification too

        lost_user, lost_address = await customer(shop)
        with pytest.raises(RuntimeError, match="out of stock"):
            async with conn.transaction():
                await conn.execute(
                    "INSERT INTO orders (user_id, item) VALUES ($1, 'gold')", lost_user
                )
                rolled = await shop.pipeline.post(
                    ["in_app", "email"],
                    user_ids=[lost_user],
                    content=SHIPPED,
                    data={"order": 0},
                    conn=conn,
                )
                raise RuntimeError("out of stock")
        assert await shop.pipeline.store.get_message(rolled.message_id, None) is None
        assert not await conn.fetchval("SELECT count(*) FROM orders WHERE user_id = $1", lost_user)
        await asyncio.sleep(1.5)
        assert not sink.records(address=lost_address)
        assert (await shop.count(lost_user)).count == 0
    finally:
        await conn.close()


async def test_a_sqlalchemy_transaction_posts_with_its_commit(
    shop: Tidings, sink: SmtpSink, database: str
) -> None:
    user, address = await customer(shop)
    engine = create_async_engine(database.replace("postgresql://", "postgresql+asyncpg://"))
    try:
        async with engine.begin() as conn:
            await conn.execute(
                text("INSERT INTO orders (user_id, item) VALUES (:u, 'jam')"), {"u": user}
            )
            await shop.pipeline.post(
                ["email"], user_ids=[user], content=SHIPPED, data={"order": 7}, conn=conn
            )
        assert await emailed(sink, address) < 2.0
    finally:
        await engine.dispose()


async def test_a_refused_message_leaves_the_applications_transaction_usable(
    shop: Tidings, database: str
) -> None:
    user, _ = await customer(shop)
    key = f"order-{uuid.uuid4().hex[:6]}"
    await shop.pipeline.post(
        ["email"], user_ids=[user], content=SHIPPED, data={"order": 1}, idempotency_key=key
    )
    conn = await asyncpg.connect(database)
    try:
        async with conn.transaction():
            await conn.execute("INSERT INTO orders (user_id, item) VALUES ($1, 'tea')", user)
            with pytest.raises(Conflict):  # refused inside the store's write
                await shop.pipeline.post(
                    ["email"],
                    user_ids=[user],
                    content=SHIPPED,
                    data={"order": 2},
                    idempotency_key=key,
                    conn=conn,
                )
            # nothing of tidings' was written, and the order still commits
        assert await conn.fetchval("SELECT count(*) FROM orders WHERE user_id = $1", user) == 1
        with pytest.raises(InvalidArgument, match="not inside a transaction"):
            await shop.pipeline.post(
                ["email"], user_ids=[user], content=SHIPPED, data={"order": 1}, conn=conn
            )
        with pytest.raises(InvalidArgument, match="conn"):
            await shop.pipeline.post(
                ["email"], user_ids=[user], content=SHIPPED, data={"order": 1}, conn=object()
            )
    finally:
        await conn.close()


async def test_an_sqlite_node_refuses_a_connection_in_one_line(tmp_path: object) -> None:
    tidings = Tidings(store=f"sqlite:///{tmp_path}/t.db", bus="memory://", jwt_secret=JWT_SECRET)
    await tidings.start()
    try:
        with pytest.raises(ConfigurationError, match="TIDINGS_STORE=postgresql"):
            await tidings.pipeline.post(
                ["in_app"], user_ids=["a"], content=SHIPPED, data={"order": 1}, conn=object()
            )
    finally:
        await tidings.close()


__all__ = ["sink"]  # the fixture
