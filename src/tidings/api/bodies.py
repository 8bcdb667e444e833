"""Request bodies of the busiest routes (``POST /notify``, ``/notify/batch``, ``/publish``),
decoded and validated by msgspec in C.

The :class:`msgspec.Struct` types below carry the limits of the pydantic models of
:mod:`tidings.api.schemas` (which document the routes in the OpenAPI schema and word the
framework's 422). A body msgspec accepts is read to the very values pydantic reads (held so by
tests/core/test_batch_parse.py); any other body (malformed, mistyped, or only accepted by
pydantic's leniency: lone surrogates, ``NaN``, duplicate keys …) goes to pydantic, which
accepts it or words its refusal exactly as the framework route does.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, TypeVar

import msgspec
import orjson
from msgspec import Meta
from pydantic import BaseModel, ValidationError

from tidings.api.schemas import NotifyBatchRequest, NotifyRequest, PublishRequest
from tidings.core.limits import (
    MAX_BATCH_ITEMS,
    MAX_CATEGORY_LENGTH,
    MAX_ID_LENGTH,
    MAX_TOPIC_LENGTH,
    MAX_USER_ID_LENGTH,
)
from tidings.core.models import NewNotification
from tidings.errors import UnparsableBody

ModelT = TypeVar("ModelT", bound=BaseModel)

UserId = Annotated[str, Meta(min_length=1, max_length=MAX_USER_ID_LENGTH)]
Id = Annotated[str, Meta(min_length=1, max_length=MAX_ID_LENGTH)]
Topic = Annotated[str, Meta(min_length=1, max_length=MAX_TOPIC_LENGTH)]
Category = Annotated[str, Meta(min_length=1, max_length=MAX_CATEGORY_LENGTH)]


class NotifyBody(msgspec.Struct):
    """:class:`~tidings.api.schemas.NotifyRequest` (unknown fields ignored)."""

    user_id: UserId
    data: Any
    notification_id: Id | None = None
    category: Category | None = None


class NotifyBatchBody(msgspec.Struct):
    """:class:`~tidings.api.schemas.NotifyBatchRequest`."""

    notifications: Annotated[list[NotifyBody], Meta(min_length=1, max_length=MAX_BATCH_ITEMS)]


class PublishBody(msgspec.Struct):
    """:class:`~tidings.api.schemas.PublishRequest`."""

    topic: Topic
    data: Any
    origin_session_id: Id | None = None


_notify = msgspec.json.Decoder(NotifyBody)
_batch = msgspec.json.Decoder(NotifyBatchBody)
_publish = msgspec.json.Decoder(PublishBody)
#: what msgspec raises for a body it does not take (RecursionError: nested too deep for it)
_DECLINED = (msgspec.DecodeError, msgspec.ValidationError, RecursionError)


def notify_body(body: bytes) -> NotifyBody | NotifyRequest:
    """The body of ``POST /notify``.

    Raises:
        ValidationError: it is invalid (answered 422, worded by pydantic).
        UnparsableBody: nested deeper than any JSON reader here goes (answered 400).
    """
    try:
        return _notify.decode(body)
    except _DECLINED:
        return validated(NotifyRequest, body)


def publish_body(body: bytes) -> PublishBody | PublishRequest:
    """The body of ``POST /publish``; raises as :func:`notify_body`."""
    try:
        return _publish.decode(body)
    except _DECLINED:
        return validated(PublishRequest, body)


def batch_items(body: bytes) -> list[NewNotification] | None:
    """The items of a ``POST /notify/batch`` body as msgspec reads them; None for a body it
    does not take (which :func:`notify_batch_items` leaves to pydantic)."""
    try:
        batch = _batch.decode(body)
    except _DECLINED:
        return None
    return [
        NewNotification(i.user_id, i.data, i.notification_id, i.category)
        for i in batch.notifications
    ]


def notify_batch_items(body: bytes) -> list[NewNotification]:
    """The items of a ``POST /notify/batch`` body.

    Raises:
        ValidationError: it is not a valid batch (answered 422, worded by pydantic).
    """
    items = batch_items(body)
    if items is None:
        request = NotifyBatchRequest.model_validate_json(body)
        items = [
            NewNotification(item.user_id, item.data, item.notification_id, item.category)
            for item in request.notifications
        ]
    return items


def validated(model: type[ModelT], body: bytes) -> ModelT:
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


def body_errors(exc: ValidationError, body: bytes) -> list[dict[str, Any]]:
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


def error_body(errors: list[dict[str, Any]]) -> bytes:
    """``{"detail": errors}`` as JSON. The errors repeat the input, which may hold integers
    beyond 64 bits: orjson refuses those (its ``default`` is never asked about integers), the
    standard library writes them as FastAPI does."""
    try:
        return orjson.dumps({"detail": errors}, default=str)
    except TypeError:
        return json.dumps({"detail": errors}, default=str).encode()
