"""The providers' inbound callbacks: each request authenticated as its provider documents,
read into :class:`ProviderEvent` s, and applied to the deliveries they are about.

- Twilio's status callbacks (``POST /providers/twilio/status``): ``X-Twilio-Signature``
  checked with the auth token over the URL Twilio was given (``TIDINGS_PUBLIC_URL`` and the
  route, as :class:`~.twilio.TwilioProvider` sends it) and the form's parameters.
- Postmark's webhooks (``POST /providers/postmark/events``): the basic-auth credentials set in
  the webhook's URL, ``TIDINGS_POSTMARK_WEBHOOK_USER`` / ``_PASSWORD``.
- SES's events through Amazon SNS (``POST /providers/ses/events``): the SNS message's
  signature (:mod:`.sns`), of the topic ``TIDINGS_SES_SNS_TOPIC_ARN``.

An event finds its deliveries by the provider's message id (the delivery's ``provider_id``)
and channel: ``delivered`` adds a history entry; a permanent bounce (``bounced``) or an
undelivered SMS (``undelivered``) ends the delivery ``failed`` with the provider's words; a
complaint (``complained``) adds a history entry and switches the channel off for the user.
Nothing is written for a request that fails its check.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

import orjson

from tidings.delivery.channels.phones import push_ssl_context
from tidings.delivery.channels.providers.events import CallbackRefused, ProviderEvent
from tidings.delivery.channels.providers.postmark import postmark_events
from tidings.delivery.channels.providers.ses import ses_events
from tidings.delivery.channels.providers.sns import SnsVerifier
from tidings.delivery.channels.providers.twilio import (
    STATUS_PATH,
    twilio_events,
    valid_twilio_signature,
)

if TYPE_CHECKING:
    from tidings.delivery.ports import PipelineSettings

logger = logging.getLogger("tidings.delivery")


class EventStore(Protocol):
    """What applying events writes (the pipeline's store)."""

    async def record_provider_event(
        self, channel: str, provider_id: str, reason: str, detail: str, *, fail: bool
    ) -> list[tuple[str, str, bool]]: ...
    async def set_channel(self, user_id: str, channel: str, enabled: bool) -> None: ...


@dataclass(frozen=True, slots=True)
class Applied:
    """What a callback did: the events it carried, the deliveries they were about."""

    events: int
    deliveries: int


class ProviderCallbacks:
    """Checks and applies the providers' callbacks for one node."""

    def __init__(self, settings: PipelineSettings, store: EventStore) -> None:
        self.settings = settings
        self.store = store
        self._sns: SnsVerifier | None = None

    async def apply(self, events: Iterable[ProviderEvent]) -> Applied:
        """Record each event on its deliveries; a complaint switches the user's channel off."""
        count = found = 0
        for event in events:
            count += 1
            deliveries = await self.store.record_provider_event(
                event.channel, event.provider_id, event.reason, event.detail, fail=event.fails
            )
            if not deliveries:
                logger.info(
                    "%s %s event for unknown message %r ignored",
                    event.provider,
                    event.reason,
                    event.provider_id,
                )
            found += len(deliveries)
            if event.complaint:  # once: a repeat must not undo the user turning it back on
                for user_id in dict.fromkeys(user for _, user, now in deliveries if now):
                    await self.store.set_channel(user_id, event.channel, False)
        return Applied(count, found)

    async def twilio(
        self, url: str, params: Sequence[tuple[str, str]], signature: str | None
    ) -> Applied:
        """A status callback: ``url`` as the request reached the node, its form ``params``.

        Raises:
            CallbackRefused: 404 without an auth token, 403 for a wrong signature.
        """
        token = self.settings.twilio_auth_token
        if not token:
            raise CallbackRefused(404, "Twilio callbacks need TIDINGS_TWILIO_AUTH_TOKEN")
        signed_url = url
        if self.settings.public_url:  # the URL Twilio was given, whatever proxies did to it
            query = urlsplit(url).query
            signed_url = self.settings.public_url.rstrip("/") + STATUS_PATH
            signed_url += f"?{query}" if query else ""
        if not valid_twilio_signature(token, signed_url, params, signature):
            raise CallbackRefused(403, "the X-Twilio-Signature does not match")
        return await self.apply(twilio_events(dict(params)))

    async def postmark(self, authorization: str | None, body: bytes) -> Applied:
        """A webhook with its ``Authorization`` header.

        Raises:
            CallbackRefused: 404 without credentials set, 401 for others, 400 for a body
                that is not JSON.
        """
        user = self.settings.postmark_webhook_user
        password = self.settings.postmark_webhook_password
        if not user or not password:
            raise CallbackRefused(
                404,
                "Postmark webhooks need TIDINGS_POSTMARK_WEBHOOK_USER and "
                "TIDINGS_POSTMARK_WEBHOOK_PASSWORD",
            )
        if not _basic_auth_matches(authorization, user, password):
            raise CallbackRefused(401, "wrong or missing basic-auth credentials")
        return await self.apply(postmark_events(_json(body)))

    async def ses(self, body: bytes) -> Applied:
        """An SNS message (a notification of SES events, or a subscription's confirmation).

        Raises:
            CallbackRefused: 404 without a topic set, 403 for a message that does not verify,
                400 for a body that is not JSON.
        """
        verifier = self._verifier()
        message = _json(body)
        if not isinstance(message, dict):
            raise CallbackRefused(400, "the body is not an SNS message")
        await verifier.verify(message)
        kind = message.get("Type")
        if kind == "SubscriptionConfirmation":
            await verifier.confirm(message)
            logger.info("confirmed the SNS subscription to %s", verifier.topic_arn)
            return Applied(0, 0)
        if kind != "Notification":
            return Applied(0, 0)
        return await self.apply(ses_events(_json(str(message.get("Message")).encode())))

    def _verifier(self) -> SnsVerifier:
        if self._sns is None:
            settings = self.settings
            topic = settings.ses_sns_topic_arn
            if not topic:
                raise CallbackRefused(404, "SES events need TIDINGS_SES_SNS_TOPIC_ARN")
            region = (
                settings.ses_region
                or os.environ.get("AWS_REGION")
                or os.environ.get("AWS_DEFAULT_REGION")
            )
            host = settings.ses_sns_cert_host or (f"sns.{region}.amazonaws.com" if region else "")
            if not host:
                raise CallbackRefused(404, "SES events need TIDINGS_SES_REGION")
            self._sns = SnsVerifier(
                topic_arn=topic,
                cert_host=host,
                timeout=settings.provider_timeout,
                ssl_context=push_ssl_context(settings.push_ca_file),
            )
        return self._sns


def _basic_auth_matches(header: str | None, user: str, password: str) -> bool:
    scheme, _, value = (header or "").partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        given = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        return False
    return hmac.compare_digest(given, f"{user}:{password}".encode())


def _json(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        raise CallbackRefused(400, "the body is not JSON") from None
