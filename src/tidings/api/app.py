"""The HTTP API for services: OAuth2 token endpoint, ``/notify``, ``/health``."""

from __future__ import annotations

import base64
import binascii
import hmac
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import parse_qs, unquote_plus

import orjson
from fastapi import Depends, FastAPI, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError

from tidings.api.pipeline import mount_pipeline
from tidings.api.schemas import (
    MAX_NOTIFICATION_ID_CHARS,
    MAX_USER_ID_CHARS,
    ApiErrorBody,
    Health,
    LoggedNotification,
    NotificationLog,
    NotificationOut,
    NotifyBatchRequest,
    NotifyBatchResponse,
    NotifyRequest,
    OAuthError,
    Published,
    PublishRequest,
    TokenResponse,
    TopicLog,
    TopicMessageOut,
)
from tidings.api.web import mount_web
from tidings.auth.base import ServicePrincipal
from tidings.core.limits import MAX_BATCH_ITEMS
from tidings.core.models import NewNotification, NotifyResult, isoformat
from tidings.errors import (
    ApiError,
    Conflict,
    InsufficientScope,
    InvalidArgument,
    InvalidClient,
    InvalidScope,
    InvalidToken,
    IssuerUnavailable,
    PayloadTooLarge,
    StoreUnavailable,
    UnparsableBody,
)
from tidings.node.metrics import CONTENT_TYPE, count_error
from tidings.version import __version__

# Moved to tidings.errors; importable from here for one release.

if TYPE_CHECKING:
    from tidings.node.tidings import Tidings

ModelT = TypeVar("ModelT", bound=BaseModel)

_BATCH_ERRORS: dict[type[Exception], tuple[int, str]] = {
    Conflict: (409, "conflict"),
    PayloadTooLarge: (413, "payload_too_large"),
    InvalidArgument: (422, "invalid_argument"),
}


async def authorize(tidings: Tidings, authorization: str, scope: str) -> ServicePrincipal:
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
        return await tidings.service_auth.require(token, scope)
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


async def notify_one(tidings: Tidings, body: NotifyRequest) -> tuple[bool, NotificationOut]:
    """``POST /notify``: (created, the notification).

    Raises:
        ApiError: 413, 422 (a value the store cannot hold) or 409.
        StoreUnavailable: nothing was written.
    """
    try:
        result = await tidings.notify(body.user_id, body.data, notification_id=body.notification_id)
    except PayloadTooLarge as exc:
        raise ApiError(413, "payload_too_large", str(exc)) from None
    except InvalidArgument as exc:
        raise ApiError(422, "invalid_argument", str(exc)) from None
    except Conflict as exc:
        raise ApiError(409, "conflict", str(exc)) from None
    return result.created, NotificationOut.of(result.notification)


async def publish_one(tidings: Tidings, body: PublishRequest) -> Published:
    """``POST /publish``.

    Raises:
        ApiError: 413 or 422 (a topic or value the store cannot hold).
        StoreUnavailable: nothing was written.
    """
    try:
        message = await tidings.publish(
            body.topic, body.data, origin_session_id=body.origin_session_id
        )
    except PayloadTooLarge as exc:
        raise ApiError(413, "payload_too_large", str(exc)) from None
    except InvalidArgument as exc:
        raise ApiError(422, "invalid_argument", str(exc)) from None
    return Published(topic=message.topic, seq=message.seq)


async def _notify_answer(tidings: Tidings, body: bytes) -> tuple[int, bytes]:
    created, out = await notify_one(tidings, _validated(NotifyRequest, body))
    return (201 if created else 200), out.model_dump_json().encode()


async def _publish_answer(tidings: Tidings, body: bytes) -> tuple[int, bytes]:
    published = await publish_one(tidings, _validated(PublishRequest, body))
    return 202, published.model_dump_json().encode()


def _validated(model: type[ModelT], body: bytes) -> ModelT:
    """``body`` read into ``model`` as the framework route reads it. pydantic's JSON reader
    stops at 200 levels of nesting, the framework's (the standard library's) reads deeper:
    such a body is read again that way, so that both answer alike (the node then refuses the
    data's nesting with its own limit, ``MAX_DATA_DEPTH``)."""
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        if error["type"] != "json_invalid" or "recursion limit" not in error["msg"]:
            raise
        try:
            parsed = json.loads(body)
        except RecursionError:
            raise UnparsableBody from None
        except ValueError:
            raise exc from None
        return model.model_validate(parsed)


#: digits to ``#``, all else to ``.``: nineteen ``#`` in a row may be an integer beyond 64 bits
#: (-2**63 - 1 has 19 digits; or it is only a long string of digits). Ten times faster than a
#: regular expression.
_DIGITS = bytes(35 if 48 <= b <= 57 else 46 for b in range(256))
_LONG_NUMBER = b"#" * 19


def batch_items(body: bytes) -> list[NewNotification] | None:
    """The items of a ``POST /notify/batch`` body, read with orjson and checked by hand; None
    for anything that is not plainly valid (malformed JSON, a missing or mistyped field, an
    integer beyond 64 bits, a lone surrogate …), which pydantic then validates, and words the
    422 of. Same verdicts as :class:`NotifyBatchRequest` on what it accepts (held so by
    tests/core/test_batch_parse.py), at half the cost per item: pydantic builds a model per
    item, which was a fifth of the loop's time under batched ingest."""
    if _LONG_NUMBER in body.translate(_DIGITS):  # orjson reads those as floats
        return None
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if type(parsed) is not dict:
        return None
    notifications = parsed.get("notifications")
    if type(notifications) is not list or not 1 <= len(notifications) <= MAX_BATCH_ITEMS:
        return None
    items = []
    for item in notifications:
        if type(item) is not dict or "data" not in item:
            return None
        user_id = item.get("user_id")
        if type(user_id) is not str or not 1 <= len(user_id) <= MAX_USER_ID_CHARS:
            return None
        notification_id = item.get("notification_id")
        if notification_id is not None and (
            type(notification_id) is not str
            or not 1 <= len(notification_id) <= MAX_NOTIFICATION_ID_CHARS
        ):
            return None
        items.append(NewNotification(user_id, item["data"], notification_id))
    return items


async def notify_batch_answer(tidings: Tidings, body: bytes) -> tuple[int, bytes]:
    """``POST /notify/batch``: 200 and the answer, once all accepted items are committed.

    Raises:
        ValidationError: the body is not a valid batch (answered 422).
        ApiError: 422 for a batch over ``TIDINGS_MAX_BATCH_SIZE``.
        StoreUnavailable: nothing was written.
    """
    items = batch_items(body)
    if items is None:
        request = NotifyBatchRequest.model_validate_json(body)
        items = [
            NewNotification(item.user_id, item.data, item.notification_id)
            for item in request.notifications
        ]
    try:
        outcomes = await tidings.notify_many(items)
    except InvalidArgument as exc:
        raise ApiError(422, "invalid_argument", str(exc)) from None
    results: list[dict[str, Any]] = []
    append = results.append
    created = existing = 0
    # The items created together share one date object: format it once.
    last_date: datetime | None = None
    last_text = ""
    for outcome in outcomes:
        if isinstance(outcome, NotifyResult):
            note = outcome.notification
            if outcome.created:
                created += 1
            else:
                existing += 1
            if note.creation_date is not last_date:
                last_date = note.creation_date
                last_text = isoformat(last_date)
            append(
                {
                    "status": 201 if outcome.created else 200,
                    "notification": {
                        "notification_id": note.notification_id,
                        "user_id": note.user_id,
                        "data": note.data,
                        "creation_date": last_text,
                        "seen_date": note.seen_date and isoformat(note.seen_date),
                    },
                }
            )
        else:
            status, code = _BATCH_ERRORS.get(type(outcome), (422, "invalid_argument"))
            results.append({"status": status, "error": code, "message": str(outcome)})
    answer = {
        "results": results,
        "created": created,
        "existing": existing,
        "refused": len(results) - created - existing,
    }
    return 200, orjson.dumps(answer)


#: the busiest service endpoints, answered by :func:`fast_post` in ``tidings serve``:
#: path -> (scope required, handler of the raw body)
FAST_ROUTES: dict[str, tuple[str, Callable[[Tidings, bytes], Awaitable[tuple[int, bytes]]]]] = {
    "/notify": ("notify", _notify_answer),
    "/notify/batch": ("notify", notify_batch_answer),
    "/publish": ("publish", _publish_answer),
}


async def fast_post(
    tidings: Tidings, path: str, scope: dict[str, Any], body: bytes, send: Any
) -> None:
    """A ``POST`` to one of :data:`FAST_ROUTES` without the framework: the same checks,
    answers and errors as the FastAPI route (which documents it in the OpenAPI schema and
    serves it when the API is mounted on its own), at half the cost per request
    (docs/benchmarks.md)."""
    required, handler = FAST_ROUTES[path]
    authorization = ""
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            authorization = value.decode("latin-1")
            break
    headers: dict[str, str] = {}
    try:
        await authorize(tidings, authorization, required)
        status, payload = await handler(tidings, body)
    except ValidationError as exc:
        status, payload = 422, _error_body(_body_errors(exc, body))
    except UnparsableBody:
        status, payload = 400, UnparsableBody.body
    except ApiError as exc:
        payload = orjson.dumps({"error": exc.code, "message": exc.message})
        status, headers = exc.status, dict(exc.headers or {})
    except StoreUnavailable:
        count_error("store_unavailable")
        payload = UNAVAILABLE_BODY
        status, headers = 503, {"Retry-After": "1"}
    raw = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(payload))]
    raw += [(k.lower().encode(), v.encode("latin-1")) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": payload})


def _body_errors(exc: ValidationError, body: bytes) -> list[dict[str, Any]]:
    """Validation errors as FastAPI words them: under ``body``, and malformed JSON located by
    its character position."""
    errors: list[dict[str, Any]] = []
    for error in exc.errors(include_url=False):
        if error["type"] == "json_invalid":
            try:
                json.loads(body)
            except (ValueError, RecursionError) as decoding:
                position = getattr(decoding, "pos", 0)
                message = getattr(decoding, "msg", "nested too deeply")
                errors.append(
                    {
                        "type": "json_invalid",
                        "loc": ("body", position),
                        "msg": "JSON decode error",
                        "input": {},
                        "ctx": {"error": message},
                    }
                )
                continue
        errors.append({**error, "loc": ("body", *error["loc"])})
    return errors


def _error_body(errors: list[dict[str, Any]]) -> bytes:
    """``{"detail": errors}`` as JSON. The errors repeat the input, which may hold integers
    beyond 64 bits: orjson refuses those (its ``default`` is never asked about integers), the
    standard library writes them as FastAPI does."""
    try:
        return orjson.dumps({"detail": errors}, default=str)
    except TypeError:
        return json.dumps({"detail": errors}, default=str).encode()


UNAVAILABLE_BODY = b'{"error":"unavailable","message":"storage unavailable; nothing was written"}'


def create_api(tidings: Tidings, *, manage_lifespan: bool = True) -> FastAPI:
    """The FastAPI app of ``tidings``; with ``manage_lifespan`` it starts and closes it."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await tidings.start()
        try:
            yield
        finally:
            await tidings.close()

    app = FastAPI(
        title="tidings",
        version=__version__,
        summary="Push notifications: unseen counts on every device.",
        lifespan=lifespan if manage_lifespan else None,
    )

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(
            {"error": exc.code, "message": exc.message}, exc.status, headers=exc.headers
        )

    @app.exception_handler(StoreUnavailable)
    async def _unavailable(_: Request, exc: StoreUnavailable) -> Response:
        count_error("store_unavailable")
        return Response(
            UNAVAILABLE_BODY, 503, headers={"Retry-After": "1"}, media_type="application/json"
        )

    def require_scope(scope: str) -> Callable[[Request], Awaitable[ServicePrincipal]]:
        async def check(request: Request) -> ServicePrincipal:
            return await authorize(tidings, request.headers.get("authorization", ""), scope)

        return check

    error_responses: dict[int | str, dict[str, Any]] = {
        401: {"model": ApiErrorBody, "description": "Missing or invalid token"},
        403: {"model": ApiErrorBody, "description": "Token lacks the scope"},
        503: {"model": ApiErrorBody, "description": "Storage unavailable; nothing written"},
    }

    @app.post(
        "/notify",
        status_code=201,
        response_model=NotificationOut,
        responses={
            200: {"model": NotificationOut, "description": "Already sent (same notification_id)"},
            409: {"model": ApiErrorBody, "description": "notification_id used for another"},
            413: {"model": ApiErrorBody, "description": "data over the size limit"},
            **error_responses,
        },
        tags=["notifications"],
        dependencies=[Depends(require_scope("notify"))],
    )
    async def notify(body: NotifyRequest, response: Response) -> NotificationOut:
        """Persist a notification and push the new unseen count to the user's devices.

        Answers 201 once the notification is committed, or 200 with the first notification
        when ``notification_id`` was sent before.
        """
        created, out = await notify_one(tidings, body)
        if not created:
            response.status_code = 200
        return out

    batch_schema = NotifyBatchRequest.model_json_schema(ref_template="#/components/schemas/{model}")
    batch_schema.pop("$defs", None)  # NotifyRequest is in the components already (/notify)

    @app.post(
        "/notify/batch",
        response_model=NotifyBatchResponse,
        responses={413: {"model": ApiErrorBody}, **error_responses},
        tags=["notifications"],
        dependencies=[Depends(require_scope("notify"))],
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": batch_schema}},
            }
        },
    )
    async def notify_batch(request: Request) -> Response:
        """Persist up to ``TIDINGS_MAX_BATCH_SIZE`` notifications at once and push each user's
        new count once. Answers 200 once all accepted items are committed, with one result
        per item in request order; refused items (409, 413, 422) change nothing and do not
        stop the others."""
        body = await request.body()
        try:
            _, payload = await notify_batch_answer(tidings, body)
        except ValidationError as exc:
            raise RequestValidationError(_body_errors(exc, body)) from None
        return Response(payload, media_type="application/json")

    @app.post(
        "/publish",
        status_code=202,
        response_model=Published,
        responses={413: {"model": ApiErrorBody}, **error_responses},
        tags=["topics"],
        dependencies=[Depends(require_scope("publish"))],
    )
    async def publish(body: PublishRequest) -> Published:
        """Store a message on a topic (kept for the topic's TTL) and send it to every
        subscribed session on every node except ``origin_session_id``."""
        return await publish_one(tidings, body)

    @app.get(
        "/topics/{topic:path}/messages",
        response_model=TopicLog,
        responses=error_responses,
        tags=["topics"],
    )
    async def topic_messages(
        request: Request,
        topic: str,
        since: int = Query(0, ge=0, le=2**63 - 1),  # a 64-bit sequence
        limit: int = Query(500, ge=1, le=1000),
    ) -> TopicLog:
        """Messages of a topic after ``since``, for a consumer that keeps its own cursor.

        Scope ``publish``; a private ``user:<id>`` topic needs ``admin``.
        """
        await require_scope("admin" if topic.startswith("user:") else "publish")(request)
        try:
            replay = await tidings.topic_log(topic, since, limit)
        except InvalidArgument as exc:
            raise ApiError(422, "invalid_argument", str(exc)) from None
        return TopicLog(
            messages=[
                TopicMessageOut(
                    topic=m.topic,
                    seq=m.seq,
                    data=m.data,
                    creation_date=m.creation_date,
                    origin_session_id=m.origin_session_id,
                )
                for m in replay.messages
            ],
            recovered=replay.recovered,
            last_seq=replay.last_seq,
        )

    @app.get(
        "/log/notifications",
        response_model=NotificationLog,
        responses=error_responses,
        tags=["operations"],
        dependencies=[Depends(require_scope("admin"))],
    )
    async def notification_log(
        after: str = Query("", max_length=64), limit: int = Query(500, ge=1, le=1000)
    ) -> NotificationLog:
        """Every notification after the opaque log position ``after`` (empty: from the
        start): feed other processes that keep their own cursor; continue with
        ``next_after``. Each notification comes once and none is ever skipped."""
        try:
            notes, position = await tidings.notification_log(after, limit)
        except InvalidArgument as exc:
            raise ApiError(422, "invalid_argument", str(exc)) from None
        return NotificationLog(
            notifications=[
                LoggedNotification(**NotificationOut.of(n).model_dump(), seq=n.seq) for n in notes
            ],
            next_after=position,
        )

    @app.delete(
        "/users/{user_id}/devices/{connection_id}",
        status_code=204,
        responses={
            404: {"model": ApiErrorBody, "description": "No such device"},
            **error_responses,
        },
        tags=["devices"],
        dependencies=[Depends(require_scope("notify"))],
    )
    async def forget_device(user_id: str, connection_id: str) -> Response:
        """Log a device out: delete its queue and close its sockets on every node."""
        if not await tidings.forget_device(user_id, connection_id):
            raise ApiError(404, "not_found", "no such device for this user")
        return Response(status_code=204)

    @app.post(
        "/oauth/token",
        response_model=TokenResponse,
        responses={400: {"model": OAuthError}, 401: {"model": OAuthError}},
        tags=["auth"],
    )
    async def token(request: Request) -> Response:
        """OAuth2 client credentials grant (RFC 6749 §4.4).

        Form-encoded (or JSON) body with ``grant_type=client_credentials`` and optional
        ``scope``; the client authenticates with HTTP Basic or ``client_id`` and
        ``client_secret`` in the body.
        """
        form = await _token_form(request)
        if form.get("grant_type") != "client_credentials":
            return _oauth_error(
                400, "unsupported_grant_type", "only client_credentials is supported"
            )
        client_id, client_secret = _client_credentials(request, form)
        # RFC 6749 §5.2: the Basic challenge answers a client that tried Basic; sent to one
        # that used the body (a login form), it makes browsers show their own login dialog.
        basic = _tried_basic(request)
        if not client_id or not client_secret:
            return _oauth_error(
                401, "invalid_client", "client authentication is required", challenge=basic
            )
        try:
            issued = await tidings.service_auth.issue(client_id, client_secret, form.get("scope"))
        except InvalidClient as exc:
            return _oauth_error(401, "invalid_client", str(exc), challenge=basic)
        except InvalidScope as exc:
            return _oauth_error(400, "invalid_scope", str(exc))
        return JSONResponse(
            issued.to_dict(), headers={"Cache-Control": "no-store", "Pragma": "no-cache"}
        )

    async def probe(ok: str, *, draining_counts: bool) -> JSONResponse:
        """A probe's answer: ``ok`` with 200, or why not with 503."""
        status, code = ok, 200
        if draining_counts and not tidings.ready:
            status, code = "draining", 503
        else:
            try:
                await tidings.store.ping()
            except StoreUnavailable:
                status, code = "store_unavailable", 503
        registry = tidings.registry
        body = Health(
            status=status,
            node=tidings.node_id,
            connections=len(registry),
            users=registry.user_count,
        )
        return JSONResponse(body.model_dump(), code)

    @app.get("/health", response_model=Health, tags=["operations"])
    async def health() -> JSONResponse:
        """Liveness: 200 when this node and its store answer, 503 otherwise."""
        return await probe("ok", draining_counts=False)

    @app.get(
        "/ready",
        response_model=Health,
        responses={503: {"model": Health, "description": "Draining, or the store is down"}},
        tags=["operations"],
    )
    async def ready() -> JSONResponse:
        """Readiness: 200 while this node takes new devices and requests; 503 once it is
        shutting down (before it closes anything) or while its store does not answer."""
        return await probe("ready", draining_counts=True)

    @app.get(
        "/metrics",
        response_class=Response,
        responses={200: {"content": {CONTENT_TYPE: {}}, "description": "Prometheus text format"}},
        tags=["operations"],
    )
    async def metrics(request: Request) -> Response:
        """Prometheus metrics of this node (``TIDINGS_METRICS_TOKEN``, when set, is required
        as a bearer token)."""
        token = tidings.settings.metrics_token
        if token is not None:
            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                raise ApiError(
                    401,
                    "unauthorized",
                    "the metrics token is required",
                    {"WWW-Authenticate": "Bearer"},
                )
        return Response(await tidings.metrics.render(), media_type=CONTENT_TYPE)

    mount_pipeline(app, tidings, require_scope)
    mount_web(app, tidings, require_scope)
    return app


async def _token_form(request: Request) -> dict[str, str]:
    raw = await request.body()
    if request.headers.get("content-type", "").startswith("application/json"):
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return {}
        return (
            {k: v for k, v in data.items() if isinstance(v, str)} if isinstance(data, dict) else {}
        )
    parsed = parse_qs(raw.decode("latin-1"))
    return {key: values[0] for key, values in parsed.items() if values}


def _tried_basic(request: Request) -> bool:
    """Whether the client sent HTTP Basic credentials (well-formed or not)."""
    scheme, _, _ = request.headers.get("authorization", "").partition(" ")
    return scheme.lower() == "basic"


def _client_credentials(request: Request, form: dict[str, str]) -> tuple[str | None, str | None]:
    scheme, _, encoded = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "basic" and encoded:
        try:
            decoded = base64.b64decode(encoded.strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return None, None
        client_id, _, secret = decoded.partition(":")
        # RFC 6749 §2.3.1: both parts are form-urlencoded inside the Basic credentials.
        return unquote_plus(client_id), unquote_plus(secret)
    return form.get("client_id"), form.get("client_secret")


def _oauth_error(
    status: int, code: str, description: str, *, challenge: bool = False
) -> JSONResponse:
    """An RFC 6749 §5.2 error; ``challenge`` adds ``WWW-Authenticate: Basic`` (a 401 to a
    client that tried HTTP Basic)."""
    headers = {"Cache-Control": "no-store"}
    if challenge:
        headers["WWW-Authenticate"] = 'Basic realm="tidings"'
    return JSONResponse({"error": code, "error_description": description}, status, headers=headers)
