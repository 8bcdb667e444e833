"""The multi-channel pipeline (docs/pipeline.md) against real server processes.

Providers are real too: an aiosmtpd SMTP server whose answers each test scripts, HTTP receivers
standing for webhook endpoints, a push service and an SMS provider, devices on WebSockets. One
node with a worker serves most tests; an API-only node (no workers) holds messages still
``pending``; a "patient" node (backoff up to 10 s) shows a provider's Retry-After.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import http_ece
import httpx
import jinja2
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from pipeline_support import (
    END_STATES,
    HttpReceiver,
    Json,
    Slow,
    SmtpSink,
    api_client,
    b64url,
    b64url_decode,
    contains,
    delivery,
    get_message,
    history,
    post_message,
    settled,
    text_part,
    wait_message,
)
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from conftest import ServerProcess, _print_logs_if_failed, device_token
from tidings.client import DeviceClient

WEBHOOK_SECRET = "whsec_" + base64.b64encode(os.urandom(24)).decode()
EMAIL_FROM = "alerts@example.org"
SMS_TOKEN = "sms-token-" + uuid.uuid4().hex
MAX_ATTEMPTS = 3
MAX_RECIPIENTS = 5
MAX_TOPIC_RECIPIENTS = 2  # on the API-only node
SETTINGS = {
    "TIDINGS_ALLOW_PRIVATE_ADDRESSES": "true",
    "TIDINGS_PIPELINE_RETRY_BASE": "0.2",
    "TIDINGS_PIPELINE_RETRY_MAX": "0.5",
    "TIDINGS_PIPELINE_POLL_INTERVAL": "0.2",
    "TIDINGS_PIPELINE_MAX_ATTEMPTS": str(MAX_ATTEMPTS),
    "TIDINGS_RATE_LIMITS": json.dumps({"email": "2/hour"}),
    "TIDINGS_MAX_RECIPIENTS": str(MAX_RECIPIENTS),
    "TIDINGS_WEBHOOK_SECRET": WEBHOOK_SECRET,
    "TIDINGS_EMAIL_FROM": EMAIL_FROM,
}
# What Python shows of its internals: a template must never put any of it in front of anyone.
LEAK_MARKERS = ("class '", " at 0x", "module '", "built-in")

_servers: list[ServerProcess] = []


def new_user(prefix: str = "user") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def ok(response: httpx.Response) -> httpx.Response:
    assert 200 <= response.status_code < 300, (response.status_code, response.text)
    return response


def set_contact(http: httpx.Client, user_id: str, channel: str, address: Any) -> None:
    """Set a user's contact point through the service API."""
    ok(http.put(f"/users/{user_id}/contacts/{channel}", json={"address": address}))


def email_user(http: httpx.Client) -> tuple[str, str]:
    """A new user with an email contact point; returns (user_id, address)."""
    user_id = new_user()
    address = f"{user_id}@example.org"
    set_contact(http, user_id, "email", address)
    return user_id, address


def message_body(user_ids: list[str], channels: list[str], text: str = "Hi", **extra: Any) -> Json:
    return {
        "recipients": {"user_ids": user_ids},
        "channels": channels,
        "content": {"text": text},
        **extra,
    }


def nonzero(counts: dict[str, int]) -> dict[str, int]:
    return {state: n for state, n in counts.items() if n}


def list_messages(admin: httpx.Client, **params: Any) -> list[Json]:
    """GET /messages (scope admin): the list, whether bare or under "messages"."""
    response = admin.get("/messages", params=params)
    assert response.status_code == 200, response.text
    body = response.json()
    items = body["messages"] if isinstance(body, dict) else body
    assert isinstance(items, list), body
    return items


def error_code(response: httpx.Response) -> Any:
    body = response.json()
    return body.get("error") if isinstance(body, dict) else None


# --------------------------------------------------------------------------------------------
# Fixtures: providers and nodes, one of each per module
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sink() -> Iterator[SmtpSink]:
    smtp = SmtpSink().start()
    yield smtp
    smtp.close()


@pytest.fixture(scope="module")
def hooks() -> Iterator[HttpReceiver]:
    """Webhook endpoints: 200 unless scripted."""
    receiver = HttpReceiver(default_status=200).start()
    yield receiver
    receiver.close()


@pytest.fixture(scope="module")
def push_service() -> Iterator[HttpReceiver]:
    """A push service: 201 Created unless scripted."""
    receiver = HttpReceiver(default_status=201).start()
    yield receiver
    receiver.close()


def _module_server(
    factory: pytest.TempPathFactory, name: str, env: dict[str, str]
) -> Iterator[ServerProcess]:
    proc = ServerProcess(factory.mktemp(name) / "tidings.db", env=env)
    _servers.append(proc)
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def sms_provider() -> Iterator[HttpReceiver]:
    """A generic SMS provider: 200 unless scripted."""
    receiver = HttpReceiver(default_status=200).start()
    yield receiver
    receiver.close()


@pytest.fixture(scope="module")
def node(
    tmp_path_factory: pytest.TempPathFactory, sink: SmtpSink, sms_provider: HttpReceiver
) -> Iterator[ServerProcess]:
    """A node with one worker loop, email to the sink and SMS to the local provider."""
    env = {
        **SETTINGS,
        "TIDINGS_SMTP_URL": sink.url,
        "TIDINGS_SMS_URL": sms_provider.url("/sms"),
        "TIDINGS_SMS_TOKEN": SMS_TOKEN,
        "TIDINGS_SMS_FROM": "+15550001111",
    }
    yield from _module_server(tmp_path_factory, "pipeline", env)


@pytest.fixture(scope="module")
def api_node(tmp_path_factory: pytest.TempPathFactory, sink: SmtpSink) -> Iterator[ServerProcess]:
    """An API-only node (no SMS provider): its deliveries stay pending."""
    env = {
        **SETTINGS,
        "TIDINGS_SMTP_URL": sink.url,
        "TIDINGS_WORKERS": "0",
        "TIDINGS_MAX_TOPIC_RECIPIENTS": str(MAX_TOPIC_RECIPIENTS),
    }
    yield from _module_server(tmp_path_factory, "api-only", env)


@pytest.fixture(scope="module")
def patient_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A node whose backoff may wait up to 10 s, so that a provider's Retry-After shows."""
    env = {**SETTINGS, "TIDINGS_PIPELINE_RETRY_BASE": "0.1", "TIDINGS_PIPELINE_RETRY_MAX": "10"}
    yield from _module_server(tmp_path_factory, "patient", env)


@pytest.fixture(scope="module")
def patient_http(patient_node: ServerProcess) -> Iterator[httpx.Client]:
    with api_client(patient_node, patient_node.service_token("messages")) as client:
        yield client


@pytest.fixture(scope="module")
def http(node: ServerProcess) -> Iterator[httpx.Client]:
    """The node's service API with a ``messages`` token."""
    with api_client(node, node.service_token("messages")) as client:
        yield client


@pytest.fixture(scope="module")
def api_http(api_node: ServerProcess) -> Iterator[httpx.Client]:
    with api_client(api_node, api_node.service_token("messages")) as client:
        yield client


@pytest.fixture(scope="module")
def api_admin(api_node: ServerProcess) -> Iterator[httpx.Client]:
    with api_client(api_node, api_node.service_token("admin")) as client:
        yield client


@pytest.fixture(autouse=True)
def _server_logs_on_failure(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    _print_logs_if_failed(request, _servers)


# --------------------------------------------------------------------------------------------
# Email through a real SMTP server
# --------------------------------------------------------------------------------------------


def test_email_451_then_250_is_retried_and_sent(http: httpx.Client, sink: SmtpSink) -> None:
    """An SMTP 451 is retried; the 250 that follows makes the delivery sent, after two tries."""
    user, address = email_user(http)
    sink.script(address, "451 4.3.0 try later")
    message = post_message(
        http,
        {
            "recipients": {"user_ids": [user]},
            "channels": ["email"],
            "content": {
                "subject": "Order {{ order }}",
                "text": "Order {{ order }} shipped to {{ name }}",
                "html": "<p>Order {{ order }} shipped to {{ name }}</p>",
            },
            "data": {"order": 42, "name": "<b>Ann</b>"},
        },
    )
    assert "deliveries" not in message
    assert message["state"] in ("pending", "active"), message
    done = wait_message(http, message["message_id"])
    sent = delivery(done, user, "email")
    assert sent["state"] == "sent" and sent["reason"] == "sent", sent
    assert sent["attempts"] == 2, sent
    assert "451" in sent["last_error"] and "try later" in sent["last_error"], sent
    assert sent["sent_at"], sent
    steps = history(sent)
    assert steps[0] == ("pending", "queued") and steps[-1] == ("sent", "sent"), steps
    retries = [h for h in sent["history"] if h["reason"] == "retry"]
    assert len(retries) == 1 and "451" in str(retries[0]["detail"]), sent["history"]
    assert done["state"] == "sent" and nonzero(done["counts"]) == {"sent": 1}, done

    records = sink.records(address=address)
    assert [r.outcome[:3] for r in records if r.outcome] == ["451", "250"], records
    assert {r.delivery_id for r in records} == {sent["delivery_id"]}
    mail = records[-1].message
    assert mail["Subject"] == "Order 42"
    assert EMAIL_FROM in mail["From"] and address in mail["To"]
    assert (text_part(mail, "plain") or "").strip() == "Order 42 shipped to <b>Ann</b>"
    html = text_part(mail, "html") or ""
    assert "<p>Order 42 shipped to &lt;b&gt;Ann&lt;/b&gt;</p>" in html, html


def test_email_550_fails_with_the_reason(http: httpx.Client, sink: SmtpSink) -> None:
    """An SMTP 550 fails the delivery at once, rejected, with the server's words; no retry."""
    user, address = email_user(http)
    sink.script(address, "550 5.1.1 mailbox unavailable")
    message = post_message(http, message_body([user], ["email"], "Hello"))
    done = wait_message(http, message["message_id"])
    failed = delivery(done, user, "email")
    assert failed["state"] == "failed" and failed["reason"] == "rejected", failed
    assert "550" in failed["last_error"] and "mailbox unavailable" in failed["last_error"]
    assert failed["attempts"] == 1 and failed["sent_at"] is None, failed
    assert history(failed)[-1] == ("failed", "rejected")
    assert "550" in str(failed["history"][-1]["detail"]), failed["history"]
    assert done["state"] == "failed"
    time.sleep(0.5)  # a retry would come within RETRY_MAX (0.5 s)
    assert len(sink.records(address=address)) == 1


def test_email_out_of_tries_fails_then_retry_request_sends_it(
    http: httpx.Client, sink: SmtpSink
) -> None:
    """After MAX_ATTEMPTS transient failures a delivery is failed (max_attempts); POST
    /messages/{id}/retry queues it again with its tries counted from zero, and it is sent."""
    user, address = email_user(http)
    sink.script(address, *[f"451 4.3.0 busy {i}" for i in range(MAX_ATTEMPTS)])
    message = post_message(http, message_body([user], ["email"], "Tries"))
    done = wait_message(http, message["message_id"])
    failed = delivery(done, user, "email")
    assert failed["state"] == "failed" and failed["reason"] == "max_attempts", failed
    assert failed["attempts"] == MAX_ATTEMPTS, failed
    assert f"busy {MAX_ATTEMPTS - 1}" in failed["last_error"], failed
    assert len(sink.records(address=address)) == MAX_ATTEMPTS

    ok(http.post(f"/messages/{message['message_id']}/retry"))
    done = wait_message(
        http, message["message_id"], until=lambda m: delivery(m, user, "email")["state"] == "sent"
    )
    sent = delivery(done, user, "email")
    assert ("pending", "retried_by_request") in history(sent), history(sent)
    assert sent["attempts"] == 1, sent
    assert len(sink.accepted(address=address)) == 1
    assert done["state"] == "sent"


def test_rate_limited_user_gets_no_more_within_the_period(
    http: httpx.Client, sink: SmtpSink
) -> None:
    """Over "2/hour", a user's email deliveries are failed (rate_limited) and never sent; a
    critical message still goes through, and the limit holds after it."""
    user, address = email_user(http)
    ids = []
    for i, critical in enumerate([False, False, False, True, False]):
        body = message_body([user], ["email"], "Note {{ i }}", data={"i": i}, critical=critical)
        ids.append(post_message(http, body)["message_id"])
    done = [wait_message(http, message_id) for message_id in ids]
    deliveries = [delivery(m, user, "email") for m in done]
    assert [d["state"] for d in deliveries] == ["sent", "sent", "failed", "sent", "failed"], [
        (d["state"], d["reason"]) for d in deliveries
    ]
    for refused in (deliveries[2], deliveries[4]):
        assert refused["reason"] == "rate_limited", refused
        assert history(refused)[-1] == ("failed", "rate_limited"), refused
        assert refused["attempts"] == 0 and refused["sent_at"] is None, refused
        assert not sink.records(delivery_id=refused["delivery_id"])
    accepted = sink.accepted(address=address)
    assert sorted(r.delivery_id or "" for r in accepted) == sorted(
        deliveries[i]["delivery_id"] for i in (0, 1, 3)
    )
    texts = sorted((text_part(r.message, "plain") or "").strip() for r in accepted)
    assert texts == ["Note 0", "Note 1", "Note 3"], texts


def test_no_contact_point_fails_with_no_address(http: httpx.Client, sink: SmtpSink) -> None:
    """A recipient without an email address gets a failed delivery (no_address); the other
    recipient's is sent, and the message is failed."""
    with_address, address = email_user(http)
    without = new_user()
    message = post_message(http, message_body([with_address, without], ["email"], "Both"))
    done = wait_message(http, message["message_id"])
    missing = delivery(done, without, "email")
    assert missing["state"] == "failed" and missing["reason"] == "no_address", missing
    assert delivery(done, with_address, "email")["state"] == "sent"
    assert done["state"] == "failed", done
    assert nonzero(done["counts"]) == {"sent": 1, "failed": 1}, done
    assert len(sink.accepted(address=address)) == 1


def test_sms_goes_to_the_http_provider(http: httpx.Client, sms_provider: HttpReceiver) -> None:
    """An SMS is one request to TIDINGS_SMS_URL with the provider token, carrying the number
    and the rendered text; a 2xx makes it sent."""
    user = new_user()
    set_contact(http, user, "sms", "+14155550123")
    before = len(sms_provider.received("/sms"))
    code = uuid.uuid4().hex[:8]
    body = message_body([user], ["sms"], "Code-{{ code }}", data={"code": code})
    done = wait_message(http, post_message(http, body)["message_id"])
    sent = delivery(done, user, "sms")
    assert sent["state"] == "sent" and sent["attempts"] == 1, sent
    calls = [c for c in sms_provider.received("/sms")[before:] if code.encode() in c.body]
    assert len(calls) == 1, sms_provider.received("/sms")
    assert calls[0].headers.get("authorization") == f"Bearer {SMS_TOKEN}", calls[0].headers
    assert b"14155550123" in calls[0].body and f"Code-{code}".encode() in calls[0].body


def test_channel_without_provider_is_channel_unavailable(api_http: httpx.Client) -> None:
    """Without TIDINGS_SMS_URL, an SMS delivery is failed at creation (channel_unavailable),
    whether or not the user has a number (the server may refuse to store one)."""
    user = new_user()
    response = api_http.put(f"/users/{user}/contacts/sms", json={"address": "+14155550123"})
    assert response.status_code < 300 or error_code(response) == "invalid_address", response.text
    message = post_message(api_http, message_body([user], ["sms"], "Text me"))
    done = wait_message(api_http, message["message_id"])
    refused = delivery(done, user, "sms")
    assert refused["state"] == "failed" and refused["reason"] == "channel_unavailable", refused
    assert refused["attempts"] == 0, refused


# --------------------------------------------------------------------------------------------
# Webhooks and web push against local receivers
# --------------------------------------------------------------------------------------------


def test_webhook_is_signed_and_retried_with_the_same_id(
    http: httpx.Client, hooks: HttpReceiver
) -> None:
    """The receiver verifies the Standard Webhooks signature of every try; a 503 is retried
    with the same webhook-id; the payload carries the message id, rendered text and data."""
    user = new_user()
    path = f"/hook/{user}"
    set_contact(http, user, "webhook", hooks.url(path))
    hooks.script(path, 503, 200)
    data = {"who": "Ann", "n": 7}
    message = post_message(
        http,
        {
            "recipients": {"user_ids": [user]},
            "channels": ["webhook"],
            "content": {"subject": "Hello {{ who }}", "text": "Text for {{ who }}"},
            "data": data,
        },
    )
    done = wait_message(http, message["message_id"])
    sent = delivery(done, user, "webhook")
    assert sent["state"] == "sent" and sent["attempts"] == 2, sent
    assert "503" in sent["last_error"], sent

    calls = hooks.received(path)
    assert len(calls) == 2, calls
    receiver = Webhook(WEBHOOK_SECRET)
    payloads = [receiver.verify(call.body, call.headers) for call in calls]
    assert calls[0].headers["webhook-id"] == calls[1].headers["webhook-id"]
    assert calls[1].headers["content-type"].startswith("application/json")
    payload = payloads[-1]
    assert contains(payload, message["message_id"]), payload
    assert contains(payload, "Text for Ann"), payload
    assert contains(payload, data), payload

    other = Webhook("whsec_" + base64.b64encode(os.urandom(24)).decode())
    with pytest.raises(WebhookVerificationError):
        other.verify(calls[1].body, calls[1].headers)
    with pytest.raises(WebhookVerificationError):
        receiver.verify(calls[1].body.replace(b"Ann", b"Bob"), calls[1].headers)


def test_webhook_retry_after_is_honoured(patient_http: httpx.Client, hooks: HttpReceiver) -> None:
    """A 503 with Retry-After: 2 is tried again no sooner than two seconds later, although the
    node's own backoff would be at most 0.2 s (Retry-After within TIDINGS_PIPELINE_RETRY_MAX)."""
    user = new_user()
    path = f"/hook/{user}"
    hooks.script(path, (503, {"Retry-After": "2"}), 200)
    set_contact(patient_http, user, "webhook", hooks.url(path))
    message = post_message(patient_http, message_body([user], ["webhook"], "Later"))
    done = wait_message(patient_http, message["message_id"])
    assert delivery(done, user, "webhook")["state"] == "sent", done
    first, second = hooks.received(path)
    assert second.at - first.at >= 1.9, second.at - first.at


def test_delete_stops_a_delivery_waiting_for_its_next_try(
    patient_http: httpx.Client, hooks: HttpReceiver
) -> None:
    """DELETE moves a delivery waiting to be tried again (pending after a 503) to deleted, and
    it is not tried again."""
    user = new_user()
    path = f"/hook/{user}"
    set_contact(patient_http, user, "webhook", hooks.url(path))
    hooks.script(path, (503, {"Retry-After": "1"}), 200)
    message = post_message(patient_http, message_body([user], ["webhook"], "Never mind"))
    waiting = wait_message(
        patient_http,
        message["message_id"],
        until=lambda m: history(delivery(m, user, "webhook"))[-1] == ("pending", "retry"),
    )
    assert waiting["state"] in ("pending", "active"), waiting
    answer = patient_http.delete(f"/messages/{message['message_id']}")
    assert answer.status_code == 200 and answer.json()["state"] == "deleted", answer.text
    deleted = delivery(get_message(patient_http, message["message_id"]), user, "webhook")
    assert deleted["state"] == "deleted" and deleted["reason"] == "deleted_by_request", deleted
    time.sleep(1.5)  # past the Retry-After
    assert len(hooks.received(path)) == 1
    assert delivery(get_message(patient_http, message["message_id"]), user, "webhook") == deleted


def test_delete_lets_a_delivery_being_sent_finish(http: httpx.Client, sink: SmtpSink) -> None:
    """DELETE while a delivery is active leaves it to finish: the email is sent and stays so."""
    user, address = email_user(http)
    sink.script(address, Slow(1.5))
    message = post_message(http, message_body([user], ["email"], "In flight"))
    sink.wait_records(lambda found: len(found) == 1, address=address)
    answer = http.delete(f"/messages/{message['message_id']}")
    assert answer.status_code == 200, answer.text
    assert answer.json()["state"] == "active", answer.json()
    done = wait_message(http, message["message_id"])
    sent = delivery(done, user, "email")
    assert sent["state"] == "sent" and "deleted" not in [s for s, _ in history(sent)], sent
    assert done["state"] == "sent"
    assert len(sink.accepted(address=address)) == 1


def test_generated_vapid_key_is_kept_across_restarts(
    start_server: Callable[..., ServerProcess],
) -> None:
    """Without TIDINGS_VAPID_PRIVATE_KEY, the key is generated once and kept in the store: a
    restarted node publishes the same applicationServerKey."""
    server = start_server()
    key = vapid_public_key(server)
    assert len(b64url_decode(key.rstrip("="))) == 65 and b64url_decode(key)[0] == 4, key
    server.stop()
    server.start()
    assert vapid_public_key(server) == key


def vapid_public_key(node: ServerProcess) -> str:
    """The applicationServerKey from GET /webpush/vapid-public-key (no auth)."""
    response = httpx.get(f"{node.url}/webpush/vapid-public-key", trust_env=False)
    assert response.status_code == 200, response.text
    try:
        body: Any = response.json()
    except ValueError:
        return response.text.strip()
    if isinstance(body, str):
        return body
    assert isinstance(body, dict), body
    for name in ("applicationServerKey", "public_key", "publicKey", "key", "vapid_public_key"):
        if isinstance(body.get(name), str):
            return str(body[name])
    strings = [v for v in body.values() if isinstance(v, str)]
    assert len(strings) == 1, body
    return strings[0]


def check_vapid(authorization: str, audience: str, public_key: str) -> None:
    """An RFC 8292 ``vapid t=…, k=…`` header: ES256 JWT for the push service's origin, signed by
    the server's published key."""
    match = re.fullmatch(r"vapid\s+t=([^,\s]+)\s*,\s*k=([^,\s]+)", authorization.strip())
    assert match, authorization
    token, key = match.groups()
    assert key.rstrip("=") == public_key.rstrip("="), (key, public_key)
    header_b64, claims_b64, signature_b64 = token.split(".")
    assert json.loads(b64url_decode(header_b64))["alg"] == "ES256"
    claims = json.loads(b64url_decode(claims_b64))
    assert claims["aud"] == audience, claims
    assert time.time() < claims["exp"] <= time.time() + 24 * 3600 + 60, claims
    assert claims["sub"] == "mailto:admin@localhost", claims
    signature = b64url_decode(signature_b64)
    assert len(signature) == 64
    verifier = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b64url_decode(key))
    verifier.verify(
        encode_dss_signature(
            int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
        ),
        f"{header_b64}.{claims_b64}".encode(),
        ec.ECDSA(hashes.SHA256()),
    )


def push_subscription(receiver: HttpReceiver, path: str) -> tuple[Json, Any, bytes]:
    """A browser-like PushSubscription pointing at ``receiver``; returns it with its keys."""
    private_key = ec.generate_private_key(ec.SECP256R1())
    public = private_key.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    auth = os.urandom(16)
    subscription = {
        "endpoint": receiver.url(path),
        "keys": {"p256dh": b64url(public), "auth": b64url(auth)},
    }
    return subscription, private_key, auth


def test_web_push_decrypts_to_the_rendered_text(
    node: ServerProcess, http: httpx.Client, push_service: HttpReceiver
) -> None:
    """The push service gets an aes128gcm body (RFC 8291) that the subscription's keys decrypt
    to JSON whose body is the rendered text, with a VAPID header (RFC 8292) and a TTL."""
    user = new_user()
    path = f"/push/{user}"
    subscription, private_key, auth = push_subscription(push_service, path)
    set_contact(http, user, "web_push", subscription)
    message = post_message(
        http,
        message_body([user], ["web_push"], "Parcel {{ parcel }} is out", data={"parcel": 9}),
    )
    done = wait_message(http, message["message_id"])
    sent = delivery(done, user, "web_push")
    assert sent["state"] == "sent" and sent["attempts"] == 1, sent

    (push,) = push_service.received(path)
    assert push.headers["content-encoding"] == "aes128gcm", push.headers
    assert "ttl" in push.headers, push.headers
    plaintext = http_ece.decrypt(
        push.body, private_key=private_key, auth_secret=auth, version="aes128gcm"
    )
    payload = json.loads(plaintext)
    assert payload["body"] == "Parcel 9 is out", payload
    check_vapid(push.headers["authorization"], push_service.url(""), vapid_public_key(node))


def test_web_push_gone_subscription_fails_with_gone(
    http: httpx.Client, push_service: HttpReceiver
) -> None:
    """A push service answering 410 Gone fails the delivery at once with reason gone."""
    user = new_user()
    path = f"/push/{user}"
    subscription, _, _ = push_subscription(push_service, path)
    set_contact(http, user, "web_push", subscription)
    push_service.script(path, 410)
    message = post_message(http, message_body([user], ["web_push"], "Gone?"))
    done = wait_message(http, message["message_id"])
    failed = delivery(done, user, "web_push")
    assert failed["state"] == "failed" and failed["reason"] == "gone", failed
    assert len(push_service.received(path)) == 1


def test_private_addresses_are_refused_by_default(
    start_server: Callable[..., ServerProcess], hooks: HttpReceiver, push_service: HttpReceiver
) -> None:
    """Without TIDINGS_ALLOW_PRIVATE_ADDRESSES, webhooks and pushes to loopback are never made:
    the contact is refused (422) or the delivery fails (forbidden_address)."""
    server = start_server(
        TIDINGS_PIPELINE_RETRY_BASE="0.2",
        TIDINGS_PIPELINE_POLL_INTERVAL="0.2",
        TIDINGS_PIPELINE_MAX_ATTEMPTS="2",
    )
    user = new_user()
    hook_path, push_path = f"/hook/{user}", f"/push/{user}"
    subscription, _, _ = push_subscription(push_service, push_path)
    with api_client(server, server.service_token("messages")) as http:
        channels = []
        for channel, address in (("webhook", hooks.url(hook_path)), ("web_push", subscription)):
            response = http.put(f"/users/{user}/contacts/{channel}", json={"address": address})
            if response.status_code == 422:
                assert error_code(response) == "invalid_address", response.text
            else:
                ok(response)
                channels.append(channel)
        if channels:
            message = post_message(http, message_body([user], channels, "Knock"))
            done = wait_message(http, message["message_id"])
            for channel in channels:
                refused = delivery(done, user, channel)
                assert refused["state"] == "failed", refused
                assert refused["reason"] == "forbidden_address", refused
    assert hooks.received(hook_path) == [] and push_service.received(push_path) == []


# --------------------------------------------------------------------------------------------
# in_app and templates
# --------------------------------------------------------------------------------------------


async def test_in_app_is_a_notification_on_the_users_device(
    node: ServerProcess, http: httpx.Client
) -> None:
    """An in_app delivery is a tidings notification (pipeline-<delivery_id>) that the user's
    connected device counts and fetches, carrying the rendered message and its data."""
    user = new_user()
    async with DeviceClient(node.ws_url, token=device_token(user)) as device:
        body = {
            "recipients": {"user_ids": [user]},
            "channels": ["in_app"],
            "content": {"subject": "Hi {{ name }}", "text": "Hello {{ name }}", "html": "<i>x</i>"},
            "data": {"name": "Ann"},
        }
        message = await asyncio.to_thread(post_message, http, body)
        done = await asyncio.to_thread(wait_message, http, message["message_id"])
        sent = delivery(done, user, "in_app")
        assert sent["state"] == "sent" and history(sent)[-1] == ("sent", "sent"), sent["history"]
        assert await device.wait_for_count(1) == 1
        (note,) = await device.get_unseen()
    assert note["notification_id"] == f"pipeline-{sent['delivery_id']}", note
    assert note["user_id"] == user
    assert note["data"] == {
        "message_id": message["message_id"],
        "subject": "Hi Ann",
        "text": "Hello Ann",
        "html": "<i>x</i>",
        "data": {"name": "Ann"},
    }, note


def test_templates_put_get_list_delete(http: httpx.Client) -> None:
    """PUT creates (201) then replaces (200) a template with a new version; GET and the list
    show it; DELETE answers 204, after which it is 404 and unusable in a message."""
    template_id = unique("tpl")
    first = http.put(f"/templates/{template_id}", json={"subject": "S {{ a }}", "text": "T"})
    assert first.status_code == 201, first.text
    version = first.json()["version"]
    got = http.get(f"/templates/{template_id}")
    assert got.status_code == 200 and got.json()["text"] == "T", got.text
    assert got.json()["subject"] == "S {{ a }}"

    second = http.put(f"/templates/{template_id}", json={"text": "T2 {{ a }}", "html": "<b>h</b>"})
    assert second.status_code == 200, second.text
    assert second.json()["version"] != version
    if isinstance(version, int):
        assert second.json()["version"] > version
    got = http.get(f"/templates/{template_id}").json()
    assert (got["text"], got["html"]) == ("T2 {{ a }}", "<b>h</b>"), got

    listed = http.get("/templates")
    assert listed.status_code == 200, listed.text
    items = listed.json()
    items = items["templates"] if isinstance(items, dict) else items
    assert template_id in [t["template_id"] for t in items], items

    deleted = http.delete(f"/templates/{template_id}")
    assert deleted.status_code == 204, deleted.text
    assert http.get(f"/templates/{template_id}").status_code == 404
    body = {"recipients": {"user_ids": [new_user()]}, "channels": ["in_app"]}
    post_message(http, {**body, "template_id": template_id}, expect=422)


def test_broken_template_is_422_with_jinjas_words(http: httpx.Client) -> None:
    """A template that does not compile answers 422 with Jinja's message and is not stored."""
    for broken in ({"text": "Hello {{ name "}, {"text": "ok", "html": "{% if %}x"}):
        template_id = unique("broken")
        response = http.put(f"/templates/{template_id}", json=broken)
        assert response.status_code == 422, response.text
        source = broken.get("html") or broken["text"]
        with pytest.raises(jinja2.TemplateSyntaxError) as info:
            jinja2.Environment().parse(source)
        assert info.value.message and info.value.message in response.text, response.text
        assert http.get(f"/templates/{template_id}").status_code == 404


async def test_template_renders_data_with_html_autoescaped(
    node: ServerProcess, http: httpx.Client
) -> None:
    """A stored template renders with the message's data: html autoescaped, text as is; a
    replaced template is used by the next message (the node's cache dropped the old one)."""
    template_id = unique("shipped")
    template = {
        "subject": "Order {{ order }}",
        "text": "Dear {{ name }}, order {{ order }} shipped",
        "html": "<p>Dear {{ name }}</p>",
    }
    await asyncio.to_thread(lambda: ok(http.put(f"/templates/{template_id}", json=template)))
    user = new_user()
    name = "<script>alert('x')</script>"
    async with DeviceClient(node.ws_url, token=device_token(user)) as device:
        body = {
            "recipients": {"user_ids": [user]},
            "channels": ["in_app"],
            "template_id": template_id,
            "data": {"order": 42, "name": name},
        }
        first = await asyncio.to_thread(post_message, http, body)
        done = await asyncio.to_thread(wait_message, http, first["message_id"])
        assert done["template_id"] == template_id and done["state"] == "sent", done
        await device.wait_for_count(1)
        (note,) = await device.get_unseen()
        assert note["data"]["subject"] == "Order 42"
        assert note["data"]["text"] == f"Dear {name}, order 42 shipped"
        assert note["data"]["html"] == (
            "<p>Dear &lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;</p>"
        ), note["data"]

        await asyncio.to_thread(
            lambda: ok(http.put(f"/templates/{template_id}", json={"text": "v2 {{ order }}"}))
        )
        body["data"] = {"order": 43, "name": "Ann"}
        second = await asyncio.to_thread(post_message, http, body)
        await asyncio.to_thread(wait_message, http, second["message_id"])
        await device.wait_for_count(2)
        notes = await device.get_unseen()
    (latest,) = [n for n in notes if n["data"]["message_id"] == second["message_id"]]
    assert latest["data"]["text"] == "v2 43", latest


async def test_sandbox_escapes_neither_leak_nor_execute(
    node: ServerProcess, http: httpx.Client, tmp_path: Path
) -> None:
    """Templates reaching for Python internals are refused (422) or render nothing of them;
    none runs a command."""
    marker = tmp_path / "escaped"
    touch = f"touch {marker}"
    attempts = [
        "{{ ''.__class__.__mro__ }}",
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{% for c in [].__class__.__base__.__subclasses__() %}{{ c }}{% endfor %}",
        "{{ ''|attr('__class__') }}",
        "{{ self.__init__.__globals__ }}",
        f"{{{{ cycler.__init__.__globals__.os.popen('{touch}').read() }}}}",
        f"{{{{ lipsum.__globals__['os'].popen('{touch}').read() }}}}",
        f"{{{{ joiner.__init__.__globals__.os.system('{touch}') }}}}",
        f"{{{{ namespace.__init__.__globals__['os'].system('{touch}') }}}}",
        "{{ ().__class__.__base__.__subclasses__() }}",
        "{{ ''.format.__self__ }}",
        "{{ range.__self__ }}",
    ]
    user = new_user()
    accepted: list[str] = []
    async with DeviceClient(node.ws_url, token=device_token(user)) as device:
        for source in attempts:
            body = {
                "recipients": {"user_ids": [user]},
                "channels": ["in_app"],
                "content": {"subject": source, "text": source, "html": source},
            }
            response = await asyncio.to_thread(http.post, "/messages", json=body)
            assert response.status_code in (202, 422), (source, response.text)
            for leak in LEAK_MARKERS:
                assert leak not in response.text, (source, response.text)
            if response.status_code == 202:
                accepted.append(response.json()["message_id"])
        sent = 0
        for message_id in accepted:
            done = await asyncio.to_thread(wait_message, http, message_id)
            sent += delivery(done, user, "in_app")["state"] == "sent"
        if sent:
            await device.wait_for_count(sent)
        notes = await device.get_unseen(limit=100)
    assert len(notes) == sent
    for note in notes:
        shown = json.dumps(note["data"])
        for leak in LEAK_MARKERS:
            assert leak not in shown, note
    assert not marker.exists(), "a template ran a shell command"
    health = await asyncio.to_thread(httpx.get, f"{node.url}/health", trust_env=False)
    assert health.status_code == 200


# --------------------------------------------------------------------------------------------
# Preferences and contact points
# --------------------------------------------------------------------------------------------


def test_channel_opt_out_deletes_its_deliveries(
    node: ServerProcess, http: httpx.Client, sink: SmtpSink
) -> None:
    """A user who turned email off gets a deleted email delivery (channel_disabled or
    unsubscribed) and their other channels still work; turning it on again restores it."""
    user, address = email_user(http)
    with api_client(node, device_token(user)) as me:
        ok(me.put("/me/channels/email", json={"enabled": False}))
        prefs = ok(me.get("/me/preferences")).json()
        assert prefs["user_id"] == user and prefs["channels"]["email"] is False, prefs
        assert prefs["contacts"]["email"] == address, prefs

        message = post_message(http, message_body([user], ["email", "in_app"], "Off"))
        done = wait_message(http, message["message_id"])
        skipped = delivery(done, user, "email")
        assert skipped["state"] == "deleted", skipped
        assert skipped["reason"] in ("channel_disabled", "unsubscribed"), skipped
        assert delivery(done, user, "in_app")["state"] == "sent"
        assert done["state"] == "sent", done  # every delivery not deleted was sent
        assert sink.records(address=address) == []

        ok(me.put("/me/channels/email", json={"enabled": True}))
        assert ok(me.get("/me/preferences")).json()["channels"]["email"] is True
    again = post_message(http, message_body([user], ["email"], "On"))
    done = wait_message(http, again["message_id"])
    assert delivery(done, user, "email")["state"] == "sent", done
    assert len(sink.accepted(address=address)) == 1


def test_topic_recipients_are_the_users_subscribed_to_it(
    node: ServerProcess, http: httpx.Client
) -> None:
    """{"topic": t} reaches exactly the users subscribed through PUT /me/topics/t; one who
    unsubscribed is left out; a topic the policy refuses (user:<other>) is not subscribed."""
    topic = unique("orders")
    alice, bob, carol = new_user("alice"), new_user("bob"), new_user("carol")
    for user in (alice, bob):
        with api_client(node, device_token(user)) as me:
            ok(me.put(f"/me/topics/{topic}"))
            assert topic in ok(me.get("/me/preferences")).json()["topics"]
    with api_client(node, device_token(carol)) as me:
        assert topic not in ok(me.get("/me/preferences")).json()["topics"]

    body = {"recipients": {"topic": topic}, "channels": ["in_app"], "content": {"text": "t"}}
    done = wait_message(http, post_message(http, body)["message_id"])
    assert sorted(d["user_id"] for d in done["deliveries"]) == sorted([alice, bob]), done
    assert done["recipients"] == {"topic": topic} and done["state"] == "sent", done

    with api_client(node, device_token(bob)) as me:
        ok(me.delete(f"/me/topics/{topic}"))
        assert topic not in ok(me.get("/me/preferences")).json()["topics"]
    done = wait_message(http, post_message(http, body)["message_id"])
    assert [d["user_id"] for d in done["deliveries"]] == [alice], done

    private = f"user:{bob}"
    with api_client(node, device_token(alice)) as me:
        refused = me.put(f"/me/topics/{quote(private, safe='')}")
        assert refused.status_code == 403, refused.text
        assert private not in ok(me.get("/me/preferences")).json()["topics"]


def test_contact_points_are_validated(node: ServerProcess) -> None:
    """Invalid contact points answer 422 invalid_address with the reason and change nothing;
    valid ones are stored normalised; DELETE removes one."""
    user = new_user()
    with api_client(node, device_token(user)) as me:
        ok(me.put("/me/contacts/email", json={"address": "Mixed.Case@EXAMPLE.ORG"}))
        ok(me.put("/me/contacts/sms", json={"address": "+14155550123"}))
        invalid = [
            ("email", "not-an-email"),
            ("email", "alice@"),
            ("webhook", "ftp://example.org/hook"),
            ("webhook", "not a url"),
            ("sms", "4155550123"),
            ("web_push", {"endpoint": "https://push.example.org/x"}),
        ]
        for channel, address in invalid:
            response = me.put(f"/me/contacts/{channel}", json={"address": address})
            assert response.status_code == 422, (channel, address, response.text)
            assert error_code(response) == "invalid_address", response.text
            reasons = [v for k, v in response.json().items() if k != "error"]
            assert any(isinstance(v, str) and v for v in reasons), response.text
        contacts = ok(me.get("/me/preferences")).json()["contacts"]
        assert contacts.get("email") == "Mixed.Case@example.org", contacts
        assert contacts.get("sms") == "+14155550123", contacts
        assert "webhook" not in contacts and "web_push" not in contacts, contacts

        ok(me.delete("/me/contacts/sms"))
        assert "sms" not in ok(me.get("/me/preferences")).json()["contacts"]


# --------------------------------------------------------------------------------------------
# Isolation and scopes
# --------------------------------------------------------------------------------------------


def test_me_acts_only_on_the_tokens_user(node: ServerProcess, http: httpx.Client) -> None:
    """Alice's device JWT changes only alice's preferences, whatever else the request says, and
    cannot read or change bob's through /users/{bob}/…."""
    alice, bob = new_user("alice"), new_user("bob")
    bob_address, mine_at = f"{bob}@example.org", f"{alice}@example.org"
    set_contact(http, bob, "email", bob_address)
    with api_client(node, device_token(alice)) as as_alice:
        ok(as_alice.put("/me/channels/email", params={"user_id": bob}, json={"enabled": False}))
        ok(as_alice.put("/me/contacts/email", params={"user_id": bob}, json={"address": mine_at}))
        mine = ok(as_alice.get("/me/preferences", params={"user_id": bob})).json()
        assert mine["user_id"] == alice and mine["channels"]["email"] is False, mine
        assert mine["contacts"]["email"] == mine_at, mine
        for method, path, body in [
            ("GET", f"/users/{bob}/preferences", None),
            ("PUT", f"/users/{bob}/channels/email", {"enabled": False}),
            ("PUT", f"/users/{bob}/contacts/email", {"address": mine_at}),
            ("DELETE", f"/users/{bob}/contacts/email", None),
        ]:
            response = as_alice.request(method, path, json=body)
            assert response.status_code in (401, 403), (method, path, response.status_code)
    with api_client(node, device_token(bob)) as as_bob:
        theirs = ok(as_bob.get("/me/preferences")).json()
    assert theirs["user_id"] == bob, theirs
    assert theirs["channels"].get("email", True) is True, theirs
    assert theirs["contacts"] == {"email": bob_address}, theirs
    assert ok(http.get(f"/users/{bob}/preferences")).json() == theirs
    anonymous = httpx.get(f"{node.url}/me/preferences", trust_env=False)
    assert anonymous.status_code == 401


def test_services_see_only_their_messages_and_need_the_scope(
    node: ServerProcess, http: httpx.Client
) -> None:
    """Another service's message is 404 to read, delete or retry; admin reads it; scope notify
    alone is 403 on /messages and /templates; no token is 401."""
    message = post_message(http, message_body([new_user()], ["in_app"], "Mine"))
    path = f"/messages/{message['message_id']}"
    with (
        api_client(node, node.service_token("messages")) as other,
        api_client(node, node.service_token("admin")) as admin,
        api_client(node, node.service_token("notify")) as notifier,
        api_client(node, device_token(new_user())) as device,
        api_client(node) as anonymous,
    ):
        assert other.get(path).status_code == 404
        assert other.delete(path).status_code == 404
        assert other.post(f"{path}/retry").status_code == 404
        assert admin.get(path).status_code == 200
        body = message_body([new_user()], ["in_app"])
        assert notifier.post("/messages", json=body).status_code == 403
        assert notifier.get(path).status_code == 403
        assert notifier.put(f"/templates/{unique('t')}", json={"text": "x"}).status_code == 403
        assert notifier.get("/messages").status_code == 403
        assert anonymous.post("/messages", json=body).status_code == 401
        assert device.post("/messages", json=body).status_code in (401, 403)
    assert get_message(http, message["message_id"])["state"] != "deleted"


# --------------------------------------------------------------------------------------------
# The message API on a node without workers (deliveries stay pending)
# --------------------------------------------------------------------------------------------


def test_idempotency_key_same_body_200_other_body_409(api_http: httpx.Client) -> None:
    """The same idempotency key (body field or header) with the same body answers 200 with the
    first message; with another body 409 conflict; no second message is created."""
    user = new_user()
    key = unique("order-42-shipped")
    body = message_body([user], ["in_app"], "Shipped", idempotency_key=key)
    first = post_message(api_http, body)
    assert first["idempotency_key"] == key
    again = post_message(api_http, body, expect=200)
    assert again["message_id"] == first["message_id"], (first, again)
    conflict = api_http.post("/messages", json={**body, "data": {"other": True}})
    assert conflict.status_code == 409 and error_code(conflict) == "conflict", conflict.text
    assert len(get_message(api_http, first["message_id"])["deliveries"]) == 1

    header_key = unique("by-header")
    plain = message_body([user], ["in_app"], "Header")
    by_header = post_message(api_http, plain, headers={"Idempotency-Key": header_key})
    repeat = post_message(api_http, plain, expect=200, headers={"Idempotency-Key": header_key})
    assert repeat["message_id"] == by_header["message_id"]
    changed = api_http.post(
        "/messages",
        json=message_body([user], ["in_app"], "Other"),
        headers={"Idempotency-Key": header_key},
    )
    assert changed.status_code == 409, changed.text
    assert get_message(api_http, by_header["message_id"])["idempotency_key"] == header_key


def test_message_shape_and_delete_moves_pending_to_deleted(api_http: httpx.Client) -> None:
    """A new message lists one pending delivery per (user, channel) with its history; DELETE
    moves pending deliveries to deleted (deleted_by_request) and leaves failed ones alone."""
    alice, bob = new_user("alice"), new_user("bob")
    created = post_message(api_http, message_body([alice, bob], ["in_app"], "Soon"))
    message = get_message(api_http, created["message_id"])
    expected_fields = {
        "message_id",
        "state",
        "created_at",
        "template_id",
        "channels",
        "recipients",
        "critical",
        "idempotency_key",
        "counts",
        "deliveries",
    }
    assert expected_fields <= set(message), message
    assert message["state"] == "pending" and nonzero(message["counts"]) == {"pending": 2}
    assert message["recipients"] == {"user_ids": [alice, bob]} and message["critical"] is False
    assert message["channels"] == ["in_app"] and message["template_id"] is None
    for d in message["deliveries"]:
        assert d["state"] == "pending" and d["reason"] == "queued" and d["attempts"] == 0, d
        assert history(d) == [("pending", "queued")], d
        assert {"delivery_id", "created_at", "updated_at", "sent_at", "last_error"} <= set(d)

    answer = api_http.delete(f"/messages/{created['message_id']}")
    assert answer.status_code == 200, answer.text
    assert answer.json()["state"] == "deleted", answer.json()
    message = get_message(api_http, created["message_id"])
    assert message["state"] == "deleted" and nonzero(message["counts"]) == {"deleted": 2}
    for d in message["deliveries"]:
        assert d["state"] == "deleted" and d["reason"] == "deleted_by_request", d
        assert history(d) == [("pending", "queued"), ("deleted", "deleted_by_request")], d

    # A user without an email address: that delivery failed at creation and stays failed.
    mixed = post_message(api_http, message_body([alice], ["in_app", "email"], "Mixed"))
    answer = api_http.delete(f"/messages/{mixed['message_id']}")
    assert answer.status_code == 200, answer.text
    message = get_message(api_http, mixed["message_id"])
    assert delivery(message, alice, "in_app")["state"] == "deleted"
    assert delivery(message, alice, "email")["reason"] == "no_address"
    assert delivery(message, alice, "email")["state"] == "failed"
    assert message["state"] == "failed" and answer.json()["state"] == "failed", message


def test_admin_lists_recent_messages_newest_first(
    api_http: httpx.Client, api_admin: httpx.Client
) -> None:
    """GET /messages (admin) lists messages newest first without deliveries, filtered by state;
    scope messages alone is 403."""
    older = post_message(api_http, message_body([new_user()], ["in_app"], "1"))["message_id"]
    newer = post_message(api_http, message_body([new_user()], ["in_app"], "2"))["message_id"]

    def listed(**params: Any) -> list[Json]:
        return list_messages(api_admin, **params)

    items = listed(limit=100)
    ids = [m["message_id"] for m in items]
    assert ids.index(newer) < ids.index(older), ids
    assert all("deliveries" not in m for m in items)
    assert newer in [m["message_id"] for m in listed(state="pending", limit=100)]
    assert newer not in [m["message_id"] for m in listed(state="sent", limit=100)]
    assert len(listed(limit=1)) == 1
    assert api_http.get("/messages").status_code == 403


def test_invalid_messages_are_422_and_write_nothing(
    api_http: httpx.Client, api_admin: httpx.Client
) -> None:
    """Bad recipients, channels, templates or content answer 422 and create no message."""
    template_id = unique("known")
    ok(api_http.put(f"/templates/{template_id}", json={"text": "Known"}))
    base = message_body([new_user()], ["in_app"])
    no_content = {k: v for k, v in base.items() if k != "content"}
    too_many = [new_user() for _ in range(MAX_RECIPIENTS + 1)]
    invalid: list[Json] = [
        {k: v for k, v in base.items() if k != "recipients"},
        {**base, "recipients": {"user_ids": []}},
        {**base, "recipients": {"user_ids": too_many}},
        {**base, "channels": []},
        {**base, "channels": ["pigeon"]},
        no_content,
        {**no_content, "template_id": unique("missing")},
        {**base, "template_id": template_id},
        {**base, "content": {"text": "Hello {{ name "}},
        {**base, "content": {"text": "{{ n // 0 }}"}, "data": {"n": 1}},
        {**base, "content": {"subject": "no text"}},
    ]
    before = {m["message_id"] for m in list_messages(api_admin, limit=100)}
    for body in invalid:
        response = api_http.post("/messages", json=body)
        assert response.status_code == 422, (body, response.status_code, response.text)
    after = {m["message_id"] for m in list_messages(api_admin, limit=100)}
    assert after == before


def test_topic_with_too_many_subscribers_is_422(
    api_node: ServerProcess, api_http: httpx.Client, api_admin: httpx.Client
) -> None:
    """A topic message that would reach more than TIDINGS_MAX_TOPIC_RECIPIENTS users is refused
    with 422 and writes nothing; within the limit it is accepted."""
    topic = unique("crowd")
    users = [new_user() for _ in range(MAX_TOPIC_RECIPIENTS + 1)]
    for user in users:
        with api_client(api_node, device_token(user)) as me:
            ok(me.put(f"/me/topics/{topic}"))
    body = {"recipients": {"topic": topic}, "channels": ["in_app"], "content": {"text": "All"}}
    before = {m["message_id"] for m in list_messages(api_admin, limit=100)}
    response = api_http.post("/messages", json=body)
    assert response.status_code == 422, response.text
    assert {m["message_id"] for m in list_messages(api_admin, limit=100)} == before
    with api_client(api_node, device_token(users[0])) as me:
        ok(me.delete(f"/me/topics/{topic}"))
    message = get_message(api_http, post_message(api_http, body)["message_id"])
    assert sorted(d["user_id"] for d in message["deliveries"]) == sorted(users[1:]), message


def test_unknown_message_is_404(api_http: httpx.Client) -> None:
    """A message id that does not exist is 404 for GET, DELETE and retry."""
    path = f"/messages/{uuid.uuid4().hex}"
    assert api_http.get(path).status_code == 404
    assert api_http.delete(path).status_code == 404
    assert api_http.post(f"{path}/retry").status_code == 404


def test_end_states_are_final(http: httpx.Client) -> None:
    """DELETE of a sent message changes nothing: sent deliveries stay sent."""
    user = new_user()
    message = post_message(http, message_body([user], ["in_app"], "Done"))
    done = wait_message(http, message["message_id"])
    assert settled(done) and done["state"] == "sent"
    ok(http.delete(f"/messages/{message['message_id']}"))
    after = get_message(http, message["message_id"])
    assert delivery(after, user, "in_app")["state"] == "sent"
    assert after["state"] == "sent"
    assert all(d["state"] in END_STATES for d in after["deliveries"])
