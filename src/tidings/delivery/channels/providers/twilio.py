"""The ``twilio`` SMS provider: Twilio's Programmable Messaging API.

Written from Twilio's documentation: the Message resource
(https://www.twilio.com/docs/messaging/api/message-resource: ``POST
/2010-04-01/Accounts/{AccountSid}/Messages.json``, HTTP basic authentication with the account
SID and auth token, form-encoded ``To``, ``From`` or ``MessagingServiceSid``, ``Body``,
``StatusCallback``; the answer's ``sid``; errors as ``{"code", "message", "status"}``), its
error dictionary (https://www.twilio.com/docs/api/errors) and "Secure webhooks"
(https://www.twilio.com/docs/usage/webhooks/webhooks-security: ``X-Twilio-Signature``, the
Base64 HMAC-SHA1, keyed with the auth token, of the URL followed by the POST parameters
sorted by name, each name followed by its value).

Transient: 429 and 5xx, 401/403 (error 20003, the account's credentials: the operator's to
fix) and error 20429 (too many requests). Permanent (``rejected``, with Twilio's code): any
other 4xx, such as 21211 (invalid ``To`` number), 21610 (the recipient replied STOP), 21614
(not a mobile number), 21408 (region not enabled).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ssl
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar
from urllib.parse import urlencode, urlsplit, urlunsplit

import httpx

from tidings.delivery.channels._net import RETRYABLE_STATUSES, retry_after
from tidings.delivery.channels.base import Outgoing
from tidings.delivery.channels.providers.base import Provider
from tidings.delivery.channels.providers.events import (
    DELIVERED,
    UNDELIVERED,
    ProviderEvent,
    detail,
    text,
)
from tidings.delivery.channels.providers.http import ProviderHttp, json_object, provider_url
from tidings.errors import DeliveryFailure, PermanentFailure, TransientFailure

#: Twilio error codes that another try (or provider) may get past
TRANSIENT_CODES = frozenset({20003, 20429, 20500, 20503})
#: the path of the status callback route (``api/providers.py``), below the node's public URL
STATUS_PATH = "/providers/twilio/status"


class TwilioProvider(Provider[Outgoing]):
    """Sends through Twilio; the message's ``sid`` is the provider id. ``sender`` is a phone
    number (``From``) or a messaging service SID (``MG…``, ``MessagingServiceSid``);
    ``status_callback`` the URL Twilio reports the message's status to (none without it)."""

    name: ClassVar[str] = "twilio"

    def __init__(
        self,
        account_sid: str,
        auth_token: str,
        sender: str,
        *,
        url: str = "https://api.twilio.com",
        status_callback: str | None = None,
        timeout: float = 10.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        base = provider_url(url, "TIDINGS_TWILIO_URL")
        self.url = f"{base}/2010-04-01/Accounts/{account_sid}/Messages.json"
        self._auth = (account_sid, auth_token)
        self.sender = sender
        self.status_callback = status_callback
        self._http = ProviderHttp(self.name, timeout=timeout, ssl_context=ssl_context)

    async def start(self) -> None:
        await self._http.start()

    async def close(self) -> None:
        await self._http.close()

    def form(self, outgoing: Outgoing) -> dict[str, str]:
        """The form that sends ``outgoing``."""
        form = {"To": str(outgoing.address), "Body": outgoing.rendered.text}
        form["MessagingServiceSid" if self.sender.startswith("MG") else "From"] = self.sender
        if self.status_callback:
            form["StatusCallback"] = self.status_callback
        return form

    async def send(self, message: Outgoing) -> str | None:
        response = await self._http.request(
            "POST",
            self.url,
            content=urlencode(self.form(message)).encode(),
            headers={
                "Accept": "application/json",
                "Content-Type": "application/x-www-form-urlencoded",
            },
            auth=self._auth,
        )
        data = json_object(response)
        if 200 <= response.status_code < 300:
            return text(data.get("sid")) or None
        raise twilio_failure(response, data)


def twilio_failure(response: httpx.Response, data: dict[str, Any]) -> DeliveryFailure:
    """The delivery failure a Twilio error answer means (the module's docstring says why)."""
    status = response.status_code
    code = data.get("code")
    words = detail(
        f"Twilio HTTP {status}",
        f"error {code}:" if code is not None else "",
        text(data.get("message")),
    )
    if status in (401, 403, *RETRYABLE_STATUSES) or status >= 500 or code in TRANSIENT_CODES:
        return TransientFailure("provider_error", words, retry_after(response))
    return PermanentFailure("rejected", words)


def twilio_signature(auth_token: str, url: str, params: Iterable[tuple[str, str]]) -> str:
    """``X-Twilio-Signature`` of a request to ``url`` with the POST ``params``: the Base64
    HMAC-SHA1 (keyed with the auth token) of the URL followed by each parameter's name and
    value, sorted by name (a repeated name's values sorted too, as Twilio's libraries do)."""
    signed = url + "".join(name + value for name, value in sorted(params))
    digest = hmac.new(auth_token.encode(), signed.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def valid_twilio_signature(
    auth_token: str, url: str, params: Iterable[tuple[str, str]], signature: str | None
) -> bool:
    """Whether ``signature`` is Twilio's for this request. As Twilio's own validators, the URL
    is also tried without its port, and with the scheme's default port (proxies differ)."""
    if not signature:
        return False
    pairs = list(params)
    expected = signature.encode()
    return any(
        hmac.compare_digest(twilio_signature(auth_token, candidate, pairs).encode(), expected)
        for candidate in _url_forms(url)
    )


def _url_forms(url: str) -> list[str]:
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:  # an IPv6 literal keeps its brackets
        host = f"[{host}]"
    default = 443 if parts.scheme == "https" else 80
    bare = urlunsplit(parts._replace(netloc=_netloc(parts.username, parts.password, host)))
    ported = urlunsplit(
        parts._replace(
            netloc=_netloc(parts.username, parts.password, f"{host}:{parts.port or default}")
        )
    )
    return list(dict.fromkeys([url, bare, ported]))


def _netloc(user: str | None, password: str | None, host: str) -> str:
    if user is None:
        return host
    return f"{user}:{password}@{host}" if password is not None else f"{user}@{host}"


def twilio_events(params: Mapping[str, str]) -> list[ProviderEvent]:
    """The event of one status callback (its form fields): ``delivered``, or
    ``undelivered``/``failed`` (the delivery fails, with Twilio's error code). The other
    statuses (queued, sending, sent, …) give none."""
    provider_id = params.get("MessageSid") or params.get("SmsSid") or ""
    status = params.get("MessageStatus") or params.get("SmsStatus") or ""
    if not provider_id:
        return []
    if status == "delivered":
        return [ProviderEvent("twilio", "sms", provider_id, DELIVERED, "delivered")]
    if status in ("undelivered", "failed"):
        code = params.get("ErrorCode")
        words = detail(status, f"(error {code})" if code else "", params.get("ErrorMessage"))
        return [ProviderEvent("twilio", "sms", provider_id, UNDELIVERED, words)]
    return []
