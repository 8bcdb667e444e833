"""The external channels against real servers: aiosmtpd for email, loopback HTTP receivers for
webhooks, Web Push and SMS. Nothing is mocked: what a channel sends is read back, verified and
decrypted as a real receiver would."""

from __future__ import annotations

import base64
import os
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import http_ece
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult
from channel_support import HttpReceiver, Reply, ScriptedSmtpHandler, outgoing
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from py_vapid.jwt import decode as decode_vapid_jwt
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from conftest import free_port
from tidings.delivery.channels.base import (
    Channel,
    InvalidAddress,
    Outgoing,
    PermanentFailure,
    Rendered,
    TransientFailure,
)
from tidings.delivery.channels.email import EmailChannel, parse_smtp_url
from tidings.delivery.channels.sms import SmsChannel
from tidings.delivery.channels.webhook import WebhookChannel, generate_webhook_secret
from tidings.delivery.channels.webpush import (
    WebPushChannel,
    generate_vapid_private_key,
    vapid_public_key,
)
from tidings.errors import ConfigurationError

SENDER = "Tidings <tidings@example.com>"
RECIPIENT = "alice@example.com"
SECRET = generate_webhook_secret()
VAPID_KEY = generate_vapid_private_key()
VAPID_SUBJECT = "mailto:ops@example.com"
# the browser's side of a push subscription
UA_KEY = ec.generate_private_key(ec.SECP256R1())
UA_AUTH = os.urandom(16)
SHORT = 0.3


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def subscription(endpoint: str) -> dict[str, Any]:
    point = UA_KEY.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    return {"endpoint": endpoint, "keys": {"p256dh": b64url(point), "auth": b64url(UA_AUTH)}}


def decrypt_push(body: bytes) -> Any:
    import orjson

    return orjson.loads(
        http_ece.decrypt(body, private_key=UA_KEY, auth_secret=UA_AUTH, version="aes128gcm")
    )


def http_channel(kind: str, base_url: str, timeout: float = 5.0) -> tuple[Channel, Outgoing]:
    """One of the three HTTP channels aimed at ``base_url``, with a delivery for it."""
    if kind == "webhook":
        channel: Channel = WebhookChannel(SECRET, timeout=timeout, allow_private=True)
        return channel, outgoing(f"{base_url}/hook", "webhook")
    if kind == "web_push":
        channel = WebPushChannel(VAPID_KEY, VAPID_SUBJECT, timeout=timeout, allow_private=True)
        return channel, outgoing(subscription(f"{base_url}/push/sub-1"), "web_push")
    return SmsChannel(f"{base_url}/sms", timeout=timeout), outgoing("+14155550123", "sms")


HTTP_KINDS = ["webhook", "web_push", "sms"]


@pytest.fixture
def smtp() -> Iterator[tuple[Controller, ScriptedSmtpHandler]]:
    handler = ScriptedSmtpHandler()
    controller = Controller(handler, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        yield controller, handler
    finally:
        controller.stop()


def email_channel(controller: Controller, timeout: float = 5.0) -> EmailChannel:
    return EmailChannel(f"smtp://127.0.0.1:{controller.port}", SENDER, timeout=timeout)


# --- email ---------------------------------------------------------------------------------


async def test_email_sends_text_and_html_with_tidings_headers(
    smtp: tuple[Controller, ScriptedSmtpHandler],
) -> None:
    """An email arrives with subject, text, HTML alternative, Message-ID and tidings headers."""
    controller, handler = smtp
    async with email_channel(controller) as channel:
        message_id = await channel.send(outgoing(RECIPIENT, "email"))
    [(mail_from, rcpt_tos, message)] = handler.messages
    assert (mail_from, rcpt_tos) == ("tidings@example.com", [RECIPIENT])
    assert message["Subject"] == "Order shipped"
    assert message["From"] == SENDER
    assert message["Message-ID"] == message_id == "<dlv_0001@example.com>"
    assert message["X-Tidings-Delivery"] == "dlv_0001"
    assert message["X-Tidings-Message"] == "msg_0001"
    assert message["Auto-Submitted"] == "auto-generated"
    text = message.get_body(("plain",))
    html = message.get_body(("html",))
    assert text is not None and "Your order 42 has shipped." in text.get_content()
    assert html is not None and "<b>42</b>" in html.get_content()


async def test_email_subject_falls_back_to_first_line_of_text(
    smtp: tuple[Controller, ScriptedSmtpHandler],
) -> None:
    """Without a subject, the first non-empty line of the text is used, cut to 78 chars."""
    controller, handler = smtp
    long_line = "word " * 40
    rendered = Rendered(text=f"\n  {long_line}\nsecond line")
    async with email_channel(controller) as channel:
        await channel.send(outgoing(RECIPIENT, "email", rendered=rendered))
    [(_, _, message)] = handler.messages
    subject = str(message["Subject"])
    assert subject.startswith("word word") and subject.endswith("…")
    assert len(subject) <= 78
    assert message.get_body(("html",)) is None
    assert message.get_content_type() == "text/plain"


async def test_email_451_on_rcpt_is_transient_and_next_try_succeeds(
    smtp: tuple[Controller, ScriptedSmtpHandler],
) -> None:
    """A 451 reply to RCPT is a TransientFailure carrying the server's words; a retry works."""
    controller, handler = smtp
    handler.rcpt_replies = ["451 4.3.0 Mailbox busy, try later", "250 OK"]
    async with email_channel(controller) as channel:
        with pytest.raises(TransientFailure) as failure:
            await channel.send(outgoing(RECIPIENT, "email"))
        assert failure.value.reason == "provider_error"
        assert "451" in failure.value.message and "Mailbox busy" in failure.value.message
        assert handler.messages == []
        assert await channel.send(outgoing(RECIPIENT, "email")) == "<dlv_0001@example.com>"
    assert len(handler.messages) == 1


async def test_email_451_on_data_is_transient(
    smtp: tuple[Controller, ScriptedSmtpHandler],
) -> None:
    """A 451 reply to DATA is a TransientFailure too."""
    controller, handler = smtp
    handler.data_replies = ["451 4.7.1 Greylisted"]
    async with email_channel(controller) as channel:
        with pytest.raises(TransientFailure) as failure:
            await channel.send(outgoing(RECIPIENT, "email"))
    assert failure.value.reason == "provider_error"
    assert "Greylisted" in failure.value.message


async def test_email_550_is_permanent_with_server_text(
    smtp: tuple[Controller, ScriptedSmtpHandler],
) -> None:
    """A 550 reply is a PermanentFailure ``rejected`` quoting the server's code and text."""
    controller, handler = smtp
    handler.rcpt_replies = ["550 5.1.1 No such user here"]
    async with email_channel(controller) as channel:
        with pytest.raises(PermanentFailure) as failure:
            await channel.send(outgoing(RECIPIENT, "email"))
    assert failure.value.reason == "rejected"
    assert failure.value.message == "550 5.1.1 No such user here"


async def test_email_silent_server_times_out() -> None:
    """A server that never greets makes the send fail with ``timeout`` within the timeout."""
    async with HttpReceiver(hang=True) as silent:
        channel = EmailChannel(f"smtp://127.0.0.1:{silent.port}", SENDER, timeout=SHORT)
        started = time.monotonic()
        with pytest.raises(TransientFailure) as failure:
            await channel.send(outgoing(RECIPIENT, "email"))
    assert failure.value.reason == "timeout"
    assert time.monotonic() - started < SHORT + 1.0


async def test_email_connection_refused_is_unreachable() -> None:
    """Nothing listening on the port: TransientFailure ``unreachable``."""
    channel = EmailChannel(f"smtp://127.0.0.1:{free_port()}", SENDER, timeout=2.0)
    with pytest.raises(TransientFailure) as failure:
        await channel.send(outgoing(RECIPIENT, "email"))
    assert failure.value.reason == "unreachable"


async def test_email_logs_in_with_the_url_credentials() -> None:
    """User and password from the URL (percent-decoded) reach the server's AUTH."""
    logins: list[tuple[bytes, bytes]] = []

    def authenticator(server: Any, session: Any, envelope: Any, mechanism: str, data: Any):
        logins.append((data.login, data.password))
        return AuthResult(success=True)

    handler = ScriptedSmtpHandler()
    controller = Controller(
        handler,
        hostname="127.0.0.1",
        port=free_port(),
        authenticator=authenticator,
        auth_require_tls=False,
    )
    controller.start()
    try:
        url = f"smtp://alice:s%3Acret%40x@127.0.0.1:{controller.port}"
        async with EmailChannel(url, SENDER, timeout=5.0) as channel:
            await channel.send(outgoing(RECIPIENT, "email"))
    finally:
        controller.stop()
    assert logins == [(b"alice", b"s:cret@x")]
    assert len(handler.messages) == 1


async def test_email_refused_login_is_transient() -> None:
    """A 535 answer to AUTH is the operator's to fix: TransientFailure, not a lost delivery."""
    handler = ScriptedSmtpHandler()
    controller = Controller(
        handler,
        hostname="127.0.0.1",
        port=free_port(),
        authenticator=lambda *args: AuthResult(success=False, handled=False),
        auth_require_tls=False,
    )
    controller.start()
    try:
        url = f"smtp://alice:wrong@127.0.0.1:{controller.port}"
        with pytest.raises(TransientFailure) as failure:
            await EmailChannel(url, SENDER, timeout=5.0).send(outgoing(RECIPIENT, "email"))
    finally:
        controller.stop()
    assert failure.value.reason == "provider_error"
    assert "535" in failure.value.message
    assert handler.messages == []


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("smtp://mail.example.com", ("mail.example.com", 25, None, False, None)),
        (
            "smtp://u:p@mail.example.com:2525?starttls=true",
            ("mail.example.com", 2525, "u", False, True),
        ),
        ("smtp://mail.example.com?starttls=false", ("mail.example.com", 25, None, False, False)),
        ("smtps://mail.example.com", ("mail.example.com", 465, None, True, False)),
    ],
)
def test_smtp_url_is_parsed(url: str, expected: tuple[Any, ...]) -> None:
    """Host, default ports, credentials, implicit TLS and STARTTLS are read from the URL."""
    server = parse_smtp_url(url)
    assert (server.host, server.port, server.username, server.use_tls, server.start_tls) == expected


@pytest.mark.parametrize(
    "url",
    [
        "http://mail.example.com",
        "smtp://",
        "smtp://u:hunter2@mail.example.com:notaport",
        "smtp://u:hunter2@mail.example.com?starttls=maybe",
        "smtp://mail.example.com?tls=true",
        "smtps://mail.example.com?starttls=true",
    ],
)
def test_bad_smtp_url_is_a_configuration_error(url: str) -> None:
    """A malformed SMTP URL raises ConfigurationError, without quoting the password."""
    with pytest.raises(ConfigurationError) as error:
        EmailChannel(url, SENDER)
    assert "hunter2" not in str(error.value)


def test_email_sender_must_hold_an_address() -> None:
    """A sender without an address is a ConfigurationError."""
    with pytest.raises(ConfigurationError):
        EmailChannel("smtp://mail.example.com", "Tidings")


@pytest.mark.parametrize(
    ("address", "normalized"),
    [
        ("alice@example.com", "alice@example.com"),
        ("Bob.Smith@EXAMPLE.Org", "Bob.Smith@example.org"),
    ],
)
def test_email_validate_normalizes(address: str, normalized: str) -> None:
    """A valid address comes back normalized (domain lower-cased)."""
    assert EmailChannel("smtp://mail.example.com", SENDER).validate(address) == normalized


@pytest.mark.parametrize(
    "address", ["no-at-sign", "a@b", "alice@localhost", "a b@example.com", "", 42, None]
)
def test_email_validate_refuses_bad_addresses(address: Any) -> None:
    """Malformed or undeliverable-by-design addresses raise InvalidAddress with a reason."""
    with pytest.raises(InvalidAddress) as error:
        EmailChannel("smtp://mail.example.com", SENDER).validate(address)
    assert str(error.value)


# --- webhook -------------------------------------------------------------------------------


async def test_webhook_is_signed_per_standard_webhooks() -> None:
    """The receiver verifies the signature with the standardwebhooks package; a tampered body
    fails verification."""
    async with (
        HttpReceiver() as receiver,
        WebhookChannel(SECRET, allow_private=True) as channel,
    ):
        result = await channel.send(outgoing(f"{receiver.url}/hook", "webhook", attempt=2))
    assert result is None
    [request] = receiver.requests
    assert (request.method, request.path) == ("POST", "/hook")
    assert request.headers["webhook-id"] == "dlv_0001"
    assert request.headers["content-type"] == "application/json"
    payload = Webhook(SECRET).verify(request.body, request.headers)
    assert payload == {
        "type": "tidings.message",
        "message_id": "msg_0001",
        "delivery_id": "dlv_0001",
        "user_id": "user-7",
        "subject": "Order shipped",
        "text": "Your order 42 has shipped.\nIt arrives on Friday.",
        "html": "<p>Your order <b>42</b> has shipped.</p>",
        "data": {"order": 42},
        "attempt": 2,
    }
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(request.body.replace(b"42", b"43"), request.headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(generate_webhook_secret()).verify(request.body, request.headers)


@pytest.mark.parametrize(
    ("reply", "kind", "reason", "retry_after"),
    [
        (Reply(500), TransientFailure, "provider_error", None),
        (Reply(503, {"Retry-After": "120"}), TransientFailure, "provider_error", 120.0),
        (Reply(429, {"Retry-After": "7"}), TransientFailure, "provider_error", 7.0),
        (Reply(408), TransientFailure, "provider_error", None),
        (Reply(400), PermanentFailure, "rejected", None),
        (Reply(404), PermanentFailure, "rejected", None),
        (Reply(302, {"Location": "https://example.com/"}), PermanentFailure, "rejected", None),
        (Reply(410), PermanentFailure, "gone", None),
    ],
)
async def test_webhook_status_classification(
    reply: Reply, kind: type[Exception], reason: str, retry_after: float | None
) -> None:
    """Each HTTP status maps to its failure, with Retry-After when numeric."""
    async with (
        HttpReceiver(reply) as receiver,
        WebhookChannel(SECRET, allow_private=True) as channel,
    ):
        with pytest.raises(kind) as failure:
            await channel.send(outgoing(f"{receiver.url}/hook", "webhook"))
    assert failure.value.reason == reason  # type: ignore[attr-defined]
    assert str(reply.status) in failure.value.message  # type: ignore[attr-defined]
    if isinstance(failure.value, TransientFailure):
        assert failure.value.retry_after == retry_after
    assert len(receiver.requests) == 1  # a redirect is not followed


async def test_webhook_retry_after_as_http_date() -> None:
    """A Retry-After given as an HTTP date becomes the seconds until then."""
    later = format_datetime(datetime.now(UTC) + timedelta(seconds=60), usegmt=True)
    async with (
        HttpReceiver(Reply(503, {"Retry-After": later})) as receiver,
        WebhookChannel(SECRET, allow_private=True) as channel,
    ):
        with pytest.raises(TransientFailure) as failure:
            await channel.send(outgoing(f"{receiver.url}/hook", "webhook"))
    assert failure.value.retry_after is not None
    assert 55 <= failure.value.retry_after <= 61


async def test_webhook_private_address_guard() -> None:
    """By default a host resolving to loopback is refused before any request is made."""
    async with HttpReceiver() as receiver:
        url = f"http://localhost:{receiver.port}/hook"
        async with WebhookChannel(SECRET) as channel:
            assert channel.validate(url) == url  # a name is only checked at send time
            with pytest.raises(PermanentFailure) as failure:
                await channel.send(outgoing(url, "webhook"))
            for literal in ("http://127.0.0.1/x", "http://[::1]/x", "http://2130706433/x"):
                with pytest.raises(InvalidAddress):
                    channel.validate(literal)
        assert failure.value.reason == "forbidden_address"
        assert receiver.requests == []
        async with WebhookChannel(SECRET, allow_private=True) as trusting:
            assert trusting.validate(f"{receiver.url}/x") == f"{receiver.url}/x"
            await trusting.send(outgoing(url, "webhook"))
        assert len(receiver.requests) == 1


@pytest.mark.parametrize(
    "url",
    [
        "https://hooks.example.com/tidings",
        "http://example.com:8080/a?b=c",
        "https://bücher.example/hook",
        "https://93.184.215.14/hook",
    ],
)
def test_webhook_validate_accepts_public_http_urls(url: str) -> None:
    """Absolute http(s) URLs with a public host are accepted as they are."""
    assert WebhookChannel(SECRET).validate(url) == url


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/x",
        "https:///path",
        "/relative",
        "https://exa mple.com/",
        "https://example.com:99999/",
        "https://example.com/" + "a" * 2048,
        "http://10.1.2.3/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://[fe80::1]/x",
        "http://0.0.0.0/x",
        "http://224.0.0.1/x",
        None,
    ],
)
def test_webhook_validate_refuses_bad_urls(url: Any) -> None:
    """Non-http(s), host-less, malformed, too long and literal private URLs are refused."""
    with pytest.raises(InvalidAddress):
        WebhookChannel(SECRET).validate(url)


def test_webhook_secret_format() -> None:
    """Generated secrets are whsec_ + base64 of 32 bytes; a malformed secret is refused."""
    secret = generate_webhook_secret()
    assert secret.startswith("whsec_")
    assert len(base64.b64decode(secret.removeprefix("whsec_"))) == 32
    for bad in ("whsec_not base64!", "whsec_" + base64.b64encode(b"short").decode()):
        with pytest.raises(ConfigurationError):
            WebhookChannel(bad)


async def test_http_channel_send_before_start_is_an_error() -> None:
    """send() on a channel that was never started raises RuntimeError, not a failure."""
    with pytest.raises(RuntimeError, match="start"):
        await WebhookChannel(SECRET).send(outgoing("https://example.com/hook", "webhook"))


# --- every HTTP channel --------------------------------------------------------------------


@pytest.mark.parametrize("kind", HTTP_KINDS)
async def test_http_channel_silent_receiver_times_out(kind: str) -> None:
    """A receiver that never answers: TransientFailure ``timeout`` within the timeout."""
    async with HttpReceiver(hang=True) as receiver:
        channel, delivery = http_channel(kind, receiver.url, timeout=SHORT)
        async with channel:
            started = time.monotonic()
            with pytest.raises(TransientFailure) as failure:
                await channel.send(delivery)
    assert failure.value.reason == "timeout"
    assert time.monotonic() - started < SHORT + 1.0


@pytest.mark.parametrize("kind", HTTP_KINDS)
async def test_http_channel_connection_refused_is_unreachable(kind: str) -> None:
    """Nothing listening: TransientFailure ``unreachable``."""
    channel, delivery = http_channel(kind, f"http://127.0.0.1:{free_port()}", timeout=2.0)
    async with channel:
        with pytest.raises(TransientFailure) as failure:
            await channel.send(delivery)
    assert failure.value.reason == "unreachable"


# --- web push ------------------------------------------------------------------------------


async def test_webpush_delivers_an_encrypted_payload_with_vapid() -> None:
    """The push endpoint decrypts the body with the subscription's keys, and the VAPID token
    verifies against the public key with aud, exp and sub as required."""
    location = "https://push.example/messages/m-1"
    async with (
        HttpReceiver(Reply(201, {"Location": location})) as receiver,
        WebPushChannel(VAPID_KEY, VAPID_SUBJECT, ttl=600, allow_private=True) as channel,
    ):
        address = channel.validate(subscription(f"{receiver.url}/push/sub-1"))
        result = await channel.send(outgoing(address, "web_push", critical=True))
    assert result == location
    [request] = receiver.requests
    assert request.path == "/push/sub-1"
    assert request.headers["content-encoding"] == "aes128gcm"
    assert (request.headers["ttl"], request.headers["urgency"]) == ("600", "high")
    payload = decrypt_push(request.body)
    assert payload == {
        "title": "Order shipped",
        "body": "Your order 42 has shipped.\nIt arrives on Friday.",
        "data": {"order": 42},
        "message_id": "msg_0001",
        "delivery_id": "dlv_0001",
    }
    scheme, _, params = request.headers["authorization"].partition(" ")
    fields = dict(part.split("=", 1) for part in params.split(","))
    assert scheme == "vapid"
    assert fields["k"] == vapid_public_key(VAPID_KEY) == channel.public_key
    claims = decode_vapid_jwt(fields["t"], fields["k"])
    assert claims["aud"] == f"http://127.0.0.1:{receiver.port}"
    assert claims["sub"] == VAPID_SUBJECT
    assert time.time() < claims["exp"] <= time.time() + 24 * 3600


async def test_webpush_oversized_payload_keeps_the_notification() -> None:
    """A payload over 4 KiB loses its data first, then its body is cut; it still arrives."""
    rendered = Rendered(text="é" * 5000, subject="Big", data={"blob": "x" * 10000})
    async with (
        HttpReceiver(Reply(201)) as receiver,
        WebPushChannel(VAPID_KEY, VAPID_SUBJECT, allow_private=True) as channel,
    ):
        delivery = outgoing(subscription(f"{receiver.url}/p"), "web_push", rendered=rendered)
        assert await channel.send(delivery) is None
    [request] = receiver.requests
    assert len(request.body) <= 4096
    payload = decrypt_push(request.body)
    assert payload["data"] is None and payload["truncated"] is True
    assert payload["title"] == "Big"
    assert payload["body"].startswith("éé") and payload["body"].endswith("…")
    assert request.headers["urgency"] == "normal"


@pytest.mark.parametrize(
    ("status", "kind", "reason"),
    [
        (404, PermanentFailure, "gone"),
        (410, PermanentFailure, "gone"),
        (429, TransientFailure, "provider_error"),
        (502, TransientFailure, "provider_error"),
        (400, PermanentFailure, "rejected"),
        (413, PermanentFailure, "rejected"),
    ],
)
async def test_webpush_status_classification(
    status: int, kind: type[Exception], reason: str
) -> None:
    """404/410 mean the subscription expired; 429/5xx are retried; other 4xx are rejected."""
    async with HttpReceiver(Reply(status)) as receiver:
        channel, delivery = http_channel("web_push", receiver.url)
        async with channel:
            with pytest.raises(kind) as failure:
                await channel.send(delivery)
    assert failure.value.reason == reason  # type: ignore[attr-defined]


async def test_webpush_private_endpoint_guard() -> None:
    """By default a literal private endpoint is invalid and a loopback name is refused."""
    async with HttpReceiver() as receiver, WebPushChannel(VAPID_KEY, VAPID_SUBJECT) as channel:
        with pytest.raises(InvalidAddress):
            channel.validate(subscription(f"{receiver.url}/push"))
        named = subscription(f"http://localhost:{receiver.port}/push")
        with pytest.raises(PermanentFailure) as failure:
            await channel.send(outgoing(channel.validate(named), "web_push"))
    assert failure.value.reason == "forbidden_address"
    assert receiver.requests == []


def test_webpush_validate_normalizes_subscriptions() -> None:
    """Padded keys and a JSON string are accepted; the result is the canonical object."""
    import orjson

    channel = WebPushChannel(VAPID_KEY, VAPID_SUBJECT)
    canonical = subscription("https://fcm.googleapis.com/fcm/send/abc")
    padded = {
        "endpoint": canonical["endpoint"],
        "expirationTime": None,
        "keys": {key: value + "=" * (-len(value) % 4) for key, value in canonical["keys"].items()},
    }
    assert channel.validate(padded) == canonical
    assert channel.validate(orjson.dumps(canonical).decode()) == canonical


def _broken(change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    value = subscription("https://push.example/sub")
    change(value)
    return value


@pytest.mark.parametrize(
    "value",
    [
        "not json",
        ["https://push.example/sub"],
        _broken(lambda s: s.pop("keys")),
        _broken(lambda s: s["keys"].pop("auth")),
        _broken(lambda s: s["keys"].update(auth=b64url(b"x" * 15))),
        _broken(lambda s: s["keys"].update(p256dh=b64url(b"\x04" + b"\x01" * 64))),
        _broken(lambda s: s["keys"].update(p256dh=b64url(b"\x04" * 33))),
        _broken(lambda s: s["keys"].update(p256dh="***")),
        _broken(lambda s: s.update(endpoint="ftp://push.example/sub")),
        _broken(lambda s: s.update(endpoint="http://192.168.1.10/sub")),
    ],
)
def test_webpush_validate_refuses_bad_subscriptions(value: Any) -> None:
    """Wrong shape, undecodable or wrong-size keys, a point off the curve, a bad endpoint."""
    with pytest.raises(InvalidAddress):
        WebPushChannel(VAPID_KEY, VAPID_SUBJECT).validate(value)


def test_vapid_key_round_trip() -> None:
    """A generated key builds a channel; its public key is the 65-byte point of the key."""
    private = generate_vapid_private_key()
    public = base64.urlsafe_b64decode(vapid_public_key(private) + "==")
    assert len(public) == 65 and public[0] == 4
    scalar = int.from_bytes(base64.urlsafe_b64decode(private + "="), "big")
    expected = ec.derive_private_key(scalar, ec.SECP256R1()).public_key()
    assert public == expected.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    assert WebPushChannel(private, VAPID_SUBJECT).public_key == vapid_public_key(private)


@pytest.mark.parametrize(
    ("key", "subject"),
    [
        ("not-a-key", VAPID_SUBJECT),
        (b64url(b"\x00" * 32), VAPID_SUBJECT),
        (b64url(b"\xff" * 32), VAPID_SUBJECT),
        (VAPID_KEY, "ops@example.com"),
        (VAPID_KEY, "http://example.com"),
    ],
)
def test_webpush_bad_configuration(key: str, subject: str) -> None:
    """A malformed or out-of-range key, or a subject that is not mailto:/https:, is refused."""
    with pytest.raises(ConfigurationError):
        WebPushChannel(key, subject)


# --- SMS -----------------------------------------------------------------------------------


async def test_sms_posts_json_and_returns_the_provider_id() -> None:
    """The provider stub gets the JSON body and bearer token; its ``id`` comes back."""
    async with HttpReceiver(Reply(200, body=b'{"id": "sm_123", "status": "queued"}')) as stub:
        url = f"{stub.url}/v1/messages"
        async with SmsChannel(url, token="tok", sender="Tidings") as channel:
            phone = channel.validate("+1 (415) 555-0123")
            assert await channel.send(outgoing(phone, "sms")) == "sm_123"
    [request] = stub.requests
    assert request.path == "/v1/messages"
    assert request.headers["authorization"] == "Bearer tok"
    assert request.headers["idempotency-key"] == "dlv_0001"
    assert request.json() == {
        "to": "+14155550123",
        "from": "Tidings",
        "text": "Your order 42 has shipped.\nIt arrives on Friday.",
        "idempotency_key": "dlv_0001",
    }


@pytest.mark.parametrize(
    ("body", "expected"),
    [(b'{"message_id": 981}', "981"), (b"{}", None), (b"accepted", None), (b"", None)],
)
async def test_sms_provider_id_variants(body: bytes, expected: str | None) -> None:
    """``message_id`` is read too; an answer without an id (or not JSON) gives None."""
    async with (
        HttpReceiver(Reply(202, body=body)) as stub,
        SmsChannel(stub.url) as channel,
    ):
        assert await channel.send(outgoing("+14155550123", "sms")) == expected
        assert "authorization" not in stub.requests[0].headers
        assert "from" not in stub.requests[0].json()


@pytest.mark.parametrize(
    ("status", "kind", "reason"),
    [
        (503, TransientFailure, "provider_error"),
        (400, PermanentFailure, "rejected"),
        (410, PermanentFailure, "gone"),
    ],
)
async def test_sms_status_classification_quotes_the_provider(
    status: int, kind: type[Exception], reason: str
) -> None:
    """Statuses map as for webhooks, and the provider's error text is kept."""
    body = b'{"error": "number blocked"}'
    async with HttpReceiver(Reply(status, body=body)) as stub, SmsChannel(stub.url) as channel:
        with pytest.raises(kind) as failure:
            await channel.send(outgoing("+14155550123", "sms"))
    assert failure.value.reason == reason  # type: ignore[attr-defined]
    assert "number blocked" in failure.value.message  # type: ignore[attr-defined]


async def test_sms_subclass_plugs_another_provider_format() -> None:
    """Overriding build_request and parse_response speaks another provider's format."""

    class AcmeSms(SmsChannel):
        def build_request(self, outgoing: Outgoing) -> tuple[dict[str, Any], dict[str, str]]:
            return {"msisdn": outgoing.address, "body": outgoing.rendered.text}, {
                "x-api-key": "k-1"
            }

        def parse_response(self, response: Any) -> str | None:
            return str(response.json()["messages"][0]["ref"])

    async with (
        HttpReceiver(Reply(200, body=b'{"messages": [{"ref": "R9"}]}')) as stub,
        AcmeSms(stub.url) as channel,
    ):
        assert await channel.send(outgoing("+447700900123", "sms")) == "R9"
    [request] = stub.requests
    assert request.headers["x-api-key"] == "k-1"
    assert request.json()["msisdn"] == "+447700900123"


@pytest.mark.parametrize(
    ("phone", "normalized"),
    [
        ("+14155550123", "+14155550123"),
        ("+1 (415) 555-0123", "+14155550123"),
        ("+44 20.7946.0958", "+442079460958"),
        ("+49 30 12345678901", "+493012345678901"),
    ],
)
def test_sms_validate_normalizes_e164(phone: str, normalized: str) -> None:
    """Separators are dropped and the E.164 number is returned."""
    assert SmsChannel("https://sms.example/send").validate(phone) == normalized


@pytest.mark.parametrize(
    "phone",
    [
        "4155550123",
        "+04155550123",
        "+1234567",
        "+1234567890123456",
        "+1-415-555-01a3",
        "",
        14155550123,
    ],
)
def test_sms_validate_refuses_non_e164(phone: Any) -> None:
    """Numbers without +, starting with 0, too short, too long or with letters are refused."""
    with pytest.raises(InvalidAddress):
        SmsChannel("https://sms.example/send").validate(phone)


def test_sms_bad_provider_url_is_a_configuration_error() -> None:
    """The provider URL must be an http(s) URL."""
    with pytest.raises(ConfigurationError):
        SmsChannel("sms.example/send")


@pytest.mark.parametrize(
    ("address", "forbidden"),
    [
        ("2002:7f00:1::1", True),  # 6to4 of 127.0.0.1
        ("2002:0a00:0001::1", True),  # 6to4 of 10.0.0.1
        ("64:ff9b::c0a8:101", True),  # NAT64 of 192.168.1.1
        ("::ffff:169.254.169.254", True),  # mapped link-local (cloud metadata)
        ("64:ff9b::808:808", False),  # NAT64 of 8.8.8.8
        ("2606:4700::1111", False),
    ],
)
def test_ipv4_inside_ipv6_is_judged_as_ipv4(address: str, forbidden: bool) -> None:
    """An IPv6 address that carries an IPv4 one (mapped, 6to4, NAT64) is as forbidden as the
    IPv4 host it reaches."""
    import ipaddress

    from tidings.delivery.channels._net import forbidden_ip

    assert forbidden_ip(ipaddress.ip_address(address)) is forbidden
