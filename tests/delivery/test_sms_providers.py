"""The SMS channel's providers against real local endpoints: Twilio through a local fake that
checks what Twilio's Message resource documents, the generic gateway through an HTTP
receiver; failover between them; and Twilio's request signature, checked against the
examples of Twilio's own libraries."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from channel_support import HttpReceiver, Reply, outgoing

from support.fake_mail_sms import FakeTwilio
from tidings.config.settings import Settings
from tidings.delivery.channels.base import Sent
from tidings.delivery.channels.providers.twilio import (
    TwilioProvider,
    twilio_events,
    twilio_signature,
    valid_twilio_signature,
)
from tidings.delivery.channels.sms import GatewayProvider, SmsChannel
from tidings.errors import ConfigurationError, PermanentFailure, TransientFailure

PHONE = "+14155550123"


@pytest.fixture
def twilio() -> Iterator[FakeTwilio]:
    fake = FakeTwilio()
    yield fake
    fake.close()


def provider(fake: FakeTwilio, **changes: Any) -> TwilioProvider:
    options: dict[str, Any] = {"url": fake.url, "timeout": 5}
    options.update(changes)
    return TwilioProvider(fake.sid, fake.token, "+15005550006", **options)


async def test_twilio_request_as_documented(twilio: FakeTwilio) -> None:
    """Basic auth with the SID and token; a form with To, From, Body, StatusCallback; the
    message's sid is the provider id."""
    hook = "https://push.example.com/providers/twilio/status"
    async with SmsChannel(providers=[provider(twilio, status_callback=hook)]) as channel:
        provider_id = await channel.send(outgoing(PHONE, "sms"))
    [form] = twilio.accepted
    assert form == {
        "To": PHONE,
        "From": "+15005550006",
        "Body": "Your order 42 has shipped.\nIt arrives on Friday.",
        "StatusCallback": hook,
    }
    assert isinstance(provider_id, str) and provider_id.startswith("SM")
    [seen] = twilio.seen
    assert seen.headers["authorization"].startswith("Basic ")


async def test_twilio_messaging_service_sender(twilio: FakeTwilio) -> None:
    """A sender starting MG is a messaging service: MessagingServiceSid, no From."""
    sid = "MG" + "1" * 32
    sender = TwilioProvider(twilio.sid, twilio.token, sid, url=twilio.url, timeout=5)
    async with SmsChannel(providers=[sender]) as channel:
        await channel.send(outgoing(PHONE, "sms"))
    assert twilio.accepted[0]["MessagingServiceSid"] == sid
    assert "From" not in twilio.accepted[0]


@pytest.mark.parametrize(
    ("answer", "kind", "word"),
    [
        (
            (400, {"code": 21211, "message": "Invalid 'To' Phone Number"}, {}),
            PermanentFailure,
            "21211",
        ),
        (
            (400, {"code": 21610, "message": "Attempt to send to unsubscribed recipient"}, {}),
            PermanentFailure,
            "21610",
        ),
        (
            (429, {"code": 20429, "message": "Too Many Requests"}, {"Retry-After": "2"}),
            TransientFailure,
            "20429",
        ),
        (
            (503, {"code": 20503, "message": "Service unavailable"}, {}),
            TransientFailure,
            "HTTP 503",
        ),
    ],
)
async def test_twilio_answers(
    twilio: FakeTwilio, answer: Any, kind: type[Exception], word: str
) -> None:
    twilio.script(answer)
    async with SmsChannel(providers=[provider(twilio)]) as channel:
        with pytest.raises(kind) as failure:
            await channel.send(outgoing(PHONE, "sms"))
    assert word in str(failure.value)


async def test_twilio_wrong_token_is_transient(twilio: FakeTwilio) -> None:
    """The fake answers 401 code 20003, as Twilio does: the operator's to fix."""
    wrong = TwilioProvider(twilio.sid, "nope", "+15005550006", url=twilio.url, timeout=5)
    async with SmsChannel(providers=[wrong]) as channel:
        with pytest.raises(TransientFailure) as failure:
            await channel.send(outgoing(PHONE, "sms"))
    assert "20003" in failure.value.message


async def test_twilio_503_fails_over_to_the_gateway(twilio: FakeTwilio) -> None:
    """Twilio answers 503: the generic gateway takes it; both tries are notes."""
    twilio.script((503, {"code": 20503, "message": "down"}, {}))
    async with HttpReceiver(Reply(200, body=b'{"id": "gw-1"}')) as gateway:
        channel = SmsChannel(gateway.url, providers=[provider(twilio), GatewayProvider()])
        async with channel:
            result = await channel.send(outgoing(PHONE, "sms"))
        assert len(gateway.requests) == 1
    assert isinstance(result, Sent) and result.provider_id == "gw-1"
    assert [n[0] for n in result.notes] == ["provider_retry", "provider_sent"]
    assert result.notes[1][1] == "http: gw-1"


async def test_twilio_refusal_does_not_fail_over(twilio: FakeTwilio) -> None:
    twilio.script((400, {"code": 21211, "message": "Invalid 'To' Phone Number"}, {}))
    async with HttpReceiver(Reply(200)) as gateway:
        channel = SmsChannel(gateway.url, providers=[provider(twilio), GatewayProvider()])
        async with channel:
            with pytest.raises(PermanentFailure):
                await channel.send(outgoing(PHONE, "sms"))
        assert gateway.requests == []


# The examples of twilio-python's tests (tests/unit/test_request_validator.py), which follow the
# example of Twilio's "Secure webhooks".
URI = "https://mycompany.com/myapp.php?foo=1&bar=2"
PARAMS = {
    "CallSid": "CA1234567890ABCDE",
    "Digits": "1234",
    "From": "+14158675309",
    "To": "+18005551212",
    "Caller": "+14158675309",
}


def test_twilio_signature_matches_twilios_examples() -> None:
    assert twilio_signature("12345", URI, PARAMS.items()) == "RSOYDt4T1cUTdK1PDd93/VVr8B8="
    repeated = [("Sid", "CA123"), ("SidAccount", "AC123"), ("Digits", "5678"), ("Digits", "1234")]
    assert twilio_signature("12345", URI, repeated) == "IK+Dwps556ElfBT0I3Rgjkr1wJU="


def test_twilio_signature_validation() -> None:
    """Valid as given, with the port a proxy added or removed; invalid otherwise."""
    items = list(PARAMS.items())
    assert valid_twilio_signature("12345", URI, items, "RSOYDt4T1cUTdK1PDd93/VVr8B8=")
    ported = URI.replace(".com", ".com:1234")
    assert valid_twilio_signature("12345", ported, items, "RSOYDt4T1cUTdK1PDd93/VVr8B8=")
    assert valid_twilio_signature("12345", URI, items, "kvajT1Ptam85bY51eRf/AJRuM3w=")
    assert not valid_twilio_signature("54321", URI, items, "RSOYDt4T1cUTdK1PDd93/VVr8B8=")
    assert not valid_twilio_signature(
        "12345", URI, [*items, ("X", "1")], "RSOYDt4T1cUTdK1PDd93/VVr8B8="
    )
    assert not valid_twilio_signature("12345", URI, items, None)
    assert not valid_twilio_signature("12345", URI, items, base64.b64encode(b"x" * 20).decode())


def test_twilio_status_events() -> None:
    [delivered] = twilio_events({"MessageSid": "SM1", "MessageStatus": "delivered"})
    assert (delivered.reason, delivered.fails) == ("delivered", False)
    [failed] = twilio_events(
        {"MessageSid": "SM1", "MessageStatus": "undelivered", "ErrorCode": "30003"}
    )
    assert failed.fails and "30003" in failed.detail
    assert twilio_events({"MessageSid": "SM1", "MessageStatus": "sent"}) == []
    assert twilio_events({"MessageStatus": "delivered"}) == []


def host(**settings: Any) -> Any:
    return SimpleNamespace(settings=Settings(**settings))


async def test_sms_default_is_the_gateway_and_order_is_kept() -> None:
    built = await SmsChannel.from_settings(host(sms_url="https://sms.example/send"))
    assert built is not None and [p.name for p in built.providers] == ["http"]
    assert await SmsChannel.from_settings(host()) is None
    both = await SmsChannel.from_settings(
        host(
            sms_providers="twilio,http",
            sms_url="https://sms.example/send",
            twilio_account_sid="AC1",
            twilio_auth_token="t",
            twilio_from="+15005550006",
            public_url="https://push.example.com/",
        )
    )
    assert both is not None and [p.name for p in both.providers] == ["twilio", "http"]
    twilio = both.providers[0]
    assert isinstance(twilio, TwilioProvider)
    assert twilio.status_callback == "https://push.example.com/providers/twilio/status"


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"sms_providers": "twilio"}, "TIDINGS_TWILIO_ACCOUNT_SID"),
        ({"sms_providers": "twilio", "twilio_account_sid": "AC1"}, "TIDINGS_TWILIO_AUTH_TOKEN"),
        (
            {"sms_providers": "twilio", "twilio_account_sid": "AC1", "twilio_auth_token": "t"},
            "TIDINGS_TWILIO_FROM",
        ),
        ({"sms_providers": "http"}, "TIDINGS_SMS_URL"),
    ],
)
async def test_missing_sms_provider_settings_are_named(
    settings: dict[str, Any], named: str
) -> None:
    with pytest.raises(ConfigurationError) as error:
        await SmsChannel.from_settings(host(**settings))
    assert named in str(error.value)
