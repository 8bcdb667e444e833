"""The standalone server: one ASGI app (devices on ``/ws``, the HTTP API elsewhere) and
``run()``, which serves it with uvicorn."""

from __future__ import annotations

import logging
from typing import Any

from tidings.api.app import create_api
from tidings.config import Settings
from tidings.core.tidings import Tidings

logger = logging.getLogger("tidings")

WS_PATH = "/ws"


class TidingsApp:
    """ASGI app of a node: the raw WebSocket gateway at ``/ws``, FastAPI for the rest.

    Request bodies larger than ``max_body`` are refused with 413 before they are read.
    """

    def __init__(self, tidings: Tidings, *, manage_lifespan: bool = True) -> None:
        self.tidings = tidings
        self.api = create_api(tidings, manage_lifespan=manage_lifespan)
        self.max_body = tidings.settings.max_notification_size + 16 * 1024

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        kind = scope["type"]
        if kind in ("websocket", "http") and scope["path"] == WS_PATH:
            await self.tidings.gateway(scope, receive, send)
            return
        if kind == "http" and self._too_large(scope):
            await _too_large(send, self.max_body)
            return
        await self.api(scope, receive, send)

    def _too_large(self, scope: dict[str, Any]) -> bool:
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    return int(value) > self.max_body
                except ValueError:
                    return True
        return False


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


def create_app(settings: Settings | None = None, **overrides: Any) -> TidingsApp:
    """A complete node as an ASGI app; it starts and closes itself with the ASGI lifespan."""
    return TidingsApp(Tidings(settings, **overrides))


def run(settings: Settings, *, log_level: str = "info") -> None:
    """Serve a node with uvicorn until interrupted."""
    import uvicorn

    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        ws="websockets-sansio",
        # A frame over max_frame_size is answered with an error frame by the gateway; only far
        # larger ones are cut off by the transport (close 1009).
        ws_max_size=max(4 * settings.max_frame_size, 1024 * 1024),
        ws_per_message_deflate=False,
        log_level=log_level,
        lifespan="on",
        server_header=False,
        proxy_headers=True,
        timeout_graceful_shutdown=5,
    )
    uvicorn.Server(config).run()
