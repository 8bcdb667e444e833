"""The pages tidings serves: the browser client, the demo inbox, the admin console, and the
JSON those pages need."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Request, Response
from fastapi.responses import FileResponse, RedirectResponse
from pydantic import BaseModel, Field

from tidings.api.admin import mount_admin
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

    hooks = Asset(WEB / "tidings-react.js", "text/javascript")
    hook_types = Asset(WEB / "tidings-react.d.ts", "application/typescript")

    @app.get("/tidings-react.js", include_in_schema=False)
    async def react_hooks(request: Request) -> Response:
        """The React hooks (they import ./tidings.js and the page's own react)."""
        return hooks.response(request, allowed)

    @app.get("/tidings-react.d.ts", include_in_schema=False)
    async def react_hook_types(request: Request) -> Response:
        return hook_types.response(request, allowed)

    mount_admin(app, tidings, require_scope)

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
