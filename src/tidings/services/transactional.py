"""Transactional notify, the node's side: notifications written inside the application's own
transaction (``Tidings.notify(..., conn=...)``, PostgreSQL only), and their count events sent
once, and only if, it commits.

The write (``storage/postgres/transactional.py``) NOTIFYs this node's own channel in the same
transaction; PostgreSQL delivers a NOTIFY only when its transaction commits, so a rollback sends
nothing. The node LISTENs on one connection, opened by the first transactional notify, and
publishes each payload's counts as :meth:`Counts.publish_count` does for a plain notify.

What could lose a NOTIFY is covered by the transactions' ids: each write is remembered until its
NOTIFY arrives. Every second, writes older than :data:`GRACE` are looked up
(``txid_status``): a committed one whose NOTIFY never came (the listening connection was down
when it committed) gets its users' counts read and published; an aborted one is forgotten; one
still in progress is kept. After the listening connection is back, every write is looked up at
once and the node resyncs its devices' counts. A node that dies between a commit and the
NOTIFY's handling loses those events: the notifications are stored, and devices get them with
their user's next change or when they reconnect (docs/deployment.md).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from tidings.core.models import NewNotification, NotifyResult, UnseenCount
from tidings.errors import ConfigurationError, Conflict, InvalidArgument, TidingsError
from tidings.services.counts import Counts
from tidings.services.topics import Spawn
from tidings.storage._common import prepare

if TYPE_CHECKING:
    from tidings.storage.postgres.transactional import CommitListener

logger = logging.getLogger("tidings")

#: seconds a write waits for its NOTIFY before its transaction's state is looked up
GRACE = 2.0

_NEEDS_POSTGRES = (
    "transactional notify (conn=...) needs a PostgreSQL store in the application's own "
    "database, e.g. TIDINGS_STORE=postgresql://user:password@host:5432/app; this node's store "
    "is {scheme}://"
)


def _nothing() -> None:
    pass


class Transactional:
    """Notifications written in the application's transaction, published after its commit."""

    def __init__(
        self,
        store: Any,
        counts: Counts,
        spawn: Spawn,
        resync: Callable[[], Coroutine[Any, Any, None]],
        *,
        node_id: str,
    ) -> None:
        #: the node's store (only a PostgreSQL one takes transactional notifies)
        self.store = store
        self.counts = counts
        self.spawn = spawn
        #: re-reads and pushes the counts of this node's devices (``Tidings.resync_counts``)
        self.resync = resync
        self.node_id = node_id
        self._listener: CommitListener | None = None
        self._starting = asyncio.Lock()
        #: writes whose NOTIFY has not arrived: txid → (when, {user_id: seq})
        self._pending: dict[int, tuple[float, dict[str, int]]] = {}
        #: told when a transaction that posted pipeline messages commits (the pipeline wakes
        #: its workers; they poll too, so a lost NOTIFY only costs a poll interval)
        self.on_work: Callable[[], None] = _nothing

    @property
    def pending(self) -> int:
        """Transactions written in whose NOTIFY has not arrived (or that did not end yet)."""
        return len(self._pending)

    async def notify(
        self, user_id: str, data: Any, notification_id: str | None, category: str | None, conn: Any
    ) -> NotifyResult:
        """Write a notification in ``conn``'s transaction (see :meth:`tidings.Tidings.notify`).

        Raises:
            ConfigurationError: the node's store is not PostgreSQL.
            InvalidArgument: a bad argument, or ``conn`` is not a connection tidings takes or
                not inside a transaction; nothing was written.
            Conflict: ``notification_id`` is taken by a different notification.
        """
        self._check_store()
        item = NewNotification(user_id, data, notification_id, category)
        self.counts.check(item)
        result = (await self._write([item], conn))[0]
        if isinstance(result, TidingsError):
            raise result
        assert isinstance(result, NotifyResult)
        return result

    async def notify_many(
        self, items: Sequence[NewNotification], conn: Any
    ) -> list[NotifyResult | TidingsError]:
        """Write a batch in ``conn``'s transaction; per item its result or the error that
        refused it (see :meth:`tidings.Tidings.notify_many`)."""
        self._check_store()
        results, valid = self.counts.check_batch(items)
        if valid:
            written = iter(await self._write(valid, conn))
            results = [next(written) if r is None else r for r in results]
        return [r for r in results if r is not None]

    async def joined(self, conn: Any) -> tuple[Any, str]:
        """The asyncpg connection under the application's ``conn`` (in a transaction) and the
        channel this node hears after its commit: a writer of the pipeline NOTIFYs it with
        :data:`~tidings.storage.postgres.transactional.WORK` for :attr:`on_work`.

        Raises:
            ConfigurationError: the node's store is not PostgreSQL.
            InvalidArgument: ``conn`` is not a connection tidings takes, or not in a
                transaction.
        """
        self._check_store()
        from tidings.storage.postgres.app_connection import asyncpg_connection_of

        raw = await asyncpg_connection_of(conn)
        return raw, (await self._listening()).channel

    def _check_store(self) -> None:
        scheme = urlsplit(getattr(self.store, "url", "")).scheme or "unknown"
        if scheme not in ("postgres", "postgresql") or not hasattr(self.store, "dsn"):
            raise ConfigurationError(_NEEDS_POSTGRES.format(scheme=scheme))

    async def _write(
        self, items: Sequence[NewNotification], conn: Any
    ) -> list[NotifyResult | Conflict]:
        from tidings.storage.postgres.app_connection import asyncpg_connection_of
        from tidings.storage.postgres.transactional import write_in_transaction

        raw = await asyncpg_connection_of(conn)
        listener = await self._listening()
        results, txid, database = await write_in_transaction(raw, prepare(items), listener.channel)
        if txid is None:
            return results  # nothing created: nothing to publish
        if database != listener.database:
            raise InvalidArgument(
                f"conn: connected to the database {database!r}, tidings' store to "
                f"{listener.database!r}; transactional notify writes in the application's "
                "database, so TIDINGS_STORE must name that one (roll this transaction back)"
            )
        users = self._pending.setdefault(txid, (time.monotonic(), {}))[1]
        for result in results:
            if isinstance(result, NotifyResult) and result.count is not None:
                users[result.notification.user_id] = result.notification.seq
        return results

    async def _listening(self) -> CommitListener:
        """The node's listening connection, opened (and LISTENing) on first use."""
        if self._listener is not None:
            return self._listener
        async with self._starting:
            if self._listener is None:
                from tidings.storage.postgres.transactional import CommitListener, commit_channel

                listener = CommitListener(
                    self.store.dsn,
                    commit_channel(self.node_id),
                    self._on_payload,
                    self._on_reconnect,
                )
                await listener.start()  # raises StoreUnavailable: nothing written
                self._listener = listener
                self.spawn(self._reconcile_every_second())
            return self._listener

    # After the commit

    def _on_payload(self, payload: str) -> None:
        from tidings.storage.postgres.transactional import WORK, decode

        if payload.endswith(WORK):
            self.on_work()
            return
        decoded = decode(payload)
        if decoded is None:
            logger.warning("transactional notify: ignoring a malformed payload %.80r", payload)
            return
        txid, entries = decoded
        pending = self._pending.get(txid)
        if pending is not None:
            for user_id, _, _ in entries:
                pending[1].pop(user_id, None)
            if not pending[1]:
                del self._pending[txid]
        self.spawn(self._publish(entries))

    async def _publish(self, entries: Sequence[tuple[str, int, UnseenCount | None]]) -> None:
        await asyncio.gather(*(self._publish_one(*entry) for entry in entries))

    async def _publish_one(self, user_id: str, seq: int, count: UnseenCount | None) -> None:
        try:
            if count is None:  # too large for the payload, or its NOTIFY was lost: read it
                count = await self.counts.count(user_id)
            await self.counts.publish_count(count, seq)
        except TidingsError as exc:
            logger.warning("transactional notify: count of %s not published: %s", user_id, exc)

    def _on_reconnect(self) -> None:
        """NOTIFYs sent while the listening connection was down are lost: look every write
        up now, and push this node's devices their counts."""
        self.spawn(self.reconcile(0.0))
        self.spawn(self.resync())

    async def _reconcile_every_second(self) -> None:
        """Runs while the node does (a task of its own): the node's close cancels it, which
        closes the listening connection."""
        try:
            while True:
                await asyncio.sleep(1.0)
                await self.reconcile(GRACE)
        finally:
            await self.close()

    async def reconcile(self, older_than: float = GRACE) -> None:
        """Look up the transactions written in more than ``older_than`` seconds ago whose
        NOTIFY has not arrived: publish the counts of committed ones (read now), forget aborted
        ones, keep those still in progress."""
        listener, now = self._listener, time.monotonic()
        due = [txid for txid, (since, _) in self._pending.items() if now - since >= older_than]
        if listener is None or not due:
            return
        try:
            states = await listener.statuses(due)
        except TidingsError as exc:  # the connection is down: looked up after it is back
            logger.info("transactional notify: transactions not looked up: %s", exc)
            return
        for txid in due:
            state = states.get(txid)
            if state == "in progress":
                continue
            entry = self._pending.pop(txid, None)
            if entry is not None and state == "committed":
                logger.info("transactional notify: NOTIFY of %d lost; counts read", txid)
                for user_id, seq in entry[1].items():
                    self.spawn(self._publish_one(user_id, seq, None))

    async def close(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            await listener.close()
        self._pending.clear()
