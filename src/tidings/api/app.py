"""The HTTP API for services: OAuth2 token endpoint, ``/notify``, ``/health``.

The routes see the node only through :class:`~tidings.api.ports.ApiNode`. The busiest ones
(:mod:`tidings.api.fast`) are also answered without the framework by ``tidings serve``.
"""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from tidings.api.bodies import batch_items, body_errors
from tidings.api.common import (
    METRICS_CONTENT_TYPE,
    UNAVAILABLE_BODY,
    authorize,
    install_error_handlers,
    scope_checker,
)
from tidings.api.docs import mount_docs
from tidings.api.fast import (
    FAST_ROUTES,
    fast_post,
    notify_batch_answer,
    notify_one,
    publish_one,
)
from tidings.api.inbox import mount_inbox
from tidings.api.oauth import mount_oauth
from tidings.api.pipeline import mount_pipeline
from tidings.api.ports import ApiNode
from tidings.api.providers import mount_providers
from tidings.api.push_tokens import mount_push_tokens
from tidings.api.schemas import (
    ApiErrorBody,
    Health,
    LoggedNotification,
    NotificationLog,
    NotificationOut,
    NotifyBatchRequest,
    NotifyBatchResponse,
    NotifyRequest,
    Published,
    PublishRequest,
    TopicLog,
    TopicMessageOut,
)
from tidings.api.status_events import mount_status_events
from tidings.api.users import mount_users
from tidings.api.web import mount_web
from tidings.errors import ApiError as ApiError
from tidings.errors import InvalidArgument, StoreUnavailable
from tidings.errors import UnparsableBody as UnparsableBody
from tidings.version import __version__

# Moved to tidings.api.fast, tidings.api.bodies and tidings.api.common; importable from here
# for one release.
__all__ = [
    "FAST_ROUTES",
    "UNAVAILABLE_BODY",
    "ApiError",
    "UnparsableBody",
    "authorize",
    "batch_items",
    "create_api",
    "fast_post",
    "notify_batch_answer",
    "notify_one",
    "publish_one",
]


def create_api(tidings: ApiNode, *, manage_lifespan: bool = True) -> FastAPI:
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
        # /docs and /redoc from files installed with tidings, not a CDN (tidings.api.docs).
        docs_url=None,
        redoc_url=None,
    )
    mount_docs(app)

    install_error_handlers(app, tidings)
    require_scope = scope_checker(tidings)

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
            raise RequestValidationError(body_errors(exc, body)) from None
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

    mount_oauth(app, tidings)

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
        responses={
            200: {"content": {METRICS_CONTENT_TYPE: {}}, "description": "Prometheus text format"}
        },
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
        return Response(await tidings.metrics.render(), media_type=METRICS_CONTENT_TYPE)

    mount_pipeline(app, tidings, require_scope)
    mount_push_tokens(app, tidings, require_scope)
    mount_users(app, tidings, require_scope)
    mount_status_events(app, tidings, require_scope)
    mount_providers(app, tidings)
    mount_inbox(app, tidings, require_scope)
    mount_web(app, tidings, require_scope)
    return app
