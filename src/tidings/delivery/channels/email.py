"""The email channel: one message per delivery, through its providers in failover order
(``TIDINGS_EMAIL_PROVIDERS``: ``smtp``, ``ses``, ``postmark``; :mod:`.providers`).

The email is built here once per delivery (:meth:`EmailChannel.mail`): the MIME message the
``smtp`` and ``ses`` providers send, and the same headers and parts for ``postmark``'s JSON.
Extra headers of a delivery (``Outgoing.extra["headers"]``, such as ``List-Unsubscribe``) are
added in one place, :meth:`EmailChannel._headers`, so every provider sends them.
"""

from __future__ import annotations

import asyncio
import email.policy
import email.utils
import re
import socket
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from email.header import Header
from email.message import EmailMessage
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from typing import TYPE_CHECKING, Any, ClassVar

from email_validator import EmailNotValidError, validate_email

from tidings.delivery.channels._net import check_timeout
from tidings.delivery.channels.base import (
    Channel,
    InvalidAddress,
    Outgoing,
    PermanentFailure,
    Sent,
)
from tidings.delivery.channels.phones import push_ssl_context
from tidings.delivery.channels.providers.base import (
    Provider,
    close_all,
    configured,
    require,
    send_in_order,
    start_all,
)
from tidings.delivery.channels.providers.mail import Mail
from tidings.delivery.channels.providers.postmark import PostmarkProvider
from tidings.delivery.channels.providers.ses import SesProvider
from tidings.delivery.channels.providers.smtp import SmtpProvider, SmtpServer, parse_smtp_url
from tidings.errors import ConfigurationError

if TYPE_CHECKING:
    from tidings.delivery.ports import ChannelSettings, PipelineHost

# Moved to providers/smtp.py; importable from here as before.
__all__ = ["EmailChannel", "Mail", "SmtpServer", "parse_smtp_url"]

_SUBJECT_CHARS = 78
# the characters a Message-ID's left part may hold without quoting (RFC 5322 dot-atom)
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_DOT_ATOM = re.compile(rf"{_ATEXT}(?:\.{_ATEXT})*")
# a header's name (RFC 5322 ftext), for the extra headers a delivery carries
_FIELD_NAME = re.compile(r"[!-9;-~]+")


def _fallback_subject(text: str) -> str:
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    if len(first) > _SUBJECT_CHARS:
        first = first[: _SUBJECT_CHARS - 1].rstrip() + "…"
    return first or "Notification"


class EmailChannel(Channel):
    """Sends each delivery as an email: plain text, plus an HTML alternative when the
    template has one. ``sender`` is the ``From`` header (``"Name <addr@host>"`` or an address).

    The ``Message-ID`` is made of the delivery id, so that a repeat of the same delivery
    (at-least-once) carries the same id and mail clients that drop duplicates drop it.

    ``EmailChannel(smtp_url, sender)`` sends through that SMTP server, as it always did;
    ``providers`` (built by :meth:`from_settings` from ``TIDINGS_EMAIL_PROVIDERS``) replaces
    it with several, tried in order (:func:`~.providers.base.send_in_order`).
    """

    name: ClassVar[str] = "email"

    def __init__(
        self,
        smtp_url: str | None,
        sender: str,
        *,
        timeout: float = 10.0,
        providers: Sequence[Provider[Mail]] | None = None,
    ) -> None:
        self._timeout = check_timeout(timeout)
        if providers is None:
            if not smtp_url:
                raise ConfigurationError("the email channel needs an SMTP URL or providers")
            providers = [SmtpProvider(smtp_url, timeout=self._timeout)]
        if not providers:
            raise ConfigurationError("the email channel needs at least one provider")
        self.providers: tuple[Provider[Mail], ...] = tuple(providers)
        smtp = next((p for p in self.providers if isinstance(p, SmtpProvider)), None)
        #: the SMTP server, when one of the providers is ``smtp``
        self.server: SmtpServer | None = smtp.server if smtp is not None else None
        if not isinstance(sender, str):
            raise ConfigurationError("the email sender must be a string")
        _, address = email.utils.parseaddr(sender)
        local, _, domain = address.rpartition("@")
        if not local or not domain or any(ch.isspace() for ch in address):
            raise ConfigurationError(f"the email sender {sender!r} has no valid address")
        self._sender = sender
        self._envelope_sender = address
        self._domain = domain
        self._local_hostname: str | None = None

    @classmethod
    async def from_settings(cls, host: PipelineHost) -> EmailChannel | None:
        """``TIDINGS_EMAIL_PROVIDERS`` (by default ``smtp`` when ``TIDINGS_SMTP_URL`` is set),
        each provider's settings and ``TIDINGS_EMAIL_FROM``; ``None`` without a provider.

        Raises:
            ConfigurationError: a provider is named without its settings (named in one line).
        """
        settings = host.settings
        names = configured(settings.email_providers, "email", "smtp" if settings.smtp_url else None)
        if not names:
            return None
        providers = [await _provider(name, settings) for name in names]
        return cls(
            None, settings.email_from, timeout=settings.provider_timeout, providers=providers
        )

    async def start(self) -> None:
        # aiosmtplib would look the host's name up on every send (socket.getfqdn)
        if self._local_hostname is None:
            self._local_hostname = await asyncio.to_thread(socket.getfqdn)
        for provider in self.providers:
            if isinstance(provider, SmtpProvider):
                provider.local_hostname = self._local_hostname
        await start_all(self.providers)

    async def close(self) -> None:
        await close_all(self.providers)

    def validate(self, address: Any) -> str:
        if not isinstance(address, str):
            raise InvalidAddress("an email address must be a string")
        try:
            return validate_email(address, check_deliverability=False).normalized
        except EmailNotValidError as exc:
            raise InvalidAddress(f"{address!r} is not a valid email address: {exc}") from exc

    def message_id(self, outgoing: Outgoing) -> str:
        if _DOT_ATOM.fullmatch(outgoing.delivery_id):
            return f"<{outgoing.delivery_id}@{self._domain}>"
        return email.utils.make_msgid(domain=self._domain)

    def build_message(self, outgoing: Outgoing) -> EmailMessage:
        """The email of one delivery, as a parsed :class:`EmailMessage` (for inspection;
        :meth:`send` sends :meth:`raw_message`)."""
        parsed = email.message_from_bytes(self.raw_message(outgoing), policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)  # what policy.default parses into
        return parsed

    def raw_message(self, outgoing: Outgoing) -> bytes:
        """The email of one delivery: plain text, and an HTML alternative when there is one."""
        return self._raw(outgoing, self._headers(outgoing))

    def mail(self, outgoing: Outgoing) -> Mail:
        """The email of one delivery as every provider gets it: its headers and MIME message.

        Raises:
            ValueError, TypeError, UnicodeError: it cannot be built (an extra header that is
                not one, say).
        """
        headers = self._headers(outgoing)
        return Mail(
            outgoing,
            self._sender,
            self._envelope_sender,
            str(outgoing.address),
            headers,
            self._raw(outgoing, headers),
            headers["Message-ID"],
        )

    def _raw(self, outgoing: Outgoing, headers: Mapping[str, str]) -> bytes:
        """The MIME message with ``headers``. Built with the standard library's MIME classes
        (``compat32``), not ``EmailMessage``, whose header registry costs several times more
        per email (docs/benchmarks.md)."""
        rendered = outgoing.rendered
        if not str(outgoing.address).isascii():
            # an internationalised address needs SMTPUTF8 headers, which only the new API writes
            return _utf8_message(outgoing, headers)
        text = MIMEText(rendered.text, "plain", "utf-8")
        message: MIMEText | MIMEMultipart = text
        if rendered.html:
            message = MIMEMultipart("alternative")
            message.attach(text)
            message.attach(MIMEText(rendered.html, "html", "utf-8"))
        for name, value in headers.items():
            message[name] = value if value.isascii() else Header(value, "utf-8")  # type: ignore[assignment]
        return message.as_bytes()

    def _headers(self, outgoing: Outgoing) -> dict[str, str]:
        """Every header of the delivery's email: tidings' own, then the delivery's extra ones
        (``outgoing.extra["headers"]``; one of tidings' own names is not replaced)."""
        rendered = outgoing.rendered
        # a subject is a single header line: line breaks in a template's subject fold away
        subject = " ".join((rendered.subject or "").split()) or _fallback_subject(rendered.text)
        headers = {
            "Subject": subject,
            "From": self._sender,
            "To": str(outgoing.address),
            "Date": email.utils.format_datetime(datetime.now(UTC)),
            "Message-ID": self.message_id(outgoing),
            # RFC 3834: out-of-office robots must not answer a notification
            "Auto-Submitted": "auto-generated",
            "X-Tidings-Delivery": outgoing.delivery_id,
            "X-Tidings-Message": outgoing.message_id,
        }
        own = {name.lower() for name in headers}
        for name, value in _extra_headers(outgoing).items():
            if name.lower() not in own:
                headers[name] = value
        return headers

    async def send(self, outgoing: Outgoing) -> str | Sent | None:
        try:
            mail = self.mail(outgoing)
        except (ValueError, TypeError, UnicodeError) as exc:
            raise PermanentFailure("invalid_message", f"cannot build the email: {exc}") from exc
        return await send_in_order(self.providers, mail, self._timeout)


def _extra_headers(outgoing: Outgoing) -> dict[str, str]:
    """``outgoing.extra["headers"]``, checked: names of printable ASCII without ``:``, values
    on one line.

    Raises:
        ValueError: a header that is not one (it would let a value inject others).
    """
    extra = outgoing.extra.get("headers") or {}
    if not isinstance(extra, Mapping):
        raise ValueError("extra headers must be a mapping of names to values")
    found: dict[str, str] = {}
    for name, value in extra.items():
        if not (isinstance(name, str) and _FIELD_NAME.fullmatch(name)):
            raise ValueError(f"{name!r} is not a header name")
        if not isinstance(value, str) or "\r" in value or "\n" in value:
            raise ValueError(f"the {name} header's value must be text on one line")
        found[name] = value
    return found


async def _provider(name: str, settings: ChannelSettings) -> Provider[Mail]:
    """The email provider ``name`` as the settings configure it."""
    timeout = settings.provider_timeout
    if name == "smtp":
        url = require(settings.smtp_url, "TIDINGS_SMTP_URL", "email", name)
        return SmtpProvider(url, timeout=timeout)
    context = push_ssl_context(settings.push_ca_file)
    if name == "ses":
        return await SesProvider.from_settings(settings, context)
    token = require(settings.postmark_server_token, "TIDINGS_POSTMARK_SERVER_TOKEN", "email", name)
    return PostmarkProvider(token, settings.postmark_url, timeout=timeout, ssl_context=context)


def _utf8_message(outgoing: Outgoing, headers: Mapping[str, str]) -> bytes:
    """The same email with the new API and SMTPUTF8 headers (non-ASCII addresses)."""
    message = EmailMessage(policy=email.policy.SMTPUTF8)
    for name, value in headers.items():
        message[name] = value
    message.set_content(outgoing.rendered.text)
    if outgoing.rendered.html:
        message.add_alternative(outgoing.rendered.html, subtype="html")
    return message.as_bytes()
