"""The one batching engine: queue the calls, run them as one batch, hand each caller its own
result or exception.

Used by the SQLite writer (group commit), the SQLite reads (one hop to the reader thread for
concurrent reads), PostgreSQL's grouping of concurrent notifications, socket opens, queue
reads and acknowledgements, the Redis bus's publishes (one pipeline per group), and the
pipeline's workers.
What a batch means (a transaction, savepoints, re-running a refused group one by one) is the
backend's ``run`` function; the engine only queues and settles.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, TypeVar

T = TypeVar("T")

#: runs a batch of items; returns one outcome per item, in order: the item's result, or the
#: exception to raise to its caller
RunBatch = Callable[[list[T]], Awaitable[Sequence[Any]]]


def settle(futures: Sequence[asyncio.Future[Any]], outcomes: Sequence[Any]) -> None:
    """Hand each waiting caller its outcome: an exception is raised to it, anything else
    returned. Futures whose caller gave up are skipped."""
    for future, outcome in zip(futures, outcomes, strict=True):
        if future.done():
            continue
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)


class Batcher(Generic[T]):
    """Calls made while a batch runs wait and go together in the next one (at most
    ``max_batch`` items per batch). One flushing task runs at a time, so batches run in
    submission order and never overlap."""

    def __init__(self, run: RunBatch[T], *, max_batch: int | None = None) -> None:
        self._run = run
        self._max = max_batch
        self._queue: list[tuple[T, asyncio.Future[Any]]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def submit(self, item: T) -> Any:
        """Queue ``item``; its outcome once its batch has run (raised if an exception)."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.append((item, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        return await future

    async def drain(self) -> None:
        """Wait until every queued call has its outcome (at close)."""
        if self._flusher is not None and not self._flusher.done():
            await asyncio.shield(self._flusher)

    async def _flush(self) -> None:
        while self._queue:
            if self._max is None:
                batch, self._queue = self._queue, []
            else:
                batch, self._queue = self._queue[: self._max], self._queue[self._max :]
            futures = [future for _, future in batch]
            try:
                outcomes: Sequence[Any] = await self._run([item for item, _ in batch])
            except Exception as exc:  # a run that gives no outcomes fails every caller
                outcomes = [exc] * len(batch)
            settle(futures, outcomes)
