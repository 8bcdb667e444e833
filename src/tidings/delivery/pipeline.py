"""The :class:`Pipeline`: messages in, deliveries out (docs/pipeline.md).

It owns the channels, the template renderer and the workers of a node. ``POST /messages``
calls :meth:`Pipeline.create_message`; every node with workers claims from the store's outbox,
woken by a bus event when a message is queued, and its control loop re-queues deliveries whose
worker died.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

import orjson

from tidings.auth.topics import check_topic
from tidings.core.lifecycle import Lifecycle
from tidings.core.limits import MAX_CHANNEL_NAME_LENGTH, MAX_TEMPLATE_ID_LENGTH
from tidings.core.models import UnseenCount, utcnow
from tidings.delivery.badges import BadgeChannel, BadgeSync
from tidings.delivery.catalogue import TEMPLATE_CHANGED, Catalogue, check_category
from tidings.delivery.channels.base import Channel
from tidings.delivery.models import (
    PENDING,
    Claim,
    Content,
    Digest,
    Escalation,
    Message,
    NewMessage,
    PlannedDelivery,
    message_data_problem,
)
from tidings.delivery.planner import Recipient, counted_channels, parse_rate_limits, plan
from tidings.delivery.ports import PipelineHost
from tidings.delivery.registry import (
    ChannelRegistry,
    build_channels,
    default_channels,
    ordered,
    valid_channel_name,
)
from tidings.delivery.retry import retry_at as retry_at
from tidings.delivery.retry import retry_delay
from tidings.delivery.status_events import StatusEvents
from tidings.delivery.steps import (
    check_digest,
    check_escalation,
    digest_values,
    escalation_met,
    scheduled,
    send_time,
)
from tidings.delivery.stores import for_store
from tidings.delivery.stores.base import PipelineStore
from tidings.delivery.templates import Renderer
from tidings.delivery.unsubscribe import KEY_NAME, UnsubscribeLinks, new_key
from tidings.delivery.worker import Worker
from tidings.errors import (
    BusError,
    ConfigurationError,
    InvalidAddress,
    InvalidArgument,
    TemplateFailure,
    TidingsError,
    TopicRefused,
)

logger = logging.getLogger("tidings.delivery")

#: bus channel of the pipeline's events: work queued, a template changed
BUS_CHANNEL = "pipeline"
WORK = "pipeline-work"
MAX_TEMPLATE_ID = MAX_TEMPLATE_ID_LENGTH


def pipeline_store(host: PipelineHost) -> PipelineStore:
    """The pipeline's tables on the node's store, in its backend's dialect.

    Raises:
        ConfigurationError: the pipeline has no tables for the store's backend.
    """
    return for_store(host.store)


class Pipeline(Catalogue, Lifecycle):
    """The pipeline of one node."""

    def __init__(
        self,
        host: PipelineHost,
        channels: Sequence[Channel] | None = None,
        *,
        registry: ChannelRegistry | None = None,
    ) -> None:
        """``channels``: instances the application made; each replaces the registered channel
        of its name, or adds its name.

        Raises:
            ConfigurationError: ``TIDINGS_RATE_LIMITS`` is malformed or names a channel that is
                neither registered nor given.
        """
        self.host = host
        self.settings = host.settings
        #: where the workers count sends
        self.counters = host.counters
        self.store = pipeline_store(host)
        self.renderer = Renderer(self.store.get_template)
        self.registry = registry if registry is not None else ChannelRegistry()
        self._given = list(channels or [])
        for given in self._given:
            if not isinstance(given, Channel) or not isinstance(getattr(given, "name", None), str):
                raise ConfigurationError(f"{given!r} is not a Channel with a name")
            if not valid_channel_name(given.name):
                raise ConfigurationError(
                    f"channel {given.name!r}: a channel's name is lower-case letters, digits "
                    f"and _, starting with a letter, at most {MAX_CHANNEL_NAME_LENGTH} long"
                )
        #: every name a message, a preference or a rate limit may use, in documented order
        self.names = ordered([*self.registry.names(), *(c.name for c in self._given)])
        try:
            self.limits = parse_rate_limits(self.settings.rate_limits, self.names)
        except ConfigurationError as exc:
            raise ConfigurationError(
                f"TIDINGS_RATE_LIMITS: {exc} (channels: {', '.join(self.names)})"
            ) from None
        #: the channels that can send, by name (a name without one fails its deliveries)
        self.channels: dict[str, Channel] = {}
        self.workers: list[Worker] = []
        #: silent badge updates to the users' phones (none until the channels are built)
        self.badges = BadgeSync([], 0)
        self._tasks: list[asyncio.Task[None]] = []
        self._wakes: set[asyncio.Task[None]] = set()
        #: the links of emails' List-Unsubscribe headers (None without TIDINGS_PUBLIC_URL)
        self.links: UnsubscribeLinks | None = None
        self._started = False
        self.status_events = StatusEvents(host, self.store)  # delivery-status webhooks

    async def start(self) -> None:
        if self._started:
            return
        chosen = await build_channels(self.host, self.registry, self._given)
        for channel in chosen.values():
            await channel.start()
        self.channels = chosen
        self.badges = BadgeSync(
            [c for c in chosen.values() if isinstance(c, BadgeChannel)],
            self.settings.badge_sync_interval,
        )
        if self.settings.public_url:  # emails carry one-click unsubscribe links
            key = await self.host.store.get_or_create_key(KEY_NAME, new_key)
            self.links = UnsubscribeLinks(
                key, self.settings.public_url, self.settings.unsubscribe_ttl
            )
        await self.host.bus.subscribe(BUS_CHANNEL)
        self._started = True
        if self.settings.workers:
            await self.status_events.start()
            self.workers = [
                Worker(self, f"{self.host.node_id}/w{n}") for n in range(self.settings.workers)
            ]
            self._tasks = [asyncio.create_task(w.run()) for w in self.workers]
            self._tasks.append(asyncio.create_task(self._control_loop()))

    def badge_changed(self, count: UnseenCount) -> None:
        """A count the node committed: every phone of the user gets it as its badge, at most
        once per ``TIDINGS_BADGE_SYNC_INTERVAL`` (:mod:`tidings.delivery.badges`)."""
        self.badges.changed(count)

    async def close(self) -> None:
        if not self._started:
            return
        self._started = False
        for worker in self.workers:
            worker.stop()
        await asyncio.gather(*(w.wait_stopped() for w in self.workers), return_exceptions=True)
        await self.status_events.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.badges.close()
        for channel in self.channels.values():
            await channel.close()

    def wake_all(self) -> Any:
        """Tell every node's workers that work is due (after a retry request)."""
        return self._announce({"type": WORK})

    async def check_topic(self, user_id: str, claims: dict[str, Any] | None, topic: str) -> None:
        """Raises TopicRefused unless the topic policy lets the user follow ``topic``
        (``claims`` ``None``: a service acts, trusted with any topic)."""
        check_topic(topic)
        if claims is not None and not await self.host.topic_policy.allowed(user_id, claims, topic):
            raise TopicRefused([topic])

    def vapid_public_key(self) -> str | None:
        """The web push channel's public key (``None`` when another channel replaced it)."""
        from tidings.delivery.channels.webpush import WebPushChannel

        channel = self.channels.get("web_push")
        return channel.public_key if isinstance(channel, WebPushChannel) else None

    # Bus events

    def on_event(self, event: dict[str, Any]) -> None:
        """A pipeline event from any node (the bus hands it over)."""
        if event["type"] == WORK:
            for worker in self.workers:
                worker.wake()
        elif event["type"] == TEMPLATE_CHANGED and isinstance(event.get("template_id"), str):
            self.renderer.forget(event["template_id"])

    async def _announce(self, event: dict[str, Any]) -> None:
        try:
            await self.host.bus.publish(BUS_CHANNEL, orjson.dumps(event))
        except BusError as exc:
            # Workers poll, and template caches expire: a lost event only costs a delay.
            logger.warning("pipeline event %s not published: %s", event["type"], exc)

    def _stale_backoff(self, attempt: int) -> float:
        """A delivery whose workers keep dying (a poison message) waits longer each time."""
        settings = self.settings
        return retry_delay(
            attempt,
            settings.pipeline_retry_base,
            settings.pipeline_retry_max,
            None,
            random.random(),
        )

    async def _control_loop(self) -> None:
        """Re-queue deliveries whose worker stopped renewing its lease (it died)."""
        interval = min(self.settings.pipeline_lease / 3, 5.0)
        while True:
            await asyncio.sleep(interval)
            try:
                stale = await self.store.requeue_stale(self._stale_backoff)
            except TidingsError as exc:
                logger.warning("stale-delivery check failed: %s", exc)
                continue
            if stale:
                logger.warning("%d deliveries went stale (worker lost); queued again", stale)
                for worker in self.workers:
                    worker.wake()

    # Messages

    async def create_message(
        self, message: NewMessage, *, conn: Any = None
    ) -> tuple[Message, bool]:
        """Write the message and its deliveries; (message, created). With ``conn`` (the
        application's asyncpg or SQLAlchemy connection, in a transaction; PostgreSQL), in
        that transaction: the workers are woken once it commits, and nothing is sent if it
        rolls back.

        Raises:
            TemplateFailure: unknown template, or content that does not compile or render.
            Conflict: the idempotency key was used with another body.
            InvalidArgument: an unknown channel name, or a topic with too many subscribers.
            StoreUnavailable: nothing was written.
        """
        self.check_channels(message.channels)
        if message.category is not None:
            check_category(message.category)
        check_escalation(message.channels, message.escalate)
        check_digest(
            message.channels, message.digest, escalate=message.escalate, send_at=message.send_at
        )
        # Rendered once now, so that a broken template is refused before anything is written
        # (as the digest of this one message, when it has a digest step).
        values = message.data
        if message.digest is not None:
            values = digest_values(message.data, [message.data])
        await self.renderer.render(
            message.template_id, message.content, values, user_id="", channel=""
        )
        raw = notice = None
        if conn is not None:
            transactions = self.host.transactional
            transactions.on_work = self._woken_by_commit
            raw, notice = await transactions.joined(conn)
        now = utcnow()
        since = {c: self.limits[c].since(now) for c in self.limits}
        created = await self.store.create_message(
            message,
            counted_channels(message, self.limits),
            since,
            lambda recipients: self._plan(message, recipients),
            self.settings.max_recipients
            if message.topic is None
            else self.settings.max_topic_recipients,
            conn=raw,
            notice=notice,
        )
        if conn is None and created[1] and created[0].counts.get(PENDING):
            await self._announce({"type": WORK, "channels": list(message.channels)})
        return created

    def _woken_by_commit(self) -> None:
        """A transaction that posted messages committed: every node's workers look now."""
        task = asyncio.get_running_loop().create_task(self.wake_all())
        self._wakes.add(task)
        task.add_done_callback(self._wakes.discard)

    async def post(
        self,
        channels: Sequence[str],
        *,
        user_ids: Sequence[str] | None = None,
        topic: str | None = None,
        template_id: str | None = None,
        content: Content | None = None,
        data: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
        critical: bool = False,
        client_id: str = "embedded",
        delay: float | None = None,
        send_at: datetime | None = None,
        escalate: Escalation | None = None,
        digest: Digest | None = None,
        category: str | None = None,
        transactional: bool = False,
        conn: Any = None,
    ) -> Message:
        """Post a message from Python (what ``POST /messages`` does for services)::

            await tidings.pipeline.post(
                ["in_app", "email"], user_ids=["alice"], template_id="order-shipped",
                data={"order": 42}, idempotency_key="order-42-shipped",
            )

        ``delay`` (seconds) or ``send_at`` (an aware datetime): no delivery is sent before
        then (the ``delay`` step, docs/pipeline.md). ``escalate``: the deliveries on its
        channels go ``after`` seconds, only if the in-app notification was not seen (read,
        acknowledged) by then. ``digest``: the deliveries on its channels of messages with its
        key to one user within its window go as one per channel, rendered over them all.
        ``category``: what it is about (users turn categories off per channel; an email's
        unsubscribe link turns its category off). ``transactional``: an email the user cannot
        unsubscribe from (no ``List-Unsubscribe`` header).
        ``conn``: the application's connection in a transaction (PostgreSQL): the message is
        written in it, and exists exactly when it commits (docs/deployment.md).

        Raises:
            InvalidArgument: unknown channels, not exactly one of ``user_ids``/``topic`` or
                of ``template_id``/``content``, too many recipients, a delay out of range.
            TemplateFailure: the template is unknown or does not render.
            Conflict: ``idempotency_key`` was used with other arguments.
        """
        if (user_ids is None) == (topic is None):
            raise InvalidArgument("give exactly one of user_ids and topic")
        if (template_id is None) == (content is None):
            raise InvalidArgument("give exactly one of template_id and content")
        users = None if user_ids is None else tuple(dict.fromkeys(user_ids))
        if users is not None and not 0 < len(users) <= self.settings.max_recipients:
            raise InvalidArgument(f"1 to {self.settings.max_recipients} user ids per message")
        values = data or {}
        problem = message_data_problem(values)
        if problem is not None:
            raise InvalidArgument(problem)
        when = send_time(until=send_at, seconds=delay, now=utcnow())
        request = {
            "channels": list(channels),
            "recipients": {"user_ids": users, "topic": topic},
            "template_id": template_id,
            "content": content.to_dict() if content else None,
            "data": values,
            "critical": critical,
        }
        if when is not None:  # (no key otherwise: the bodies of undelayed messages keep their hash)
            request["delay"] = {"until": send_at, "seconds": delay}
        if escalate is not None:
            request["escalate"] = escalate.to_dict()
        if digest is not None:
            request["digest"] = digest.to_dict()
        if category is not None:
            request["category"] = category
        if transactional:
            request["transactional"] = True
        message, _ = await self.create_message(
            NewMessage(
                client_id,
                tuple(dict.fromkeys(channels)),
                users,
                topic,
                template_id,
                content,
                values,
                critical,
                idempotency_key,
                body_hash(request),
                when,
                escalate,
                digest,
                category,
                transactional,
            ),
            conn=conn,
        )
        return message

    def check_channels(self, channels: Iterable[str]) -> tuple[str, ...]:
        """``channels`` once each, in order, when there is at least one and each is a channel
        name of this pipeline (registered or given; configured or not).

        Raises:
            InvalidArgument: none, or a name no channel has; the message lists the names.
        """
        given = tuple(dict.fromkeys(channels))
        unknown = [name for name in given if name not in self.names]
        if unknown or not given:
            problem = f"unknown channel {unknown[0]!r}; " if unknown else ""
            raise InvalidArgument(f"{problem}channels must be among {', '.join(self.names)}")
        return given

    def _plan(self, message: NewMessage, recipients: list[Recipient]) -> list[PlannedDelivery]:
        planned = plan(
            message,
            recipients,
            limits=self.limits,
            available={name: True for name in self.channels},
            needs_address={name: c.needs_address for name, c in self.channels.items()},
            validate=self.validate,
        )
        quiet = {r.user_id: r.quiet for r in recipients if r.quiet is not None}
        return scheduled(
            planned,
            message.send_at,
            quiet,
            critical=message.critical,
            now=utcnow(),
            escalate=message.escalate,
            digest=message.digest,
            digests={r.user_id: r.digests for r in recipients if r.digests},
        )

    def extra_headers(self, claim: Claim) -> dict[str, str]:
        """The headers an email of ``claim`` carries beyond its own: a one-click unsubscribe
        link (RFC 8058) unless the message is transactional or the node has no public URL."""
        if claim.channel != "email" or claim.transactional or self.links is None:
            return {}
        return self.links.headers(claim.user_id, claim.channel, claim.category)

    async def escalation_met(self, claim: Claim) -> str | None:
        """Why a delivery of an ``escalate`` step is not to be sent (:func:`escalation_met`)."""
        return await escalation_met(claim, self.host.store)

    def validate(self, channel: str, address: Any) -> Any:
        """The address in normal form for ``channel``.

        Raises:
            InvalidAddress: it is not usable there (or the channel is not configured).
        """
        found = self.channels.get(channel)
        if found is None:
            raise InvalidAddress(f"the {channel} channel is not configured on this server")
        return found.validate(address)


def body_hash(body: Any) -> str:
    """Digest of a request body, independent of key order."""
    return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()


__all__ = [
    "Pipeline",
    "TemplateFailure",
    "body_hash",
    "build_channels",
    "default_channels",
    "pipeline_store",
    "retry_at",
    "retry_delay",
]
