"""A :class:`Worker` claims deliveries from the outbox, renders and sends them, and records
how each send ended.

Never twice at once: a worker renews the leases of what it is sending every third of the lease;
a send whose lease could not be renewed before it would lapse is cancelled, so by the time the
control loop of any node finds it stale, nobody is still sending it. A completion names the try
it belongs to, and is ignored if the delivery was claimed again since.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import time
from collections.abc import Mapping
from typing import Protocol

from tidings.core.batching import Batcher
from tidings.core.counters import Counters
from tidings.delivery.channels.base import (
    Channel,
    Outgoing,
    PermanentFailure,
    Sent,
    TransientFailure,
)
from tidings.delivery.models import DELETED, FAILED, PENDING, SENT, Claim, Outcome
from tidings.delivery.ports import PipelineSettings
from tidings.delivery.retry import retry_at, retry_delay
from tidings.delivery.steps import ESCALATION_SKIPPED, digest_values
from tidings.delivery.stores.base import PipelineStore
from tidings.delivery.templates import Renderer
from tidings.errors import TemplateFailure, TidingsError

logger = logging.getLogger("tidings.delivery")

#: a send is given up this long before its lease would lapse without a renewal
SAFETY = 0.8
#: at most this many outcomes recorded in one transaction
RECORD_BATCH = 256


class WorkSource(Protocol):
    """What a worker uses of its :class:`~tidings.delivery.pipeline.Pipeline`."""

    @property
    def settings(self) -> PipelineSettings: ...
    @property
    def store(self) -> PipelineStore: ...
    @property
    def renderer(self) -> Renderer: ...
    @property
    def channels(self) -> Mapping[str, Channel]: ...
    @property
    def counters(self) -> Counters:
        """The node's counts; sends are counted by (channel, outcome)."""
        ...

    async def escalation_met(self, claim: Claim) -> str | None:
        """Why a delivery of an escalate step is not to be sent, or None."""
        ...

    def extra_headers(self, claim: Claim) -> dict[str, str]:
        """Headers the channel adds to what it sends (an email's unsubscribe link)."""
        ...


class Worker:
    """One worker loop: up to ``worker_concurrency`` sends at once."""

    def __init__(self, pipeline: WorkSource, owner: str) -> None:
        self.pipeline = pipeline
        self.owner = owner
        settings = pipeline.settings
        self.lease = settings.pipeline_lease
        self.concurrency = settings.worker_concurrency
        self._sends: dict[str, tuple[Claim, asyncio.Task[None]]] = {}
        #: monotonic time until which each claim's lease is known to hold
        self._held_until: dict[str, float] = {}
        self._wake = asyncio.Event()
        self._stopping = False
        self._stopped = asyncio.Event()
        #: outcomes recorded together: those that end while a recording runs go in the next
        self._recorder: Batcher[tuple[Claim, Outcome]] = Batcher(
            functools.partial(pipeline.store.complete_many, owner), max_batch=RECORD_BATCH
        )

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        """Claim nothing more; sends under way finish (see :meth:`wait_stopped`)."""
        self._stopping = True
        self._wake.set()

    async def wait_stopped(self, timeout: float = 10.0) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopped.wait(), timeout)
        for _, task in list(self._sends.values()):
            task.cancel()  # its lease lapses and another worker sends it

    async def run(self) -> None:
        renewer = asyncio.create_task(self._renew_loop())
        try:
            await self._claim_loop()
            while self._sends:  # stopping: let the sends under way finish
                await asyncio.wait([task for _, task in self._sends.values()])
        finally:
            renewer.cancel()
            self._stopped.set()

    async def _claim_loop(self) -> None:
        poll = self.pipeline.settings.pipeline_poll_interval
        names = list(self.pipeline.channels)
        while not self._stopping:
            self._wake.clear()
            free = self.concurrency - len(self._sends)
            claims: list[Claim] = []
            if free > 0:
                try:
                    claims = await self.pipeline.store.claim(names, self.owner, free, self.lease)
                except TidingsError as exc:
                    logger.warning("claiming deliveries failed: %s", exc)
            deadline = time.monotonic() + self.lease * SAFETY
            for claim in claims:
                self._held_until[claim.delivery_id] = deadline
                task = asyncio.create_task(self._send(claim))
                self._sends[claim.delivery_id] = (claim, task)
                task.add_done_callback(functools.partial(self._done, claim.delivery_id))
            if claims and len(claims) == free:
                continue  # more may be due: look again at once
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), poll)

    def _done(self, delivery_id: str, _: object = None) -> None:
        self._sends.pop(delivery_id, None)
        self._held_until.pop(delivery_id, None)
        self._wake.set()  # room for another claim

    async def _renew_loop(self) -> None:
        while True:
            await asyncio.sleep(min(self.lease / 3, 5.0))
            claims = [claim for claim, _ in self._sends.values()]
            if claims:
                asked = time.monotonic()
                try:
                    held = await self.pipeline.store.renew(self.owner, claims, self.lease)
                except TidingsError as exc:
                    logger.warning("renewing leases failed: %s", exc)
                    held = None
                for claim in claims:
                    if held is None:
                        continue
                    if claim.delivery_id in held:
                        self._held_until[claim.delivery_id] = asked + self.lease * SAFETY
                    else:
                        self._abandon(claim, "its lease was taken over")
            now = time.monotonic()
            for claim, _ in list(self._sends.values()):
                if self._held_until.get(claim.delivery_id, now) <= now:
                    self._abandon(claim, "its lease could not be renewed")

    def _abandon(self, claim: Claim, why: str) -> None:
        entry = self._sends.get(claim.delivery_id)
        if entry is not None and not entry[1].done():
            logger.warning("abandoning delivery %s: %s", claim.delivery_id, why)
            entry[1].cancel()

    async def _send(self, claim: Claim) -> None:
        outcome = await self._attempt(claim)
        outcome_name = "retry" if outcome.state == PENDING else outcome.state
        self.pipeline.counters.sends[(claim.channel, outcome_name)] += 1
        for pause in (0.1, 0.5, 1.0, 2.0):
            try:
                if not await self._recorder.submit((claim, outcome)):
                    logger.warning(
                        "delivery %s was claimed again meanwhile; this try's result (%s) "
                        "is dropped",
                        claim.delivery_id,
                        outcome.state,
                    )
                return
            except TidingsError as exc:
                logger.warning("recording delivery %s failed: %s", claim.delivery_id, exc)
                await asyncio.sleep(pause)
        # Unrecorded: the lease lapses, the delivery goes stale and is sent again.

    async def _attempt(self, claim: Claim) -> Outcome:
        pipeline, settings = self.pipeline, self.pipeline.settings
        channel = pipeline.channels.get(claim.channel)
        if channel is None:
            return Outcome(FAILED, "channel_unavailable", f"no {claim.channel} channel here")
        if claim.attempt > settings.pipeline_max_attempts:
            return Outcome(FAILED, "max_attempts", "its workers kept dying while sending it")
        if channel.needs_address and claim.address is None:
            return Outcome(FAILED, "no_address", f"no {claim.channel} contact point")
        if claim.escalate is not None:
            try:
                met = await pipeline.escalation_met(claim)
            except TidingsError as exc:  # the store could not say: ask again later
                return self._retry(claim, "provider_error", str(exc), None)
            if met is not None:
                return Outcome(DELETED, ESCALATION_SKIPPED, met)
        data = claim.data
        if claim.digest:  # rendered over every message still in it
            try:
                found = await pipeline.store.digest_items([claim.delivery_id])
            except TidingsError as exc:
                return self._retry(claim, "provider_error", str(exc), None)
            data = digest_values(claim.data, found.get(claim.delivery_id) or [claim.data])
        elif claim.digest_step:  # a channel not digested: over this message alone
            data = digest_values(claim.data, [claim.data])
        try:
            rendered = await pipeline.renderer.render(
                claim.template_id,
                claim.content,
                data,
                user_id=claim.user_id,
                channel=claim.channel,
                locale=claim.locale,
            )
        except TemplateFailure as exc:
            return Outcome(FAILED, "template_error", str(exc))
        except TidingsError as exc:  # the template could not be read: try later
            return self._retry(claim, "provider_error", str(exc), None)
        outgoing = Outgoing(
            claim.delivery_id,
            claim.message_id,
            claim.user_id,
            claim.channel,
            claim.address,
            rendered,
            claim.attempt,
            claim.critical,
            claim.template_id,
            extra={"headers": headers} if (headers := pipeline.extra_headers(claim)) else {},
        )
        try:
            result = await asyncio.wait_for(channel.send(outgoing), settings.provider_timeout + 5)
        except TransientFailure as exc:
            return self._retry(claim, exc.reason, exc.message, exc.retry_after, exc.notes)
        except PermanentFailure as exc:
            return Outcome(FAILED, exc.reason, exc.message, notes=exc.notes)
        except TimeoutError:
            return self._retry(claim, "timeout", "the provider did not answer in time", None)
        except Exception as exc:  # a channel's bug must not kill the worker
            logger.exception("channel %s failed on delivery %s", claim.channel, claim.delivery_id)
            return self._retry(claim, "provider_error", f"{type(exc).__name__}: {exc}", None)
        if isinstance(result, Sent):
            return Outcome(SENT, "sent", provider_id=result.provider_id, notes=result.notes)
        return Outcome(SENT, "sent", provider_id=result)

    def _retry(
        self,
        claim: Claim,
        reason: str,
        error: str,
        hint: float | None,
        notes: tuple[tuple[str, str], ...] = (),
    ) -> Outcome:
        settings = self.pipeline.settings
        if claim.attempt >= settings.pipeline_max_attempts:
            return Outcome(FAILED, "max_attempts", f"{reason}: {error}", notes=notes)
        delay = retry_delay(
            claim.attempt,
            settings.pipeline_retry_base,
            settings.pipeline_retry_max,
            hint,
            random.random(),
        )
        return Outcome(
            PENDING, "retry", f"{reason}: {error}", retry_at=retry_at(delay), notes=notes
        )
