"""The webhook channel: a signed JSON POST to the user's URL, per Standard Webhooks.

Each request carries ``webhook-id`` (the delivery id, the same on every attempt so that a
receiver can drop a repeat), ``webhook-timestamp`` (unix seconds) and ``webhook-signature``
(``v1,`` + base64 HMAC-SHA256 of ``{id}.{timestamp}.{body}``), as specified on
https://www.standardwebhooks.com; any Standard Webhooks library verifies it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import time
from typing import TYPE_CHECKING, Any, ClassVar

from tidings.delivery.channels._net import (
    HttpChannel,
    check_http_url,
    encode_json,
    raise_for_status,
)
from tidings.delivery.channels.base import Outgoing
from tidings.errors import ConfigurationError

if TYPE_CHECKING:
    from tidings.delivery.ports import PipelineHost

#: the store's key under which a generated signing secret is kept
SECRET_KEY = "webhook_secret"

SECRET_PREFIX = "whsec_"
# the spec's bounds on the key behind a secret
_MIN_KEY_BYTES = 24
_MAX_KEY_BYTES = 64


def generate_webhook_secret() -> str:
    """A new signing secret: ``whsec_`` and the base64 of 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode("ascii")


def _decode_secret(secret: str) -> bytes:
    if not isinstance(secret, str):
        raise ConfigurationError("the webhook secret must be a string")
    encoded = secret.removeprefix(SECRET_PREFIX)
    try:
        key = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ConfigurationError("the webhook secret must be 'whsec_' followed by base64") from exc
    if not _MIN_KEY_BYTES <= len(key) <= _MAX_KEY_BYTES:
        raise ConfigurationError(
            f"the webhook secret must hold {_MIN_KEY_BYTES} to {_MAX_KEY_BYTES} bytes, "
            f"not {len(key)}; make one with generate_webhook_secret()"
        )
    return key


class WebhookChannel(HttpChannel):
    """POSTs each delivery as signed JSON to the URL the user gave.

    Unless ``allow_private``, a URL whose host is (or resolves to) a loopback, private,
    link-local, multicast, reserved or unspecified address is refused, so that users cannot
    make the server call its own network.
    """

    name: ClassVar[str] = "webhook"

    def __init__(self, secret: str, *, timeout: float = 10.0, allow_private: bool = False) -> None:
        super().__init__(timeout=timeout, allow_private=allow_private)
        self._key = _decode_secret(secret)

    @classmethod
    async def from_settings(cls, host: PipelineHost) -> WebhookChannel:
        """``TIDINGS_WEBHOOK_SECRET``, or one generated once and kept in the store."""
        settings = host.settings
        secret = settings.webhook_secret or await host.store.get_or_create_key(
            SECRET_KEY, generate_webhook_secret
        )
        return cls(
            secret,
            timeout=settings.provider_timeout,
            allow_private=settings.allow_private_addresses,
        )

    def validate(self, address: Any) -> str:
        return check_http_url(address, allow_private=self._allow_private, what="webhook URL")

    def sign(self, webhook_id: str, timestamp: int, body: bytes) -> dict[str, str]:
        """The three Standard Webhooks headers for ``body``."""
        signed = f"{webhook_id}.{timestamp}.".encode() + body
        digest = hmac.new(self._key, signed, hashlib.sha256).digest()
        return {
            "webhook-id": webhook_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": "v1," + base64.b64encode(digest).decode("ascii"),
        }

    async def send(self, outgoing: Outgoing) -> str | None:
        rendered = outgoing.rendered
        body = encode_json(
            {
                "type": "tidings.message",
                "message_id": outgoing.message_id,
                "delivery_id": outgoing.delivery_id,
                "user_id": outgoing.user_id,
                "subject": rendered.subject,
                "text": rendered.text,
                "html": rendered.html,
                "data": rendered.data,
                "attempt": outgoing.attempt,
            }
        )
        headers = {
            "content-type": "application/json",
            **self.sign(outgoing.delivery_id, int(time.time()), body),
        }
        response = await self.post(outgoing.address, content=body, headers=headers)
        raise_for_status(response)
        # the receiver gives no id of its own: webhook-id (the delivery id) is the reference
        return None
