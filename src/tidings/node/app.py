"""The ASGI app of a node: the raw WebSocket gateway at ``/ws``, the HTTP API elsewhere
(what :meth:`tidings.Tidings.asgi` returns and ``tidings serve`` runs)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Generic, Protocol, TypeVar

import orjson

from tidings.api.app import create_api
from tidings.api.fast import FAST_ROUTES, fast_post
from tidings.api.ports import ApiNode, ApiSettings
from tidings.core.ids import new_sorted_id
from tidings.gateway.sse import (
    FRAMES_PATH,
    PREFLIGHT,
    SSE_PATH,
    Streams,
    cors_headers,
    serve_stream,
)
from tidings.logs import log_context


class AppSettings(ApiSettings, Protocol):
    """The settings the app reads: the API's, and the limits of a request body."""

    @property
    def max_notification_size(self) -> int: ...

    @property
    def max_batch_bytes(self) -> int: ...


class Served(ApiNode, Protocol):
    """What the app reaches of a node: what the API uses, and the gateway."""

    @property
    def settings(self) -> AppSettings: ...

    @property
    def gateway(self) -> Callable[[dict[str, Any], Any, Any], Awaitable[None]]: ...
    @property
    def sse_streams(self) -> Streams: ...
    @property
    def delegate(self) -> object | None: ...
    async def post_sse_frames(
        self, headers: Mapping[str, str], body: bytes
    ) -> tuple[int, dict[str, Any]]: ...


NodeT = TypeVar("NodeT", bound=Served)

WS_PATH = "/ws"
BATCH_PATH = "/notify/batch"


class TidingsApp(Generic[NodeT]):
    """ASGI app of a node: the raw WebSocket gateway at ``/ws``, FastAPI for the rest.

    Request bodies larger than ``max_body`` are refused with 413 before they are read.
    """

    def __init__(self, tidings: NodeT, *, manage_lifespan: bool = True) -> None:
        self.tidings = tidings
        self.api = create_api(tidings, manage_lifespan=manage_lifespan)
        self.max_body = tidings.settings.max_notification_size + 16 * 1024
        self.max_batch_body = max(self.max_body, tidings.settings.max_batch_bytes)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        kind = scope["type"]
        if kind in ("websocket", "http") and _local_path(scope) == WS_PATH:
            await self.tidings.gateway(scope, receive, send)
            return
        if kind == "http" and _local_path(scope) in (SSE_PATH, FRAMES_PATH):
            delegation = self.tidings.delegate is not None
            allowed = self.tidings.settings.allowed_origins
            if scope["method"] == "OPTIONS":  # a page of another origin asks first
                cors = cors_headers(scope, allowed, delegation=False)
                status = 403 if cors is None else 204
                await _json(send, status, {}, (cors or []) + PREFLIGHT)
                return
            if scope["method"] == "GET" and _local_path(scope) == SSE_PATH:
                await serve_stream(
                    self.tidings.gateway,
                    self.tidings.sse_streams,
                    scope,
                    receive,
                    send,
                    delegation=delegation,
                    allowed=allowed,
                )
                return
        if kind == "http":
            log_context.set(RequestId(scope))
            limit = self.max_batch_body if _local_path(scope) == BATCH_PATH else self.max_body
            if self._declared_too_large(scope, limit):
                await _too_large(send, limit)
                return
            body = await self._read_limited(receive, send, limit)
            if body is None:
                return
            path = _local_path(scope)
            if scope["method"] == "POST" and path == FRAMES_PATH:
                cors = cors_headers(
                    scope,
                    self.tidings.settings.allowed_origins,
                    delegation=self.tidings.delegate is not None,
                )
                if cors is None:
                    forbidden = {"error": "forbidden_origin", "message": "origin not allowed"}
                    await _json(send, 403, forbidden)
                    return
                headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
                status, answer = await self.tidings.post_sse_frames(headers, body)
                await _json(send, status, answer, cors)
                return
            if scope["method"] == "POST" and path in FAST_ROUTES:
                await fast_post(self.tidings, path, scope, body, send)  # hot paths, no framework
                return
            await self._replay(scope, body, receive, send)
            return
        await self.api(scope, receive, send)

    def _declared_too_large(self, scope: dict[str, Any], limit: int) -> bool:
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    return int(value) > limit
                except ValueError:
                    return True
        return False

    async def _read_limited(self, receive: Any, send: Any, limit: int) -> bytes | None:
        """Read the body, counting bytes as they arrive (a chunked body declares no length):
        past ``limit`` the request is answered 413 without reading the rest (None); else the
        body (at most ``limit`` bytes are ever held). None too if the client went away."""
        chunks: list[bytes] = []
        received = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return None  # the client went away
            body = message.get("body", b"")
            received += len(body)
            if received > limit:
                await _too_large(send, limit)
                return None
            chunks.append(body)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _replay(self, scope: dict[str, Any], body: bytes, receive: Any, send: Any) -> None:
        """Hand the request, with the body already read, to the API."""
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            message: dict[str, Any] = await receive()
            return message

        await self.api(scope, replay, send)


class RequestId:
    """The caller's ``X-Request-Id`` (a proxy's), or a new one: it tags the request's logs.
    Worked out only when a record is logged (most requests log nothing)."""

    __slots__ = ("_scope", "_value")

    def __init__(self, scope: dict[str, Any]) -> None:
        self._scope: dict[str, Any] | None = scope
        self._value = ""

    def log_fields(self) -> dict[str, object]:
        return {"request_id": str(self)}

    def __str__(self) -> str:
        if self._scope is not None:
            scope, self._scope = self._scope, None
            for name, value in scope.get("headers", ()):
                if name == b"x-request-id" and 0 < len(value) <= 128:
                    self._value = value.decode("latin-1")
                    break
            else:
                self._value = new_sorted_id()
        return self._value


def _local_path(scope: dict[str, Any]) -> str:
    """The path inside this app, also when it is mounted under a prefix."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


async def _too_large(send: Any, limit: int) -> None:
    body = b'{"error":"payload_too_large","message":"request body over %d bytes"}' % limit
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _json(
    send: Any, status: int, answer: dict[str, Any], extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    body = orjson.dumps(answer) if status != 204 else b""
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    headers += extra or []
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
