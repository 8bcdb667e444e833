"""The ``ses`` email provider: Amazon SES API v2 ``SendEmail`` with ``Content.Raw`` (the MIME
message the ``smtp`` provider sends), signed with AWS Signature Version 4.

Signing and credentials are botocore's (the ``ses`` extra: ``pip install 'tidings[ses]'``):
its ``SigV4Auth`` signs, and its credential chain finds the keys as every AWS SDK does
(``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/``AWS_SESSION_TOKEN``, a profile, an ECS or
EC2 role, refreshed when they expire). The request goes out through httpx, as the other
providers' do.

How SES's answers are read follows the SES API v2 reference, ``SendEmail`` "Errors"
(https://docs.aws.amazon.com/ses/latest/APIReference-V2/API_SendEmail.html) and its common
errors: ``TooManyRequestsException`` (429), ``LimitExceededException`` and
``SendingPausedException`` may pass, as do 5xx answers (``InternalFailure``,
``ServiceUnavailable``) and the account's credentials being refused (``AccessDenied``,
``UnrecognizedClient``, ``InvalidSignature``, ``ExpiredToken``: the operator's to fix, so the
next provider takes over): transient. ``MessageRejected``,
``MailFromDomainNotVerifiedException``, ``AccountSuspendedException``,
``BadRequestException``, ``NotFoundException`` and any other 4xx: permanent (``rejected``).

Events come back through Amazon SNS (a configuration set's event destination, or the
identity's notifications): :func:`ses_events` reads the message SNS carries.
"""

from __future__ import annotations

import asyncio
import base64
import ssl
from typing import TYPE_CHECKING, Any, ClassVar

import httpx
import orjson

from tidings.delivery.channels._net import RETRYABLE_STATUSES, retry_after
from tidings.delivery.channels.providers.base import Provider, require
from tidings.delivery.channels.providers.events import (
    BOUNCED,
    COMPLAINED,
    DELIVERED,
    SOFT_BOUNCE,
    ProviderEvent,
    detail,
    text,
)
from tidings.delivery.channels.providers.http import ProviderHttp, json_object, provider_url
from tidings.delivery.channels.providers.mail import Mail
from tidings.errors import (
    ConfigurationError,
    DeliveryFailure,
    PermanentFailure,
    TransientFailure,
)

if TYPE_CHECKING:
    from tidings.delivery.ports import ChannelSettings

#: SES's error codes that another try (or provider) may get past
TRANSIENT_ERRORS = frozenset(
    {
        "TooManyRequestsException",
        "ThrottlingException",
        "Throttling",
        "LimitExceededException",
        "SendingPausedException",
        "InternalFailure",
        "InternalServiceErrorException",
        "ServiceUnavailable",
        "ServiceUnavailableException",
        # the credentials or their rights: the operator's to fix
        "AccessDeniedException",
        "AccessDenied",
        "UnrecognizedClientException",
        "InvalidClientTokenId",
        "InvalidSignatureException",
        "IncompleteSignature",
        "ExpiredTokenException",
        "MissingAuthenticationToken",
        "RequestExpired",
    }
)
#: SES v2's SigV4 signing name (its endpoint is ``email.<region>.amazonaws.com``)
SIGNING_NAME = "ses"


class SesProvider(Provider[Mail]):
    """Sends through Amazon SES v2; SES's ``MessageId`` is the provider id."""

    name: ClassVar[str] = "ses"

    def __init__(
        self,
        *,
        region: str,
        credentials: Any,
        endpoint_url: str | None = None,
        configuration_set: str | None = None,
        timeout: float = 10.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.region = region
        self._credentials = credentials
        base = endpoint_url or f"https://email.{region}.amazonaws.com"
        self.url = provider_url(base, "TIDINGS_SES_ENDPOINT_URL") + "/v2/email/outbound-emails"
        self.configuration_set = configuration_set
        self._http = ProviderHttp(self.name, timeout=timeout, ssl_context=ssl_context)

    @classmethod
    async def from_settings(
        cls, settings: ChannelSettings, ssl_context: ssl.SSLContext | None = None
    ) -> SesProvider:
        """``TIDINGS_SES_REGION`` (or ``AWS_REGION``), ``TIDINGS_SES_ENDPOINT_URL``,
        ``TIDINGS_SES_CONFIGURATION_SET`` and the AWS credential chain.

        Raises:
            ConfigurationError: botocore is missing, or no region or credentials are found.
        """
        try:
            import botocore.session
        except ImportError:
            raise ConfigurationError(
                "TIDINGS_EMAIL_PROVIDERS names ses, which needs botocore: "
                "pip install 'tidings[ses]'"
            ) from None
        session = botocore.session.get_session()
        region = settings.ses_region or session.get_config_variable("region")
        region = require(region, "TIDINGS_SES_REGION", "email", cls.name)
        credentials = await asyncio.to_thread(session.get_credentials)
        if credentials is None:
            raise ConfigurationError(
                "TIDINGS_EMAIL_PROVIDERS names ses, but no AWS credentials were found "
                "(AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, a profile or a role)"
            )
        return cls(
            region=region,
            credentials=credentials,
            endpoint_url=settings.ses_endpoint_url,
            configuration_set=settings.ses_configuration_set,
            timeout=settings.provider_timeout,
            ssl_context=ssl_context,
        )

    async def start(self) -> None:
        await self._http.start()

    async def close(self) -> None:
        await self._http.close()

    def body(self, mail: Mail) -> bytes:
        """The ``SendEmail`` request of ``mail``."""
        request: dict[str, Any] = {
            "FromEmailAddress": mail.envelope_sender,
            "Destination": {"ToAddresses": [mail.recipient]},
            "Content": {"Raw": {"Data": base64.b64encode(mail.raw).decode()}},
        }
        if self.configuration_set:
            request["ConfigurationSetName"] = self.configuration_set
        return orjson.dumps(request)

    async def signed_headers(self, body: bytes) -> dict[str, str]:
        """The request's headers, signed (SigV4) with the current credentials."""
        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest

        credentials = self._credentials
        refresh = getattr(credentials, "refresh_needed", None)
        if refresh is not None and refresh():  # a role's keys: fetched again, off the loop
            frozen = await asyncio.to_thread(credentials.get_frozen_credentials)
        else:
            frozen = credentials.get_frozen_credentials()
        request = AWSRequest(
            method="POST", url=self.url, data=body, headers={"Content-Type": "application/json"}
        )
        SigV4Auth(frozen, SIGNING_NAME, self.region).add_auth(request)
        return {name: str(value) for name, value in request.headers.items()}

    async def send(self, message: Mail) -> str | None:
        body = self.body(message)
        headers = await self.signed_headers(body)
        response = await self._http.request("POST", self.url, content=body, headers=headers)
        if 200 <= response.status_code < 300:
            found = json_object(response).get("MessageId")
            return str(found) if found else None
        raise ses_failure(response)


def ses_failure(response: httpx.Response) -> DeliveryFailure:
    """The delivery failure an SES error answer means (the module's docstring says why)."""
    data = json_object(response)
    kind = response.headers.get("x-amzn-errortype") or text(data.get("__type") or data.get("code"))
    # "MessageRejected:http://internal.amazon.com/…" or "com.amazonaws…#MessageRejected"
    code = kind.split(":", 1)[0].rsplit("#", 1)[-1]
    status = response.status_code
    words = detail(
        f"HTTP {status}", code, "-", text(data.get("message") or data.get("Message"))
    ).removesuffix(" -")
    if code in TRANSIENT_ERRORS or status in RETRYABLE_STATUSES or status >= 500:
        return TransientFailure("provider_error", f"SES {words}", retry_after(response))
    return PermanentFailure("rejected", f"SES {words}")


def ses_events(message: Any) -> list[ProviderEvent]:
    """The events of one SES notification (the ``Message`` of an SNS notification, decoded):
    an event-publishing record (``eventType``) or an identity notification
    (``notificationType``). Types other than Delivery, Bounce and Complaint give none."""
    if not isinstance(message, dict):
        return []
    kind = text(message.get("eventType") or message.get("notificationType"))
    mail = message.get("mail")
    provider_id = text(mail.get("messageId")) if isinstance(mail, dict) else ""
    if not provider_id:
        return []
    if kind == "Delivery":
        about = _part(message, "delivery")
        event = (DELIVERED, detail(about.get("smtpResponse"), about.get("reportingMTA")))
    elif kind == "Bounce":
        about = _part(message, "bounce")
        permanent = about.get("bounceType") == "Permanent"
        event = (
            BOUNCED if permanent else SOFT_BOUNCE,
            detail(
                about.get("bounceType"),
                about.get("bounceSubType"),
                *_recipients(about.get("bouncedRecipients"), "diagnosticCode"),
            ),
        )
    elif kind == "Complaint":
        about = _part(message, "complaint")
        event = (COMPLAINED, detail(about.get("complaintFeedbackType") or "complaint"))
    else:
        return []
    return [ProviderEvent("ses", "email", provider_id, *event)]


def _part(message: dict[str, Any], key: str) -> dict[str, Any]:
    found = message.get(key)
    return found if isinstance(found, dict) else {}


def _recipients(found: Any, key: str) -> list[str]:
    if not isinstance(found, list):
        return []
    return [text(r.get(key)) for r in found if isinstance(r, dict) and text(r.get(key))]
