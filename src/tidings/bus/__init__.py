"""Node-to-node buses, chosen by URL scheme."""

from __future__ import annotations

from tidings.bus.base import Bus, MessageHandler, ReconnectHandler
from tidings.core.backends import load_backend

#: URL scheme → ``"module:Class"``; modules are imported only when used.
BACKENDS: dict[str, str] = {
    "memory": "tidings.bus.memory:MemoryBus",
    "redis": "tidings.bus.redis:RedisBus",
    "rediss": "tidings.bus.redis:RedisBus",
    "nats": "tidings.bus.nats:NatsBus",
    "postgres": "tidings.bus.postgres:PostgresBus",
    "postgresql": "tidings.bus.postgres:PostgresBus",
}


def create_bus(url: str) -> Bus:
    """Instantiate the bus for ``url`` (not started)."""
    cls: type[Bus] = load_backend("bus", BACKENDS, url)
    return cls(url)


__all__ = ["BACKENDS", "Bus", "MessageHandler", "ReconnectHandler", "create_bus"]
