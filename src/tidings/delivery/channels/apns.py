"""The APNs channel: a delivery to every iPhone and iPad of the user, through Apple's push
notification service.

One HTTP/2 connection to APNs (httpx with h2), multiplexed across every send of the node and
reused; each request carries a provider token, an ES256 JWT signed with the team's auth key
(.p8), made again after 50 minutes (APNs refuses one older than an hour, and one changed more
often than every 20 minutes). The user's tokens come from the push-token registry
(``/me/push-tokens``); a token APNs says is gone (410 ``Unregistered``, 400
``BadDeviceToken`` / ``DeviceTokenNotForTopic``) is removed from it. The badge is the user's
unseen count when the delivery is sent.
"""

from __future__ import annotations

import asyncio
import ssl
import time
import uuid
from typing import TYPE_CHECKING, Any, ClassVar

import httpx
import orjson
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from joserfc import jwt
from joserfc.jwk import ECKey

from tidings.core.models import PushToken
from tidings.delivery.channels._net import retry_after
from tidings.delivery.channels.base import Channel, Outgoing, Sent
from tidings.errors import ConfigurationError, PermanentFailure, TransientFailure

if TYPE_CHECKING:
    from tidings.delivery.ports import ChannelSettings, PipelineHost
    from tidings.storage import Store

#: APNs refuses a payload over 4 KiB (alert and background pushes)
MAX_PAYLOAD_BYTES = 4096
#: a provider token is made again after this many seconds (APNs: at most 60 minutes old, and
#: changed at most once every 20)
TOKEN_SECONDS = 50 * 60
#: how long APNs keeps a push for a device that is offline
EXPIRATION_SECONDS = 24 * 3600
#: APNs reasons that mean the token will never work again: it leaves the registry
GONE = frozenset({"Unregistered", "BadDeviceToken", "DeviceTokenNotForTopic"})
#: reasons that mean the provider token must be made again (then the send is retried)
STALE_PROVIDER_TOKEN = frozenset({"ExpiredProviderToken", "InvalidProviderToken"})
#: silent badge updates replace each other on the phone
BADGE_COLLAPSE_ID = "tidings-badge"
_IDS = uuid.UUID("8f5f4b1e-6a0e-4c52-9d3b-7c1e0c2a9a11")


def push_ssl_context(ca_file: str | None) -> ssl.SSLContext:
    """The system's trusted CAs, plus ``TIDINGS_PUSH_CA_FILE``'s when it is set.

    Raises:
        ConfigurationError: the CA file cannot be read.
    """
    context = ssl.create_default_context()
    if ca_file:
        try:
            context.load_verify_locations(ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigurationError(f"TIDINGS_PUSH_CA_FILE={ca_file!r}: {exc}") from None
    return context


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


def short(token: str) -> str:
    """A token as the history shows it: enough to tell the user's tokens apart."""
    return f"…{token[-8:]}"


class ApnsChannel(Channel):
    """Sends a delivery to each of the user's ``apns`` push tokens."""

    name: ClassVar[str] = "apns"
    needs_address: ClassVar[bool] = False

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
        self.store = store
        self.key = key
        self.key_id = key_id
        self.team_id = team_id
        self.topic = topic
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.ssl = push_ssl_context(ca_file)
        self._client: httpx.AsyncClient | None = None
        self._provider_token: tuple[str, float] | None = None

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
            self._client = httpx.AsyncClient(http2=True, verify=self.ssl, timeout=self.timeout)

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    def provider_token(self) -> str:
        """The current provider token, made again once it is :data:`TOKEN_SECONDS` old."""
        now = time.time()
        if self._provider_token is None or now - self._provider_token[1] >= TOKEN_SECONDS:
            issued = int(now)
            token = jwt.encode(
                {"alg": "ES256", "kid": self.key_id},
                {"iss": self.team_id, "iat": issued},
                self.key,
            )
            self._provider_token = (token, float(issued))
        return self._provider_token[0]

    async def send(self, outgoing: Outgoing) -> Sent:
        tokens = await self.store.push_tokens(outgoing.user_id, self.name)
        if not tokens:
            raise PermanentFailure("no_address", "the user has no apns push token")
        count = await self.store.count(outgoing.user_id)
        payload = orjson.dumps(
            {
                "aps": {
                    "alert": {
                        "title": outgoing.rendered.subject or "",
                        "body": outgoing.rendered.text,
                    },
                    "badge": count.count,
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
            raise PermanentFailure(
                "payload_too_large",
                f"the APNs payload is {len(payload)} bytes; APNs takes {MAX_PAYLOAD_BYTES}",
            )
        results = await asyncio.gather(*(self._push(outgoing, token, payload) for token in tokens))
        return await self._settle(tokens, results)

    async def send_badge(self, user_id: str, badge: int) -> None:
        """A silent update of the badge on every phone of the user: a background push
        (priority 5), collapsed with the previous ones; tokens APNs calls gone are removed."""
        tokens = await self.store.push_tokens(user_id, self.name)
        if not tokens:
            return
        payload = orjson.dumps({"aps": {"content-available": 1, "badge": badge}})
        headers = {
            "apns-push-type": "background",
            "apns-priority": "5",
            "apns-collapse-id": BADGE_COLLAPSE_ID,
        }
        await asyncio.gather(*(self._request(token, payload, headers) for token in tokens))

    async def _push(
        self, outgoing: Outgoing, token: PushToken, payload: bytes
    ) -> tuple[str, str, Any]:
        """One token's alert for a delivery."""
        headers = {
            "apns-push-type": "alert",
            "apns-priority": "10",
            "apns-id": str(uuid.uuid5(_IDS, f"{outgoing.delivery_id}:{token.token_id}")),
        }
        return await self._request(token, payload, headers)

    async def _request(
        self, token: PushToken, payload: bytes, extra: dict[str, str]
    ) -> tuple[str, str, Any]:
        """One request to APNs for one token: ``(kind, detail, extra)``, kind one of sent,
        gone (the token was removed), retry, failed."""
        if self._client is None:
            await self.start()
        assert self._client is not None
        headers = {
            "authorization": f"bearer {self.provider_token()}",
            "apns-topic": self.topic,
            "apns-expiration": str(int(time.time()) + EXPIRATION_SECONDS),
            "content-type": "application/json",
            **extra,
        }
        try:
            response = await self._client.post(
                f"{self.url}/3/device/{token.token}", content=payload, headers=headers
            )
        except httpx.HTTPError as exc:
            return "retry", f"{short(token.token)}: {type(exc).__name__}: {exc}", None
        if response.status_code == 200:
            return (
                "sent",
                f"{short(token.token)}: apns-id {response.headers.get('apns-id')}",
                response.headers.get("apns-id"),
            )
        try:
            reason = str(orjson.loads(response.content).get("reason", ""))
        except (orjson.JSONDecodeError, AttributeError):
            reason = ""
        detail = f"{short(token.token)}: {response.status_code} {reason}".rstrip()
        if response.status_code == 410 or (response.status_code == 400 and reason in GONE):
            await self.store.remove_push_token(self.name, token.token)
            return "gone", detail, None
        if response.status_code == 403 and reason in STALE_PROVIDER_TOKEN:
            self._provider_token = None  # made again for the next try
            return "retry", detail, None
        if response.status_code == 429 or response.status_code >= 500:
            return "retry", detail, retry_after(response)
        return "failed", detail, reason

    async def _settle(self, tokens: list[PushToken], results: list[tuple[str, str, Any]]) -> Sent:
        """The delivery's outcome from its tokens': sent if any token took it."""
        notes = tuple(
            (
                {"sent": "token_sent", "gone": "token_removed", "retry": "token_retry"}.get(
                    kind, "token_failed"
                ),
                detail,
            )
            for kind, detail, _ in results
        )
        sent = [
            (t, extra)
            for t, (kind, _, extra) in zip(tokens, results, strict=True)
            if kind == "sent"
        ]
        if sent:
            await self.store.touch_push_tokens([t.token_id for t, _ in sent])
            return Sent(",".join(str(extra) for _, extra in sent), notes)
        retries = [extra for kind, _, extra in results if kind == "retry"]
        if retries:
            hints = [hint for hint in retries if hint is not None]
            raise TransientFailure(
                "provider_error",
                f"APNs did not take it for {len(retries)} of {len(tokens)} tokens",
                max(hints) if hints else None,
                notes,
            )
        if all(kind == "gone" for kind, _, _ in results):
            raise PermanentFailure("gone", "every apns token of the user is gone (removed)", notes)
        reasons = sorted({str(extra) for kind, _, extra in results if kind == "failed"})
        raise PermanentFailure("rejected", f"APNs refused it: {', '.join(reasons)}", notes)
