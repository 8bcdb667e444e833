"""The Bus contract: every backend passes the same tests."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable

import pytest

from tidings.bus import Bus, create_bus
from tidings.errors import ConfigurationError

BusFactory = Callable[[], Bus]


@pytest.fixture(params=[pytest.param("memory", id="memory")])
async def make_bus(request: pytest.FixtureRequest) -> AsyncIterator[BusFactory]:
    """Buses of one cluster (same broker), started and closed by the fixture."""
    url = {"memory": f"memory://{uuid.uuid4().hex}"}[request.param]
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
        bus.on_message = self.receive

    def receive(self, channel: str, payload: bytes) -> None:
        self.messages.append((channel, payload))
        self.arrived.set()

    async def wait(self, n: int, timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            while len(self.messages) < n:
                self.arrived.clear()
                await self.arrived.wait()


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
