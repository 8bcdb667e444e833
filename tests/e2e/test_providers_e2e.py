"""Email and SMS providers on a real node (``tidings serve`` in a child process) against real
local endpoints: Amazon SES v2 in moto's server mode (behind a gate that re-checks SigV4 and
can answer 503), an SMTP sink, local fakes of Postmark and Twilio, and an HTTPS host of an SNS
signing certificate.

Must hold: a provider failing with 5xx fails over to the next and the delivery ends ``sent``
with both attempts in its history; a permanent refusal ends ``failed`` without failover;
callbacks signed as their provider documents update the delivery (delivered, bounced,
complained), forged ones are refused and change nothing.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pipeline_support import (
    SmtpSink,
    api_client,
    delivery,
    get_message,
    post_message,
    sink,
    wait_message,
)

from conftest import ServerProcess
from support.fake_mail_sms import (
    FakePostmark,
    FakeSns,
    FakeTwilio,
    MotoSes,
    SesGate,
    ses_event,
    twilio_signature,
)

REGION, KEY, SECRET = "eu-west-1", "AKIDTIDINGSE2E", "tidings-e2e-secret"
TOPIC = "arn:aws:sns:eu-west-1:123456789012:tidings-ses-events"
PHONE = "+14155550123"
AWS = {
    "AWS_ACCESS_KEY_ID": KEY,
    "AWS_SECRET_ACCESS_KEY": SECRET,
    "AWS_CONFIG_FILE": "/nonexistent",
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
    "AWS_EC2_METADATA_DISABLED": "true",
}
FAST = {
    "TIDINGS_PIPELINE_RETRY_BASE": "0.2",
    "TIDINGS_PIPELINE_RETRY_MAX": "0.5",
    "TIDINGS_PIPELINE_POLL_INTERVAL": "0.2",
    "TIDINGS_EMAIL_FROM": "Tidings <tidings@example.com>",
    "TIDINGS_PROVIDER_TIMEOUT": "5",
}


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoSes]:
    server = MotoSes(REGION, KEY, SECRET)
    yield server
    server.close()


@pytest.fixture
def gate(moto: MotoSes) -> Iterator[SesGate]:
    moto.reset()
    found = SesGate(moto.url, KEY, SECRET, REGION)
    yield found
    found.close()


@pytest.fixture
def sns(tmp_path: Path) -> Iterator[FakeSns]:
    found = FakeSns(tmp_path, TOPIC)
    yield found
    found.close()


@pytest.fixture
def postmark() -> Iterator[FakePostmark]:
    found = FakePostmark()
    yield found
    found.close()


@pytest.fixture
def twilio() -> Iterator[FakeTwilio]:
    found = FakeTwilio()
    yield found
    found.close()


def user() -> str:
    return f"user-{uuid.uuid4().hex[:10]}"


def send(http: httpx.Client, user_id: str, channel: str, address: str) -> dict[str, Any]:
    """Set the user's contact point, post them a message on ``channel``, and wait until its
    delivery ends; the delivery."""
    answer = http.put(f"/users/{user_id}/contacts/{channel}", json={"address": address})
    assert answer.status_code in (200, 204), answer.text
    body = {
        "recipients": {"user_ids": [user_id]},
        "channels": [channel],
        "content": {"subject": "Order {{ n }}", "text": "Order {{ n }} has shipped"},
        "data": {"n": 42},
    }
    message = wait_message(http, post_message(http, body)["message_id"])
    return {**delivery(message, user_id, channel), "message_id": message["message_id"]}


def refetch(http: httpx.Client, found: dict[str, Any]) -> dict[str, Any]:
    message = get_message(http, found["message_id"])
    return {
        **delivery(message, found["user_id"], found["channel"]),
        "message_id": message["message_id"],
    }


def reasons(found: dict[str, Any]) -> list[tuple[str, str]]:
    return [(h["state"], h["reason"]) for h in found["history"]]


@pytest.fixture
def ses_node(
    start_server: Callable[..., ServerProcess], gate: SesGate, sink: SmtpSink, sns: FakeSns
) -> ServerProcess:
    return start_server(
        TIDINGS_EMAIL_PROVIDERS="ses,smtp",
        TIDINGS_SES_REGION=REGION,
        TIDINGS_SES_ENDPOINT_URL=gate.url,
        TIDINGS_SMTP_URL=sink.url,
        TIDINGS_SES_SNS_TOPIC_ARN=TOPIC,
        TIDINGS_SES_SNS_CERT_HOST=sns.host,
        TIDINGS_PUSH_CA_FILE=str(sns.ca_path),
        **FAST,
        **AWS,
    )


def test_ses_503_fails_over_to_smtp_and_the_delivery_is_sent(
    ses_node: ServerProcess, gate: SesGate, sink: SmtpSink, moto: MotoSes
) -> None:
    gate.script(
        (503, {"message": "Service Unavailable"}, {"x-amzn-ErrorType": "ServiceUnavailable"})
    )
    with api_client(ses_node, ses_node.service_token("messages")) as http:
        found = send(http, user(), "email", "alice@example.org")
    assert found["state"] == "sent", found
    assert found["attempts"] == 1
    history = reasons(found)
    assert ("active", "provider_retry") in history and ("active", "provider_sent") in history
    tries = [h["detail"] for h in found["history"] if h["reason"].startswith("provider_")]
    assert tries[0].startswith("ses: provider_error: SES HTTP 503")
    assert tries[1].startswith("smtp: <")
    assert found["provider_id"] == tries[1].removeprefix("smtp: ")
    [record] = sink.accepted(address="alice@example.org")
    assert record.delivery_id == found["delivery_id"]
    assert moto.sent() == []


def test_ses_sends_then_sns_events_update_the_delivery(
    ses_node: ServerProcess, moto: MotoSes, sns: FakeSns, sink: SmtpSink
) -> None:
    """SES (moto) takes it; SNS notifications signed with the certificate on the allowed host
    record delivered, then a permanent bounce fails it; a forged one changes nothing."""
    with api_client(ses_node, ses_node.service_token("messages")) as http:
        found = send(http, user(), "email", "bob@example.org")
        [raw] = moto.sent()
        assert found["state"] == "sent" and found["provider_id"] == raw["id"]
        assert "X-Tidings-Delivery: " + found["delivery_id"] in raw["raw_data"]
        assert sink.records() == []
        post = lambda body: http.post("/providers/ses/events", content=json.dumps(body))  # noqa: E731

        subscription = post(sns.subscription())
        assert subscription.status_code == 200 and len(sns.confirmed) == 1

        forged = sns.notification(ses_event("Bounce", raw["id"], bounceType="Permanent"))
        forged["Message"] = forged["Message"].replace("Permanent", "Permanent ")
        assert post(forged).status_code == 403
        elsewhere = sns.notification(ses_event("Bounce", raw["id"], bounceType="Permanent"))
        elsewhere["SigningCertURL"] = "https://attacker.example/cert.pem"
        assert post(elsewhere).status_code == 403
        other_topic = sns.notification(
            ses_event("Bounce", raw["id"], bounceType="Permanent"), TopicArn=TOPIC + "-x"
        )
        assert post(other_topic).status_code == 403
        assert refetch(http, found)["history"] == found["history"]

        delivered = ses_event("Delivery", raw["id"], smtpResponse="250 2.0.0 OK")
        assert post(sns.notification(delivered)).status_code == 200
        bounce = ses_event(
            "Bounce",
            raw["id"],
            bounceType="Permanent",
            bounceSubType="General",
            bouncedRecipients=[
                {
                    "emailAddress": "bob@example.org",
                    "diagnosticCode": "smtp; 550 5.1.1 user unknown",
                }
            ],
        )
        assert post(sns.notification(bounce)).status_code == 200
        unknown = sns.notification(ses_event("Delivery", "not-a-known-id"))
        assert post(unknown).status_code == 404
        after = refetch(http, found)
    assert (after["state"], after["reason"]) == ("failed", "bounced")
    assert "550 5.1.1 user unknown" in after["last_error"]
    assert reasons(after)[-2:] == [("sent", "delivered"), ("failed", "bounced")]


def test_ses_complaint_switches_email_off(
    ses_node: ServerProcess, sns: FakeSns, moto: MotoSes
) -> None:
    carol = user()
    with api_client(ses_node, ses_node.service_token("messages")) as http:
        found = send(http, carol, "email", "carol@example.org")
        complaint = ses_event("Complaint", found["provider_id"], complaintFeedbackType="abuse")
        answer = http.post("/providers/ses/events", content=json.dumps(sns.notification(complaint)))
        assert answer.status_code == 200, answer.text
        after = refetch(http, found)
        prefs = http.get(f"/users/{carol}/preferences").json()
    assert reasons(after)[-1] == ("sent", "complained") and after["state"] == "sent"
    assert prefs["channels"]["email"] is False


def test_postmark_refusal_fails_without_failover_and_webhooks_apply(
    start_server: Callable[..., ServerProcess], postmark: FakePostmark, sink: SmtpSink
) -> None:
    node = start_server(
        TIDINGS_EMAIL_PROVIDERS="postmark,smtp",
        TIDINGS_POSTMARK_SERVER_TOKEN=postmark.token,
        TIDINGS_POSTMARK_URL=postmark.url,
        TIDINGS_SMTP_URL=sink.url,
        TIDINGS_POSTMARK_WEBHOOK_USER="hooks",
        TIDINGS_POSTMARK_WEBHOOK_PASSWORD="s3cret",
        **FAST,
    )
    postmark.script(
        (
            422,
            {
                "ErrorCode": 406,
                "Message": "You tried to send to a recipient that has been marked as inactive.",
            },
            {},
        )
    )
    with api_client(node, node.service_token("messages")) as http:
        refused = send(http, user(), "email", "dave@example.org")
        assert (refused["state"], refused["reason"]) == ("failed", "rejected")
        assert "ErrorCode 406" in refused["last_error"] and refused["attempts"] == 1
        assert [h["reason"] for h in refused["history"]].count("provider_failed") == 1
        assert sink.records() == []

        taken = send(http, user(), "email", "erin@example.org")
        assert taken["state"] == "sent" and len(taken["provider_id"]) == 36
        assert postmark.accepted[0]["To"] == "erin@example.org"
        bounce = {
            "RecordType": "Bounce",
            "Type": "HardBounce",
            "TypeCode": 1,
            "MessageID": taken["provider_id"],
            "Description": "The server was unable to deliver your message",
            "Details": "smtp;550 5.1.1 The email account does not exist.",
            "Email": "erin@example.org",
            "Inactive": True,
        }
        wrong = base64.b64encode(b"hooks:guess").decode()
        answer = http.post(
            "/providers/postmark/events", json=bounce, headers={"Authorization": f"Basic {wrong}"}
        )
        assert answer.status_code == 401
        assert http.post("/providers/postmark/events", json=bounce).status_code == 401
        assert refetch(http, taken)["state"] == "sent"
        right = base64.b64encode(b"hooks:s3cret").decode()
        answer = http.post(
            "/providers/postmark/events", json=bounce, headers={"Authorization": f"Basic {right}"}
        )
        assert answer.status_code == 200, answer.text
        after = refetch(http, taken)
    assert (after["state"], after["reason"]) == ("failed", "bounced")
    assert "does not exist" in after["last_error"]
    assert sink.records() == []


def test_twilio_sends_and_its_signed_status_callback_is_recorded(
    start_server: Callable[..., ServerProcess], twilio: FakeTwilio
) -> None:
    node = start_server(
        TIDINGS_SMS_PROVIDERS="twilio",
        TIDINGS_TWILIO_ACCOUNT_SID=twilio.sid,
        TIDINGS_TWILIO_AUTH_TOKEN=twilio.token,
        TIDINGS_TWILIO_FROM="+15005550006",
        TIDINGS_TWILIO_URL=twilio.url,
        **FAST,
    )
    with api_client(node, node.service_token("messages")) as http:
        found = send(http, user(), "sms", PHONE)
        assert found["state"] == "sent" and found["provider_id"].startswith("SM")
        [form] = twilio.accepted
        assert form["To"] == PHONE and form["Body"] == "Order 42 has shipped"
        hook = f"{node.url}/providers/twilio/status"
        status = {
            "MessageSid": found["provider_id"],
            "MessageStatus": "delivered",
            "AccountSid": twilio.sid,
            "To": PHONE,
        }
        forged = http.post(
            "/providers/twilio/status",
            data=status,
            headers={"X-Twilio-Signature": twilio_signature("not-the-token", hook, status)},
        )
        assert forged.status_code == 403
        assert http.post("/providers/twilio/status", data=status).status_code == 403
        assert refetch(http, found)["history"] == found["history"]
        signed = http.post(
            "/providers/twilio/status",
            data=status,
            headers={"X-Twilio-Signature": twilio_signature(twilio.token, hook, status)},
        )
        assert signed.status_code == 200, signed.text
        unknown = {**status, "MessageSid": "SM" + "0" * 32}
        answer = http.post(
            "/providers/twilio/status",
            data=unknown,
            headers={"X-Twilio-Signature": twilio_signature(twilio.token, hook, unknown)},
        )
        assert answer.status_code == 404
        after = refetch(http, found)
    assert after["state"] == "sent" and reasons(after)[-1] == ("sent", "delivered")


__all__ = ["sink"]  # the fixture
