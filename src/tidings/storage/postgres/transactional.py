"""Transactional notify on PostgreSQL, the database side: notifications written on the
application's connection inside its transaction, with a NOTIFY to the node that wrote them
(PostgreSQL delivers it only if the transaction commits); and that node's listening connection.

The notifications are written by the store's own statement (:func:`write_notifications`, the
users' locks, the insert and the counts in one statement), so a notification written here is
the same as one ``Tidings.notify`` writes, and the users' locks, held until the application's
transaction ends, keep each user's versions in commit order.

In the same transaction one ``pg_notify`` per about 8,000 bytes goes to the channel of the
node (:func:`commit_channel`): each payload is ``"<txid> <json>"``, the transaction's id and a
JSON list of ``[user_id, seq, count, version, unread, categories]``, the counts each user had
after the transaction's last notification of theirs and that notification's seq (an entry too
large for one payload is sent as ``[user_id, seq]``: the node reads the count after the
commit).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
from collections.abc import Callable, Sequence
from typing import Any

import orjson

from tidings.core.models import NotifyResult, UnseenCount
from tidings.core.pg import UNAVAILABLE, asyncpg
from tidings.errors import Conflict, InvalidArgument, StoreUnavailable
from tidings.storage._common import Prepared
from tidings.storage.postgres.notifications import write_notifications

logger = logging.getLogger("tidings")

#: PostgreSQL's limit of a NOTIFY payload, less room for the transaction id before the JSON
MAX_PAYLOAD = 7999 - 24

#: one statement: the payloads to the node's channel, each after the transaction's id; the
#: transaction's id and database back (``$1`` the channel, ``$2`` the payloads)
NOTIFY = (
    "SELECT txid_current(), current_database(), (SELECT count(pg_notify($1, "
    "txid_current()::text || ' ' || p)) FROM unnest($2::text[]) AS p)"
)


#: the end of a payload that says "pipeline messages were committed": wake the workers
WORK = " work"


async def notify_work(conn: Any, channel: str) -> None:
    """In ``conn``'s transaction: once it commits, the node listening on ``channel`` wakes the
    pipeline's workers."""
    await conn.execute("SELECT pg_notify($1, txid_current()::text || $2)", channel, WORK)


def commit_channel(node_id: str) -> str:
    """The channel only the node ``node_id`` listens on (a PostgreSQL identifier whatever the
    node's id is: a digest of it)."""
    return "tidings_txn_" + hashlib.sha256(node_id.encode()).hexdigest()[:32]


def latest_counts(results: Sequence[NotifyResult | Conflict]) -> dict[str, tuple[UnseenCount, int]]:
    """Each user's newest count and its notification's seq, among created notifications."""
    latest: dict[str, tuple[UnseenCount, int]] = {}
    for result in results:
        if isinstance(result, NotifyResult) and result.count is not None:
            latest[result.notification.user_id] = (result.count, result.notification.seq)
    return latest


def payloads(latest: dict[str, tuple[UnseenCount, int]]) -> list[str]:
    """The JSON payloads that carry ``latest`` (each within :data:`MAX_PAYLOAD` bytes)."""
    chunks: list[list[bytes]] = [[]]
    size = 2
    for user_id, (count, seq) in latest.items():
        entry = orjson.dumps(
            [user_id, seq, count.count, count.version, count.unread, count.categories]
        )
        if len(entry) + 3 > MAX_PAYLOAD:  # categories past the limit: the node reads it
            entry = orjson.dumps([user_id, seq])
        if size + len(entry) + 1 > MAX_PAYLOAD:
            chunks.append([])
            size = 2
        chunks[-1].append(entry)
        size += len(entry) + 1
    return ["[" + b",".join(chunk).decode() + "]" for chunk in chunks if chunk]


def decode(payload: str) -> tuple[int, list[tuple[str, int, UnseenCount | None]]] | None:
    """``(txid, [(user_id, seq, count or None to read it)])`` of a payload, or ``None``."""
    txid, _, body = payload.partition(" ")
    try:
        entries = orjson.loads(body)
        found = []
        for entry in entries:
            user_id, seq = str(entry[0]), int(entry[1])
            count = None
            if len(entry) == 6:
                categories = entry[5] or None
                count = UnseenCount(user_id, entry[2], entry[3], entry[4], categories)
            found.append((user_id, seq, count))
        return int(txid), found
    except (ValueError, TypeError, IndexError):
        return None


async def write_in_transaction(
    conn: Any, prepared: list[Prepared], channel: str
) -> tuple[list[NotifyResult | Conflict], int | None, str | None]:
    """Write ``prepared`` on ``conn`` (in its transaction) and NOTIFY ``channel`` of the
    counts; the results, and the transaction's id and database (``None`` when nothing was
    created, so nothing was sent).

    Raises:
        InvalidArgument: ``conn``'s database has no tidings tables, or refused a value.
        StoreUnavailable: the connection broke.
    """
    try:
        results = await write_notifications(conn, prepared)
        latest = latest_counts(results)
        if not latest:
            return results, None, None
        row = await conn.fetchrow(NOTIFY, channel, payloads(latest))
    except asyncpg.UndefinedTableError as exc:
        raise InvalidArgument(
            f"conn: its database has no tidings tables ({exc}); transactional notify writes in "
            "the application's database, so TIDINGS_STORE must name that database"
        ) from exc
    except UNAVAILABLE as exc:
        raise StoreUnavailable(f"PostgreSQL unavailable: {exc}") from exc
    except asyncpg.DataError as exc:
        raise InvalidArgument(f"PostgreSQL refused a value: {exc}") from exc
    return results, int(row[0]), str(row[1])


class CommitListener:
    """The node's connection LISTENing on its :func:`commit_channel`: every payload goes to
    ``on_payload``. A watchdog pings it every second; when it is lost it reconnects with
    backoff, LISTENs again and calls ``on_reconnect`` (NOTIFYs sent meanwhile are lost)."""

    def __init__(
        self,
        dsn: str,
        channel: str,
        on_payload: Callable[[str], None],
        on_reconnect: Callable[[], None],
    ) -> None:
        self.dsn = dsn
        self.channel = channel
        self.on_payload = on_payload
        self.on_reconnect = on_reconnect
        #: the database the listener is connected to (the store's), once started
        self.database = ""
        self._conn: Any = None
        self._watchdog: asyncio.Task[None] | None = None
        self._closing = False
        # asyncpg runs one operation at a time per connection: pings and status reads alternate
        self._lock = asyncio.Lock()

    @property
    def started(self) -> bool:
        return self._conn is not None

    async def start(self) -> None:
        """Connect and LISTEN (confirmed by PostgreSQL when this returns).

        Raises:
            StoreUnavailable: PostgreSQL cannot be reached.
        """
        if self._conn is not None:
            return
        self._closing = False
        try:
            self._conn = await self._connect()
        except UNAVAILABLE as exc:
            raise StoreUnavailable(f"cannot LISTEN for committed notifications: {exc}") from exc
        self._watchdog = asyncio.create_task(self._watch(), name="tidings-txn-listener")

    async def _connect(self) -> Any:
        conn = await asyncpg.connect(self.dsn, timeout=5)
        try:
            await conn.add_listener(self.channel, self._notified)
            self.database = str(await conn.fetchval("SELECT current_database()"))
        except BaseException:
            conn.terminate()
            raise
        return conn

    def _notified(self, connection: Any, pid: int, channel: str, payload: str) -> None:
        self.on_payload(payload)

    async def statuses(self, txids: Sequence[int]) -> dict[int, str | None]:
        """Each transaction's state: ``committed``, ``aborted``, ``in progress``, or ``None``
        (too old to tell).

        Raises:
            StoreUnavailable: the listening connection is down.
        """
        if self._conn is None:
            raise StoreUnavailable("the listening connection is closed")
        try:
            async with self._lock, asyncio.timeout(5):
                rows = await self._conn.fetch(
                    "SELECT x, txid_status(x) FROM unnest($1::bigint[]) AS x", list(txids)
                )
        except (*UNAVAILABLE, asyncpg.PostgresError) as exc:
            raise StoreUnavailable(f"cannot read transactions' states: {exc}") from exc
        return {int(row[0]): row[1] for row in rows}

    async def _watch(self) -> None:
        while not self._closing:
            await asyncio.sleep(1.0)
            try:
                async with self._lock, asyncio.timeout(5):
                    await self._conn.fetchval("SELECT 1")
                continue
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.warning("transactional notify: listener lost (%s); reconnecting", exc)
            await self._reconnect()

    async def _reconnect(self) -> None:
        delay = 0.1
        async with self._lock:
            with contextlib.suppress(Exception):
                self._conn.terminate()
            while not self._closing:
                await asyncio.sleep(delay * random.uniform(0.5, 1.5))
                try:
                    self._conn = await self._connect()
                except Exception as exc:
                    logger.info("transactional notify: PostgreSQL still down: %s", exc)
                    delay = min(delay * 2, 5.0)
                    continue
                logger.warning("transactional notify: listening again")
                break
        if not self._closing:
            self.on_reconnect()

    async def close(self) -> None:
        self._closing = True
        if self._watchdog is not None:
            self._watchdog.cancel()
            with contextlib.suppress(BaseException):
                await self._watchdog
            self._watchdog = None
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), 2)
