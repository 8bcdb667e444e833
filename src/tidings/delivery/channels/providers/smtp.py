"""The ``smtp`` email provider: one SMTP session per email (aiosmtplib).

The server is given as a URL: ``smtp://[user:password@]host[:port][?starttls=true|false]``
(port 25 by default; without ``starttls`` the session is upgraded when the server offers it,
``true`` requires it, ``false`` never upgrades) or ``smtps://…`` for TLS from the first byte
(port 465 by default).
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import ClassVar
from urllib.parse import parse_qsl, unquote, urlsplit

import aiosmtplib

from tidings.delivery.channels._net import check_timeout
from tidings.delivery.channels.providers.base import Provider
from tidings.delivery.channels.providers.mail import Mail
from tidings.errors import (
    ConfigurationError,
    DeliveryFailure,
    PermanentFailure,
    TransientFailure,
)

_BOOLEANS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


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


class SmtpProvider(Provider[Mail]):
    """Sends the email's MIME message through an SMTP server; its ``Message-ID`` is the
    provider id."""

    name: ClassVar[str] = "smtp"

    def __init__(self, url: str, *, timeout: float = 10.0) -> None:
        self.server = parse_smtp_url(url)
        self._timeout = check_timeout(timeout)
        #: the name given in EHLO; set by the channel once it is known (a lookup)
        self.local_hostname: str | None = None

    async def send(self, message: Mail) -> str | None:
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
            local_hostname=self.local_hostname,
            timeout=self._timeout,
        )
        try:
            async with asyncio.timeout(self._timeout):
                await client.connect()
                await client.sendmail(
                    message.envelope_sender,
                    [message.recipient],
                    message.raw,
                    # an internationalised address needs the server's SMTPUTF8 (RFC 6531)
                    mail_options=[] if message.recipient.isascii() else ["SMTPUTF8"],
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
        return message.message_id
