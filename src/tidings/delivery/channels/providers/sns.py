"""Verifying the Amazon SNS messages that carry SES's events, as "Verifying the signatures of
Amazon SNS messages" (https://docs.aws.amazon.com/sns/latest/dg/sns-verify-signature-of-message.html)
says: the message's fields in a fixed order, one name and value per line, signed with the key
of the certificate at ``SigningCertURL`` (RSA, SHA1 for ``SignatureVersion`` 1, SHA256 for 2).

The certificate is fetched over HTTPS only, from the one host allowed
(``TIDINGS_SES_SNS_CERT_HOST``, by default ``sns.<region>.amazonaws.com``), and kept; only the
configured topic (``TIDINGS_SES_SNS_TOPIC_ARN``) is accepted: SNS signs every topic's
messages, anyone's included, so the signature alone says only that SNS sent it. A
``SubscriptionConfirmation`` of that topic is confirmed by visiting its ``SubscribeURL``
(on the same host).
"""

from __future__ import annotations

import base64
import binascii
import ssl
from typing import Any
from urllib.parse import urlsplit

import httpx
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from tidings.delivery.channels.providers.events import CallbackRefused

#: the fields signed, in order, per message type (absent optional ones are left out)
SIGNED = {
    "Notification": ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"),
    "SubscriptionConfirmation": (
        "Message",
        "MessageId",
        "SubscribeURL",
        "Timestamp",
        "Token",
        "TopicArn",
        "Type",
    ),
}
SIGNED["UnsubscribeConfirmation"] = SIGNED["SubscriptionConfirmation"]
HASHES: dict[str, type[hashes.HashAlgorithm]] = {"1": hashes.SHA1, "2": hashes.SHA256}
#: certificates kept at most (SNS rotates its certificate rarely)
MAX_CERTS = 16


def string_to_sign(message: dict[str, Any]) -> bytes:
    """What SNS signed: ``name\\nvalue\\n`` for each field of the type's list that is present.

    Raises:
        CallbackRefused: not an SNS message of a known type (403).
    """
    fields = SIGNED.get(str(message.get("Type")))
    if fields is None:
        raise CallbackRefused(403, "not an SNS message")
    lines = []
    for name in fields:
        value = message.get(name)
        if value is None and name == "Subject":
            continue
        if not isinstance(value, str):
            raise CallbackRefused(403, f"the SNS message has no {name}")
        lines.append(f"{name}\n{value}\n")
    return "".join(lines).encode()


class SnsVerifier:
    """Verifies the SNS messages of one topic, certificates from one host."""

    def __init__(
        self,
        *,
        topic_arn: str,
        cert_host: str,
        timeout: float = 10.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.topic_arn = topic_arn
        host, _, port = cert_host.strip().lower().partition(":")
        self._host = host
        self._port = int(port) if port else 443
        self._timeout = timeout
        self._ssl = ssl_context if ssl_context is not None else ssl.create_default_context()
        self._keys: dict[str, rsa.RSAPublicKey] = {}

    def allowed(self, url: object, *, pem: bool) -> bool:
        """Whether ``url`` is an HTTPS URL on the allowed host (a ``.pem`` file if ``pem``)."""
        if not isinstance(url, str):
            return False
        try:
            parts = urlsplit(url)
            port = parts.port or 443
        except ValueError:
            return False
        return (
            parts.scheme == "https"
            and (parts.hostname or "") == self._host
            and port == self._port
            and not parts.username
            and (parts.path.endswith(".pem") or not pem)
        )

    async def verify(self, message: dict[str, Any]) -> None:
        """Nothing when ``message`` is SNS's, signed, of the configured topic.

        Raises:
            CallbackRefused: 403, saying why.
        """
        data = string_to_sign(message)
        if message.get("TopicArn") != self.topic_arn:
            raise CallbackRefused(403, "the SNS message is of another topic")
        algorithm = HASHES.get(str(message.get("SignatureVersion")))
        if algorithm is None:
            raise CallbackRefused(403, "unknown SNS SignatureVersion")
        url = message.get("SigningCertURL")
        if not self.allowed(url, pem=True):
            raise CallbackRefused(403, "the SNS signing certificate is not on the allowed host")
        assert isinstance(url, str)
        try:
            signature = base64.b64decode(str(message.get("Signature")), validate=True)
        except (binascii.Error, ValueError):
            raise CallbackRefused(403, "the SNS signature is not Base64") from None
        key = await self._key(url)
        try:
            key.verify(signature, data, padding.PKCS1v15(), algorithm())
        except InvalidSignature:
            raise CallbackRefused(403, "the SNS signature does not verify") from None

    async def confirm(self, message: dict[str, Any]) -> None:
        """Confirm a (verified) subscription of the topic: visit its ``SubscribeURL``.

        Raises:
            CallbackRefused: 403 for a URL off the allowed host; 502 when SNS did not answer.
        """
        url = message.get("SubscribeURL")
        if not self.allowed(url, pem=False):
            raise CallbackRefused(403, "the SubscribeURL is not on the allowed host")
        assert isinstance(url, str)
        answer = await self._get(url)
        if answer.status_code != 200:
            raise CallbackRefused(502, f"SNS answered {answer.status_code} to the confirmation")

    async def _key(self, url: str) -> rsa.RSAPublicKey:
        key = self._keys.get(url)
        if key is not None:
            return key
        answer = await self._get(url)
        if answer.status_code != 200:
            raise CallbackRefused(403, f"the SNS signing certificate: HTTP {answer.status_code}")
        try:
            found = x509.load_pem_x509_certificate(answer.content).public_key()
        except ValueError:
            raise CallbackRefused(403, "the SNS signing certificate cannot be read") from None
        if not isinstance(found, rsa.RSAPublicKey):
            raise CallbackRefused(403, "the SNS signing certificate's key is not RSA")
        if len(self._keys) >= MAX_CERTS:
            self._keys.clear()
        self._keys[url] = found
        return found

    async def _get(self, url: str) -> httpx.Response:
        try:
            async with httpx.AsyncClient(
                timeout=self._timeout, verify=self._ssl, trust_env=False, follow_redirects=False
            ) as client:
                return await client.get(url)
        except httpx.HTTPError as exc:
            raise CallbackRefused(502, f"cannot reach SNS: {type(exc).__name__}") from None
