"""The email and SMS providers' inbound callbacks (docs/pipeline.md, "Email and SMS
providers"): Amazon SES events through SNS, Postmark's webhooks, Twilio's status callbacks.

Each request is checked as its provider documents and applied by
:class:`~tidings.delivery.channels.providers.callbacks.ProviderCallbacks`; this module only
reads the request and words the answer: ``200`` with what was applied, ``401``/``403`` for a
request that is not the provider's (nothing changes), ``404`` for a route whose settings are
missing or an event about a message tidings does not know (logged), ``400`` for a body that
cannot be read. The routes are not in the OpenAPI document: providers, not services, call
them.
"""

# No "from __future__ import annotations": FastAPI reads the handlers' annotations.

from collections.abc import Awaitable, Callable
from urllib.parse import parse_qsl

from fastapi import FastAPI, Request, Response

from tidings.api.common import json_body
from tidings.api.ports import ApiNode
from tidings.delivery.channels.providers.callbacks import Applied, ProviderCallbacks
from tidings.delivery.channels.providers.events import CallbackRefused
from tidings.delivery.channels.providers.twilio import STATUS_PATH

#: bodies read at most (an SNS message is at most 256 KiB; a webhook far less)
MAX_BODY = 512 * 1024


def mount_providers(app: FastAPI, tidings: ApiNode) -> None:
    """``POST /providers/ses/events``, ``/providers/postmark/events``,
    ``/providers/twilio/status``."""
    made: list[ProviderCallbacks] = []

    def callbacks() -> ProviderCallbacks:
        if not made:
            made.append(ProviderCallbacks(tidings.pipeline.settings, tidings.pipeline.store))
        return made[0]

    @app.post("/providers/ses/events", include_in_schema=False)
    async def ses_events(request: Request) -> Response:
        body = await _body(request)
        if isinstance(body, Response):
            return body
        return await _answer(lambda: callbacks().ses(body))

    @app.post("/providers/postmark/events", include_in_schema=False)
    async def postmark_events(request: Request) -> Response:
        body = await _body(request)
        if isinstance(body, Response):
            return body
        authorization = request.headers.get("authorization")
        return await _answer(lambda: callbacks().postmark(authorization, body))

    @app.post(STATUS_PATH, include_in_schema=False)
    async def twilio_status(request: Request) -> Response:
        body = await _body(request)
        if isinstance(body, Response):
            return body
        try:
            params = parse_qsl(body.decode(), keep_blank_values=True, strict_parsing=False)
        except UnicodeDecodeError:
            return _error(400, "bad_request", "the body is not a form")
        signature = request.headers.get("x-twilio-signature")
        return await _answer(lambda: callbacks().twilio(str(request.url), params, signature))


async def _body(request: Request) -> bytes | Response:
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY:
            return _error(413, "too_large", f"the body is over {MAX_BODY} bytes")
    return body


async def _answer(call: Callable[[], Awaitable[Applied]]) -> Response:
    try:
        applied = await call()
    except CallbackRefused as exc:
        codes = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found"}
        headers = {"WWW-Authenticate": 'Basic realm="tidings"'} if exc.status == 401 else None
        return _error(exc.status, codes.get(exc.status, "unavailable"), exc.message, headers)
    if applied.events and not applied.deliveries:
        return _error(404, "not_found", "no delivery has this provider's message id")
    return Response(
        json_body({"events": applied.events, "deliveries": applied.deliveries}),
        200,
        media_type="application/json",
    )


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    return Response(
        json_body({"error": code, "message": message}),
        status,
        headers=headers,
        media_type="application/json",
    )
