"""Keys from a JSON Web Key Set URL, cached, and fetched again for an unknown ``kid``.

Used for device tokens signed by the application's identity provider (``TIDINGS_JWKS_URL``) and
for service tokens from an external OAuth2 issuer (``TIDINGS_SERVICE_JWKS_URL``). Keys are kept
for ``ttl`` seconds; a token whose ``kid`` is not in the cached set triggers one refetch, at most
every ``min_refresh`` seconds, so a rotated key is picked up without a restart and a flood of
tokens with made-up ``kid`` values cannot hammer the issuer.

Why not PyJWT's ``PyJWKClient``: it is synchronous; this fetches with httpx on the event loop.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import re
import time
from typing import Any

import httpx
import orjson
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from tidings.errors import InvalidToken, IssuerUnavailable

logger = logging.getLogger("tidings.auth")


_B64URL = re.compile(r"[A-Za-z0-9_-]*")


def b64url_decode(segment: str) -> bytes:
    """A JWS segment: unpadded base64url, refused with anything else in it (the standard
    library's decoder would skip foreign characters).

    Raises:
        ValueError: not base64url.
    """
    if len(segment) % 4 == 1 or not _B64URL.fullmatch(segment):
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def token_header(token: str) -> dict[str, Any]:
    """The unverified protected header of a compact JWS (only to choose the key and the
    algorithm; the signature is checked afterwards by joserfc).

    Decoded here rather than with joserfc's compact parser, which also splits and decodes the
    payload and signature and reads the JSON with the standard library: on every connect and
    every service request that was 5 % of the node's time.

    Raises:
        InvalidToken: not a compact JWS.
    """
    segment, _, rest = token.partition(".")
    try:
        if not rest or rest.count(".") != 1:
            raise ValueError("not three segments")
        header = orjson.loads(b64url_decode(segment))
    except (ValueError, TypeError, UnicodeError, orjson.JSONDecodeError):
        raise InvalidToken("token is not a signed JWT") from None
    if not isinstance(header, dict):
        raise InvalidToken("token is not a signed JWT")
    return header


class JwksCache:
    """The current key set of one JWKS URL."""

    def __init__(
        self,
        url: str,
        *,
        ttl: float = 300.0,
        min_refresh: float = 10.0,
        timeout: float = 5.0,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self.url = url
        self.ttl = ttl
        self.min_refresh = min_refresh
        self._http = http or httpx.AsyncClient(timeout=timeout)
        self._keys: KeySet | None = None
        self._kids: set[str] = set()
        self._fetched_at = float("-inf")
        self._lock = asyncio.Lock()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def keys_for(self, kid: str | None) -> KeySet:
        """The key set, refreshed if stale or if it lacks ``kid`` (rate-limited).

        Raises:
            InvalidToken: the issuer's keys cannot be fetched and none are cached.
        """
        now = time.monotonic()
        since = now - self._fetched_at
        unknown = kid is not None and kid not in self._kids
        wanted = self._keys is None or since > self.ttl or unknown
        # Never more than one fetch per min_refresh, even while no keys could be had at all.
        if wanted and since > self.min_refresh:
            async with self._lock:
                if time.monotonic() - self._fetched_at > self.min_refresh:
                    await self._fetch()
        if self._keys is None:
            raise IssuerUnavailable("the token issuer's keys cannot be fetched; retry later")
        return self._keys

    async def _fetch(self) -> None:
        self._fetched_at = time.monotonic()
        try:
            response = await self._http.get(self.url)
            response.raise_for_status()
            data = response.json()
            keys = KeySet.import_key_set(data)
        except (httpx.HTTPError, ValueError, JoseError, TypeError) as exc:
            # Keep serving with the keys we had; a later call may succeed.
            logger.warning("cannot fetch keys from %s: %s", self.url, exc)
            return
        self._keys = keys
        self._kids = {
            str(k["kid"]) for k in data.get("keys", []) if isinstance(k, dict) and "kid" in k
        }
