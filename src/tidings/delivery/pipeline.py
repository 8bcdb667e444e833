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
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import orjson

from tidings.auth.topics import check_topic
from tidings.core.lifecycle import Lifecycle
from tidings.core.limits import MAX_TEMPLATE_ID_LENGTH
from tidings.core.models import utcnow
from tidings.delivery.channels.base import CHANNEL_NAMES, Channel
from tidings.delivery.models import (
    PENDING,
    Content,
    Message,
    NewMessage,
    PlannedDelivery,
    Preferences,
    Template,
    message_data_problem,
)
from tidings.delivery.planner import Recipient, counted_channels, parse_rate_limits, plan
from tidings.delivery.store import PipelineStore
from tidings.delivery.templates import Renderer
from tidings.errors import (
    BusError,
    ConfigurationError,
    InvalidAddress,
    InvalidArgument,
    TemplateFailure,
    TidingsError,
    TopicRefused,
)

if TYPE_CHECKING:
    from tidings.delivery.worker import Worker
    from tidings.node.tidings import Tidings

logger = logging.getLogger("tidings.delivery")

#: bus channel of the pipeline's events: work queued, a template changed
BUS_CHANNEL = "pipeline"
WORK = "pipeline-work"
TEMPLATE_CHANGED = "pipeline-template-changed"
WEBHOOK_KEY = "webhook_secret"
VAPID_KEY = "vapid_private_key"
MAX_TEMPLATE_ID = MAX_TEMPLATE_ID_LENGTH


def pipeline_store(tidings: Tidings) -> PipelineStore:
    """The pipeline's tables on the node's store."""
    from tidings.storage.sqlite import SqliteStore

    if isinstance(tidings.store, SqliteStore):
        from tidings.delivery.sqlite import SqlitePipelineStore

        return SqlitePipelineStore(tidings.store)
    from tidings.storage.postgres import PostgresStore

    if isinstance(tidings.store, PostgresStore):
        from tidings.delivery.postgres import PostgresPipelineStore

        return PostgresPipelineStore(tidings.store)
    raise ConfigurationError(f"the pipeline has no tables for {type(tidings.store).__name__}")


async def default_channels(tidings: Tidings) -> list[Channel]:
    """The channels the settings configure; generated keys are kept in the store."""
    from tidings.delivery.channels.email import EmailChannel
    from tidings.delivery.channels.inapp import InAppChannel
    from tidings.delivery.channels.sms import SmsChannel
    from tidings.delivery.channels.webhook import WebhookChannel, generate_webhook_secret
    from tidings.delivery.channels.webpush import WebPushChannel, generate_vapid_private_key

    settings, store = tidings.settings, tidings.store
    timeout, private = settings.provider_timeout, settings.allow_private_addresses
    webhook_secret = settings.webhook_secret or await store.get_or_create_key(
        WEBHOOK_KEY, generate_webhook_secret
    )
    vapid_key = settings.vapid_private_key or await store.get_or_create_key(
        VAPID_KEY, generate_vapid_private_key
    )
    channels: list[Channel] = [
        InAppChannel(tidings),
        WebhookChannel(webhook_secret, timeout=timeout, allow_private=private),
        WebPushChannel(vapid_key, settings.vapid_subject, timeout=timeout, allow_private=private),
    ]
    if settings.smtp_url:
        channels.append(EmailChannel(settings.smtp_url, settings.email_from, timeout=timeout))
    if settings.sms_url:
        channels.append(
            SmsChannel(
                settings.sms_url,
                token=settings.sms_token,
                sender=settings.sms_from,
                timeout=timeout,
            )
        )
    return channels


class Pipeline(Lifecycle):
    """The pipeline of one node."""

    def __init__(self, tidings: Tidings, channels: Sequence[Channel] | None = None) -> None:
        self.tidings = tidings
        self.settings = tidings.settings
        self.store = pipeline_store(tidings)
        self.renderer = Renderer(self.store.get_template)
        self.limits = parse_rate_limits(self.settings.rate_limits, CHANNEL_NAMES)
        self._given = list(channels or [])
        self.channels: dict[str, Channel] = {}
        self.workers: list[Worker] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._started = False

    async def start(self) -> None:
        if self._started:
            return
        chosen = {c.name: c for c in await default_channels(self.tidings)}
        chosen.update({c.name: c for c in self._given})  # the application's replace ours
        unknown = set(chosen) - set(CHANNEL_NAMES)
        if unknown:
            raise ConfigurationError(f"unknown channel names: {', '.join(sorted(unknown))}")
        for channel in chosen.values():
            await channel.start()
        self.channels = chosen
        await self.tidings.bus.subscribe(BUS_CHANNEL)
        self._started = True
        if self.settings.workers:
            from tidings.delivery.worker import Worker

            self.workers = [
                Worker(self, f"{self.tidings.node_id}/w{n}") for n in range(self.settings.workers)
            ]
            self._tasks = [asyncio.create_task(w.run()) for w in self.workers]
            self._tasks.append(asyncio.create_task(self._control_loop()))

    async def close(self) -> None:
        if not self._started:
            return
        self._started = False
        for worker in self.workers:
            worker.stop()
        await asyncio.gather(*(w.wait_stopped() for w in self.workers), return_exceptions=True)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for channel in self.channels.values():
            await channel.close()

    def wake_all(self) -> Any:
        """Tell every node's workers that work is due (after a retry request)."""
        return self._announce({"type": WORK})

    async def check_topic(self, user_id: str, claims: dict[str, Any] | None, topic: str) -> None:
        """Raises TopicRefused unless the topic policy lets the user follow ``topic``
        (``claims`` ``None``: a service acts, trusted with any topic)."""
        check_topic(topic)
        if claims is not None and not await self.tidings.topic_policy.allowed(
            user_id, claims, topic
        ):
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
            await self.tidings.bus.publish(BUS_CHANNEL, orjson.dumps(event))
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

    async def create_message(self, message: NewMessage) -> tuple[Message, bool]:
        """Write the message and its deliveries; (message, created).

        Raises:
            TemplateFailure: unknown template, or content that does not compile or render.
            Conflict: the idempotency key was used with another body.
            InvalidArgument: a topic with too many subscribers.
            StoreUnavailable: nothing was written.
        """
        # Rendered once now, so that a broken template is refused before anything is written.
        await self.renderer.render(
            message.template_id, message.content, message.data, user_id="", channel=""
        )
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
        )
        if created[1] and created[0].counts.get(PENDING):
            await self._announce({"type": WORK, "channels": list(message.channels)})
        return created

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
    ) -> Message:
        """Post a message from Python (what ``POST /messages`` does for services)::

            await tidings.pipeline.post(
                ["in_app", "email"], user_ids=["alice"], template_id="order-shipped",
                data={"order": 42}, idempotency_key="order-42-shipped",
            )

        Raises:
            InvalidArgument: unknown channels, not exactly one of ``user_ids``/``topic`` or
                of ``template_id``/``content``, too many recipients.
            TemplateFailure: the template is unknown or does not render.
            Conflict: ``idempotency_key`` was used with other arguments.
        """
        unknown = set(channels) - set(CHANNEL_NAMES)
        if unknown or not channels:
            raise InvalidArgument(f"channels must be among {', '.join(CHANNEL_NAMES)}")
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
        request = {
            "channels": list(channels),
            "recipients": {"user_ids": users, "topic": topic},
            "template_id": template_id,
            "content": content.to_dict() if content else None,
            "data": values,
            "critical": critical,
        }
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
            )
        )
        return message

    def _plan(self, message: NewMessage, recipients: list[Recipient]) -> list[PlannedDelivery]:
        return plan(
            message,
            recipients,
            limits=self.limits,
            available={name: True for name in self.channels},
            needs_address={name: c.needs_address for name, c in self.channels.items()},
            validate=self.validate,
        )

    def validate(self, channel: str, address: Any) -> Any:
        """The address in normal form for ``channel``.

        Raises:
            InvalidAddress: it is not usable there (or the channel is not configured).
        """
        found = self.channels.get(channel)
        if found is None:
            raise InvalidAddress(f"the {channel} channel is not configured on this server")
        return found.validate(address)

    # Templates

    async def put_template(self, template_id: str, content: Content) -> tuple[Template, bool]:
        _check_template_id(template_id)
        self.renderer.compile(content)  # raises TemplateFailure before anything is stored
        result = await self.store.put_template(template_id, content)
        self.renderer.forget(template_id)
        await self._announce({"type": TEMPLATE_CHANGED, "template_id": template_id})
        return result

    async def delete_template(self, template_id: str) -> bool:
        deleted = await self.store.delete_template(template_id)
        self.renderer.forget(template_id)
        if deleted:
            await self._announce({"type": TEMPLATE_CHANGED, "template_id": template_id})
        return deleted

    # Preferences

    async def set_contact(self, user_id: str, channel: str, address: Any) -> Any:
        """Store a contact point in normal form; ``None`` removes it.

        Raises:
            InvalidAddress: the address cannot be used on this channel.
        """
        if channel == "in_app":
            raise InvalidAddress("in-app deliveries need no contact point")
        normal = None if address is None else self.validate(channel, address)
        await self.store.set_contact(user_id, channel, normal)
        return normal

    async def preferences(self, user_id: str) -> Preferences:
        return await self.store.preferences(user_id)


def body_hash(body: Any) -> str:
    """Digest of a request body, independent of key order."""
    return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()


def _check_template_id(template_id: str) -> None:
    if not template_id or len(template_id) > MAX_TEMPLATE_ID or not template_id.isprintable():
        raise InvalidArgument(f"template ids are 1 to {MAX_TEMPLATE_ID} printable characters")


def retry_delay(attempt: int, base: float, cap: float, hint: float | None, rand: float) -> float:
    """Seconds before try ``attempt + 1``: full jitter over base * 2^(attempt-1), capped; a
    provider's ``Retry-After`` is a floor."""
    ceiling = min(cap, base * 2.0 ** max(attempt - 1, 0))
    delay = ceiling * rand
    if hint is not None:
        delay = max(delay, min(hint, cap))
    return delay


def retry_at(delay: float) -> datetime:
    return utcnow() + timedelta(seconds=delay)


__all__ = ["Pipeline", "TemplateFailure", "body_hash", "pipeline_store"]
