"""The :class:`Bus` interface: events between the nodes of a cluster."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable

from tidings.core.lifecycle import Lifecycle

#: Called with ``(channel, payload)`` for every message on a subscribed channel. It must not
#: block: it runs on the bus's reader and only hands the payload on.
MessageHandler = Callable[[str, bytes], None]
#: Called after the bus lost its broker and got it back (subscriptions are restored first).
ReconnectHandler = Callable[[], None]


def _ignore_message(channel: str, payload: bytes) -> None:
    return None


def _ignore_reconnect() -> None:
    return None


class Bus(Lifecycle):
    """Publish/subscribe between nodes on named channels.

    Delivery is at-most-once: a message published while a node is cut off from the broker is
    not replayed to it. tidings copes because every event carries the complete new state (a
    count with its version) and a node re-reads state after :attr:`on_reconnect`.

    Channels are subscribed per user (``user:<id>``) and, later, per topic, so that a node
    receives only the events of the devices it holds.
    """

    #: largest payload the broker carries; bigger events travel by reference
    max_payload: int = 1024 * 1024

    def __init__(self, url: str) -> None:
        self.url = url
        self.on_message: MessageHandler = _ignore_message
        self.on_reconnect: ReconnectHandler = _ignore_reconnect

    @abstractmethod
    async def start(self) -> None:
        """Connect to the broker."""

    @abstractmethod
    async def close(self) -> None:
        """Disconnect. Idempotent."""

    @abstractmethod
    async def subscribe(self, channel: str) -> None:
        """Start receiving ``channel``'s messages. Subscribing twice is harmless."""

    @abstractmethod
    async def unsubscribe(self, channel: str) -> None:
        """Stop receiving ``channel``'s messages. Unknown channels are ignored."""

    def subscribe_now(self, channel: str) -> bool:
        """Subscribe at once if this bus can without waiting (no broker round trip): True if
        done; False means use :meth:`subscribe`."""
        return False

    def unsubscribe_now(self, channel: str) -> bool:
        """As :meth:`subscribe_now`, for :meth:`unsubscribe`."""
        return False

    @abstractmethod
    async def publish(self, channel: str, payload: bytes) -> None:
        """Send ``payload`` to every node subscribed to ``channel``, this one included.

        Raises:
            BusError: the broker refused or is unreachable.
        """
