"""Delegated device authentication: the application says who the device is.

tidings, deployed as a separate service, calls the application's subscribe URL with the
device's credentials (its ``Cookie`` and ``Authorization`` headers, plus any allow-listed ones);
the application authenticates the request as all its endpoints do and answers, without doing
anything else::

    200 {"user_id": "alice", "session_id": "optional", "claims": {"optional": "..."}}
    401 or 403                                   the device is refused

Anything else (5xx, a timeout, a connection error) means the application is unavailable: the
device is refused with 503 and may retry. To spare the application retry storms, at most
``concurrency`` calls run at once, an answer is reused for ``cache_ttl`` seconds for the same
credentials, and after ``failures_to_open`` consecutive failures calls stop for ``open_for``
seconds (the circuit is open) and devices are refused at once.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping

import httpx

from tidings.auth.base import Principal
from tidings.core.limits import MAX_USER_ID_LENGTH
from tidings.errors import DelegateUnavailable, InvalidToken

# Moved to tidings.errors; importable from here for one release.


class DelegatedAuthenticator:
    """Asks the application's subscribe URL who a connecting device is."""

    def __init__(
        self,
        url: str,
        *,
        forward_headers: Iterable[str] = (),
        timeout: float = 2.0,
        concurrency: int = 64,
        cache_ttl: float = 10.0,
        cache_size: int = 10_000,
        failures_to_open: int = 5,
        open_for: float = 5.0,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self.url = url
        self.forward = {"cookie", "authorization"} | {h.lower() for h in forward_headers}
        self.timeout = timeout
        self.cache_ttl = cache_ttl
        self.cache_size = cache_size
        self.failures_to_open = failures_to_open
        self.open_for = open_for
        self._http = http or httpx.AsyncClient(timeout=timeout, follow_redirects=False)
        self._slots = asyncio.Semaphore(concurrency)
        self._cache: OrderedDict[str, tuple[float, Principal, str | None]] = OrderedDict()
        self._failures = 0
        self._open_until = 0.0

    async def aclose(self) -> None:
        await self._http.aclose()

    async def authenticate_request(
        self, headers: Mapping[str, str]
    ) -> tuple[Principal, str | None]:
        """The device's user (and optional session id) according to the application.

        Raises:
            InvalidToken: the application refused the device (401/403) or named no user.
            DelegateUnavailable: the application is down, slow or erring, or the circuit is open.
        """
        forwarded = {k: v for k, v in headers.items() if k.lower() in self.forward}
        if not forwarded:
            raise InvalidToken("no credentials to delegate (no cookie or authorization)")
        key = hashlib.sha256(repr(sorted(forwarded.items())).encode()).hexdigest()
        now = time.monotonic()
        cached = self._cache.get(key)
        if cached is not None and cached[0] > now:
            return cached[1], cached[2]
        if now < self._open_until:
            raise DelegateUnavailable("the application's subscribe endpoint is failing; retry")
        try:
            # Waiting for a slot counts against the timeout too: a saturated, failing
            # application must not queue up devices for minutes.
            async with asyncio.timeout(self.timeout):
                async with self._slots:
                    if time.monotonic() < self._open_until:
                        raise DelegateUnavailable("the subscribe endpoint is failing; retry")
                    response = await self._http.get(self.url, headers=forwarded)
        except (httpx.HTTPError, TimeoutError) as exc:
            self._failed()
            raise DelegateUnavailable(f"subscribe endpoint unreachable: {exc!r}") from None
        if response.status_code in (401, 403):
            self._failures = 0
            raise InvalidToken("the application refused this device")
        if response.status_code != 200:
            self._failed()
            raise DelegateUnavailable(f"subscribe endpoint answered {response.status_code}")
        self._failures = 0
        principal, session_id = _parse(response)
        self._cache[key] = (time.monotonic() + self.cache_ttl, principal, session_id)
        self._cache.move_to_end(key)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return principal, session_id

    def invalidate(self, user_id: str) -> None:
        """Forget cached answers naming ``user_id`` (after a logout)."""
        for key in [k for k, v in self._cache.items() if v[1].user_id == user_id]:
            del self._cache[key]

    def _failed(self) -> None:
        self._failures += 1
        if self._failures >= self.failures_to_open:
            self._open_until = time.monotonic() + self.open_for
            self._failures = 0


def _parse(response: httpx.Response) -> tuple[Principal, str | None]:
    try:
        body = response.json()
    except ValueError:
        raise DelegateUnavailable("subscribe endpoint answered 200 without JSON") from None
    user_id = body.get("user_id") if isinstance(body, dict) else None
    if not isinstance(user_id, str) or not 0 < len(user_id) <= MAX_USER_ID_LENGTH:
        raise InvalidToken("the application named no user for this device")
    session_id = body.get("session_id")
    claims = body.get("claims")
    return (
        Principal(user_id, claims if isinstance(claims, dict) else {}),
        session_id if isinstance(session_id, str) and 0 < len(session_id) <= 128 else None,
    )
