"""The ``postmark`` email provider: Postmark's email API, ``POST /email``.

Written from Postmark's documentation: "Sending email with API"
(https://postmarkapp.com/developer/user-guide/send-email-with-api: the JSON body ``From``,
``To``, ``Subject``, ``TextBody``, ``HtmlBody``, ``Headers`` as ``[{"Name", "Value"}]``,
``Metadata``; the ``X-Postmark-Server-Token`` header; ``MessageID`` and ``ErrorCode`` 0 in the
answer), the API overview's error codes (https://postmarkapp.com/developer/api/overview:
``401`` for a wrong token, ``422`` with an ``ErrorCode``, ``429`` too many requests, ``500``
and ``503``) and the webhooks (https://postmarkapp.com/developer/webhooks/webhooks-overview:
basic HTTP authentication in the webhook URL; the Delivery, Bounce and SpamComplaint
records).

Transient: 401 (the server token is the operator's to fix), 429, 5xx, and the ``ErrorCode``
405 ("not allowed to send": the account ran out of credits) and 100 (maintenance).
Permanent (``rejected``): any other 422, such as 406 (inactive recipient: it bounced hard or
complained before) or 300 (invalid email request), and any other 4xx.
"""

from __future__ import annotations

import ssl
from typing import Any, ClassVar

import httpx
import orjson

from tidings.delivery.channels._net import RETRYABLE_STATUSES, retry_after
from tidings.delivery.channels.providers.base import Provider
from tidings.delivery.channels.providers.events import (
    BOUNCED,
    COMPLAINED,
    DELIVERED,
    SOFT_BOUNCE,
    ProviderEvent,
    detail,
    text,
)
from tidings.delivery.channels.providers.http import ProviderHttp, json_object, provider_url
from tidings.delivery.channels.providers.mail import Mail
from tidings.errors import DeliveryFailure, PermanentFailure, TransientFailure

#: Postmark ErrorCodes that another try (or provider) may get past
TRANSIENT_CODES = frozenset({100, 405})
#: headers Postmark writes itself, or takes as fields of the body
OWN_HEADERS = frozenset({"subject", "from", "to", "date", "message-id"})
#: bounce types that are not worth another send to the address (with ``Inactive``)
HARD_BOUNCES = frozenset({"HardBounce", "BadEmailAddress", "ManuallyDeactivated"})


class PostmarkProvider(Provider[Mail]):
    """Sends through Postmark; Postmark's ``MessageID`` is the provider id."""

    name: ClassVar[str] = "postmark"

    def __init__(
        self,
        server_token: str,
        url: str = "https://api.postmarkapp.com",
        *,
        timeout: float = 10.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.url = provider_url(url, "TIDINGS_POSTMARK_URL") + "/email"
        self._token = server_token
        self._http = ProviderHttp(self.name, timeout=timeout, ssl_context=ssl_context)

    async def start(self) -> None:
        await self._http.start()

    async def close(self) -> None:
        await self._http.close()

    def body(self, mail: Mail) -> dict[str, Any]:
        """The JSON body that sends ``mail``: the same parts and headers as its MIME message."""
        body: dict[str, Any] = {
            "From": mail.sender,
            "To": mail.recipient,
            "Subject": mail.headers["Subject"],
            "TextBody": mail.text,
            "Headers": [
                {"Name": name, "Value": value}
                for name, value in mail.headers.items()
                if name.lower() not in OWN_HEADERS
            ],
            "Metadata": {
                "tidings_delivery": mail.outgoing.delivery_id,
                "tidings_message": mail.outgoing.message_id,
            },
        }
        if mail.html:
            body["HtmlBody"] = mail.html
        return body

    async def send(self, message: Mail) -> str | None:
        response = await self._http.request(
            "POST",
            self.url,
            content=orjson.dumps(self.body(message)),
            headers={
                "Accept": "application/json",
                "Content-Type": "application/json",
                "X-Postmark-Server-Token": self._token,
            },
        )
        data = json_object(response)
        if response.status_code == 200 and data.get("ErrorCode", 0) == 0:
            found = text(data.get("MessageID"))
            return found or None
        raise postmark_failure(response, data)


def postmark_failure(response: httpx.Response, data: dict[str, Any]) -> DeliveryFailure:
    """The delivery failure a Postmark error answer means (the module's docstring says why)."""
    status = response.status_code
    code = data.get("ErrorCode")
    words = detail(
        f"Postmark HTTP {status}",
        f"ErrorCode {code}:" if code is not None else "",
        text(data.get("Message")),
    )
    if status in (401, *RETRYABLE_STATUSES) or status >= 500 or code in TRANSIENT_CODES:
        return TransientFailure("provider_error", words, retry_after(response))
    return PermanentFailure("rejected", words)


def postmark_events(payload: Any) -> list[ProviderEvent]:
    """The event of one Postmark webhook (its JSON body, decoded): Delivery, Bounce (hard
    when Postmark deactivated the address or its type says so; else a soft bounce) or
    SpamComplaint. Other records (Open, Click, SubscriptionChange) give none."""
    if not isinstance(payload, dict):
        return []
    provider_id = text(payload.get("MessageID"))
    kind = text(payload.get("RecordType"))
    if not provider_id:
        return []
    if kind == "Delivery":
        event = (DELIVERED, detail(payload.get("Details") or "delivered"))
    elif kind == "Bounce":
        hard = payload.get("Inactive") is True or payload.get("Type") in HARD_BOUNCES
        event = (
            BOUNCED if hard else SOFT_BOUNCE,
            detail(payload.get("Type"), "-", payload.get("Description"), payload.get("Details")),
        )
    elif kind == "SpamComplaint":
        event = (COMPLAINED, detail(payload.get("Type") or "SpamComplaint"))
    else:
        return []
    return [ProviderEvent("postmark", "email", provider_id, *event)]
