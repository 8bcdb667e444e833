"""Redis pub/sub bus (``redis://host:6379/0``, ``rediss://`` for TLS).

One subscription per channel, so a node receives only the events of the users it holds devices
of. redis-py does not restore subscriptions after a lost connection in a way we can observe, so
this bus runs its own loop: on any connection error it backs off, reconnects, subscribes every
channel again and then calls :attr:`on_reconnect`, so that the node re-reads the counts that
may have changed meanwhile.

Query option ``prefix`` (default ``tidings:``) namespaces the channels.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from tidings.bus.base import Bus
from tidings.core.batching import Batcher
from tidings.errors import BusError, MissingDependencyError

try:
    import redis.asyncio as aioredis
    from redis.asyncio.retry import Retry
    from redis.backoff import ExponentialBackoff
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import RedisError
    from redis.exceptions import TimeoutError as RedisTimeoutError
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise MissingDependencyError("redis", "redis") from exc

logger = logging.getLogger("tidings.bus")


class RedisBus(Bus):
    """Bus on Redis PUBLISH / SUBSCRIBE."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        parts = urlsplit(url)
        options = dict(parse_qsl(parts.query))
        self.prefix = options.pop("prefix", "tidings:")
        self.redis_url = urlunsplit(parts._replace(query=urlencode(options)))
        self._client: Any = None  # publishes, retrying over reconnections
        self._sub_client: Any = None  # subscribes; its errors drive our own reconnection
        self._pubsub: Any = None
        self._channels: set[str] = set()
        self._reader: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()
        self._closing = False
        # SUBSCRIBE confirmations awaited by subscribe(): once Redis confirms, no later
        # PUBLISH on the channel can miss this node.
        self._confirming: dict[str, asyncio.Future[None]] = {}
        # Publishes made while one is on the wire go together in one pipeline: a burst (a
        # batch of notifications, a reconnect storm's counts) is a few round trips on one
        # connection, not one connection per publish (redis-py's pool refuses the 101st).
        self._publishes: Batcher[tuple[str, bytes]] = Batcher(self._publish_batch, max_batch=1000)

    def _client_for(self, *, retry: bool) -> Any:
        options: dict[str, Any] = {}
        if retry:
            # A pooled connection that died with a Redis restart is replaced, not reported.
            options["retry"] = Retry(ExponentialBackoff(cap=0.5, base=0.05), 3)
            options["retry_on_error"] = [RedisConnectionError, RedisTimeoutError]
        else:
            # The subscriber must see every disconnection: only then does it know that events
            # may have been missed and tell the node to re-read counts.
            options["retry"] = Retry(ExponentialBackoff(), 0)
        return aioredis.from_url(
            self.redis_url,
            socket_connect_timeout=2,
            socket_timeout=None,
            health_check_interval=5,
            socket_keepalive=True,
            **options,
        )

    async def start(self) -> None:
        if self._client is not None:
            return
        self._closing = False
        self._client = self._client_for(retry=True)
        self._sub_client = self._client_for(retry=False)
        try:
            await self._client.ping()
            await self._open_pubsub()
        except (RedisError, OSError) as exc:
            await self.close()
            raise BusError(f"cannot reach Redis at {self.redis_url}: {exc}") from exc
        self._reader = asyncio.create_task(self._read_forever(), name="tidings-redis-bus")

    async def _open_pubsub(self) -> None:
        self._pubsub = self._sub_client.pubsub()
        # A subscription keeps the connection open; subscribe a private channel first.
        await self._pubsub.subscribe(self.prefix + "_")
        restored: set[str] = set()
        # Channels may be added while we subscribe: loop until none is missing.
        while missing := self._channels - restored:
            await self._pubsub.subscribe(*(self.prefix + c for c in missing))
            restored |= missing
        self._connected.set()

    async def _read_forever(self) -> None:
        delay = 0.1
        while not self._closing:
            try:
                message = await self._pubsub.get_message(timeout=1.0)
                delay = 0.1
                if message is not None:
                    kind = message.get("type")
                    channel = message["channel"].decode()[len(self.prefix) :]
                    if kind == "message":
                        self.on_message(channel, message["data"])
                    elif kind == "subscribe":
                        waiter = self._confirming.pop(channel, None)
                        if waiter is not None and not waiter.done():
                            waiter.set_result(None)
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                self._connected.clear()
                logger.warning("redis bus lost its connection: %s; reconnecting", exc)
                await self._reconnect(delay)
                delay = min(delay * 2, 5.0)
            except Exception:
                logger.exception("redis bus handler failed")

    async def _reconnect(self, delay: float) -> None:
        with contextlib.suppress(Exception):
            await self._pubsub.aclose()
        while not self._closing:
            await asyncio.sleep(delay * random.uniform(0.5, 1.5))
            try:
                await self._sub_client.ping()
                await self._open_pubsub()
            except (RedisError, OSError) as exc:
                logger.info("redis bus still down: %s", exc)
                delay = min(delay * 2, 5.0)
                continue
            logger.warning("redis bus reconnected; %d channels restored", len(self._channels))
            self.on_reconnect()
            return

    async def close(self) -> None:
        self._closing = True
        await self._publishes.drain()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(BaseException):
                await self._reader
            self._reader = None
        if self._pubsub is not None:
            with contextlib.suppress(Exception):
                await self._pubsub.aclose()
            self._pubsub = None
        for client in (self._client, self._sub_client):
            if client is not None:
                with contextlib.suppress(Exception):
                    await client.aclose()
        self._client = self._sub_client = None
        self._channels.clear()
        for waiter in self._confirming.values():
            waiter.cancel()
        self._confirming.clear()

    async def subscribe(self, channel: str) -> None:
        if channel in self._channels:
            return
        self._channels.add(channel)
        waiter = self._confirming.setdefault(channel, asyncio.get_running_loop().create_future())
        await self._command("subscribe", channel)
        try:
            async with asyncio.timeout(5.0):
                await asyncio.shield(waiter)
        except TimeoutError:
            # Down or slow: the reconnection subscribes it; events meanwhile are not needed
            # because the node re-reads counts on reconnection.
            logger.info("redis subscribe %s not confirmed yet", channel)

    async def unsubscribe(self, channel: str) -> None:
        if channel not in self._channels:
            return
        self._channels.discard(channel)
        await self._command("unsubscribe", channel)

    async def _command(self, name: str, channel: str) -> None:
        if self._pubsub is None or not self._connected.is_set():
            return  # applied by the reconnection, which subscribes self._channels
        try:
            await getattr(self._pubsub, name)(self.prefix + channel)
        except (RedisError, OSError) as exc:
            # The reader notices the broken connection and restores the channels.
            logger.info("redis %s %s deferred: %s", name, channel, exc)

    async def publish(self, channel: str, payload: bytes) -> None:
        if self._client is None:
            raise BusError("bus is not started")
        await self._publishes.submit((self.prefix + channel, payload))

    async def _publish_batch(self, batch: list[tuple[str, bytes]]) -> list[Any]:
        """One pipeline (no MULTI) for the group; each publish gets its own outcome."""
        if self._client is None:
            return [BusError("bus is not started")] * len(batch)
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for channel, payload in batch:
                    pipe.publish(channel, payload)
                replies = await pipe.execute(raise_on_error=False)
        except (RedisError, OSError) as exc:
            return [BusError(f"redis publish failed: {exc}")] * len(batch)
        return [
            BusError(f"redis publish failed: {reply}") if isinstance(reply, Exception) else None
            for reply in replies
        ]
