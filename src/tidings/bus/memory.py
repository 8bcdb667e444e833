"""In-process bus: the embedded default, and a cluster of nodes inside one test process."""

from __future__ import annotations

import weakref
from urllib.parse import urlsplit

from tidings.bus.base import Bus
from tidings.errors import BusError


class _Hub:
    """The broker of a named memory bus: which buses listen on which channel."""

    def __init__(self) -> None:
        self.listeners: dict[str, set[MemoryBus]] = {}


_hubs: weakref.WeakValueDictionary[str, _Hub] = weakref.WeakValueDictionary()


class MemoryBus(Bus):
    """``memory://`` is private to one node; ``memory://NAME`` is shared by every bus of this
    process that uses the same NAME (handy for running several nodes in one test)."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.name = urlsplit(url).netloc
        self._hub: _Hub | None = None
        self._channels: set[str] = set()
        # A subclass (or an instance) that changes subscribe(), such as a test's faulty broker,
        # is always awaited.
        cls = type(self)
        self._immediate = (
            cls.subscribe is MemoryBus.subscribe and cls.unsubscribe is MemoryBus.unsubscribe
        )

    async def start(self) -> None:
        if self._hub is not None:
            return
        if self.name:
            hub = _hubs.get(self.name)
            if hub is None:
                hub = _hubs[self.name] = _Hub()
            self._hub = hub
        else:
            self._hub = _Hub()

    async def close(self) -> None:
        if self._hub is None:
            return
        for channel in self._channels:
            listeners = self._hub.listeners.get(channel)
            if listeners is not None:
                listeners.discard(self)
                if not listeners:
                    del self._hub.listeners[channel]
        self._channels.clear()
        self._hub = None

    def _require_hub(self) -> _Hub:
        if self._hub is None:
            raise BusError("bus is not started")
        return self._hub

    async def subscribe(self, channel: str) -> None:
        self._subscribe(self._require_hub(), channel)

    async def unsubscribe(self, channel: str) -> None:
        self._unsubscribe(self._require_hub(), channel)

    def subscribe_now(self, channel: str) -> bool:
        if self._hub is None or not self._immediate or "subscribe" in self.__dict__:
            return False  # subscribe() raises BusError
        self._subscribe(self._hub, channel)
        return True

    def unsubscribe_now(self, channel: str) -> bool:
        if self._hub is None or not self._immediate or "unsubscribe" in self.__dict__:
            return False
        self._unsubscribe(self._hub, channel)
        return True

    def _subscribe(self, hub: _Hub, channel: str) -> None:
        hub.listeners.setdefault(channel, set()).add(self)
        self._channels.add(channel)

    def _unsubscribe(self, hub: _Hub, channel: str) -> None:
        self._channels.discard(channel)
        listeners = hub.listeners.get(channel)
        if listeners is not None:
            listeners.discard(self)
            if not listeners:
                del hub.listeners[channel]

    async def publish(self, channel: str, payload: bytes) -> None:
        hub = self._require_hub()
        for bus in tuple(hub.listeners.get(channel, ())):
            bus.on_message(channel, payload)
