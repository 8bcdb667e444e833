"""The Web Push channel: an encrypted message to a browser's push service.

The payload is encrypted for the subscription (RFC 8291, ``aes128gcm``, with http_ece) and
the request carries a VAPID token (RFC 8292, signed with py_vapid) so the push service knows
which application server sends it. The address is the browser's ``PushSubscription`` as JSON:
``{"endpoint": url, "keys": {"p256dh": b64url, "auth": b64url}}``.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import time
from typing import TYPE_CHECKING, Any, ClassVar

import httpx
import orjson
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from http_ece import ECEException
from http_ece import encrypt as ece_encrypt
from py_vapid.jwt import sign as sign_jwt

from tidings.delivery.channels._net import (
    HttpChannel,
    check_http_url,
    encode_json,
    raise_for_status,
)
from tidings.delivery.channels.base import Outgoing
from tidings.errors import ConfigurationError, InvalidAddress, PermanentFailure

if TYPE_CHECKING:
    from tidings.delivery.ports import PipelineHost

#: the store's key under which a generated VAPID private key is kept
VAPID_KEY = "vapid_private_key"

# RFC 8030 push services need not take more than 4096 bytes of body: the aes128gcm header
# (86 bytes with our key id), the GCM tag (16) and the padding delimiter (1) come off it.
MAX_PLAINTEXT_BYTES = 4096 - 86 - 16 - 1
# RFC 8292 caps a token's life at 24 hours; 12 leaves room for clock skew
_TOKEN_SECONDS = 12 * 3600
_TOPIC = re.compile(r"[A-Za-z0-9_-]{1,32}")
_POINT_BYTES = 65
_AUTH_BYTES = 16


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64url(text: str) -> bytes:
    """Decode base64url with or without padding (browsers send none)."""
    text = text.strip()
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def generate_vapid_private_key() -> str:
    """A new VAPID key: the base64url of its raw 32-byte P-256 private scalar."""
    key = ec.generate_private_key(ec.SECP256R1())
    return _b64url(key.private_numbers().private_value.to_bytes(32, "big"))


def _load_private_key(private_key: str) -> ec.EllipticCurvePrivateKey:
    if not isinstance(private_key, str):
        raise ConfigurationError("the VAPID private key must be a string")
    try:
        raw = _unb64url(private_key)
        if len(raw) != 32:
            raise ValueError(f"{len(raw)} bytes instead of 32")
        return ec.derive_private_key(int.from_bytes(raw, "big"), ec.SECP256R1())
    except (ValueError, binascii.Error) as exc:
        raise ConfigurationError(
            "the VAPID private key must be the base64url of a 32-byte P-256 private key "
            f"(make one with generate_vapid_private_key()): {exc}"
        ) from exc


def _public_bytes(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )


def vapid_public_key(private_key: str) -> str:
    """The public half of a VAPID key as a browser's ``applicationServerKey`` wants it:
    base64url without padding of the 65-byte uncompressed point."""
    return _b64url(_public_bytes(_load_private_key(private_key)))


def _decode_key(keys: dict[str, Any], name: str, size: int) -> bytes:
    value = keys.get(name)
    if not isinstance(value, str):
        raise InvalidAddress(f"the push subscription has no keys.{name}")
    try:
        raw = _unb64url(value)
    except (ValueError, binascii.Error) as exc:
        raise InvalidAddress(f"keys.{name} of the push subscription is not base64url") from exc
    if len(raw) != size:
        raise InvalidAddress(f"keys.{name} must hold {size} bytes, not {len(raw)}")
    return raw


def parse_subscription(value: Any, *, allow_private: bool) -> tuple[str, bytes, bytes]:
    """The endpoint, the ``p256dh`` point and the ``auth`` secret of a subscription."""
    if isinstance(value, str | bytes):
        try:
            value = orjson.loads(value)
        except orjson.JSONDecodeError as exc:
            raise InvalidAddress("the push subscription is not valid JSON") from exc
    if not isinstance(value, dict):
        raise InvalidAddress('a push subscription is an object {"endpoint": …, "keys": …}')
    endpoint = check_http_url(
        value.get("endpoint"), allow_private=allow_private, what="push endpoint"
    )
    keys = value.get("keys")
    if not isinstance(keys, dict):
        raise InvalidAddress("the push subscription has no keys object")
    p256dh = _decode_key(keys, "p256dh", _POINT_BYTES)
    try:
        ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), p256dh)
    except ValueError as exc:
        raise InvalidAddress("keys.p256dh is not an uncompressed P-256 public key") from exc
    return endpoint, p256dh, _decode_key(keys, "auth", _AUTH_BYTES)


def _fits(payload: dict[str, Any]) -> bool:
    return len(encode_json(payload)) <= MAX_PLAINTEXT_BYTES


def _cut(payload: dict[str, Any], field: str) -> dict[str, Any]:
    """``payload`` with the longest start of ``field`` that fits (searched in UTF-8 bytes:
    JSON escapes make the size of a cut hard to predict)."""
    raw = str(payload[field]).encode()
    best = {**payload, field: "", "truncated": True}
    low, high = 1, min(len(raw), MAX_PLAINTEXT_BYTES)
    while low <= high:
        middle = (low + high) // 2
        cut = raw[:middle].decode("utf-8", "ignore")
        candidate = {**payload, field: cut + "…", "truncated": True}
        if _fits(candidate):
            best, low = candidate, middle + 1
        else:
            high = middle - 1
    return best


def _fit(payload: dict[str, Any]) -> bytes:
    """The payload as JSON within :data:`MAX_PLAINTEXT_BYTES`: the data goes first, then
    the body and the title are cut, so that the notification is at least shown."""
    if not _fits(payload) and payload["data"] is not None:
        payload = {**payload, "data": None, "truncated": True}
    for field in ("body", "title"):
        if not _fits(payload):
            payload = _cut(payload, field)
    encoded = encode_json(payload)
    if len(encoded) > MAX_PLAINTEXT_BYTES:
        raise PermanentFailure("payload_too_large", "the push message does not fit in 4 KiB")
    return encoded


def _encrypt(plaintext: bytes, p256dh: bytes, auth: bytes) -> bytes:
    """RFC 8291: one aes128gcm record for the subscription, with a fresh sender key."""
    try:
        return bytes(
            ece_encrypt(
                plaintext,
                salt=os.urandom(16),
                private_key=ec.generate_private_key(ec.SECP256R1()),
                dh=p256dh,
                auth_secret=auth,
                version="aes128gcm",
            )
        )
    except ECEException as exc:
        raise PermanentFailure("invalid_address", f"cannot encrypt: {exc.message}") from exc


def _origin(endpoint: str) -> str:
    url = httpx.URL(endpoint)
    host = url.raw_host.decode("ascii")
    if ":" in host:
        host = f"[{host}]"
    port = f":{url.port}" if url.port is not None else ""
    return f"{url.scheme}://{host}{port}"


class WebPushChannel(HttpChannel):
    """Sends Web Push messages with VAPID, straight to the subscription's push service.

    ``subject`` is the contact the push service may use (``mailto:`` or ``https:``).
    ``ttl`` is how many seconds the push service keeps a message for an offline browser.
    A push service answering 404 or 410 means the subscription is dead: ``gone``.
    ``outgoing.extra["topic"]`` (1 to 32 URL-safe base64 characters), when present, is sent
    as the ``Topic`` header: a newer message with the same topic replaces an undelivered one.
    """

    name: ClassVar[str] = "web_push"

    def __init__(
        self,
        vapid_private_key: str,
        subject: str,
        *,
        timeout: float = 10.0,
        ttl: int = 86400,
        allow_private: bool = False,
    ) -> None:
        super().__init__(timeout=timeout, allow_private=allow_private)
        self._key = _load_private_key(vapid_private_key)
        self._public_key = _b64url(_public_bytes(self._key))
        if not isinstance(subject, str) or not re.fullmatch(
            r"(mailto:\S+@\S+|https://\S+)", subject
        ):
            raise ConfigurationError("the VAPID subject must be a mailto: or https: URL")
        self._subject = subject
        if not isinstance(ttl, int) or ttl < 0:
            raise ConfigurationError(f"ttl must be a whole number of seconds >= 0, not {ttl!r}")
        self._ttl = ttl

    @classmethod
    async def from_settings(cls, host: PipelineHost) -> WebPushChannel:
        """``TIDINGS_VAPID_PRIVATE_KEY`` (or one generated once and kept in the store) and
        ``TIDINGS_VAPID_SUBJECT``."""
        settings = host.settings
        key = settings.vapid_private_key or await host.store.get_or_create_key(
            VAPID_KEY, generate_vapid_private_key
        )
        return cls(
            key,
            settings.vapid_subject,
            timeout=settings.provider_timeout,
            allow_private=settings.allow_private_addresses,
        )

    @property
    def public_key(self) -> str:
        """The ``applicationServerKey`` browsers subscribe with."""
        return self._public_key

    def validate(self, address: Any) -> dict[str, Any]:
        endpoint, p256dh, auth = parse_subscription(address, allow_private=self._allow_private)
        return {"endpoint": endpoint, "keys": {"p256dh": _b64url(p256dh), "auth": _b64url(auth)}}

    def authorization(self, endpoint: str) -> str:
        """The VAPID ``Authorization`` header for a request to ``endpoint``."""
        claims = {
            "aud": _origin(endpoint),
            "exp": int(time.time()) + _TOKEN_SECONDS,
            "sub": self._subject,
        }
        return f"vapid t={sign_jwt(claims, self._key)},k={self._public_key}"

    async def send(self, outgoing: Outgoing) -> str | None:
        try:
            endpoint, p256dh, auth = parse_subscription(outgoing.address, allow_private=True)
        except InvalidAddress as exc:
            raise PermanentFailure("invalid_address", str(exc)) from exc
        rendered = outgoing.rendered
        plaintext = _fit(
            {
                "title": rendered.subject or "",
                "body": rendered.text,
                "data": rendered.data,
                "message_id": outgoing.message_id,
                "delivery_id": outgoing.delivery_id,
            }
        )
        body = _encrypt(plaintext, p256dh, auth)
        headers = {
            "authorization": self.authorization(endpoint),
            "content-encoding": "aes128gcm",
            "content-type": "application/octet-stream",
            "ttl": str(self._ttl),
            "urgency": "high" if outgoing.critical else "normal",
        }
        topic = outgoing.extra.get("topic")
        if isinstance(topic, str) and _TOPIC.fullmatch(topic):
            headers["topic"] = topic
        response = await self.post(endpoint, content=body, headers=headers)
        raise_for_status(response, gone=(404, 410))
        location: str | None = response.headers.get("location")
        return location
