"""The pages tidings serves: the browser client, the demo inbox, the admin console, and the
JSON those pages need."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Request, Response
from fastapi.responses import FileResponse, RedirectResponse
from pydantic import BaseModel, Field

from tidings.api.assets import Asset, WebFiles
from tidings.api.common import RequireScope
from tidings.api.ports import ApiNode
from tidings.auth.jwt import JwtAuthenticator
from tidings.core.limits import MAX_CATEGORY_LENGTH, MAX_USER_ID_LENGTH
from tidings.errors import InvalidArgument, PayloadTooLarge

WEB = Path(__file__).resolve().parent.parent / "web"
logger = logging.getLogger("tidings")


class DemoToken(BaseModel):
    user_id: str = Field(min_length=1, max_length=MAX_USER_ID_LENGTH)


class DemoNotify(BaseModel):
    user_id: str = Field(min_length=1, max_length=MAX_USER_ID_LENGTH)
    text: str = Field(min_length=1, max_length=500)
    category: str | None = Field(None, min_length=1, max_length=MAX_CATEGORY_LENGTH)


def mount_web(
    app: FastAPI,
    tidings: ApiNode,
    require_scope: RequireScope,
) -> None:
    """Add the browser client, the admin console and, in demo mode, the demo inbox."""
    allowed = tidings.settings.allowed_origins
    app.mount("/static", WebFiles(WEB, allowed), name="static")
    module = Asset(WEB / "tidings.js", "text/javascript")
    types = Asset(WEB / "tidings.d.ts", "application/typescript")
    pinned = f"/tidings.{module.digest}.js"

    @app.get("/tidings.js", include_in_schema=False)
    async def client_module(request: Request) -> Response:
        """The browser client, revalidated on every use; its pinned URL in Content-Location."""
        return module.response(request, allowed, location=pinned)

    @app.get(pinned, include_in_schema=False)
    async def pinned_module(request: Request) -> Response:
        """The same file under a name of its content: cached for good."""
        return module.response(request, allowed, immutable=True)

    @app.get("/tidings.d.ts", include_in_schema=False)
    async def client_types(request: Request) -> Response:
        """The module's TypeScript declarations."""
        return types.response(request, allowed)

    @app.get("/admin", include_in_schema=False)
    async def admin_page() -> FileResponse:
        return FileResponse(WEB / "admin.html", media_type="text/html")

    @app.get(
        "/admin/overview",
        tags=["operations"],
        dependencies=[Depends(require_scope("admin"))],
    )
    async def overview(devices: int = 200, recent: int = 50) -> dict[str, Any]:
        """Nodes, their open sockets (with each device's queue depth), recent notifications
        and the pipeline's queued work per channel and state."""
        store = tidings.store
        everyone = await store.presence()
        per_node: dict[str, int] = {}
        for p in everyone:
            per_node[p.node_id] = per_node.get(p.node_id, 0) + 1
        sockets = everyone[: max(0, min(devices, 1000))]
        depths = await store.queue_depths([(p.connection_id, p.user_id) for p in sockets])
        return {
            "nodes": [
                {
                    "node_id": n.node_id,
                    "uri": n.uri,
                    "started_at": n.started_at,
                    "heartbeat_at": n.heartbeat_at,
                    "sockets": per_node.get(n.node_id, 0),
                }
                for n in await store.list_nodes()
            ],
            "sockets": [
                {
                    "node_id": p.node_id,
                    "user_id": p.user_id,
                    "connection_id": p.connection_id,
                    "session_id": p.session_id,
                    "connected_since": p.connected_since,
                    "queue_depth": depths.get(p.connection_id, 0),
                }
                for p in sockets
            ],
            "recent": [
                {**n.to_dict(), "seq": n.seq}
                for n in await store.recent_notifications(max(0, min(recent, 500)))
            ],
            "pipeline": await tidings.pipeline.store.depths(),
        }

    if not tidings.settings.demo:
        return

    @app.get("/", include_in_schema=False)
    async def home() -> RedirectResponse:
        return RedirectResponse("/demo")

    @app.get("/demo", include_in_schema=False)
    async def demo_page() -> FileResponse:
        return FileResponse(WEB / "demo.html", media_type="text/html")

    @app.post("/demo/token", include_in_schema=False)
    async def demo_token(body: DemoToken) -> dict[str, str]:
        """Demo mode only: a device token for any user, so the inbox page can connect."""
        authenticator = tidings.authenticator
        if not isinstance(authenticator, JwtAuthenticator):
            raise HTTPException(404, "demo tokens need the built-in JWT authenticator")
        return {"token": authenticator.issue(body.user_id, ttl=3600)}

    @app.post("/demo/notify", include_in_schema=False, status_code=201)
    async def demo_notify(body: DemoNotify) -> dict[str, Any]:
        """Demo mode only: send a notification without service credentials."""
        try:
            result = await tidings.notify(body.user_id, {"text": body.text}, category=body.category)
        except (InvalidArgument, PayloadTooLarge) as exc:
            raise HTTPException(422, str(exc)) from None
        return result.notification.to_dict()
