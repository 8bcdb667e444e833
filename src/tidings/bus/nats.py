"""NATS bus (``nats://host:4222``; several servers: ``nats://a:4222,b:4222``).

One subject per channel. nats-py reconnects by itself and restores subscriptions; this bus
only forwards its ``reconnected`` callback to :attr:`on_reconnect`. Channel names are encoded
into subject-safe tokens (base64url), so any user id works.

Query option ``prefix`` (default ``tidings``) is the first subject token.
"""

from __future__ import annotations

import base64
import logging
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from tidings.bus.base import Bus
from tidings.errors import BusError, MissingDependencyError

try:
    import nats
    from nats.errors import Error as NatsError
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise MissingDependencyError("nats-py", "nats") from exc

logger = logging.getLogger("tidings.bus")


def _encode(channel: str) -> str:
    return base64.urlsafe_b64encode(channel.encode()).decode().rstrip("=") or "_"


class NatsBus(Bus):
    """Bus on NATS core publish / subscribe."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        parts = urlsplit(url)
        options = dict(parse_qsl(parts.query))
        self.prefix = options.get("prefix", "tidings")
        auth = f"{parts.username}:{parts.password}@" if parts.username else ""
        self.servers = [f"nats://{auth}{host}" for host in parts.netloc.split("@")[-1].split(",")]
        self._nc: Any = None
        self._subs: dict[str, Any] = {}
        self._closing = False  # a disconnection while closing is no news

    def _subject(self, channel: str) -> str:
        return f"{self.prefix}.{_encode(channel)}"

    async def start(self) -> None:
        if self._nc is not None:
            return
        self._closing = False
        try:
            self._nc = await nats.connect(
                servers=self.servers,
                connect_timeout=2,
                reconnect_time_wait=0.5,
                max_reconnect_attempts=-1,
                allow_reconnect=True,
                ping_interval=5,
                max_outstanding_pings=2,
                reconnected_cb=self._reconnected,
                disconnected_cb=self._disconnected,
                error_cb=self._error,
                name="tidings",
            )
        except (NatsError, OSError) as exc:
            raise BusError(f"cannot reach NATS at {','.join(self.servers)}: {exc}") from exc

    async def _reconnected(self) -> None:
        logger.warning("nats bus reconnected; %d subscriptions restored", len(self._subs))
        self.on_reconnect()

    async def _disconnected(self) -> None:
        if self._closing:
            logger.info("nats bus disconnected (closing)")
        else:
            logger.warning("nats bus disconnected; reconnecting")

    async def _error(self, exc: Exception) -> None:
        logger.info("nats bus: %s", exc)

    async def close(self) -> None:
        self._closing = True
        nc, self._nc = self._nc, None
        self._subs.clear()
        if nc is not None:
            try:
                await nc.close()
            except (NatsError, OSError) as exc:
                logger.info("nats close: %s", exc)

    async def subscribe(self, channel: str) -> None:
        if self._nc is None:
            raise BusError("bus is not started")
        if channel in self._subs:
            return

        async def deliver(msg: Any) -> None:
            self.on_message(channel, msg.data)

        try:
            self._subs[channel] = await self._nc.subscribe(self._subject(channel), cb=deliver)
            # Round trips: once the server answered, no later publish can miss this node. Two:
            # nats-py queues the SUB for its flusher task but writes a flush's PING straight to
            # the socket, so the first PONG may come back before the server has read the SUB
            # (a message published right after was lost, about one full test run in five);
            # by the second PING the SUB is on the wire ahead of it.
            await self._nc.flush(timeout=5)
            await self._nc.flush(timeout=5)
        except (NatsError, OSError) as exc:
            raise BusError(f"nats subscribe failed: {exc}") from exc

    async def unsubscribe(self, channel: str) -> None:
        sub = self._subs.pop(channel, None)
        if sub is None:
            return
        try:
            await sub.unsubscribe()
        except (NatsError, OSError) as exc:
            logger.info("nats unsubscribe %s: %s", channel, exc)

    async def publish(self, channel: str, payload: bytes) -> None:
        if self._nc is None:
            raise BusError("bus is not started")
        try:
            await self._nc.publish(self._subject(channel), payload)
        except (NatsError, OSError) as exc:
            raise BusError(f"nats publish failed: {exc}") from exc
