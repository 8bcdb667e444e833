"""PostgreSQL LISTEN/NOTIFY bus (``postgresql://…`` used as a bus URL), so that a cluster needs
nothing but PostgreSQL.

Routing is by bucket: a channel hashes to one of ``buckets`` (query option, default 1024)
PostgreSQL channels ``tidings_<n>``, and a node LISTENs to the buckets of the channels it holds.
PostgreSQL keeps each backend's LISTEN list as a linear list scanned for every notification, so
one LISTEN per user would make NOTIFY cost grow with the users of a node; buckets bound it, at
the price of a node sometimes receiving (and dropping) an event of a user in the same bucket.
Every payload carries its real channel, so that drop is exact.

One dedicated connection listens; a small pool publishes (``pg_notify``). When the listening
connection is lost the bus reconnects with backoff, LISTENs again and calls
:attr:`on_reconnect`. Payloads are limited by PostgreSQL to 8000 bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import zlib
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from tidings.bus.base import Bus
from tidings.core.pg import UNAVAILABLE as _UNAVAILABLE
from tidings.core.pg import asyncpg
from tidings.errors import BusError, ConfigurationError

logger = logging.getLogger("tidings.bus")

MAX_PAYLOAD = 7999


class PostgresBus(Bus):
    """Bus on PostgreSQL LISTEN / NOTIFY."""

    max_payload = MAX_PAYLOAD - 300  # room for the channel prefix

    def __init__(self, url: str) -> None:
        super().__init__(url)
        parts = urlsplit(url)
        options = dict(parse_qsl(parts.query))
        try:
            self.buckets = int(options.pop("buckets", 1024))
        except ValueError:
            raise ConfigurationError("buckets must be an integer") from None
        if self.buckets < 1:
            raise ConfigurationError("buckets must be at least 1")
        self.dsn = urlunsplit(parts._replace(scheme="postgresql", query=urlencode(options)))
        self._listener: Any = None
        self._pool: Any = None
        self._channels: set[str] = set()
        self._bucket_users: dict[str, int] = {}
        self._watchdog: asyncio.Task[None] | None = None
        self._closing = False
        # asyncpg allows one operation at a time per connection: LISTEN, UNLISTEN and the
        # watchdog's ping take turns on the listening connection.
        self._lock = asyncio.Lock()
        self._broken = asyncio.Event()

    def _bucket(self, channel: str) -> str:
        return f"tidings_{zlib.crc32(channel.encode()) % self.buckets}"

    async def start(self) -> None:
        if self._pool is not None:
            return
        self._closing = False
        try:
            self._pool = await asyncpg.create_pool(self.dsn, min_size=1, max_size=4, timeout=5)
            self._listener = await self._connect_listener()
        except _UNAVAILABLE as exc:
            await self.close()
            raise BusError(f"cannot reach PostgreSQL for the bus: {exc}") from exc
        self._watchdog = asyncio.create_task(self._watch(), name="tidings-pg-bus")

    async def _connect_listener(self) -> Any:
        conn = await asyncpg.connect(self.dsn, timeout=5)
        try:
            listened: set[str] = set()
            # Buckets may be added while we LISTEN: loop until none is missing.
            while missing := set(self._bucket_users) - listened:
                for bucket in missing:
                    await conn.add_listener(bucket, self._notified)
                    listened.add(bucket)
        except BaseException:
            conn.terminate()
            raise
        return conn

    def _notified(self, connection: Any, pid: int, bucket: str, payload: str) -> None:
        size, _, rest = payload.partition(":")
        if not size.isdigit():
            return
        channel, data = rest[: int(size)], rest[int(size) :]
        if channel in self._channels:
            self.on_message(channel, data.encode())

    async def _watch(self) -> None:
        """Notice a lost listening connection (asyncpg tells us only when we use it), then
        reconnect, LISTEN again and tell the node."""
        while not self._closing:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await self._broken.wait()
            try:
                async with self._lock, asyncio.timeout(5):
                    if self._broken.is_set():
                        raise ConnectionError("a LISTEN failed")
                    await self._listener.fetchval("SELECT 1")
                continue
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.warning("postgres bus lost its connection: %s; reconnecting", exc)
            await self._reconnect()

    async def _reconnect(self) -> None:
        delay = 0.1
        async with self._lock:
            with contextlib.suppress(Exception):
                self._listener.terminate()
            while not self._closing:
                await asyncio.sleep(delay * random.uniform(0.5, 1.5))
                try:
                    self._listener = await self._connect_listener()
                except _UNAVAILABLE as exc:
                    logger.info("postgres bus still down: %s", exc)
                    delay = min(delay * 2, 5.0)
                    continue
                self._broken.clear()
                logger.warning(
                    "postgres bus reconnected; %d buckets restored", len(self._bucket_users)
                )
                self.on_reconnect()
                return

    async def close(self) -> None:
        self._closing = True
        if self._watchdog is not None:
            self._watchdog.cancel()
            with contextlib.suppress(BaseException):
                await self._watchdog
            self._watchdog = None
        if self._listener is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._listener.close(), 2)
            self._listener = None
        if self._pool is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._pool.close(), 2)
            self._pool = None
        self._channels.clear()
        self._bucket_users.clear()

    async def subscribe(self, channel: str) -> None:
        if self._pool is None:
            raise BusError("bus is not started")
        if channel in self._channels:
            return
        self._channels.add(channel)
        bucket = self._bucket(channel)
        users = self._bucket_users.get(bucket, 0)
        self._bucket_users[bucket] = users + 1
        # Under the lock even when the bucket is already listened: that returns only after a
        # LISTEN of the same bucket still in progress has been acknowledged.
        try:
            async with asyncio.timeout(5.0):
                await self._lock.acquire()
        except TimeoutError:
            return  # a reconnection holds the lock; it will LISTEN to this bucket too
        try:
            if users == 0 and not self._broken.is_set():
                try:
                    await self._listener.add_listener(bucket, self._notified)
                except _UNAVAILABLE as exc:
                    # The watchdog reconnects and LISTENs to every bucket, this one included.
                    logger.info("postgres LISTEN %s failed: %s; reconnecting", bucket, exc)
                    self._broken.set()
        finally:
            self._lock.release()

    async def unsubscribe(self, channel: str) -> None:
        if channel not in self._channels:
            return
        self._channels.discard(channel)
        bucket = self._bucket(channel)
        users = self._bucket_users.get(bucket, 0) - 1
        if users > 0:
            self._bucket_users[bucket] = users
            return
        self._bucket_users.pop(bucket, None)
        async with self._lock:
            if bucket in self._bucket_users or self._broken.is_set():
                return  # subscribed again meanwhile, or the reconnection decides
            try:
                await self._listener.remove_listener(bucket, self._notified)
            except _UNAVAILABLE as exc:
                logger.info("postgres UNLISTEN %s failed: %s; reconnecting", bucket, exc)
                self._broken.set()

    async def publish(self, channel: str, payload: bytes) -> None:
        if self._pool is None:
            raise BusError("bus is not started")
        # "<len>:<channel><data>": the real channel travels with the event (buckets are shared).
        text = f"{len(channel)}:{channel}{payload.decode()}"
        if len(text.encode()) > MAX_PAYLOAD:
            raise BusError("event too large for PostgreSQL NOTIFY (8000 bytes)")
        try:
            async with self._pool.acquire(timeout=5) as conn:
                await conn.execute("SELECT pg_notify($1, $2)", self._bucket(channel), text)
        except _UNAVAILABLE as exc:
            raise BusError(f"postgres publish failed: {exc}") from exc
