"""The SMS channel: a generic adapter for an SMS gateway with an HTTP API."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, ClassVar

import httpx
import orjson

from tidings.delivery.channels._net import (
    HttpChannel,
    check_http_url,
    encode_json,
    raise_for_status,
)
from tidings.delivery.channels.base import Outgoing
from tidings.errors import ConfigurationError, InvalidAddress

if TYPE_CHECKING:
    from tidings.delivery.ports import PipelineHost

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
    """

    name: ClassVar[str] = "sms"

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        sender: str | None = None,
        timeout: float = 10.0,
    ) -> None:
        super().__init__(timeout=timeout, allow_private=True)
        try:
            self.url = check_http_url(url, allow_private=True, what="SMS provider URL")
        except InvalidAddress as exc:
            raise ConfigurationError(str(exc)) from exc
        self.token = token
        self.sender = sender

    @classmethod
    async def from_settings(cls, host: PipelineHost) -> SmsChannel | None:
        """``TIDINGS_SMS_URL``, ``_TOKEN`` and ``_FROM``; ``None`` without a URL."""
        settings = host.settings
        if not settings.sms_url:
            return None
        return cls(
            settings.sms_url,
            token=settings.sms_token,
            sender=settings.sms_from,
            timeout=settings.provider_timeout,
        )

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

    async def send(self, outgoing: Outgoing) -> str | None:
        body, headers = self.build_request(outgoing)
        response = await self.post(
            self.url,
            content=encode_json(body),
            headers={"content-type": "application/json", **headers},
        )
        # the provider is the operator's own: its words help whoever reads last_error
        raise_for_status(response, detail=True)
        return self.parse_response(response)
