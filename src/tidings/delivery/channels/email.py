"""The email channel: one message per delivery through an SMTP server (aiosmtplib).

The server is given as a URL: ``smtp://[user:password@]host[:port][?starttls=true|false]``
(port 25 by default; without ``starttls`` the session is upgraded when the server offers it,
``true`` requires it, ``false`` never upgrades) or ``smtps://…`` for TLS from the first byte
(port 465 by default).
"""

from __future__ import annotations

import asyncio
import contextlib
import email.policy
import email.utils
import re
import socket
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.header import Header
from email.message import EmailMessage
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import parse_qsl, unquote, urlsplit

import aiosmtplib
from email_validator import EmailNotValidError, validate_email

from tidings.delivery.channels._net import check_timeout
from tidings.delivery.channels.base import (
    Channel,
    DeliveryFailure,
    InvalidAddress,
    Outgoing,
    PermanentFailure,
    TransientFailure,
)
from tidings.errors import ConfigurationError

if TYPE_CHECKING:
    from tidings.delivery.ports import PipelineHost

_SUBJECT_CHARS = 78
_BOOLEANS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
# the characters a Message-ID's left part may hold without quoting (RFC 5322 dot-atom)
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_DOT_ATOM = re.compile(rf"{_ATEXT}(?:\.{_ATEXT})*")


@dataclass(frozen=True, slots=True)
class SmtpServer:
    """Where and how to reach the SMTP server, as read from the channel's URL."""

    host: str
    port: int
    username: str | None
    #: kept out of the repr, which ends up in logs
    password: str | None = field(repr=False)
    use_tls: bool
    #: None: upgrade when the server offers STARTTLS (aiosmtplib's own default)
    start_tls: bool | None


def parse_smtp_url(url: str) -> SmtpServer:
    """Read an ``smtp://`` or ``smtps://`` URL; :class:`ConfigurationError` when malformed."""
    # messages never quote the URL: it may hold a password
    if not isinstance(url, str):
        raise ConfigurationError("the SMTP URL must be a string")
    try:
        parts = urlsplit(url.strip())
        port = parts.port
        query = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
    except ValueError as exc:
        raise ConfigurationError(f"the SMTP URL is malformed: {exc}") from exc
    if parts.scheme not in ("smtp", "smtps"):
        raise ConfigurationError("the SMTP URL must start with smtp:// or smtps://")
    if not parts.hostname:
        raise ConfigurationError("the SMTP URL has no host")
    use_tls = parts.scheme == "smtps"
    start_tls: bool | None = None
    for key, value in query:
        if key != "starttls" or value.lower() not in _BOOLEANS:
            raise ConfigurationError("the SMTP URL accepts only ?starttls=true or ?starttls=false")
        start_tls = _BOOLEANS[value.lower()]
    if use_tls and start_tls:
        raise ConfigurationError("smtps:// is TLS already: starttls=true contradicts it")
    return SmtpServer(
        host=parts.hostname,
        port=port or (465 if use_tls else 25),
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password is not None else None,
        use_tls=use_tls,
        start_tls=False if use_tls else start_tls,
    )


def _fallback_subject(text: str) -> str:
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    if len(first) > _SUBJECT_CHARS:
        first = first[: _SUBJECT_CHARS - 1].rstrip() + "…"
    return first or "Notification"


def _classify(exc: Exception) -> DeliveryFailure:
    """The delivery failure an aiosmtplib (or socket) error means."""
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused) and exc.recipients:
        exc = exc.recipients[0]
    if isinstance(exc, aiosmtplib.SMTPAuthenticationError):
        # wrong credentials are the operator's to fix: the deliveries must not be lost for it
        return TransientFailure("provider_error", f"SMTP login refused: {exc.code} {exc.message}")
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        message = f"{exc.code} {exc.message}".strip()
        if 400 <= exc.code < 500:
            return TransientFailure("provider_error", message)
        if 500 <= exc.code < 600:
            return PermanentFailure("rejected", message)
        return TransientFailure("provider_error", message)
    # a connect timeout is both a timeout and a connect error: it is a timeout
    if isinstance(exc, TimeoutError):
        return TransientFailure("timeout", "the SMTP server did not answer in time")
    if isinstance(exc, aiosmtplib.SMTPServerDisconnected):
        return TransientFailure("provider_error", f"the SMTP server hung up: {exc}")
    if isinstance(exc, aiosmtplib.SMTPConnectError | OSError):
        return TransientFailure("unreachable", f"cannot reach the SMTP server: {exc}")
    return TransientFailure("provider_error", f"{type(exc).__name__}: {exc}")


class EmailChannel(Channel):
    """Sends each delivery as an email: plain text, plus an HTML alternative when the
    template has one. ``sender`` is the ``From`` header (``"Name <addr@host>"`` or an address).

    The ``Message-ID`` is made of the delivery id, so that a repeat of the same delivery
    (at-least-once) carries the same id and mail clients that drop duplicates drop it.
    """

    name: ClassVar[str] = "email"

    def __init__(self, smtp_url: str, sender: str, *, timeout: float = 10.0) -> None:
        self.server = parse_smtp_url(smtp_url)
        self._timeout = check_timeout(timeout)
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
        """``TIDINGS_SMTP_URL`` and ``TIDINGS_EMAIL_FROM``; ``None`` without an SMTP URL."""
        settings = host.settings
        if not settings.smtp_url:
            return None
        return cls(settings.smtp_url, settings.email_from, timeout=settings.provider_timeout)

    async def start(self) -> None:
        # aiosmtplib would look the host's name up on every send (socket.getfqdn)
        if self._local_hostname is None:
            self._local_hostname = await asyncio.to_thread(socket.getfqdn)

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
        """The email of one delivery: plain text, and an HTML alternative when there is one.

        Built with the standard library's MIME classes (``compat32``), not ``EmailMessage``,
        whose header registry costs several times more per email (docs/benchmarks.md).
        """
        rendered = outgoing.rendered
        if not str(outgoing.address).isascii():
            # an internationalised address needs SMTPUTF8 headers, which only the new API writes
            return _utf8_message(self, outgoing)
        text = MIMEText(rendered.text, "plain", "utf-8")
        message: MIMEText | MIMEMultipart = text
        if rendered.html:
            message = MIMEMultipart("alternative")
            message.attach(text)
            message.attach(MIMEText(rendered.html, "html", "utf-8"))
        for name, value in self._headers(outgoing).items():
            message[name] = value if value.isascii() else Header(value, "utf-8")  # type: ignore[assignment]
        return message.as_bytes()

    def _headers(self, outgoing: Outgoing) -> dict[str, str]:
        rendered = outgoing.rendered
        # a subject is a single header line: line breaks in a template's subject fold away
        subject = " ".join((rendered.subject or "").split()) or _fallback_subject(rendered.text)
        return {
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

    async def send(self, outgoing: Outgoing) -> str | None:
        try:
            message = self.raw_message(outgoing)
        except (ValueError, TypeError, UnicodeError) as exc:
            raise PermanentFailure("invalid_message", f"cannot build the email: {exc}") from exc
        server = self.server
        # One SMTP session per send: a session carries one transaction at a time, servers drop
        # idle ones within minutes, and a pool would need a lock, RSET and liveness checks per
        # connection for a saving (one handshake) that matters little at notification rates.
        client = aiosmtplib.SMTP(
            hostname=server.host,
            port=server.port,
            username=server.username,
            password=server.password,
            use_tls=server.use_tls,
            start_tls=server.start_tls,
            local_hostname=self._local_hostname,
            timeout=self._timeout,
        )
        try:
            async with asyncio.timeout(self._timeout):
                await client.connect()
                await client.sendmail(
                    self._envelope_sender,
                    [outgoing.address],
                    message,
                    # an internationalised address needs the server's SMTPUTF8 (RFC 6531)
                    mail_options=[] if str(outgoing.address).isascii() else ["SMTPUTF8"],
                )
        except BaseException as exc:
            # Dropped at once, not closed politely: aiosmtplib's own context manager sends QUIT
            # and waits for the answer, so a send the worker abandons (its lease lapsed) would
            # stay open until the server replied, and could still be accepted meanwhile.
            client.close()
            if isinstance(exc, aiosmtplib.SMTPException | OSError):
                raise _classify(exc) from exc
            raise
        with contextlib.suppress(aiosmtplib.SMTPException, OSError, TimeoutError):
            async with asyncio.timeout(self._timeout):
                await client.quit()
        client.close()
        return self.message_id(outgoing)


def _utf8_message(channel: EmailChannel, outgoing: Outgoing) -> bytes:
    """The same email with the new API and SMTPUTF8 headers (non-ASCII addresses)."""
    message = EmailMessage(policy=email.policy.SMTPUTF8)
    for name, value in channel._headers(outgoing).items():
        message[name] = value
    message.set_content(outgoing.rendered.text)
    if outgoing.rendered.html:
        message.add_alternative(outgoing.rendered.html, subtype="html")
    return message.as_bytes()
