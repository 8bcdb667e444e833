"""The authenticators of a node, made from its settings and the keys kept in its store."""

from __future__ import annotations

import secrets

from tidings.auth.base import DeviceAuthenticator
from tidings.auth.delegated import DelegatedAuthenticator
from tidings.auth.jwks import JwksCache
from tidings.auth.jwt import JwtAuthenticator
from tidings.auth.oauth import ExternalIssuer, ServiceAuth
from tidings.config import Settings
from tidings.errors import ConfigurationError
from tidings.storage import Store

#: store keys of the secrets a node generates when the settings give none
DEVICE_KEY = "device_jwt_secret"
SERVICE_KEY = "service_token_key"


def random_key() -> str:
    return secrets.token_urlsafe(48)


class Credentials:
    """Device and service authentication of one node (and the key caches to close)."""

    def __init__(self, settings: Settings, device: DeviceAuthenticator | None = None) -> None:
        self.settings = settings
        #: the application's own authenticator, else a JWT one made at each :meth:`start`
        self.device = device
        self._own_device = device is None
        self.service: ServiceAuth | None = None
        self._caches: list[JwksCache] = []

    async def start(self, store: Store) -> None:
        """Load or create the keys (raises :class:`~tidings.errors.StoreUnavailable`)."""
        settings = self.settings
        if self._own_device:
            secret = settings.jwt_secret or await store.get_or_create_key(DEVICE_KEY, random_key)
            jwks = JwksCache(settings.jwks_url) if settings.jwks_url else None
            if jwks is not None:
                self._caches.append(jwks)
            self.device = JwtAuthenticator(
                secret,
                audience=settings.jwt_audience,
                issuer=settings.jwt_issuer,
                leeway=settings.jwt_leeway,
                jwks=jwks,
                jwks_algorithms=settings.jwt_algorithms,
            )
        key = settings.service_token_key or await store.get_or_create_key(SERVICE_KEY, random_key)
        external = external_issuer(settings)
        if external is not None:
            self._caches.append(external.jwks)
        self.service = ServiceAuth(store, key, ttl=settings.service_token_ttl, external=external)

    def delegate(self) -> DelegatedAuthenticator | None:
        """The application's subscribe endpoint as authenticator, when the settings name one."""
        settings = self.settings
        if not settings.delegate_url:
            return None
        return DelegatedAuthenticator(
            settings.delegate_url,
            forward_headers=settings.delegate_headers,
            timeout=settings.delegate_timeout,
            cache_ttl=settings.delegate_cache_ttl,
        )

    async def close(self) -> None:
        caches, self._caches = self._caches, []
        for cache in caches:
            await cache.aclose()


def external_issuer(settings: Settings) -> ExternalIssuer | None:
    """The external identity provider whose tokens the HTTP API takes, if configured.

    Raises:
        ConfigurationError: a JWKS URL without issuer and audience.
    """
    if not settings.service_jwks_url:
        return None
    if not (settings.service_issuer and settings.service_audience):
        raise ConfigurationError(
            "TIDINGS_SERVICE_JWKS_URL needs TIDINGS_SERVICE_ISSUER and TIDINGS_SERVICE_AUDIENCE"
        )
    return ExternalIssuer(
        JwksCache(settings.service_jwks_url),
        issuer=settings.service_issuer,
        audience=settings.service_audience,
        algorithms=settings.service_algorithms,
    )
