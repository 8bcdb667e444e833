"""Who is connecting: the :class:`DeviceAuthenticator` interface and its result."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated device user."""

    user_id: str
    claims: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ServicePrincipal:
    """An authenticated service (OAuth2 client)."""

    client_id: str
    scopes: frozenset[str]


class DeviceAuthenticator(ABC):
    """Turns a device's credential into a :class:`Principal`."""

    @abstractmethod
    async def authenticate(self, token: str) -> Principal:
        """Verify ``token``.

        Raises:
            InvalidToken: the token is malformed, forged, expired or names no user.
        """
