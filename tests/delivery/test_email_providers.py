"""The email channel's providers against real local endpoints: Amazon SES v2 through moto's
server mode (behind a gate that re-checks the SigV4 signature and can answer 5xx), Postmark
through a local fake checking what Postmark's API documents, SMTP through aiosmtpd; and
failover between them."""

from __future__ import annotations

import base64
import email
import email.policy
from collections.abc import Iterator
from dataclasses import dataclass, replace
from types import SimpleNamespace
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from botocore.credentials import Credentials
from channel_support import ScriptedSmtpHandler, outgoing

from conftest import free_port
from support.fake_mail_sms import FakePostmark, MotoSes, SesGate
from tidings.config.settings import Settings
from tidings.delivery.channels.base import Sent
from tidings.delivery.channels.email import EmailChannel
from tidings.delivery.channels.providers.postmark import PostmarkProvider
from tidings.delivery.channels.providers.ses import SesProvider
from tidings.delivery.channels.providers.smtp import SmtpProvider
from tidings.errors import ConfigurationError, PermanentFailure, TransientFailure

REGION, KEY, SECRET = "eu-west-1", "AKIDTIDINGSTEST", "tidings-test-secret"
SENDER = "Tidings <tidings@example.com>"
RECIPIENT = "alice@example.org"


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoSes]:
    server = MotoSes(REGION, KEY, SECRET)
    yield server
    server.close()


@pytest.fixture
def ses(moto: MotoSes) -> Iterator[SesGate]:
    moto.reset()
    gate = SesGate(moto.url, KEY, SECRET, REGION)
    yield gate
    gate.close()


@pytest.fixture
def postmark() -> Iterator[FakePostmark]:
    fake = FakePostmark()
    yield fake
    fake.close()


@dataclass
class Smtp:
    controller: Controller
    handler: ScriptedSmtpHandler

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.controller.port}"


@pytest.fixture
def smtp() -> Iterator[Smtp]:
    handler = ScriptedSmtpHandler()
    controller = Controller(handler, hostname="127.0.0.1", port=free_port())
    controller.start()
    yield Smtp(controller, handler)
    controller.stop()


def ses_provider(gate: SesGate) -> SesProvider:
    return SesProvider(
        region=REGION, credentials=Credentials(KEY, SECRET), endpoint_url=gate.url, timeout=5
    )


def channel(*providers: Any) -> EmailChannel:
    return EmailChannel(None, SENDER, timeout=6.0, providers=list(providers))


def delivery(**extra: Any) -> Any:
    return replace(outgoing(RECIPIENT, "email"), extra=extra)


async def test_ses_sends_the_raw_mime_message_signed(ses: SesGate, moto: MotoSes) -> None:
    """SES v2 SendEmail with Content.Raw: the same MIME message SMTP would carry, its
    signature valid for the bytes that arrived; SES's MessageId is the provider id."""
    async with channel(ses_provider(ses)) as sender:
        provider_id = await sender.send(delivery(headers={"List-Unsubscribe": "<https://u/1>"}))
    [sent] = moto.sent()
    assert provider_id == sent["id"]
    assert sent["source"] == "tidings@example.com" and RECIPIENT in sent["destinations"]
    mime = email.message_from_string(sent["raw_data"], policy=email.policy.default)
    assert mime["Subject"] == "Order shipped" and mime["From"] == SENDER
    assert mime["Message-ID"] == "<dlv_0001@example.com>"
    assert mime["X-Tidings-Delivery"] == "dlv_0001"
    assert mime["List-Unsubscribe"] == "<https://u/1>"
    [request] = ses.seen
    assert request.path == "/v2/email/outbound-emails"
    body = request.json()
    assert body["Destination"] == {"ToAddresses": [RECIPIENT]}
    assert base64.b64decode(body["Content"]["Raw"]["Data"]).decode() == sent["raw_data"]


async def test_ses_message_rejected_is_permanent(ses: SesGate, moto: MotoSes) -> None:
    """moto refuses a sender whose domain is not verified with MessageRejected: permanent."""
    sender = EmailChannel(None, "x@unverified.example", providers=[ses_provider(ses)])
    async with sender:
        with pytest.raises(PermanentFailure) as failure:
            await sender.send(delivery())
    assert failure.value.reason == "rejected"
    assert "MessageRejected" in failure.value.message
    assert moto.sent() == []


async def test_ses_throttling_and_5xx_are_transient(ses: SesGate) -> None:
    """429 TooManyRequestsException and 503 are transient, with SES's Retry-After."""
    ses.script(
        (
            429,
            {"message": "Maximum sending rate exceeded."},
            {"x-amzn-ErrorType": "TooManyRequestsException", "Retry-After": "3"},
        ),
        (503, {"message": "unavailable"}, {"x-amzn-ErrorType": "ServiceUnavailable"}),
    )
    async with channel(ses_provider(ses)) as sender:
        for expected in ("TooManyRequestsException", "ServiceUnavailable"):
            with pytest.raises(TransientFailure) as failure:
                await sender.send(delivery())
            assert expected in failure.value.message
    assert [s.path for s in ses.seen] == ["/v2/email/outbound-emails"] * 2


async def test_ses_503_fails_over_to_smtp(ses: SesGate, smtp: Smtp, moto: MotoSes) -> None:
    """SES answers 503: SMTP takes the same email at once; both tries are notes."""
    ses.script(
        (503, {"message": "Service Unavailable"}, {"x-amzn-ErrorType": "ServiceUnavailable"})
    )
    async with channel(ses_provider(ses), SmtpProvider(smtp.url, timeout=5)) as sender:
        result = await sender.send(delivery(headers={"List-Unsubscribe": "<mailto:u@x>"}))
    assert isinstance(result, Sent)
    assert result.provider_id == "<dlv_0001@example.com>"
    assert [reason for reason, _ in result.notes] == ["provider_retry", "provider_sent"]
    assert result.notes[0][1].startswith("ses: provider_error: SES HTTP 503 ServiceUnavailable")
    assert result.notes[1][1] == "smtp: <dlv_0001@example.com>"
    [(_, rcpts, message)] = smtp.handler.messages
    assert rcpts == [RECIPIENT] and message["List-Unsubscribe"] == "<mailto:u@x>"
    assert moto.sent() == []


async def test_permanent_refusal_does_not_fail_over(ses: SesGate, smtp: Smtp) -> None:
    """A permanent refusal by the first provider ends the attempt: SMTP is never tried."""
    ses.script(
        (
            400,
            {"message": "Email address is not verified."},
            {"x-amzn-ErrorType": "MessageRejected"},
        )
    )
    async with channel(ses_provider(ses), SmtpProvider(smtp.url, timeout=5)) as sender:
        with pytest.raises(PermanentFailure) as failure:
            await sender.send(delivery())
    assert failure.value.reason == "rejected"
    assert failure.value.message.startswith("ses: SES HTTP 400 MessageRejected")
    assert [reason for reason, _ in failure.value.notes] == ["provider_failed"]
    assert smtp.handler.messages == []


async def test_postmark_request_as_documented(postmark: FakePostmark) -> None:
    """POST /email with the server token; From, To, Subject, TextBody, HtmlBody and the
    email's headers (the extra ones too) as Postmark's Headers list."""
    provider = PostmarkProvider(postmark.token, postmark.url, timeout=5)
    async with channel(provider) as sender:
        provider_id = await sender.send(delivery(headers={"List-Unsubscribe-Post": "One-Click"}))
    [sent] = postmark.accepted
    assert provider_id and len(str(provider_id)) == 36
    assert (sent["From"], sent["To"], sent["Subject"]) == (SENDER, RECIPIENT, "Order shipped")
    assert "Your order 42 has shipped." in sent["TextBody"] and "<b>42</b>" in sent["HtmlBody"]
    headers = {h["Name"]: h["Value"] for h in sent["Headers"]}
    assert headers["X-Tidings-Delivery"] == "dlv_0001"
    assert headers["List-Unsubscribe-Post"] == "One-Click"
    assert headers["Auto-Submitted"] == "auto-generated"
    assert not {"Subject", "From", "To"} & set(headers)
    assert sent["Metadata"] == {"tidings_delivery": "dlv_0001", "tidings_message": "msg_0001"}


async def test_postmark_inactive_recipient_is_permanent_no_failover(
    postmark: FakePostmark, smtp: Smtp
) -> None:
    """422 ErrorCode 406 (inactive recipient): permanent, SMTP never tried."""
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
    provider = PostmarkProvider(postmark.token, postmark.url, timeout=5)
    async with channel(provider, SmtpProvider(smtp.url, timeout=5)) as sender:
        with pytest.raises(PermanentFailure) as failure:
            await sender.send(delivery())
    assert "ErrorCode 406" in failure.value.message
    assert smtp.handler.messages == []


@pytest.mark.parametrize(
    ("answer", "word"),
    [
        ((500, {"ErrorCode": 0, "Message": "Internal"}, {}), "HTTP 500"),
        ((429, {"ErrorCode": 429, "Message": "Rate limit"}, {"Retry-After": "2"}), "HTTP 429"),
        ((422, {"ErrorCode": 405, "Message": "Not allowed to send"}, {}), "ErrorCode 405"),
    ],
)
async def test_postmark_transient_answers(
    postmark: FakePostmark, answer: tuple[int, Any, dict[str, str]], word: str
) -> None:
    postmark.script(answer)
    provider = PostmarkProvider(postmark.token, postmark.url, timeout=5)
    async with channel(provider) as sender:
        with pytest.raises(TransientFailure) as failure:
            await sender.send(delivery())
    assert word in failure.value.message


async def test_postmark_wrong_token_is_transient(postmark: FakePostmark) -> None:
    """A wrong server token (401) is the operator's to fix: transient, so another provider
    or a later try takes it."""
    provider = PostmarkProvider("wrong", postmark.url, timeout=5)
    async with channel(provider) as sender:
        with pytest.raises(TransientFailure) as failure:
            await sender.send(delivery())
    assert "401" in failure.value.message and "ErrorCode 10" in failure.value.message


async def test_every_provider_transient_retries_with_all_notes(
    ses: SesGate, postmark: FakePostmark
) -> None:
    """Both fail transiently: the delivery is retried (no sooner than the earliest hint of
    the two), each try a note."""
    ses.script(
        (503, {"message": "down"}, {"x-amzn-ErrorType": "ServiceUnavailable", "Retry-After": "7"})
    )
    postmark.script((503, {"ErrorCode": 100, "Message": "Maintenance"}, {"Retry-After": "4"}))
    provider = PostmarkProvider(postmark.token, postmark.url, timeout=5)
    async with channel(ses_provider(ses), provider) as sender:
        with pytest.raises(TransientFailure) as failure:
            await sender.send(delivery())
    assert failure.value.retry_after == 4
    assert [n[1].split(":")[0] for n in failure.value.notes] == ["ses", "postmark"]
    assert failure.value.message.startswith("ses: SES HTTP 503")


async def test_unreachable_provider_fails_over(smtp: Smtp) -> None:
    """Nothing listening at Postmark's URL: unreachable, SMTP takes it."""
    dead = PostmarkProvider("t", f"http://127.0.0.1:{free_port()}", timeout=2)
    async with channel(dead, SmtpProvider(smtp.url, timeout=5)) as sender:
        result = await sender.send(delivery())
    assert isinstance(result, Sent)
    assert result.notes[0][1].startswith("postmark: unreachable")
    assert len(smtp.handler.messages) == 1


async def test_extra_header_that_is_not_one_is_refused(smtp: Smtp) -> None:
    """An extra header whose value holds a line break would inject headers: refused."""
    async with EmailChannel(smtp.url, SENDER) as sender:
        with pytest.raises(PermanentFailure) as failure:
            await sender.send(delivery(headers={"X-A": "b\r\nBcc: eve@example.org"}))
    assert failure.value.reason == "invalid_message"
    assert smtp.handler.messages == []


def host(**settings: Any) -> Any:
    return SimpleNamespace(settings=Settings(**settings))


async def test_default_is_smtp_when_its_url_is_set() -> None:
    """Without TIDINGS_EMAIL_PROVIDERS nothing changes: smtp when TIDINGS_SMTP_URL is set,
    no channel without it."""
    built = await EmailChannel.from_settings(host(smtp_url="smtp://mail.example.com"))
    assert built is not None and [p.name for p in built.providers] == ["smtp"]
    assert await EmailChannel.from_settings(host()) is None


async def test_providers_in_the_configured_order(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    built = await EmailChannel.from_settings(
        host(
            email_providers="postmark,ses,smtp",
            smtp_url="smtp://mail.example.com",
            ses_region=REGION,
            postmark_server_token="t",
        )
    )
    assert built is not None and [p.name for p in built.providers] == ["postmark", "ses", "smtp"]


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"email_providers": "postmark"}, "TIDINGS_POSTMARK_SERVER_TOKEN"),
        ({"email_providers": "ses,smtp", "ses_region": REGION}, "TIDINGS_SMTP_URL"),
        ({"email_providers": "ses"}, "TIDINGS_SES_REGION"),
        (
            {
                "email_providers": "postmark",
                "postmark_server_token": "t",
                "postmark_url": "ftp://x",
            },
            "TIDINGS_POSTMARK_URL",
        ),
    ],
)
async def test_missing_provider_settings_are_named(
    settings: dict[str, Any], named: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A provider named without its settings stops the node in one line naming them."""
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    with pytest.raises(ConfigurationError) as error:
        await EmailChannel.from_settings(host(**settings))
    assert named in str(error.value) and "\n" not in str(error.value)


async def test_ses_without_credentials_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(ConfigurationError) as error:
        await EmailChannel.from_settings(host(email_providers="ses", ses_region=REGION))
    assert "AWS_ACCESS_KEY_ID" in str(error.value)


@pytest.mark.parametrize(("value", "word"), [("ses,sendgrid", "sendgrid"), ("smtp,smtp", "twice")])
def test_unknown_or_repeated_provider_is_refused(value: str, word: str) -> None:
    from tidings.config.loading import load_settings

    with pytest.raises(ConfigurationError) as error:
        load_settings(email_providers=value)
    assert "TIDINGS_EMAIL_PROVIDERS" in str(error.value) and word in str(error.value)
