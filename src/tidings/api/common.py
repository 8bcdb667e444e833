"""What every route module of the API shares: service authorization (:func:`authorize`,
:func:`scope_checker`), the answers to errors, and the checks of path values."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import TypeVar

import orjson
from fastapi import FastAPI, Request, Response
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError

from tidings.api.ports import ApiNode
from tidings.auth.base import ServicePrincipal
from tidings.errors import (
    ApiError,
    Conflict,
    InsufficientScope,
    InvalidAddress,
    InvalidArgument,
    InvalidToken,
    IssuerUnavailable,
    StoreUnavailable,
    TemplateFailure,
    TopicRefused,
)

T = TypeVar("T")

#: a dependency that checks the request's service token for one scope
ScopeCheck = Callable[[Request], Awaitable[ServicePrincipal]]
#: makes the :data:`ScopeCheck` of a scope
RequireScope = Callable[[str], ScopeCheck]

UNAVAILABLE_BODY = b'{"error":"unavailable","message":"storage unavailable; nothing was written"}'
#: the Prometheus text format of ``GET /metrics``
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


async def authorize(node: ApiNode, authorization: str, scope: str) -> ServicePrincipal:
    """The service behind an ``Authorization`` header, if its token carries ``scope``.

    Raises:
        ApiError: 401 (no or invalid token), 403 (scope missing), 503 (issuer unreachable).
    """
    scheme, _, credentials = authorization.partition(" ")
    token = credentials.strip() if scheme.lower() == "bearer" else ""
    if not token:
        raise ApiError(
            401,
            "unauthorized",
            "a bearer token from POST /oauth/token is required",
            {"WWW-Authenticate": 'Bearer realm="tidings"'},
        )
    try:
        return await node.service_auth.require(token, scope)
    except InsufficientScope as exc:
        raise ApiError(
            403,
            "insufficient_scope",
            str(exc),
            {"WWW-Authenticate": f'Bearer error="insufficient_scope", scope="{scope}"'},
        ) from None
    except IssuerUnavailable as exc:
        raise ApiError(503, "unavailable", str(exc), {"Retry-After": "5"}) from None
    except InvalidToken as exc:
        raise ApiError(
            401,
            "invalid_token",
            str(exc),
            {"WWW-Authenticate": 'Bearer error="invalid_token"'},
        ) from None


def scope_checker(node: ApiNode) -> RequireScope:
    """``require_scope(scope)``: the dependency that authorizes a request for ``scope``."""

    def require_scope(scope: str) -> ScopeCheck:
        async def check(request: Request) -> ServicePrincipal:
            return await authorize(node, request.headers.get("authorization", ""), scope)

        return check

    return require_scope


def install_error_handlers(app: FastAPI, node: ApiNode) -> None:
    """Answer :class:`ApiError` with its status and body, :class:`StoreUnavailable` with 503
    (counted as a ``store_unavailable`` error of ``node``), and a body pydantic refused with
    FastAPI's 422, written so that any input it repeats can be (see :func:`validation_body`)."""

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> Response:
        return Response(validation_body(exc), 422, media_type="application/json")

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> Response:
        body = json_body({"error": exc.code, "message": exc.message})
        return Response(body, exc.status, headers=exc.headers, media_type="application/json")

    @app.exception_handler(StoreUnavailable)
    async def _unavailable(_: Request, exc: StoreUnavailable) -> Response:
        node.counters.count_error("store_unavailable")
        return Response(
            UNAVAILABLE_BODY, 503, headers={"Retry-After": "1"}, media_type="application/json"
        )


def validation_body(exc: RequestValidationError) -> bytes:
    """``{"detail": errors}`` as FastAPI answers a refused body (the errors repeat the input:
    see :func:`json_body`)."""
    return json_body({"detail": jsonable_encoder(exc.errors())})


def json_body(content: object) -> bytes:
    """An error answer's JSON. What it repeats of the request may hold a lone surrogate
    (pydantic reads ``"\\udb9a"`` in JSON into one), which UTF-8 cannot write: then it is
    written in ASCII, escaped."""
    try:
        return orjson.dumps(content, default=str)
    except TypeError:
        return json.dumps(content, default=str, ensure_ascii=True).encode()


def check_identifier(name: str, value: str, max_length: int) -> None:
    """A user id or topic as the node takes it: 1 to ``max_length`` characters, no NUL.

    Raises:
        InvalidArgument: it is not.
    """
    if not 0 < len(value) <= max_length or "\x00" in value:
        raise InvalidArgument(
            f"{name} must be a string of 1 to {max_length} characters without NUL"
        )


def pipeline_error(exc: Exception) -> Exception:
    """The API's answer to a pipeline error (others pass through to the app's handlers)."""
    if isinstance(exc, TemplateFailure):
        return ApiError(422, "template_error", str(exc))
    if isinstance(exc, InvalidAddress):
        return ApiError(422, "invalid_address", str(exc))
    if isinstance(exc, TopicRefused):
        return ApiError(403, "topic_refused", str(exc))
    if isinstance(exc, InvalidArgument):
        return ApiError(422, "invalid_argument", str(exc))
    if isinstance(exc, Conflict):
        return ApiError(409, "conflict", str(exc))
    return exc


async def pipeline_call(work: Awaitable[T]) -> T:
    try:
        return await work
    except (InvalidArgument, Conflict, TopicRefused) as exc:
        raise pipeline_error(exc) from None
