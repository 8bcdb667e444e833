"""The Bus contract: every backend passes the same tests."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable

import pytest

from conftest import NATS_URL, POSTGRES_URL, REDIS_URL, BrokerProcess, require_service
from tidings.bus import Bus, create_bus
from tidings.errors import BusError, ConfigurationError

BusFactory = Callable[[], Bus]


def bus_url(kind: str) -> str:
    """A URL of the shared service for ``kind``, namespaced to this test."""
    tag = uuid.uuid4().hex[:10]
    if kind == "memory":
        return f"memory://{tag}"
    if kind == "redis":
        require_service("Redis", REDIS_URL)
        return f"{REDIS_URL}?prefix=t{tag}:"
    if kind == "nats":
        require_service("NATS", NATS_URL)
        return f"{NATS_URL}?prefix=t{tag}"
    require_service("PostgreSQL", POSTGRES_URL)
    return POSTGRES_URL


@pytest.fixture(params=["memory", "redis", "nats", "postgres"])
async def make_bus(request: pytest.FixtureRequest) -> AsyncIterator[BusFactory]:
    """Buses of one cluster (same broker), closed by the fixture."""
    url = bus_url(request.param)
    buses: list[Bus] = []

    def make() -> Bus:
        bus = create_bus(url)
        buses.append(bus)
        return bus

    yield make
    for bus in buses:
        await bus.close()


class Inbox:
    def __init__(self, bus: Bus) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self.arrived = asyncio.Event()
        self.bus = bus
        bus.on_message = self.receive

    def receive(self, channel: str, payload: bytes) -> None:
        self.messages.append((channel, payload))
        self.arrived.set()

    async def wait(self, n: int, timeout: float = 5.0) -> None:
        try:
            async with asyncio.timeout(timeout):
                while len(self.messages) < n:
                    self.arrived.clear()
                    await self.arrived.wait()
        except TimeoutError:
            got = sorted(channel for channel, _ in self.messages)
            # A NATS routing test has failed this way once in a while under the full suite (one
            # message short): the client's own counts tell whether it reached the client at all.
            client = getattr(self.bus, "_nc", None)
            stats = dict(client.stats) if client is not None else {}
            raise AssertionError(
                f"{len(got)} of {n} messages within {timeout}s: {got}; client stats {stats}"
            ) from None


async def settle() -> None:
    await asyncio.sleep(0.05)


async def test_subscribers_on_every_node_receive(make_bus: BusFactory) -> None:
    """A message reaches every subscribed node, the publisher included."""
    a, b = make_bus(), make_bus()
    inbox_a, inbox_b = Inbox(a), Inbox(b)
    await a.start()
    await b.start()
    await a.subscribe("user:1")
    await b.subscribe("user:1")
    await b.publish("user:1", b"hello")
    await inbox_a.wait(1)
    await inbox_b.wait(1)
    assert inbox_a.messages == inbox_b.messages == [("user:1", b"hello")]


async def test_only_subscribed_channels_arrive(make_bus: BusFactory) -> None:
    """A node receives nothing on channels it did not subscribe to, or left."""
    a, b = make_bus(), make_bus()
    inbox = Inbox(a)
    await a.start()
    await b.start()
    await a.subscribe("user:1")
    await a.subscribe("user:2")
    await a.unsubscribe("user:2")
    await b.publish("user:2", b"no")
    await b.publish("user:3", b"no")
    await b.publish("user:1", b"yes")
    await inbox.wait(1)
    await settle()
    assert inbox.messages == [("user:1", b"yes")]


async def test_order_is_kept_per_channel(make_bus: BusFactory) -> None:
    """Messages of one publisher on one channel arrive in order."""
    a, b = make_bus(), make_bus()
    inbox = Inbox(a)
    await a.start()
    await b.start()
    await a.subscribe("user:1")
    for i in range(100):
        await b.publish("user:1", str(i).encode())
    await inbox.wait(100)
    assert [int(p) for _, p in inbox.messages] == list(range(100))


async def test_a_burst_of_concurrent_publishes_all_arrive(make_bus: BusFactory) -> None:
    """2,000 publishes in flight at once on 500 channels (a batch of notifications' counts,
    a storm's) are all accepted and all arrive, each channel's in the order published. Redis
    once refused all but about a hundred of them (its client's connection pool)."""
    a, b = make_bus(), make_bus()
    inbox = Inbox(a)
    await a.start()
    await b.start()
    channels = [f"user:{n}" for n in range(500)]
    for channel in channels:
        await a.subscribe(channel)
    await asyncio.gather(
        *(b.publish(channel, str(i).encode()) for i in range(4) for channel in channels)
    )
    await inbox.wait(2000, timeout=10.0)
    by_channel: dict[str, list[int]] = {}
    for channel, payload in inbox.messages:
        by_channel.setdefault(channel, []).append(int(payload))
    assert by_channel == {channel: [0, 1, 2, 3] for channel in channels}


async def test_subscribe_twice_and_unknown_unsubscribe_are_harmless(make_bus: BusFactory) -> None:
    """Double subscribe delivers once; unsubscribing an unknown channel does nothing."""
    a = make_bus()
    inbox = Inbox(a)
    await a.start()
    await a.subscribe("c")
    await a.subscribe("c")
    await a.unsubscribe("never")
    await a.publish("c", b"x")
    await inbox.wait(1)
    await settle()
    assert len(inbox.messages) == 1


async def test_closed_bus_receives_nothing(make_bus: BusFactory) -> None:
    """After close() a node gets no more messages."""
    a, b = make_bus(), make_bus()
    inbox = Inbox(a)
    await a.start()
    await b.start()
    await a.subscribe("c")
    await a.close()
    await b.publish("c", b"x")
    await settle()
    assert inbox.messages == []


def test_unknown_scheme_names_the_known_ones() -> None:
    """An unknown URL scheme is a configuration error listing what exists."""
    with pytest.raises(ConfigurationError, match="memory://"):
        create_bus("carrier-pigeon://loft")


async def test_user_ids_of_any_shape_are_routed(make_bus: BusFactory) -> None:
    """Channels with dots, spaces, wildcards and unicode reach exactly their subscribers."""
    a, b = make_bus(), make_bus()
    inbox = Inbox(a)
    await a.start()
    await b.start()
    odd = ["user:a.b", "user:a b", "user:*", "user:>", "user:élan", "user:" + "x" * 200]
    for channel in odd:
        await a.subscribe(channel)
    for channel in odd:
        await b.publish(channel, channel.encode())
    await b.publish("user:a", b"not subscribed")
    await inbox.wait(len(odd))
    await settle()
    assert sorted(inbox.messages) == sorted((c, c.encode()) for c in odd)


async def test_unsubscribed_node_of_same_bucket_gets_nothing(make_bus: BusFactory) -> None:
    """Many channels: each message reaches only the node subscribed to its channel."""
    a, b, c = make_bus(), make_bus(), make_bus()
    inbox_a, inbox_b = Inbox(a), Inbox(b)
    for bus in (a, b, c):
        await bus.start()
    for i in range(50):
        await (a if i % 2 else b).subscribe(f"user:{i}")
    for i in range(50):
        await c.publish(f"user:{i}", str(i).encode())
    await inbox_a.wait(25)
    await inbox_b.wait(25)
    await settle()
    assert sorted(int(p) for _, p in inbox_a.messages) == list(range(1, 50, 2))
    assert sorted(int(p) for _, p in inbox_b.messages) == list(range(0, 50, 2))


async def test_concurrent_subscribes_all_take_effect(make_bus: BusFactory) -> None:
    """Many devices connecting at once: every concurrent subscribe is in force when it returns."""
    a, b = make_bus(), make_bus()
    inbox = Inbox(a)
    await a.start()
    await b.start()
    channels = [f"user:c{i}" for i in range(60)]
    await asyncio.gather(*(a.subscribe(c) for c in channels))
    for channel in channels:
        await b.publish(channel, channel.encode())
    await inbox.wait(len(channels))
    assert sorted(c for c, _ in inbox.messages) == sorted(channels)


async def test_channel_with_separator_characters_is_exact(make_bus: BusFactory) -> None:
    """A channel containing newlines or colons is delivered to itself only."""
    a, b = make_bus(), make_bus()
    inbox = Inbox(a)
    await a.start()
    await b.start()
    await a.subscribe("user:a\nb")
    await b.publish("user:a", b"wrong")
    await b.publish("user:a\nb", b"right")
    await inbox.wait(1)
    await settle()
    assert inbox.messages == [("user:a\nb", b"right")]


async def break_connection(kind: str, bus: Bus, broker: BrokerProcess | None) -> None:
    if broker is not None:
        await asyncio.to_thread(broker.restart)
    else:
        import asyncpg

        conn = await asyncpg.connect(POSTGRES_URL)
        try:
            pid = bus._listener.get_server_pid()  # type: ignore[attr-defined]
            await conn.execute("SELECT pg_terminate_backend($1)", pid)
        finally:
            await conn.close()


@pytest.mark.parametrize("kind", ["redis", "nats", "postgres"])
async def test_broker_loss_reconnects_and_resubscribes(
    kind: str, private_broker: Callable[[str], BrokerProcess]
) -> None:
    """After the broker restarts (or drops us) the bus reconnects, tells the node, and every
    subscription works again without anything being re-subscribed by hand."""
    broker = private_broker(kind) if kind != "postgres" else None
    if broker is None:
        require_service("PostgreSQL", POSTGRES_URL)
    url = broker.url if broker is not None else POSTGRES_URL
    a, b = create_bus(url), create_bus(url)
    inbox = Inbox(a)
    reconnected = asyncio.Event()
    a.on_reconnect = reconnected.set
    try:
        await a.start()
        await b.start()
        await a.subscribe("user:1")
        await a.subscribe("user:2")
        await b.publish("user:1", b"before")
        await inbox.wait(1)
        await break_connection(kind, a, broker)
        async with asyncio.timeout(20):
            await reconnected.wait()
        # The publisher reconnects too; retry until its publish goes through.
        async with asyncio.timeout(20):
            while len(inbox.messages) < 3:
                try:
                    await b.publish("user:1", b"after-1")
                    await b.publish("user:2", b"after-2")
                except BusError:
                    pass
                await asyncio.sleep(0.2)
        payloads = {p for _, p in inbox.messages}
        assert {b"before", b"after-1", b"after-2"} <= payloads
    finally:
        await a.close()
        await b.close()


async def test_redis_publishes_while_the_broker_is_down_each_fail_then_work_again(
    private_broker: Callable[[str], BrokerProcess],
) -> None:
    """With Redis down, a burst of concurrent publishes (one pipeline) fails every one of
    them with BusError within a few seconds, none hanging; once Redis is back, publishing works
    again without a restart of the bus."""
    broker = private_broker("redis")
    a, b = create_bus(broker.url), create_bus(broker.url)
    inbox = Inbox(a)
    try:
        await a.start()
        await b.start()
        await a.subscribe("user:1")
        broker.kill()
        async with asyncio.timeout(15):
            outcomes = await asyncio.gather(
                *(b.publish("user:1", str(i).encode()) for i in range(200)),
                return_exceptions=True,
            )
        assert all(isinstance(o, BusError) for o in outcomes), outcomes[:3]
        broker.start()
        async with asyncio.timeout(20):
            while not inbox.messages:
                with contextlib.suppress(BusError):
                    await b.publish("user:1", b"back")
                await asyncio.sleep(0.2)
        assert ("user:1", b"back") in inbox.messages
    finally:
        await a.close()
        await b.close()
