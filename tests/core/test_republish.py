"""Events the bus refused are published again once it takes them."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest

from tidings import Tidings
from tidings.bus.memory import MemoryBus
from tidings.core.counters import Counters
from tidings.errors import BusError
from tidings.fanout.connection import Connection
from tidings.services.republish import Republisher

SECRET = "republish-secret-" + "r" * 32


class RefusingBus(MemoryBus):
    """The in-process bus, with a broker that refuses the next ``refuse`` publishes."""

    refuse = 0

    async def publish(self, channel: str, payload: bytes) -> None:
        if self.refuse:
            self.refuse -= 1
            raise BusError("broker refused (injected)")
        await super().publish(channel, payload)


class Sink:
    def __init__(self) -> None:
        self.frames: list[str] = []

    async def __call__(self, message: dict[str, object]) -> None:
        if message["type"] == "websocket.send":  # close frames are not recorded
            self.frames.append(str(message["text"]))


async def eventually(condition: object, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():  # type: ignore[operator]
            await asyncio.sleep(0.02)


async def test_refused_topic_message_and_count_reach_the_other_node(tmp_path: Path) -> None:
    """A publisher whose broker refuses delivers locally, then re-publishes: the session on
    the other node gets the topic message once and the count catches up."""
    hub = f"memory://{uuid.uuid4().hex}"
    store = f"sqlite:///{tmp_path}/shared.db"
    publisher_bus = RefusingBus(hub)
    async with (
        Tidings(store=store, bus=publisher_bus, jwt_secret=SECRET, node_id="a") as a,
        Tidings(store=store, bus=hub, jwt_secret=SECRET, node_id="b") as b,
    ):
        sink = Sink()
        conn = Connection(
            sink, connection_id="c1", user_id="alice", session_id="s1", counters=Counters()
        )
        await b.registry.add(conn)
        await b.registry.join_topics(conn, ["pet"])
        conn.open()
        publisher_bus.refuse = 2
        await a.publish("pet", {"name": "Rex"})
        await a.notify("alice", "hi")
        await eventually(lambda: len(sink.frames) == 2)
        assert sum('"topicMessage"' in f for f in sink.frames) == 1
        assert any('"count":1' in f for f in sink.frames)
        assert not a.unpublished
        conn.close()
        await asyncio.gather(conn.finished(), return_exceptions=True)


async def test_a_newer_count_replaces_the_one_waiting() -> None:
    """Of two counts of one user waiting for the bus, only the newer version is published."""
    bus = RefusingBus(f"memory://{uuid.uuid4().hex}")
    received: list[bytes] = []
    bus.on_message = lambda channel, payload: received.append(payload)
    await bus.start()
    await bus.subscribe("u:alice")
    republisher = Republisher(bus)
    try:
        bus.refuse = 1
        republisher.retry_later(("count", "alice"), "u:alice", b"v3", 3)
        republisher.retry_later(("count", "alice"), "u:alice", b"v2", 2)
        assert len(republisher) == 1
        await eventually(lambda: received == [b"v3"])
        await eventually(lambda: len(republisher) == 0)
    finally:
        await republisher.close()
        await bus.close()


async def test_events_waiting_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Past the bound, the oldest event waiting is dropped."""
    monkeypatch.setattr("tidings.services.republish.MAX_UNPUBLISHED", 3)
    bus = RefusingBus(f"memory://{uuid.uuid4().hex}")
    await bus.start()
    bus.refuse = 10**6
    republisher = Republisher(bus)
    try:
        for n in range(5):
            republisher.retry_later(("topic", "t", str(n)), "t:t", b"m")
        assert len(republisher) == 3
    finally:
        await republisher.close()
        await bus.close()


async def test_two_nodes_in_one_process_count_apart(tmp_path: Path) -> None:
    """A publish refused on one node is counted in that node's metrics, not the other's."""
    refusing = RefusingBus(f"memory://{uuid.uuid4().hex}")
    async with (
        Tidings(store=f"sqlite:///{tmp_path}/a.db", bus=refusing, jwt_secret=SECRET) as a,
        Tidings(store=f"sqlite:///{tmp_path}/b.db", jwt_secret=SECRET) as b,
    ):
        refusing.refuse = 1
        await a.notify("alice", "hi")
        assert (a.counters.bus_publish_failures, b.counters.bus_publish_failures) == (1, 0)
        assert b"tidings_bus_publish_failures_total 1.0" in await a.metrics.render()
        assert b"tidings_bus_publish_failures_total 0.0" in await b.metrics.render()
