"""The SMS channel: through its providers in failover order (``TIDINGS_SMS_PROVIDERS``:
``http``, a generic adapter for an SMS gateway with an HTTP API, and ``twilio``;
:mod:`.providers`)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import httpx
import orjson

from tidings.delivery.channels._net import (
    HttpChannel,
    check_http_url,
    encode_json,
    raise_for_status,
)
from tidings.delivery.channels.base import Outgoing, Sent
from tidings.delivery.channels.phones import push_ssl_context
from tidings.delivery.channels.providers.base import (
    Provider,
    close_all,
    configured,
    require,
    send_in_order,
    start_all,
)
from tidings.delivery.channels.providers.twilio import STATUS_PATH, TwilioProvider
from tidings.errors import ConfigurationError, InvalidAddress

if TYPE_CHECKING:
    from tidings.delivery.ports import ChannelSettings, PipelineHost

# E.164: "+", a country code that does not start with 0, at most 15 digits in all
_E164 = re.compile(r"\+[1-9][0-9]{7,14}")
# what people write between digits: spaces, dashes, dots and parentheses
_SEPARATORS = re.compile(r"[\s\-.()]")


class SmsChannel(HttpChannel):
    """Sends each delivery as one JSON POST to an SMS provider's HTTP API::

        POST <url>
        Authorization: Bearer <token>          (when a token is set)
        Idempotency-Key: <delivery id>
        {"to": "+14155550123", "from": "<sender>", "text": "…", "idempotency_key": "<delivery id>"}

    (``from`` is left out when no sender is set.) Any 2xx answer is a success; the provider's
    message id is read from the JSON answer's ``id`` or ``message_id``. Other statuses are
    classified as for webhooks: 408, 425, 429 and 5xx are retried, 410 is ``gone``, any other
    status is ``rejected``.

    Another provider's format is a subclass away: override :meth:`build_request` (the JSON
    body and the extra headers of one delivery) and :meth:`parse_response` (the provider's
    message id from a 2xx answer). For example::

        class AcmeSms(SmsChannel):
            def build_request(self, outgoing):
                return {"msisdn": outgoing.address, "body": outgoing.rendered.text}, {
                    "X-Api-Key": self.token or ""
                }

            def parse_response(self, response):
                return response.json()["messages"][0]["ref"]

    The provider's URL is the operator's own setting, so it may be on a private network.

    That generic gateway is the ``http`` provider; ``providers`` (built by
    :meth:`from_settings` from ``TIDINGS_SMS_PROVIDERS``) puts others beside it or in its
    place, tried in order (:func:`~.providers.base.send_in_order`).
    """

    name: ClassVar[str] = "sms"

    def __init__(
        self,
        url: str | None = None,
        *,
        token: str | None = None,
        sender: str | None = None,
        timeout: float = 10.0,
        providers: Sequence[Provider[Outgoing]] | None = None,
    ) -> None:
        super().__init__(timeout=timeout, allow_private=True)
        self.url: str | None = None
        if url is not None:
            try:
                self.url = check_http_url(url, allow_private=True, what="SMS provider URL")
            except InvalidAddress as exc:
                raise ConfigurationError(str(exc)) from exc
        elif providers is None:
            raise ConfigurationError("the SMS channel needs a provider URL or providers")
        self.token = token
        self.sender = sender
        if providers is None:
            providers = [GatewayProvider()]
        if not providers:
            raise ConfigurationError("the SMS channel needs at least one provider")
        for provider in providers:
            if isinstance(provider, GatewayProvider):
                provider.channel = self
        self.providers: tuple[Provider[Outgoing], ...] = tuple(providers)

    @classmethod
    async def from_settings(cls, host: PipelineHost) -> SmsChannel | None:
        """``TIDINGS_SMS_PROVIDERS`` (by default ``http`` when ``TIDINGS_SMS_URL`` is set):
        ``TIDINGS_SMS_URL``, ``_TOKEN`` and ``_FROM`` for ``http``, ``TIDINGS_TWILIO_*`` for
        ``twilio``; ``None`` without a provider.

        Raises:
            ConfigurationError: a provider is named without its settings (named in one line).
        """
        settings = host.settings
        names = configured(settings.sms_providers, "sms", "http" if settings.sms_url else None)
        if not names:
            return None
        url = None
        if "http" in names:
            url = require(settings.sms_url, "TIDINGS_SMS_URL", "sms", "http")
        return cls(
            url,
            token=settings.sms_token,
            sender=settings.sms_from,
            timeout=settings.provider_timeout,
            providers=[
                GatewayProvider() if name == "http" else _twilio(settings, settings.public_url)
                for name in names
            ],
        )

    async def start(self) -> None:
        await super().start()
        await start_all(self.providers)

    async def close(self) -> None:
        await close_all(self.providers)
        await super().close()

    def validate(self, address: Any) -> str:
        """The number in E.164 form (``+14155550123``); separators are dropped."""
        if not isinstance(address, str):
            raise InvalidAddress("a phone number must be a string")
        number = _SEPARATORS.sub("", address)
        if not _E164.fullmatch(number):
            raise InvalidAddress(
                f"{address!r} is not an international phone number: write it as + and the "
                "country code, then 8 to 15 digits in all (E.164)"
            )
        return number

    def build_request(self, outgoing: Outgoing) -> tuple[dict[str, Any], dict[str, str]]:
        """The JSON body and the extra HTTP headers that send ``outgoing``."""
        body: dict[str, Any] = {
            "to": outgoing.address,
            "text": outgoing.rendered.text,
            "idempotency_key": outgoing.delivery_id,
        }
        if self.sender is not None:
            body["from"] = self.sender
        headers = {"idempotency-key": outgoing.delivery_id}
        if self.token:
            headers["authorization"] = f"Bearer {self.token}"
        return body, headers

    def parse_response(self, response: httpx.Response) -> str | None:
        """The provider's message id from a 2xx answer, when it gives one."""
        try:
            payload = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(payload, dict):
            return None
        for key in ("id", "message_id"):
            value = payload.get(key)
            if isinstance(value, str | int) and not isinstance(value, bool):
                return str(value)
        return None

    async def send(self, outgoing: Outgoing) -> str | Sent | None:
        return await send_in_order(self.providers, outgoing, self._timeout)

    async def send_generic(self, outgoing: Outgoing) -> str | None:
        """Send through the generic gateway (``TIDINGS_SMS_URL``): the ``http`` provider."""
        if self.url is None:
            raise ConfigurationError("the http SMS provider needs TIDINGS_SMS_URL")
        body, headers = self.build_request(outgoing)
        response = await self.post(
            self.url,
            content=encode_json(body),
            headers={"content-type": "application/json", **headers},
        )
        # the provider is the operator's own: its words help whoever reads last_error
        raise_for_status(response, detail=True)
        return self.parse_response(response)


class GatewayProvider(Provider[Outgoing]):
    """The ``http`` provider: the channel's own generic gateway (:meth:`SmsChannel.send_generic`,
    so a subclass's :meth:`~SmsChannel.build_request` and :meth:`~SmsChannel.parse_response`
    apply)."""

    name: ClassVar[str] = "http"

    def __init__(self) -> None:
        #: set by the channel it is given to
        self.channel: SmsChannel | None = None

    async def send(self, message: Outgoing) -> str | None:
        assert self.channel is not None, "a GatewayProvider belongs to an SmsChannel"
        return await self.channel.send_generic(message)


def _twilio(settings: ChannelSettings, public_url: str | None) -> TwilioProvider:
    """The ``twilio`` provider as the settings configure it; its status callback under the
    node's public URL, when there is one."""
    sid = require(settings.twilio_account_sid, "TIDINGS_TWILIO_ACCOUNT_SID", "sms", "twilio")
    token = require(settings.twilio_auth_token, "TIDINGS_TWILIO_AUTH_TOKEN", "sms", "twilio")
    sender = require(settings.twilio_from, "TIDINGS_TWILIO_FROM", "sms", "twilio")
    return TwilioProvider(
        sid,
        token,
        sender,
        url=settings.twilio_url,
        status_callback=public_url.rstrip("/") + STATUS_PATH if public_url else None,
        timeout=settings.provider_timeout,
        ssl_context=push_ssl_context(settings.push_ca_file),
    )
