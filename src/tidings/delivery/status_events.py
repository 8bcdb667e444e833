"""Delivery-status webhooks (docs/pipeline.md): every change of a delivery posted to the
application's endpoints (``TIDINGS_STATUS_WEBHOOK_URLS``), signed per Standard Webhooks as the
webhook channel signs, retried with backoff, each event keeping its own history.

The events are written by the stores in the transaction of each change (``write_history``),
one row per endpoint, in an outbox; the :class:`StatusEvents` dispatcher of every node with
workers claims due events under a lease, POSTs each (one event per request, up to
``TIDINGS_WORKER_CONCURRENCY`` at once), and records how it went: delivered on a 2xx, else
tried again after the pipeline's backoff until ``TIDINGS_STATUS_WEBHOOK_MAX_ATTEMPTS`` tries or
``TIDINGS_STATUS_WEBHOOK_MAX_AGE`` seconds, then failed (kept, listed by
``GET /status-events``). At least once: an endpoint may get an event again (a lease lapsed
mid-POST), always with the same ``webhook-id``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta

import orjson

from tidings.core.lifecycle import Lifecycle
from tidings.core.models import utcnow
from tidings.delivery.channels._net import describe, retry_after
from tidings.delivery.channels.webhook import WebhookChannel
from tidings.delivery.ports import PipelineHost
from tidings.delivery.retry import retry_at, retry_delay
from tidings.delivery.status_types import (
    EVENT_DELIVERED,
    EVENT_FAILED,
    EVENT_PENDING,
    StatusEvent,
    StatusResult,
)
from tidings.delivery.stores.base import StatusEventStore
from tidings.errors import DeliveryFailure, TidingsError
from tidings.logs import safe_url

logger = logging.getLogger("tidings.delivery")

#: seconds between two prunes of the events kept past TIDINGS_STATUS_WEBHOOK_RETENTION
PRUNE_EVERY = 60.0


class StatusEvents(Lifecycle):
    """The dispatcher of one node: it makes the store's endpoints this node's setting, then,
    when there are any, posts their events."""

    def __init__(self, host: PipelineHost, store: StatusEventStore) -> None:
        self.host = host
        self.settings = host.settings
        self.store = store
        self.owner = f"{host.node_id}/status"
        self.batch = self.settings.worker_concurrency
        # a claim outlasts a POST (one timeout) and its recording
        self.lease = max(self.settings.pipeline_lease, 2 * self.settings.provider_timeout)
        self._sender: WebhookChannel | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._prepared = False

    async def start(self) -> None:
        """Record the endpoints before the node's workers change anything (or keep trying in
        the background while the store is down), then post."""
        if self._task is None:
            self._stopping.clear()
            try:
                await self.prepare()
            except TidingsError as exc:
                logger.warning("status webhooks not set up yet: %s", exc)
            self._task = asyncio.create_task(self._run())

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            self._stopping.set()  # the POSTs under way finish and are recorded, briefly
            try:
                await asyncio.wait_for(
                    asyncio.shield(task), min(self.settings.provider_timeout, 4) + 1
                )
            except TimeoutError:
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(task, return_exceptions=True)
        sender, self._sender = self._sender, None
        if sender is not None:
            await sender.close()
        self._prepared = False

    async def prepare(self) -> None:
        """Make the store's endpoints this node's, and open the client when there are any."""
        if not self._prepared:
            await self.store.set_status_endpoints(self.settings.status_webhook_urls)
            self._prepared = True
        if self.settings.status_webhook_urls and self._sender is None:
            sender = await self._make_sender()
            await sender.start()
            self._sender = sender

    async def _run(self) -> None:
        if not await self._retrying(self.prepare) or not self.settings.status_webhook_urls:
            return
        pruned = 0.0
        while not self._stopping.is_set():
            taken = 0
            try:
                taken = await self.dispatch()
                if time.monotonic() - pruned >= PRUNE_EVERY:
                    pruned = time.monotonic()
                    await self._prune()
            except TidingsError as exc:
                logger.warning("status events: %s", exc)
            except Exception:  # the loop must outlive any surprise; the events stay leased
                logger.exception("status events: unexpected error")
            if taken < self.batch:  # none left due: look again after the poll interval
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        self._stopping.wait(), self.settings.pipeline_poll_interval
                    )

    async def _retrying(self, call: Callable[[], Awaitable[None]]) -> bool:
        """``call()`` until it works (the store may be down at start); False when the
        dispatcher stops first."""
        while not self._stopping.is_set():
            try:
                await call()
                return True
            except TidingsError as exc:
                logger.warning("status webhooks not set up yet: %s", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.settings.pipeline_poll_interval)
        return False

    async def _make_sender(self) -> WebhookChannel:
        """The webhook channel's client: its signing, its timeout, its private-address rule;
        its secret unless ``TIDINGS_STATUS_WEBHOOK_SECRET`` gives one."""
        settings = self.settings
        if settings.status_webhook_secret:
            return WebhookChannel(
                settings.status_webhook_secret,
                timeout=settings.provider_timeout,
                allow_private=settings.allow_private_addresses,
            )
        return await WebhookChannel.from_settings(self.host)

    async def dispatch(self) -> int:
        """Claim the due events, POST them, record the results; how many were claimed."""
        events = await self.store.claim_status_events(self.owner, self.batch, self.lease)
        if events:
            results = await asyncio.gather(*(self._post(event) for event in events))
            await self.store.complete_status_events(self.owner, results)
        return len(events)

    async def _post(self, event: StatusEvent) -> StatusResult:
        sender = self._sender
        assert sender is not None  # started before the first dispatch
        body = orjson.dumps(event.payload())
        headers = {
            "content-type": "application/json",
            **sender.sign(event.event_id, int(time.time()), body),
        }
        try:
            response = await sender.post(event.endpoint, content=body, headers=headers)
        except DeliveryFailure as exc:
            return self._failed(event, None, f"{exc.reason}: {exc.message}", None)
        if 200 <= response.status_code < 300:
            return StatusResult(
                event.id, event.attempts, EVENT_DELIVERED, response.status_code, None
            )
        text = describe(response, detail=False)
        return self._failed(event, response.status_code, text, retry_after(response))

    def _failed(
        self, event: StatusEvent, status: int | None, error: str, hint: float | None
    ) -> StatusResult:
        """A try that failed: another after the backoff, or failed for good when the event
        is out of tries or too old."""
        settings = self.settings
        age = (utcnow() - event.at).total_seconds()
        if (
            event.attempts >= settings.status_webhook_max_attempts
            or age >= settings.status_webhook_max_age
        ):
            logger.warning(
                "status event %s (%s) to %s given up after %d tries: %s",
                event.event_id,
                event.type,
                safe_url(event.endpoint),
                event.attempts,
                error,
            )
            return StatusResult(event.id, event.attempts, EVENT_FAILED, status, error)
        delay = retry_delay(
            event.attempts,
            settings.pipeline_retry_base,
            settings.pipeline_retry_max,
            hint,
            random.random(),
        )
        return StatusResult(event.id, event.attempts, EVENT_PENDING, status, error, retry_at(delay))

    async def _prune(self) -> None:
        before = utcnow() - timedelta(seconds=self.settings.status_webhook_retention)
        await self.store.prune_status_events(before)
