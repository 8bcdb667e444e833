"""Who a per-user route acts for: the user of a device JWT (``/me/…``), or the user a service
names (``/users/{user_id}/…``, scope ``messages``)."""

# No "from __future__ import annotations": FastAPI reads the dependencies' annotations, which
# name values local to the functions that make them.
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import Depends, Path, Request

from tidings.api.common import RequireScope, check_identifier
from tidings.api.ports import ApiNode
from tidings.api.schemas import ApiErrorBody
from tidings.auth.base import ServicePrincipal
from tidings.core.limits import MAX_USER_ID_LENGTH
from tidings.errors import ApiError, AuthError, InvalidArgument

#: who a per-user route acts for: (user id, the device JWT's claims, or None for a service)
Caller = tuple[str, dict[str, Any] | None]

#: the refusals every authorized route documents in OpenAPI
ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ApiErrorBody, "description": "Missing or invalid token"},
    403: {"model": ApiErrorBody, "description": "Token lacks the scope"},
    422: {"model": ApiErrorBody, "description": "Invalid request"},
    503: {"model": ApiErrorBody, "description": "Storage unavailable; nothing written"},
}


def device_caller(node: ApiNode) -> Callable[[Request], Awaitable[Caller]]:
    """The dependency of the ``/me/…`` routes: the user of the device JWT in
    ``Authorization`` and the token's claims; 401 without one or with a bad one."""

    async def device_user(request: Request) -> Caller:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiError(
                401,
                "unauthorized",
                "a device JWT is required (Authorization: Bearer)",
                {"WWW-Authenticate": 'Bearer realm="tidings"'},
            )
        try:
            principal = await node.authenticator.authenticate(token.strip())
        except AuthError as exc:
            raise ApiError(
                401, "invalid_token", str(exc), {"WWW-Authenticate": 'Bearer error="invalid_token"'}
            ) from None
        return principal.user_id, principal.claims

    return device_user


def service_caller(
    require_scope: RequireScope, scope: str = "messages"
) -> Callable[..., Awaitable[Caller]]:
    """The dependency of the ``/users/{user_id}/…`` routes: the user the path names, for a
    service token with ``scope`` (trusted with any user and topic)."""

    async def service_user(
        user_id: Annotated[str, Path(min_length=1, max_length=MAX_USER_ID_LENGTH)],
        _: Annotated[ServicePrincipal, Depends(require_scope(scope))],
    ) -> Caller:
        try:
            check_identifier("user_id", user_id, MAX_USER_ID_LENGTH)
        except InvalidArgument as exc:
            raise ApiError(422, "invalid_argument", str(exc)) from None
        return user_id, None

    return service_user


def per_user(
    node: ApiNode, require_scope: RequireScope, scope: str = "messages"
) -> list[tuple[str, Callable[..., Awaitable[Caller]]]]:
    """The two ways to a user's routes, each (path prefix, the dependency naming the user):
    ``/me`` with the device JWT, ``/users/{user_id}`` with a service token of ``scope``."""
    return [
        ("/me", device_caller(node)),
        ("/users/{user_id}", service_caller(require_scope, scope)),
    ]
