"""The APNs channel: a delivery to every iPhone and iPad of the user, through Apple's push
notification service.

One HTTP/2 connection to APNs (:mod:`tidings.delivery.channels.http2`), multiplexed across
every send of the node and reused; each request carries a provider token, an ES256 JWT signed
with the team's auth key (.p8), made again after 50 minutes (APNs refuses one older than an
hour, and one changed more often than every 20 minutes). The user's tokens come from the
push-token registry (``/me/push-tokens``); a token APNs says is gone (410 ``Unregistered``, 400
``BadDeviceToken`` / ``DeviceTokenNotForTopic``) is removed from it. The badge is the user's
unseen count when the delivery is sent.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import TYPE_CHECKING, ClassVar

import orjson
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from hpack import NeverIndexedHeaderTuple
from joserfc import jwt
from joserfc.jwk import ECKey

from tidings.core.models import PushToken
from tidings.delivery.channels._net import retry_after
from tidings.delivery.channels.base import Outgoing
from tidings.delivery.channels.http2 import Http2Client, Http2Error
from tidings.delivery.channels.phones import (
    FAILED,
    RETRY,
    SENT,
    PhoneChannel,
    Push,
    json_field,
    push_ssl_context,
    short,
)
from tidings.errors import ConfigurationError

if TYPE_CHECKING:
    from tidings.delivery.ports import ChannelSettings, PipelineHost
    from tidings.storage import Store

#: APNs refuses a payload over 4 KiB (alert and background pushes)
MAX_PAYLOAD_BYTES = 4096
#: a provider token is made again after this many seconds (APNs: at most 60 minutes old, and
#: changed at most once every 20)
TOKEN_SECONDS = 50 * 60
#: APNs refuses a new provider token sooner than this after the last (TooManyProviderTokenUpdates)
MIN_TOKEN_SECONDS = 20 * 60
#: how long APNs keeps a push for a device that is offline
EXPIRATION_SECONDS = 24 * 3600
#: APNs reasons that mean the token will never work again: it leaves the registry
GONE = frozenset({"Unregistered", "BadDeviceToken", "DeviceTokenNotForTopic"})
#: reasons that mean the provider token must be made again (then the send is retried)
STALE_PROVIDER_TOKEN = frozenset({"ExpiredProviderToken", "InvalidProviderToken"})
#: silent badge updates replace each other on the phone
BADGE_COLLAPSE_ID = b"tidings-badge"
_IDS = uuid.UUID("8f5f4b1e-6a0e-4c52-9d3b-7c1e0c2a9a11")


def load_auth_key(path: str) -> ECKey:
    """The .p8 auth key at ``path``.

    Raises:
        ConfigurationError: it cannot be read or is not an EC P-256 private key.
    """
    try:
        with open(path, "rb") as file:
            pem = file.read()
    except OSError as exc:
        raise ConfigurationError(f"TIDINGS_APNS_KEY_FILE={path!r}: {exc.strerror}") from None
    try:
        key = load_pem_private_key(pem, password=None)
    except (ValueError, TypeError):
        key = None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise ConfigurationError(
            f"TIDINGS_APNS_KEY_FILE={path!r} is not an APNs auth key (a PKCS#8 PEM of an "
            "EC P-256 private key, as Apple's .p8 files are)"
        )
    return ECKey.import_key(pem)


class ApnsChannel(PhoneChannel):
    """Sends a delivery to each of the user's ``apns`` push tokens."""

    name: ClassVar[str] = "apns"
    provider: ClassVar[str] = "APNs"

    def __init__(
        self,
        store: Store,
        *,
        key: ECKey,
        key_id: str,
        team_id: str,
        topic: str,
        url: str = "https://api.push.apple.com",
        timeout: float = 10.0,
        ca_file: str | None = None,
    ) -> None:
        super().__init__(store)
        self.key = key
        self.key_id = key_id
        self.team_id = team_id
        self.topic = topic
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.ssl = push_ssl_context(ca_file)
        self._client: Http2Client | None = None
        self._provider_token: tuple[str, float] | None = None
        #: APNs called the current token expired or invalid: make another once allowed
        self._refused = False

    @classmethod
    async def from_settings(cls, host: PipelineHost) -> ApnsChannel | None:
        settings: ChannelSettings = host.settings
        if not settings.apns_key_file:
            return None
        for field in ("apns_key_id", "apns_team_id", "apns_topic"):
            if not getattr(settings, field):
                raise ConfigurationError(
                    f"TIDINGS_{field.upper()} is needed with TIDINGS_APNS_KEY_FILE"
                )
        return cls(
            host.store,
            key=load_auth_key(settings.apns_key_file),
            key_id=str(settings.apns_key_id),
            team_id=str(settings.apns_team_id),
            topic=str(settings.apns_topic),
            url=settings.apns_url,
            timeout=settings.provider_timeout,
            ca_file=settings.push_ca_file,
        )

    async def start(self) -> None:
        if self._client is None:
            try:
                self._client = Http2Client(self.url, self.ssl, self.timeout)
            except ValueError as exc:
                raise ConfigurationError(f"TIDINGS_APNS_URL: {exc}") from None

    async def close(self) -> None:
        await super().close()
        client, self._client = self._client, None
        if client is not None:
            await client.close()

    def provider_token(self) -> str:
        """The current provider token, made again once it is :data:`TOKEN_SECONDS` old, or
        once APNs refused it and it is :data:`MIN_TOKEN_SECONDS` old (APNs allows no more)."""
        now = time.time()
        current = self._provider_token
        age = now - current[1] if current else TOKEN_SECONDS
        if current is None or age >= TOKEN_SECONDS or (self._refused and age >= MIN_TOKEN_SECONDS):
            self._refused = False
            issued = int(now)
            token = jwt.encode(
                {"alg": "ES256", "kid": self.key_id},
                {"iss": self.team_id, "iat": issued},
                self.key,
            )
            current = self._provider_token = (token, float(issued))
        return current[0]

    async def push(self, outgoing: Outgoing, token: PushToken, badge: int) -> Push:
        """The delivery's alert to one token, with the user's unseen count as the badge."""
        payload = orjson.dumps(
            {
                "aps": {
                    "alert": {
                        "title": outgoing.rendered.subject or "",
                        "body": outgoing.rendered.text,
                    },
                    "badge": badge,
                    "sound": "default",
                },
                "tidings": {
                    "message_id": outgoing.message_id,
                    "delivery_id": outgoing.delivery_id,
                    "data": outgoing.rendered.data,
                },
            }
        )
        if len(payload) > MAX_PAYLOAD_BYTES:
            detail = f"{len(payload)} bytes of payload; APNs takes {MAX_PAYLOAD_BYTES}"
            return Push(FAILED, f"{short(token.token)}: {detail}", reason="payload_too_large")
        apns_id = uuid.uuid5(_IDS, f"{outgoing.delivery_id}:{token.token_id}")
        headers = [
            (b"apns-push-type", b"alert"),
            (b"apns-priority", b"10"),
            NeverIndexedHeaderTuple(b"apns-id", str(apns_id).encode()),  # one per request
        ]
        return await self._request(token, payload, headers)

    async def send_badge(self, user_id: str, badge: int) -> None:
        """A silent update of the badge on every phone of the user: a background push
        (priority 5), collapsed with the previous ones; tokens APNs calls gone are removed."""
        tokens = await self.badge_tokens(user_id)
        if not tokens:
            return
        payload = orjson.dumps({"aps": {"content-available": 1, "badge": badge}})
        headers = [
            (b"apns-push-type", b"background"),
            (b"apns-priority", b"5"),
            (b"apns-collapse-id", BADGE_COLLAPSE_ID),
        ]
        await asyncio.gather(*(self._request(token, payload, headers) for token in tokens))

    async def _request(
        self, token: PushToken, payload: bytes, extra: list[tuple[bytes, bytes]]
    ) -> Push:
        """One request to APNs for one token."""
        if self._client is None:
            await self.start()
        assert self._client is not None
        headers = [
            (b"authorization", b"bearer " + self.provider_token().encode()),
            (b"apns-topic", self.topic.encode()),
            (b"apns-expiration", str(int(time.time()) + EXPIRATION_SECONDS).encode()),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(payload)).encode()),
            *extra,
        ]
        try:
            # A request the closing connection never took is sent again by the client.
            response = await self._client.post(f"/3/device/{token.token}", headers, payload)
        except Http2Error as exc:
            return Push(RETRY, f"{short(token.token)}: {type(exc).__name__}: {exc}")
        if response.status == 200:
            apns_id = response.headers.get("apns-id")
            return Push(SENT, f"{short(token.token)}: apns-id {apns_id}", provider_id=apns_id)
        reason = str(json_field(response.body, "reason") or "")
        detail = f"{short(token.token)}: {response.status} {reason}".rstrip()
        if response.status == 410 or (response.status == 400 and reason in GONE):
            return await self.gone(token, detail)
        if response.status == 403 and reason in STALE_PROVIDER_TOKEN:
            self._refused = True  # made again for a later try, as soon as APNs allows
            return Push(RETRY, detail)
        if response.status == 429 or response.status >= 500:
            return Push(RETRY, detail, retry_after=retry_after(response))
        return Push(FAILED, detail, reason=reason or str(response.status))
