"""The FCM channel: a delivery to every Android phone (or FCM app) of the user, through
Firebase Cloud Messaging's HTTP v1 API.

The node authenticates as the service account of ``TIDINGS_FCM_CREDENTIALS_FILE``: a JWT
signed RS256 with the account's key is exchanged at the account's ``token_uri`` for an access
token (the OAuth 2.0 JWT bearer grant, RFC 7523), kept until shortly before it expires. Each
token of the user gets ``projects/{project_id}/messages:send`` with the rendered notification,
the message's data as strings, and the user's unseen count as the badge
(``android.notification.notification_count``, ``apns.payload.aps.badge``).
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any, ClassVar

import httpx
import orjson
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from joserfc import jwt
from joserfc.jwk import RSAKey

from tidings.core.models import PushToken
from tidings.delivery.channels._net import retry_after
from tidings.delivery.channels.base import Outgoing
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

SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
GRANT_TYPE = "urn:ietf:params:oauth:grant-type:jwt-bearer"
#: an access token is fetched again this long before it expires
TOKEN_MARGIN = 300
#: FCM error codes that mean the token will never work again: it leaves the registry
GONE = frozenset({"UNREGISTERED"})
#: FCM error codes worth another try
TRANSIENT = frozenset({"QUOTA_EXCEEDED", "UNAVAILABLE", "INTERNAL"})
#: silent badge updates replace each other on the phone
BADGE_COLLAPSE_KEY = "tidings-badge"


class ServiceAccount:
    """What the channel uses of a Google service-account key file."""

    def __init__(self, path: str) -> None:
        """Raises:
        ConfigurationError: the file cannot be read, or is not a service-account key."""
        name = f"TIDINGS_FCM_CREDENTIALS_FILE={path!r}"
        try:
            with open(path, "rb") as file:
                info = orjson.loads(file.read())
        except OSError as exc:
            raise ConfigurationError(f"{name}: {exc.strerror}") from None
        except orjson.JSONDecodeError:
            raise ConfigurationError(f"{name} is not JSON") from None
        fields = ("project_id", "private_key", "private_key_id", "client_email", "token_uri")
        missing = [f for f in fields if not isinstance(info, dict) or not info.get(f)]
        if missing or info.get("type") != "service_account":
            raise ConfigurationError(
                f"{name} is not a service-account key file (needs type service_account and "
                f"{', '.join(fields)})"
            )
        try:
            key = load_pem_private_key(str(info["private_key"]).encode(), password=None)
        except (ValueError, TypeError):
            key = None
        if not isinstance(key, rsa.RSAPrivateKey):
            raise ConfigurationError(f"{name}: its private_key is not an RSA private key")
        self.project_id = str(info["project_id"])
        self.key_id = str(info["private_key_id"])
        self.email = str(info["client_email"])
        self.token_uri = str(info["token_uri"])
        self.key = RSAKey.import_key(str(info["private_key"]))

    def assertion(self, now: int) -> str:
        """The signed JWT exchanged for an access token."""
        return jwt.encode(
            {"alg": "RS256", "typ": "JWT", "kid": self.key_id},
            {
                "iss": self.email,
                "scope": SCOPE,
                "aud": self.token_uri,
                "iat": now,
                "exp": now + 3600,
            },
            self.key,
        )


class FcmChannel(PhoneChannel):
    """Sends a delivery to each of the user's ``fcm`` push tokens."""

    name: ClassVar[str] = "fcm"
    provider: ClassVar[str] = "FCM"

    def __init__(
        self,
        store: Store,
        account: ServiceAccount,
        *,
        url: str = "https://fcm.googleapis.com",
        timeout: float = 10.0,
        ca_file: str | None = None,
    ) -> None:
        super().__init__(store)
        self.account = account
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.ssl = push_ssl_context(ca_file)
        self._client: httpx.AsyncClient | None = None
        self._access: tuple[str, float] | None = None
        self._fetching: asyncio.Lock | None = None

    @classmethod
    async def from_settings(cls, host: PipelineHost) -> FcmChannel | None:
        settings: ChannelSettings = host.settings
        if not settings.fcm_credentials_file:
            return None
        return cls(
            host.store,
            ServiceAccount(settings.fcm_credentials_file),
            url=settings.fcm_url,
            timeout=settings.provider_timeout,
            ca_file=settings.push_ca_file,
        )

    async def start(self) -> None:
        if self._client is None:
            self._client = httpx.AsyncClient(verify=self.ssl, timeout=self.timeout)
            self._fetching = asyncio.Lock()

    async def close(self) -> None:
        await super().close()
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    async def access_token(self) -> str:
        """A valid access token of the service account, fetched when none is.

        Raises:
            httpx.HTTPError: the token endpoint could not be reached.
            PermissionError: it refused the assertion (the key was deleted or is wrong).
        """
        if self._client is None or self._fetching is None:
            await self.start()
        assert self._client is not None and self._fetching is not None
        async with self._fetching:
            if self._access is not None and time.time() < self._access[1]:
                return self._access[0]
            now = int(time.time())
            response = await self._client.post(
                self.account.token_uri,
                data={"grant_type": GRANT_TYPE, "assertion": self.account.assertion(now)},
            )
            try:
                body: Any = orjson.loads(response.content)
            except orjson.JSONDecodeError:
                raise httpx.DecodingError("the token endpoint answered no JSON") from None
            if response.status_code != 200 or not isinstance(body, dict):
                raise PermissionError(f"the token endpoint answered {response.status_code}: {body}")
            expires = now + int(body.get("expires_in", 3600)) - TOKEN_MARGIN
            self._access = (str(body["access_token"]), float(expires))
            return self._access[0]

    async def push(self, outgoing: Outgoing, token: PushToken, badge: int) -> Push:
        rendered = outgoing.rendered
        message = {
            "token": token.token,
            "notification": {"title": rendered.subject or "", "body": rendered.text},
            "data": {
                "message_id": outgoing.message_id,
                "delivery_id": outgoing.delivery_id,
                "data": orjson.dumps(rendered.data).decode(),
            },
            "android": {"notification": {"notification_count": badge}},
            "apns": {"payload": {"aps": {"badge": badge}}},
        }
        return await self._send(token, message)

    async def send_badge(self, user_id: str, badge: int) -> None:
        """A silent badge update to every FCM token of the user: a data message the app
        reads (``tidings_badge``), collapsed on Android and a background push on iOS."""
        tokens = await self.badge_tokens(user_id)
        messages = [
            {
                "token": token.token,
                "data": {"tidings_badge": str(badge)},
                "android": {"priority": "normal", "collapse_key": BADGE_COLLAPSE_KEY},
                "apns": {
                    "headers": {
                        "apns-push-type": "background",
                        "apns-priority": "5",
                        "apns-collapse-id": BADGE_COLLAPSE_KEY,
                    },
                    "payload": {"aps": {"content-available": 1, "badge": badge}},
                },
            }
            for token in tokens
        ]
        await asyncio.gather(*(self._send(t, m) for t, m in zip(tokens, messages, strict=True)))

    async def _send(self, token: PushToken, message: dict[str, Any]) -> Push:
        """``messages:send`` of one message to one token."""
        try:
            access = await self.access_token()
            assert self._client is not None
            response = await self._client.post(
                f"{self.url}/v1/projects/{self.account.project_id}/messages:send",
                content=orjson.dumps({"message": message}),
                headers={"authorization": f"Bearer {access}", "content-type": "application/json"},
            )
        except httpx.HTTPError as exc:
            return Push(RETRY, f"{short(token.token)}: {type(exc).__name__}: {exc}")
        except PermissionError as exc:
            return Push(FAILED, f"{short(token.token)}: {exc}", reason="unauthorized")
        if response.status_code == 200:
            name = str(json_field(response.content, "name") or "")
            return Push(SENT, f"{short(token.token)}: {name}", provider_id=name)
        code, status = error_code(response.content)
        detail = f"{short(token.token)}: {response.status_code} {code or status}".rstrip()
        if code in GONE or (code == "INVALID_ARGUMENT" and about_the_token(response.content)):
            return await self.gone(token, detail)
        if response.status_code == 401:
            self._access = None  # fetched again for the next try
            return Push(RETRY, detail)
        if code in TRANSIENT or response.status_code == 429 or response.status_code >= 500:
            return Push(RETRY, detail, retry_after=retry_after(response))
        return Push(FAILED, detail, reason=code or status or str(response.status_code))


def error_code(body: bytes) -> tuple[str, str]:
    """The FCM ``errorCode`` and the canonical ``status`` of a Google error body."""
    try:
        error = orjson.loads(body).get("error", {})
    except (orjson.JSONDecodeError, AttributeError):
        return "", ""
    code = ""
    for detail in error.get("details", []) if isinstance(error, dict) else []:
        if isinstance(detail, dict) and str(detail.get("@type", "")).endswith("FcmError"):
            code = str(detail.get("errorCode", ""))
    return code, str(error.get("status", "")) if isinstance(error, dict) else ""


def about_the_token(body: bytes) -> bool:
    """Whether an INVALID_ARGUMENT is about ``message.token`` (the token is malformed or not
    FCM's), not about the rest of the message."""
    text = body.decode("utf-8", "replace")
    return "message.token" in text or "registration token" in text
