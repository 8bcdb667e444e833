"""What the HTTP channels (webhook, web push, SMS) share: URL checks, the private-address
guard, one HTTP client per channel, and how an HTTP answer becomes a delivery failure.

Each rule is written here once, so the three channels cannot drift apart.
"""

from __future__ import annotations

import asyncio
import email.utils
import ipaddress
import math
import socket
import time
from collections.abc import Collection, Mapping
from typing import Any, Protocol
from urllib.parse import urlsplit

import aiohttp
import aiohttp.abc
import httpx
import orjson

from tidings.delivery.channels.base import (
    Channel,
    InvalidAddress,
    PermanentFailure,
    TransientFailure,
)
from tidings.errors import ConfigurationError, ForbiddenAddress

# Moved to tidings.errors; importable from here for one release.

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

MAX_URL_LENGTH = 2048
#: statuses worth another try besides 5xx: request timeout, too early, too many requests
RETRYABLE_STATUSES = frozenset({408, 425, 429})
#: a provider's Retry-After hint is capped: a hostile receiver must not park a delivery forever
MAX_RETRY_AFTER = 86400.0
#: only this much of an answer is read: the body of a hostile receiver must not fill memory
MAX_RESPONSE_BYTES = 64 * 1024
_EXCERPT_CHARS = 200
USER_AGENT = "tidings"
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


def forbidden_ip(ip: IPAddress) -> bool:
    """Whether a send to this address must be refused: anything but a public unicast address."""
    if isinstance(ip, ipaddress.IPv6Address):
        # an IPv4 address inside an IPv6 one reaches the IPv4 host: judge that one
        embedded = ip.ipv4_mapped or ip.sixtofour
        if embedded is None and ip in _NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None:
            ip = embedded
    return (
        ip.is_loopback
        or ip.is_private
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
        # is_global also excludes shared address space (100.64.0.0/10) and its like
        or not ip.is_global
    )


def literal_ip(host: str) -> IPAddress | None:
    """The address ``host`` spells out, or ``None`` when it is a name."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    # Resolvers also accept the legacy IPv4 spellings ("2130706433", "0x7f.1"): so must we.
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except (OSError, ValueError, UnicodeError):
        return None


def check_http_url(value: Any, *, allow_private: bool, what: str = "URL") -> str:
    """``value`` as an absolute http(s) URL with a host, or :class:`InvalidAddress`.

    Unless ``allow_private``, a host that is a literal non-public IP address is refused here;
    names are resolved and checked at send time by :func:`ensure_public`.
    """
    if not isinstance(value, str):
        raise InvalidAddress(f"a {what} must be a string")
    url = value.strip()
    if not url:
        raise InvalidAddress(f"the {what} is empty")
    if len(url) > MAX_URL_LENGTH:
        raise InvalidAddress(f"the {what} is longer than {MAX_URL_LENGTH} characters")
    if any(ch.isspace() or not ch.isprintable() for ch in url):
        raise InvalidAddress(f"the {what} contains whitespace or control characters")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - parsing the port is the check
        httpx.URL(url)
    except (ValueError, httpx.InvalidURL) as exc:
        raise InvalidAddress(f"the {what} is malformed: {exc}") from exc
    if parts.scheme.lower() not in ("http", "https"):
        raise InvalidAddress(f"the {what} must start with http:// or https://")
    host = parts.hostname
    if not host:
        raise InvalidAddress(f"the {what} has no host")
    if not allow_private:
        ip = literal_ip(host)
        if ip is not None and forbidden_ip(ip):
            raise InvalidAddress(f"the {what} points to a non-public address ({ip})")
    return url


class GuardedResolver(aiohttp.abc.AbstractResolver):
    """Resolves names and refuses any that has a non-public address (SSRF guard).

    The connection goes to the addresses checked here, not to those of a second lookup, so a
    resolver that answers differently a moment later (DNS rebinding) gains nothing.
    """

    def __init__(self) -> None:
        self._resolver = aiohttp.ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[aiohttp.abc.ResolveResult]:
        found = await self._resolver.resolve(host, port, family)
        for entry in found:
            # an IPv6 link-local answer carries its scope ("fe80::1%eth0")
            address = ipaddress.ip_address(str(entry["host"]).split("%")[0])
            if forbidden_ip(address):
                raise ForbiddenAddress(f"{host} is a non-public address ({address}); not sent")
        return found

    async def close(self) -> None:
        await self._resolver.close()


def encode_json(value: Any) -> bytes:
    """``value`` as JSON; a value JSON cannot carry fails the delivery for good."""
    try:
        return orjson.dumps(value)
    except TypeError as exc:
        raise PermanentFailure("invalid_payload", f"cannot encode as JSON: {exc}") from exc


class HasHeaders(Protocol):
    @property
    def headers(self) -> Mapping[str, str]: ...


def retry_after(response: HasHeaders) -> float | None:
    """The ``Retry-After`` hint in seconds (a number of seconds or an HTTP date), if any."""
    value = response.headers.get("retry-after", "").strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            return None
    if math.isnan(seconds):
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def describe(response: httpx.Response, *, detail: bool) -> str:
    """``HTTP 503 Service Unavailable``, with the start of the body when ``detail``.

    Only trusted providers get ``detail``: the body of an answer from a user's URL may be
    an internal service's data and must not end up in a delivery's ``last_error``.
    """
    text = f"HTTP {response.status_code} {response.reason_phrase}".rstrip()
    if detail and response.content:
        excerpt = " ".join(response.text.split())[:_EXCERPT_CHARS]
        text = f"{text}: {excerpt}"
    return text


def raise_for_status(
    response: httpx.Response, *, gone: Collection[int] = (410,), detail: bool = False
) -> None:
    """Nothing on 2xx; otherwise the delivery failure the status means.

    ``gone`` statuses: the address is dead for good (``gone``); 408, 425, 429 and 5xx: try
    again (``provider_error``); any other status, redirects included (they are not followed,
    the address must be fixed): ``rejected``.
    """
    status = response.status_code
    if 200 <= status < 300:
        return
    message = describe(response, detail=detail)
    if status in gone:
        raise PermanentFailure("gone", message)
    if status in RETRYABLE_STATUSES or status >= 500:
        raise TransientFailure("provider_error", message, retry_after(response))
    if 300 <= status < 400:
        message += " (redirects are not followed)"
    raise PermanentFailure("rejected", message)


def check_timeout(timeout: float) -> float:
    """``timeout`` as a float; :class:`ConfigurationError` unless a positive finite number."""
    if not (isinstance(timeout, int | float) and math.isfinite(timeout) and timeout > 0):
        raise ConfigurationError(f"timeout must be a positive number of seconds, not {timeout!r}")
    return float(timeout)


class HttpChannel(Channel):
    """A channel that sends with one shared :class:`aiohttp.ClientSession` (opened by
    :meth:`start`, closed by :meth:`close`). Redirects are never followed, and the environment
    (proxies, ``.netrc`` credentials) is ignored so nothing leaks to a user's URL.

    Why aiohttp and not httpx here: httpx's pool looks at every pooled connection on every
    request and its anyio streams cost a third of a webhook send (measured with py-spy at
    300 deliveries/s); and aiohttp takes a resolver, so the private-address guard checks the
    very addresses it connects to.
    """

    def __init__(self, *, timeout: float, allow_private: bool) -> None:
        self._timeout = check_timeout(timeout)
        self._allow_private = allow_private
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=256,
                resolver=None if self._allow_private else GuardedResolver(),
                ttl_dns_cache=10,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                headers={"user-agent": USER_AGENT},
                trust_env=False,
                auto_decompress=True,
            )

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def post(self, url: str, *, content: bytes, headers: Mapping[str, str]) -> httpx.Response:
        """POST within the channel's timeout; the answer, its body read up to
        :data:`MAX_RESPONSE_BYTES`. Network trouble becomes a :class:`TransientFailure`."""
        session = self._session
        if session is None:
            raise RuntimeError(f"{type(self).__name__}.start() must be awaited before send()")
        try:
            # an address stored before a rule changed is checked again
            target = check_http_url(url, allow_private=True)
        except InvalidAddress as exc:
            raise PermanentFailure("invalid_address", str(exc)) from exc
        host = urlsplit(target).hostname or ""
        literal = literal_ip(host)
        if literal is not None and not self._allow_private and forbidden_ip(literal):
            raise PermanentFailure("forbidden_address", f"{host} is a non-public address; not sent")
        try:
            # one deadline for resolving, connecting, sending and reading
            async with asyncio.timeout(self._timeout):
                return await _post(session, target, content, headers)
        except TimeoutError as exc:
            raise TransientFailure(
                "timeout", f"no answer from {host} within {self._timeout:g} s"
            ) from exc
        except aiohttp.ClientConnectorError as exc:
            if isinstance(exc.os_error, ForbiddenAddress):
                raise PermanentFailure("forbidden_address", str(exc.os_error)) from exc
            raise TransientFailure("unreachable", f"cannot connect to {host}: {exc}") from exc
        except (aiohttp.ClientError, ValueError) as exc:
            raise TransientFailure(
                "provider_error", f"{host}: {type(exc).__name__}: {exc}"
            ) from exc


async def _post(
    session: aiohttp.ClientSession, url: str, content: bytes, headers: Mapping[str, str]
) -> httpx.Response:
    """The answer as an :class:`httpx.Response` (the type the channels' rules take)."""
    async with session.post(url, data=content, headers=headers, allow_redirects=False) as answer:
        body = await answer.content.read(MAX_RESPONSE_BYTES)
        # the body is decoded already: the rebuilt answer must not be decoded a second time
        kept = [
            (key, value)
            for key, value in answer.headers.items()
            if key.lower() not in ("content-encoding", "content-length", "transfer-encoding")
        ]
        return httpx.Response(
            answer.status,
            headers=kept,
            content=bytes(body),
            request=httpx.Request("POST", url),
            extensions={"reason_phrase": (answer.reason or "").encode("ascii", "replace")},
        )
