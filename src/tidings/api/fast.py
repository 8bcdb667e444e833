"""The busiest service endpoints (``POST /notify``, ``/notify/batch``, ``/publish``): what
they do, shared by the FastAPI routes, and :func:`fast_post`, which answers them without the
framework wherever :class:`~tidings.node.app.TidingsApp` serves (``tidings serve`` and
``Tidings.asgi()``); the FastAPI routes answer them when the API is mounted on its own."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import orjson
from pydantic import ValidationError

from tidings.api.bodies import (
    NotifyBody,
    PublishBody,
    body_errors,
    error_body,
    notify_batch_items,
    notify_body,
    publish_body,
)
from tidings.api.common import UNAVAILABLE_BODY, authorize
from tidings.api.ports import ApiNode
from tidings.api.schemas import NotificationOut, NotifyRequest, Published, PublishRequest
from tidings.core.models import NotifyResult, isoformat
from tidings.errors import (
    ApiError,
    Conflict,
    InvalidArgument,
    PayloadTooLarge,
    StoreUnavailable,
    UnparsableBody,
)

_BATCH_ERRORS: dict[type[Exception], tuple[int, str]] = {
    Conflict: (409, "conflict"),
    PayloadTooLarge: (413, "payload_too_large"),
    InvalidArgument: (422, "invalid_argument"),
}


async def notify_one(
    node: ApiNode, body: NotifyRequest | NotifyBody
) -> tuple[bool, NotificationOut]:
    """``POST /notify``: (created, the notification).

    Raises:
        ApiError: 413, 422 (a value the store cannot hold) or 409.
        StoreUnavailable: nothing was written.
    """
    try:
        result = await node.notify(
            body.user_id, body.data, notification_id=body.notification_id, category=body.category
        )
    except PayloadTooLarge as exc:
        raise ApiError(413, "payload_too_large", str(exc)) from None
    except InvalidArgument as exc:
        raise ApiError(422, "invalid_argument", str(exc)) from None
    except Conflict as exc:
        raise ApiError(409, "conflict", str(exc)) from None
    return result.created, NotificationOut.of(result.notification)


async def publish_one(node: ApiNode, body: PublishRequest | PublishBody) -> Published:
    """``POST /publish``.

    Raises:
        ApiError: 413 or 422 (a topic or value the store cannot hold).
        StoreUnavailable: nothing was written.
    """
    try:
        message = await node.publish(
            body.topic, body.data, origin_session_id=body.origin_session_id
        )
    except PayloadTooLarge as exc:
        raise ApiError(413, "payload_too_large", str(exc)) from None
    except InvalidArgument as exc:
        raise ApiError(422, "invalid_argument", str(exc)) from None
    return Published(topic=message.topic, seq=message.seq)


async def notify_answer(node: ApiNode, body: bytes) -> tuple[int, bytes]:
    created, out = await notify_one(node, notify_body(body))
    return (201 if created else 200), out.model_dump_json().encode()


async def publish_answer(node: ApiNode, body: bytes) -> tuple[int, bytes]:
    published = await publish_one(node, publish_body(body))
    return 202, published.model_dump_json().encode()


async def notify_batch_answer(node: ApiNode, body: bytes) -> tuple[int, bytes]:
    """``POST /notify/batch``: 200 and the answer, once all accepted items are committed.

    Raises:
        ValidationError: the body is not a valid batch (answered 422).
        ApiError: 422 for a batch over ``TIDINGS_MAX_BATCH_SIZE``.
        StoreUnavailable: nothing was written.
    """
    try:
        outcomes = await node.notify_many(notify_batch_items(body))
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
                        "category": note.category,
                        "read_date": note.read_date and isoformat(note.read_date),
                        "archived_date": note.archived_date and isoformat(note.archived_date),
                    },
                }
            )
        else:
            status, code = _BATCH_ERRORS.get(type(outcome), (422, "invalid_argument"))
            append({"status": status, "error": code, "message": str(outcome)})
    answer = {
        "results": results,
        "created": created,
        "existing": existing,
        "refused": len(results) - created - existing,
    }
    return 200, orjson.dumps(answer)


Handler = Callable[[ApiNode, bytes], Awaitable[tuple[int, bytes]]]

#: the busiest service endpoints, answered by :func:`fast_post` in ``tidings serve``:
#: path -> (scope required, handler of the raw body)
FAST_ROUTES: dict[str, tuple[str, Handler]] = {
    "/notify": ("notify", notify_answer),
    "/notify/batch": ("notify", notify_batch_answer),
    "/publish": ("publish", publish_answer),
}


async def fast_post(
    node: ApiNode, path: str, scope: dict[str, Any], body: bytes, send: Any
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
        await authorize(node, authorization, required)
        status, payload = await handler(node, body)
    except ValidationError as exc:
        status, payload = 422, error_body(body_errors(exc, body))
    except UnparsableBody:
        status, payload = 400, UnparsableBody.body
    except ApiError as exc:
        payload = orjson.dumps({"error": exc.code, "message": exc.message})
        status, headers = exc.status, dict(exc.headers or {})
    except StoreUnavailable:
        node.counters.count_error("store_unavailable")
        payload = UNAVAILABLE_BODY
        status, headers = 503, {"Retry-After": "1"}
    raw = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(payload))]
    raw += [(k.lower().encode(), v.encode("latin-1")) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": payload})
