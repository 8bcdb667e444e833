"""The HTTP client the API providers (SES, Postmark, Twilio) share: one ``httpx`` pool per
provider, redirects never followed, the environment (proxies, ``.netrc``) ignored, the
system's CAs plus ``TIDINGS_PUSH_CA_FILE``'s trusted; network trouble becomes a
:class:`TransientFailure`, so the next provider takes over."""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson

from tidings.delivery.channels._net import USER_AGENT, check_http_url, check_timeout
from tidings.errors import ConfigurationError, InvalidAddress, TransientFailure


def provider_url(value: str, setting: str) -> str:
    """An operator's provider URL without its trailing ``/``; a one-line
    :class:`ConfigurationError` naming ``setting`` when it is not an http(s) URL."""
    try:
        return check_http_url(value, allow_private=True, what=setting).rstrip("/")
    except InvalidAddress as exc:
        raise ConfigurationError(f"{setting}: {exc}") from None


class ProviderHttp:
    """A provider's connection pool, opened on first use (or by :meth:`start`)."""

    def __init__(self, name: str, *, timeout: float, ssl_context: ssl.SSLContext | None) -> None:
        self.name = name
        self._timeout = check_timeout(timeout)
        self._ssl = ssl_context if ssl_context is not None else ssl.create_default_context()
        self._client: httpx.AsyncClient | None = None

    def _open(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                timeout=self._timeout,
                verify=self._ssl,
                trust_env=False,
                follow_redirects=False,
                headers={"user-agent": USER_AGENT},
            )
        return self._client

    async def start(self) -> None:
        self._open()

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    async def request(
        self,
        method: str,
        url: str,
        *,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        auth: tuple[str, str] | None = None,
    ) -> httpx.Response:
        """The answer (any status); a :class:`TransientFailure` when there is none."""
        host = urlsplit(url).hostname or url
        try:
            return await self._open().request(
                method, url, content=content, headers=headers, auth=auth
            )
        except httpx.TimeoutException as exc:
            raise TransientFailure(
                "timeout", f"no answer from {host} within {self._timeout:g} s"
            ) from exc
        except httpx.ConnectError as exc:
            raise TransientFailure("unreachable", f"cannot connect to {host}: {exc}") from exc
        except httpx.HTTPError as exc:
            raise TransientFailure(
                "provider_error", f"{host}: {type(exc).__name__}: {exc}"
            ) from exc


def json_object(response: httpx.Response) -> dict[str, Any]:
    """The answer's JSON object, or ``{}`` when it has none."""
    try:
        found = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return {}
    return found if isinstance(found, dict) else {}
