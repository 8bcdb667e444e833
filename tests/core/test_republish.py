"""Events the bus refused are published again once it takes them."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

from tidings import Tidings
from tidings.bus.memory import MemoryBus
from tidings.errors import BusError
from tidings.fanout.connection import Connection

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
        conn = Connection(sink, connection_id="c1", user_id="alice", session_id="s1")
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
