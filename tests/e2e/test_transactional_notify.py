"""Transactional notify (embedded, PostgreSQL): ``Tidings.notify(..., conn=...)`` writes inside
the application's own transaction, and the count reaches devices only once it commits.

The node runs in this process (as an embedded application's does), served by uvicorn on a free
port; devices are real WebSocket clients; the application's connections are asyncpg's and
SQLAlchemy's, on the node's own database.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest
import uvicorn
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from websockets.asyncio.client import ClientConnection, connect

from conftest import (
    JWT_SECRET,
    ServerProcess,
    create_database,
    device_token,
    drop_database,
)
from tidings import Tidings
from tidings.core.models import NewNotification, UnseenCount
from tidings.errors import ConfigurationError, Conflict, InvalidArgument
from tidings.server import front_config
from tidings.storage.postgres.transactional import decode, payloads

ORDERS = "CREATE TABLE IF NOT EXISTS orders (id BIGSERIAL PRIMARY KEY, user_id TEXT, item TEXT)"


@pytest.fixture(scope="module")
def database() -> Iterator[str]:
    """The application's database, which holds tidings' tables too."""
    url = create_database()
    yield url
    drop_database(url)


@dataclass
class Node:
    tidings: Tidings
    port: int
    url: str
    sockets: list[ClientConnection] = field(default_factory=list)

    async def device(self, user: str, *, deliver: bool = False) -> ClientConnection:
        """A device of ``user``, past its welcome and first count."""
        query = f"?access_token={device_token(user)}" + ("&deliver=1" if deliver else "")
        ws = await connect(f"ws://127.0.0.1:{self.port}/ws{query}")
        self.sockets.append(ws)
        assert (await frame(ws))["type"] == "welcome"
        assert (await frame(ws))["type"] == "newNotificationCountChanged"
        return ws

    def connection(self) -> AbstractAsyncContextManager[asyncpg.Connection]:
        return connected(self.url)


@asynccontextmanager
async def connected(url: str) -> AsyncIterator[asyncpg.Connection]:
    """An application's own asyncpg connection, closed at the end."""
    conn = await asyncpg.connect(url)
    try:
        yield conn
    finally:
        await conn.close()


async def frame(ws: ClientConnection, timeout: float = 5.0) -> dict[str, Any]:
    async with asyncio.timeout(timeout):
        return dict(orjson.loads(await ws.recv()))


async def nothing_within(ws: ClientConnection, seconds: float) -> None:
    """No frame arrives for ``seconds``."""
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(seconds):
            extra = await ws.recv()
            pytest.fail(f"unexpected frame {extra!r}")


def user() -> str:
    return f"u-{uuid.uuid4().hex[:10]}"


@asynccontextmanager
async def serving(database: str, bus: str = "memory://") -> AsyncIterator[Node]:
    """A node in this process, as an embedded application runs it, serving devices on a free
    port."""
    tidings = Tidings(
        store=database, bus=bus, jwt_secret=JWT_SECRET, node_id=f"txn-{uuid.uuid4().hex[:6]}"
    )
    async with connected(database) as conn:
        await conn.execute(ORDERS)
    await tidings.start()
    config = front_config(
        tidings.asgi(), tidings.settings, host="127.0.0.1", port=0, lifespan="off"
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    running = Node(tidings, 0, database)
    try:
        while not server.started:
            assert not task.done(), "uvicorn stopped"
            await asyncio.sleep(0.01)
        running.port = server.servers[0].sockets[0].getsockname()[1]
        yield running
    finally:
        for ws in running.sockets:
            await ws.close()
        server.should_exit = True
        await asyncio.wait_for(task, 10)
        await tidings.close()


@pytest.fixture
async def node(database: str) -> AsyncIterator[Node]:
    async with serving(database) as running:
        yield running


async def json_codecs(conn: asyncpg.Connection) -> None:
    """What many applications set on their connections: JSON columns read as Python values."""
    for kind in ("json", "jsonb"):
        await conn.set_type_codec(
            kind,
            encoder=lambda v: orjson.dumps(v).decode(),
            decoder=orjson.loads,
            schema="pg_catalog",
            format="text",
        )


async def stored(node: Node, notification_id: str) -> int:
    async with node.connection() as conn:
        return int(
            await conn.fetchval(
                "SELECT count(*) FROM notifications WHERE notification_id = $1", notification_id
            )
        )


def sqlalchemy_engine(url: str) -> AsyncEngine:
    return create_async_engine(url.replace("postgresql://", "postgresql+asyncpg://", 1))


# asyncpg


async def test_asyncpg_commit_reaches_devices_after_the_commit(node: Node) -> None:
    """The notification and the order commit together; before the commit neither a device nor
    another connection sees it, after it both devices (one in deliver mode) get it."""
    alice = user()
    counting = await node.device(alice)
    delivering = await node.device(alice, deliver=True)
    async with node.connection() as conn:
        async with conn.transaction():
            order = await conn.fetchval(
                "INSERT INTO orders (user_id, item) VALUES ($1, 'book') RETURNING id", alice
            )
            result = await node.tidings.notify(
                alice, {"order": order}, notification_id=f"order-{order}", conn=conn
            )
            assert result.created and result.count is not None
            assert (result.count.count, result.count.version) == (1, 1)
            assert (await node.tidings.count(alice)).count == 0  # not committed: not seen
            await nothing_within(counting, 0.2)
        count = await frame(counting)
        assert (count["count"], count["version"]) == (1, 1)
        kinds = {(await frame(delivering))["type"] for _ in range(2)}
        assert kinds == {"newNotificationCountChanged", "notification"}
    assert [n.data for n in await node.tidings.unseen(alice)] == [{"order": order}]
    assert node.tidings.transactional.pending == 0


async def test_asyncpg_rollback_leaves_no_notification_and_no_event(node: Node) -> None:
    bob = user()
    ws = await node.device(bob)
    async with node.connection() as conn:
        with pytest.raises(RuntimeError):
            async with conn.transaction():
                await conn.execute("INSERT INTO orders (user_id, item) VALUES ($1, 'x')", bob)
                await node.tidings.notify(bob, {"text": "never"}, notification_id="rb-1", conn=conn)
                raise RuntimeError("payment refused")
    await nothing_within(ws, 1.0)
    assert await stored(node, "rb-1") == 0
    assert await node.tidings.count(bob) == UnseenCount(bob, 0, 0)
    # The write is remembered until its transaction's end is known: aborted, forgotten.
    assert node.tidings.transactional.pending == 1
    await node.tidings.transactional.reconcile(0)
    assert node.tidings.transactional.pending == 0
    await nothing_within(ws, 0.1)


async def test_pool_connection_and_notify_many(node: Node) -> None:
    """A pool's connection (whose JSON is decoded by the application's own codecs); a batch
    for several users (one refused item) in one transaction: each user's devices get their
    count once, after the commit."""
    users = [user() for _ in range(3)]
    sockets = [await node.device(u) for u in users]
    async with (
        asyncpg.create_pool(node.url, min_size=1, max_size=1, init=json_codecs) as pool,
        pool.acquire() as conn,
        conn.transaction(),
    ):
        results = await node.tidings.notify_many(
            [
                NewNotification(users[0], {"n": 1}),
                NewNotification(users[0], {"n": 2}),
                NewNotification("", {"n": 0}),  # refused: no user
                NewNotification(users[1], {"n": 3}, category="orders"),
                NewNotification(users[2], {"n": 4}),
            ],
            conn=conn,
        )
        assert isinstance(results[2], InvalidArgument)
        assert [r.count.count for r in results if not isinstance(r, Exception)] == [1, 2, 1, 1]
    counts = [await frame(ws) for ws in sockets]
    assert [c["count"] for c in counts] == [2, 1, 1]
    assert counts[1]["categories"] == {"orders": 1}
    for ws in sockets:
        await nothing_within(ws, 0.1)  # one count per user


async def test_many_users_take_several_payloads(node: Node) -> None:
    """More users than one NOTIFY payload holds (8,000 bytes): every user's count goes out."""
    users = [f"many-{uuid.uuid4().hex}-{i}" for i in range(400)]
    first, last = await node.device(users[0]), await node.device(users[-1])
    async with node.connection() as conn, conn.transaction():
        await node.tidings.notify_many([NewNotification(u, {"hi": 1}) for u in users], conn=conn)
    assert (await frame(first))["count"] == 1
    assert (await frame(last))["count"] == 1
    await asyncio.sleep(0.1)
    assert node.tidings.transactional.pending == 0


def test_payloads_fit_and_decode() -> None:
    latest = {
        f"user-{i:04d}-{'x' * 40}": (UnseenCount(f"user-{i:04d}-{'x' * 40}", i, i + 1), i)
        for i in range(500)
    }
    big = UnseenCount("big", 1, 2, 1, {f"c{i:05d}-{'y' * 50}": 1 for i in range(200)})
    latest["big"] = (big, 7)
    sent = payloads(latest)
    assert len(sent) > 1 and all(len(p.encode()) <= 7999 - 24 for p in sent)
    found = {}
    for payload in sent:
        decoded = decode(f"123 {payload}")
        assert decoded is not None and decoded[0] == 123
        found.update({u: (seq, count) for u, seq, count in decoded[1]})
    assert found["big"] == (7, None)  # too large: the node reads it after the commit
    assert found["user-0003-" + "x" * 40] == (3, UnseenCount("user-0003-" + "x" * 40, 3, 4))
    assert decode("12 not json") is None


# SQLAlchemy


async def test_sqlalchemy_commit_and_rollback(node: Node) -> None:
    carol = user()
    ws = await node.device(carol)
    engine = sqlalchemy_engine(node.url)
    try:
        async with engine.begin() as conn:
            await conn.execute(
                text("INSERT INTO orders (user_id, item) VALUES (:u, 'lamp')"), {"u": carol}
            )
            result = await node.tidings.notify(carol, {"item": "lamp"}, conn=conn)
            assert result.created
        assert (await frame(ws))["count"] == 1
        with pytest.raises(RuntimeError):
            async with engine.begin() as conn:
                await node.tidings.notify(carol, {"item": "no"}, notification_id="sa-rb", conn=conn)
                raise RuntimeError("rolled back")
        await nothing_within(ws, 1.0)
        assert await stored(node, "sa-rb") == 0
    finally:
        await engine.dispose()


async def test_sqlalchemy_notify_first_in_the_transaction(node: Node) -> None:
    """SQLAlchemy's asyncpg dialect sends BEGIN with its first statement: a notify that comes
    first is still inside the transaction (a rollback removes it), as is one through a
    session."""
    from sqlalchemy.ext.asyncio import AsyncSession

    dave = user()
    engine = sqlalchemy_engine(node.url)
    try:
        async with engine.connect() as conn:
            await conn.begin()
            await node.tidings.notify(dave, {"first": True}, notification_id="sa-first", conn=conn)
            await conn.rollback()
        assert await stored(node, "sa-first") == 0
        async with AsyncSession(engine) as session:
            await node.tidings.notify(dave, {"s": 1}, notification_id="sa-session", conn=session)
            await session.commit()
        assert await stored(node, "sa-session") == 1
        assert (await node.tidings.count(dave)).count == 1
    finally:
        await engine.dispose()


# Refusals


async def test_refused_connections_write_nothing(node: Node) -> None:
    erin = user()
    ws = await node.device(erin)
    async with node.connection() as conn:
        with pytest.raises(InvalidArgument, match=r"conn: .*not inside a transaction"):
            await node.tidings.notify(erin, {"x": 1}, notification_id="bad-1", conn=conn)
    for wrong in ("postgresql://…", object()):
        with pytest.raises(InvalidArgument, match="conn: expected an asyncpg Connection"):
            await node.tidings.notify(erin, {"x": 1}, notification_id="bad-2", conn=wrong)
    engine = sqlalchemy_engine(node.url)
    try:
        async with engine.connect() as conn:
            with pytest.raises(InvalidArgument, match="not inside a transaction"):
                await node.tidings.notify(erin, {"x": 1}, notification_id="bad-3", conn=conn)
        autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")
        async with autocommit.connect() as conn:
            await conn.begin()
            with pytest.raises(InvalidArgument, match="AUTOCOMMIT"):
                await node.tidings.notify(erin, {"x": 1}, notification_id="bad-4", conn=conn)
    finally:
        await engine.dispose()
    async with node.connection() as conn, conn.transaction():
        with pytest.raises(InvalidArgument, match="user_id"):
            await node.tidings.notify("", {"x": 1}, notification_id="bad-5", conn=conn)
    for n in range(1, 6):
        assert await stored(node, f"bad-{n}") == 0
    assert (await node.tidings.count(erin)).version == 0
    await nothing_within(ws, 0.2)


async def test_another_database_is_refused(node: Node) -> None:
    """The application's connection must be on tidings' own database."""
    other = await asyncio.to_thread(create_database)
    try:
        async with connected(other) as conn:
            with pytest.raises(InvalidArgument, match=r"no tidings tables.*TIDINGS_STORE"):
                async with conn.transaction():
                    await node.tidings.notify(user(), {"x": 1}, conn=conn)
    finally:
        await asyncio.to_thread(drop_database, other)


async def test_sqlite_store_is_refused(database: str, tmp_path: Path) -> None:
    async with (
        Tidings(store=f"sqlite:///{tmp_path}/t.db", jwt_secret=JWT_SECRET) as tidings,
        connected(database) as conn,
        conn.transaction(),
    ):
        with pytest.raises(ConfigurationError, match="TIDINGS_STORE=postgresql://") as refused:
            await tidings.notify("frank", {"x": 1}, conn=conn)
        assert "\n" not in str(refused.value)
        with pytest.raises(ConfigurationError, match="needs a PostgreSQL store"):
            await tidings.notify_many([NewNotification("frank", {"x": 1})], conn=conn)
        assert (await tidings.count("frank")).version == 0


# Idempotency


async def test_notification_id_is_idempotent_inside_and_across_transactions(node: Node) -> None:
    grace = user()
    ws = await node.device(grace)
    nid = f"once-{uuid.uuid4().hex[:8]}"
    async with node.connection() as conn:
        async with conn.transaction():
            first = await node.tidings.notify(grace, {"v": 1}, notification_id=nid, conn=conn)
            again = await node.tidings.notify(grace, {"v": 1}, notification_id=nid, conn=conn)
            assert first.created and not again.created and again.count is None
            assert again.notification.notification_id == nid
            with pytest.raises(Conflict):
                await node.tidings.notify(grace, {"v": 2}, notification_id=nid, conn=conn)
            # A refused repeat does not spoil the transaction: it commits.
        assert (await frame(ws))["count"] == 1
        async with conn.transaction():
            later = await node.tidings.notify(grace, {"v": 1}, notification_id=nid, conn=conn)
            assert not later.created
    await nothing_within(ws, 0.3)
    assert await stored(node, nid) == 1
    assert (await node.tidings.count(grace)).count == 1


async def test_same_id_in_two_open_transactions(node: Node) -> None:
    """The second waits for the first: created once if it commits, by the second if it rolls
    back (no savepoint needed: the insert skips a taken id without an error)."""
    heidi = user()
    async with node.connection() as one, node.connection() as two:
        for first_commits in (False, True):
            nid = f"race-{uuid.uuid4().hex[:8]}"
            tx_one, tx_two = one.transaction(), two.transaction()
            await tx_one.start()
            await tx_two.start()
            mine = await node.tidings.notify(heidi, {"v": 1}, notification_id=nid, conn=one)
            assert mine.created
            second = asyncio.create_task(
                node.tidings.notify(heidi, {"v": 1}, notification_id=nid, conn=two)
            )
            await asyncio.sleep(0.2)
            assert not second.done()  # waiting for the first transaction's end
            await (tx_one.commit() if first_commits else tx_one.rollback())
            result = await asyncio.wait_for(second, 5)
            await tx_two.commit()
            assert result.created is not first_commits
            assert await stored(node, nid) == 1
    assert (await node.tidings.count(heidi)).count == 2


# Failures


async def test_devices_on_another_node_and_a_lost_listener(
    database: str, start_server: Callable[..., ServerProcess]
) -> None:
    """A device on another node (sharing the store and a PostgreSQL bus) gets the count of a
    commit; also when the committing node's listening connection was down at the commit (its
    NOTIFY lost): the node publishes it once it listens again, having looked the transaction
    up. (Its own devices would get it from the resync alone.)"""
    ivan = user()
    other = await asyncio.to_thread(start_server, TIDINGS_STORE=database, TIDINGS_BUS=database)
    async with (
        serving(database, bus=database) as node,
        connect(f"{other.ws_url}?access_token={device_token(ivan)}") as ws,
        node.connection() as conn,
    ):
        assert (await frame(ws))["type"] == "welcome"
        assert (await frame(ws))["count"] == 0
        async with conn.transaction():
            await node.tidings.notify(ivan, {"x": 1}, conn=conn)
        assert (await frame(ws))["count"] == 1
        async with conn.transaction():
            await node.tidings.notify(ivan, {"x": 2}, conn=conn)
            listener = node.tidings.transactional._listener
            assert listener is not None
            pid = listener._conn.get_server_pid()
            assert await conn.fetchval("SELECT pg_terminate_backend($1)", pid)
        count = await frame(ws, timeout=10)
        assert (count["count"], count["version"]) == (2, 2)
        assert node.tidings.transactional.pending == 0
