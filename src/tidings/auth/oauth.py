"""Service authentication: OAuth2 client credentials (RFC 6749 §4.4) with a built-in issuer.

Client secrets are 256-bit random strings, stored only as salted HMAC-SHA256 digests. Access
tokens are short-lived JWTs (RFC 9068 ``at+jwt``) signed with a key kept in the store, so every node
sharing the store verifies them without a round trip.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from tidings.auth.base import ServicePrincipal
from tidings.auth.jwks import JwksCache, token_header
from tidings.auth.jwt import oct_key, sign_jwt, verify_jwt
from tidings.core.models import ServiceClient
from tidings.errors import (
    ConfigurationError,
    InsufficientScope,
    InvalidClient,
    InvalidScope,
    InvalidToken,
)
from tidings.storage.base import Store

# Moved to tidings.errors; importable from here for one release.

SCOPES = frozenset({"notify", "publish", "messages", "admin"})
ISSUER = "tidings"
AUDIENCE = "tidings:service"
KEY_NAME = "service_token_key"


def hash_secret(secret: str) -> str:
    """A salted HMAC-SHA256 of a client secret.

    Client secrets are 256-bit random strings, not passwords: no dictionary attack applies, so
    a slow KDF would add nothing but a CPU cost anyone could trigger at /oauth/token.
    """
    salt = secrets.token_bytes(16)
    digest = hmac.new(salt, secret.encode(), hashlib.sha256).digest()
    b64 = base64.urlsafe_b64encode
    return f"hmac-sha256${b64(salt).decode()}${b64(digest).decode()}"


def check_secret(secret: str, stored: str) -> bool:
    """Constant-time check of ``secret`` against :func:`hash_secret`'s output."""
    try:
        scheme, salt, digest = stored.split("$")
        if scheme != "hmac-sha256":
            return False
        expected = base64.urlsafe_b64decode(digest)
        actual = hmac.new(base64.urlsafe_b64decode(salt), secret.encode(), hashlib.sha256)
    except ValueError:
        return False
    return hmac.compare_digest(actual.digest(), expected)


def parse_scopes(value: str | Iterable[str] | None) -> frozenset[str]:
    """Scopes from a space- or comma-separated string (or an iterable of them).

    Raises:
        ConfigurationError: a scope is unknown.
    """
    if value is None:
        return frozenset()
    items = value.replace(",", " ").split() if isinstance(value, str) else list(value)
    scopes = frozenset(s.strip() for s in items if s.strip())
    unknown = scopes - SCOPES
    if unknown:
        raise ConfigurationError(
            f"unknown scope(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(SCOPES))}"
        )
    return scopes


@dataclass(frozen=True, slots=True)
class IssuedToken:
    access_token: str
    expires_in: int
    scope: frozenset[str]

    def to_dict(self) -> dict[str, object]:
        return {
            "access_token": self.access_token,
            "token_type": "Bearer",
            "expires_in": self.expires_in,
            "scope": " ".join(sorted(self.scope)),
        }


_DUMMY_HASH = hash_secret(secrets.token_urlsafe(32))


async def create_client(
    store: Store, name: str, scopes: Iterable[str]
) -> tuple[ServiceClient, str]:
    """Register a client; returns it with its secret, which is shown only this once."""
    allowed = parse_scopes(list(scopes))
    if not allowed:
        raise ConfigurationError("a client needs at least one scope")
    client_id = "tc_" + secrets.token_urlsafe(12)
    secret = secrets.token_urlsafe(32)
    hashed = hash_secret(secret)
    client = await store.create_client(client_id, name, allowed, hashed)
    return client, secret


#: verified service tokens remembered (a handful of services each send one token for an hour)
VERIFIED_CACHE_SIZE = 1024
#: seconds a client is taken to exist before it is looked up again
CLIENT_RECHECK = 30.0


class ServiceAuth:
    """Issues and verifies service access tokens."""

    def __init__(
        self,
        store: Store,
        secret: str,
        *,
        ttl: int = 3600,
        external: ExternalIssuer | None = None,
    ) -> None:
        self.store = store
        self.ttl = ttl
        self.external = external
        self._key = oct_key(secret)
        #: tokens whose signature was verified: token -> (principal, expiry, ours)
        self._verified: dict[str, tuple[ServicePrincipal, float, bool]] = {}
        #: our clients known to exist, until when (monotonic): a deleted client's tokens stop
        #: working within CLIENT_RECHECK seconds instead of at their expiry
        self._alive: dict[str, float] = {}

    async def issue(
        self, client_id: str, client_secret: str, requested: str | None = None
    ) -> IssuedToken:
        """Exchange client credentials for a token.

        Raises:
            InvalidClient: unknown client or wrong secret.
            InvalidScope: a requested scope is unknown or not granted to the client.
        """
        client = await self.store.get_client(client_id)
        # Check a digest even for unknown clients so timing does not reveal which ids exist.
        valid = check_secret(client_secret, client.secret_hash if client else _DUMMY_HASH)
        if client is None or not valid:
            raise InvalidClient("unknown client or wrong secret")
        try:
            scope = parse_scopes(requested) if requested else client.scopes
        except ConfigurationError as exc:
            raise InvalidScope(str(exc)) from None
        if not scope <= client.scopes:
            missing = ", ".join(sorted(scope - client.scopes))
            raise InvalidScope(f"scope(s) not granted to this client: {missing}")
        now = int(time.time())
        claims = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": client.client_id,
            "client_id": client.client_id,
            "scope": " ".join(sorted(scope)),
            "iat": now,
            "exp": now + self.ttl,
            "jti": secrets.token_urlsafe(12),
        }
        return IssuedToken(sign_jwt(claims, self._key, typ="at+jwt"), self.ttl, scope)

    async def verify(self, token: str) -> ServicePrincipal:
        """The principal of a valid service token: ours (HS256, issuer ``tidings``) or, when
        configured, an external issuer's (verified against its JWKS).

        Raises:
            InvalidToken: malformed, forged, expired, wrong issuer or audience, or an algorithm
                that is not pinned (``none`` never is).
        """
        cached = self._verified.get(token)
        if cached is not None:
            if cached[1] > time.time():
                if cached[2]:
                    await self._check_alive(cached[0].client_id)
                return cached[0]
            del self._verified[token]
        alg = token_header(token).get("alg")
        ours = alg == "HS256"
        if ours:
            claims = verify_jwt(token, self._key, audience=AUDIENCE, issuer=ISSUER, leeway=5)
        elif self.external is not None and alg in self.external.algorithms:
            claims = await self.external.verify(token)
        else:
            raise InvalidToken(f"token algorithm {alg!r} is not accepted")
        client_id = claims.get("client_id") or claims.get("azp") or claims.get("sub")
        scope = claims.get("scope", claims.get("scp", ""))
        scopes = scope.split() if isinstance(scope, str) else scope
        if not isinstance(client_id, str) or not isinstance(scopes, list):
            raise InvalidToken("token lacks a client id or scopes")
        principal = ServicePrincipal(client_id, frozenset(str(s) for s in scopes))
        if ours:
            await self._check_alive(client_id)
        expires = claims.get("exp")
        if isinstance(expires, (int, float)):
            # A service sends the same token with every request until it expires: verify its
            # signature once (a tenth of a /notify's cost), check the expiry every time.
            if len(self._verified) >= VERIFIED_CACHE_SIZE:
                self._verified.clear()
            self._verified[token] = (principal, float(expires), ours)
        return principal

    async def _check_alive(self, client_id: str) -> None:
        """Raises InvalidToken if our client ``client_id`` was deleted (looked up at most every
        :data:`CLIENT_RECHECK` seconds per client)."""
        now = time.monotonic()
        if self._alive.get(client_id, 0.0) > now:
            return
        if await self.store.get_client(client_id) is None:
            self._alive.pop(client_id, None)
            raise InvalidToken("the client of this token was deleted")
        if len(self._alive) >= VERIFIED_CACHE_SIZE:
            self._alive.clear()
        self._alive[client_id] = now + CLIENT_RECHECK

    async def require(self, token: str, scope: str) -> ServicePrincipal:
        """Verify ``token`` and check it carries ``scope``.

        Raises:
            InvalidToken: see :meth:`verify`.
            InsufficientScope: the token is valid but lacks ``scope``.
        """
        principal = await self.verify(token)
        if scope not in principal.scopes:
            raise InsufficientScope(scope)
        return principal


class ExternalIssuer:
    """Service tokens minted by another OAuth2 server (client credentials there), verified with
    its JWKS; issuer, audience and algorithms are pinned by configuration."""

    def __init__(
        self,
        jwks: JwksCache,
        *,
        issuer: str,
        audience: str,
        algorithms: Iterable[str] = ("RS256", "ES256"),
        leeway: float = 30.0,
    ) -> None:
        self.jwks = jwks
        self.issuer = issuer
        self.audience = audience
        self.algorithms = [a for a in algorithms if a.lower() != "none"]
        self.leeway = leeway

    async def verify(self, token: str) -> dict[str, Any]:
        keys = await self.jwks.keys_for(token_header(token).get("kid"))
        return verify_jwt(
            token,
            keys,
            algorithms=self.algorithms,
            audience=self.audience,
            issuer=self.issuer,
            leeway=self.leeway,
        )
