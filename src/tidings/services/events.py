"""Events from the bus, handed to the services they are about; and the resync after the bus
got its broker back (events may have been lost meanwhile)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from tidings.core import events
from tidings.core.counters import Counters
from tidings.fanout.registry import Registry
from tidings.services.counts import Counts
from tidings.services.queues import Queues
from tidings.services.topics import Spawn, Topics

logger = logging.getLogger("tidings")

#: an event of a layer above the services (the delivery pipeline's ``pipeline-*`` events)
EventHandler = Callable[[dict[str, Any]], None]


def _ignore_age(sent_at: Any) -> None:
    pass


class BusEvents:
    """The bus's :attr:`~tidings.bus.Bus.on_message` and :attr:`~tidings.bus.Bus.on_reconnect`
    of one node."""

    def __init__(
        self,
        registry: Registry,
        counts: Counts,
        topics: Topics,
        queues: Queues,
        counters: Counters,
        spawn: Spawn,
        *,
        node_id: str,
        observe_age: Callable[[Any], None] = _ignore_age,
    ) -> None:
        self.registry = registry
        self.counts = counts
        self.topics = topics
        self.queues = queues
        self.counters = counters
        self.spawn = spawn
        self.node_id = node_id
        #: told the send time (``t``) of each count event from another node
        self.observe_age = observe_age
        #: takes the ``pipeline-*`` events, once a pipeline runs on this node
        self.on_pipeline: EventHandler | None = None
        #: frames for an event stream this node may hold (set by the node)
        self.on_sse_frames: EventHandler | None = None

    def on_message(self, channel: str, payload: bytes) -> None:
        event = events.decode(payload)
        if event is None:
            logger.warning("ignoring undecodable bus message on %s", channel)
            return
        kind = event["type"]
        if kind == events.COUNT_CHANGED:
            if event.get("node") != self.node_id:
                self.observe_age(event.get("t"))
            decoded = events.decode_count(event)
            if decoded is not None:
                self.counts.deliver(*decoded)
        elif kind == events.TOPIC_MESSAGE:
            decoded_message = events.decode_topic_message(event)
            if decoded_message is not None:
                message, complete = decoded_message
                if complete:
                    self.topics.deliver(message)
                else:
                    self.topics.deliver_reference(message)
        elif kind == events.SSE_FRAMES:
            if self.on_sse_frames is not None:
                self.on_sse_frames(event)
        elif kind.startswith("pipeline-"):
            if self.on_pipeline is not None:
                self.on_pipeline(event)
        elif kind == events.DEVICE_FORGOTTEN:
            user_id, connection_id = event.get("user_id"), event.get("connection_id")
            if isinstance(user_id, str) and isinstance(connection_id, str):
                self.queues.close_device(user_id, connection_id)
        elif kind == events.USER_ERASED:
            user_id, version = event.get("user_id"), event.get("version", 0)
            # The erasing node closed its sockets already; later ones are new sign-ins.
            ours = event.get("node") == self.node_id
            if isinstance(user_id, str) and isinstance(version, int) and not ours:
                self.queues.close_user(user_id, version)

    def on_reconnect(self) -> None:
        self.counters.bus_reconnects += 1
        self.spawn(self.resync())

    async def resync(self) -> None:
        """Re-read and push the count of every user with a device here, look into the queue of
        every device in deliver mode, and send each socket the topic messages it missed."""
        await self.counts.resync()
        for conn in self.registry:
            if conn.deliver:
                self.queues.schedule_delivery(conn)
            if conn.topics:
                self.spawn(self.topics.catch_up(conn))
