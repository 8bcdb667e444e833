"""HTTP routes of categories and one-click unsubscribe (docs/pipeline.md, "Unsubscribe").

A user's switch per (category, channel): ``PUT /me/categories/{category}/{channel}`` with the
device JWT, ``/users/{user_id}/…`` for services (scope ``messages``). ``/unsubscribe?token=`` is
what an email's ``List-Unsubscribe`` header points at: its ``POST`` (RFC 8058: mailbox providers
send ``List-Unsubscribe=One-Click``; the confirmation page's button sends the same) turns the
switch off; its ``GET`` only shows that page, since mail scanners follow links. Neither needs
more than the signed link.
"""

# No "from __future__ import annotations": FastAPI reads the routes' annotations, which name
# dependencies local to the functions that mount them.
from html import escape
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, ConfigDict

from tidings.api.callers import Caller, per_user
from tidings.api.common import RequireScope, pipeline_call
from tidings.api.ports import ApiNode
from tidings.core.limits import MAX_CATEGORY_LENGTH, MAX_CHANNEL_NAME_LENGTH
from tidings.errors import InvalidArgument

Category = Annotated[str, Path(min_length=1, max_length=MAX_CATEGORY_LENGTH)]
Channel = Annotated[str, Path(min_length=1, max_length=MAX_CHANNEL_NAME_LENGTH)]
Token = Annotated[str, Query(min_length=1, max_length=4096)]

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex">
<title>{title}</title>
<style>body{{font:16px/1.5 system-ui,sans-serif;max-width:32rem;margin:4rem auto;padding:0 1rem}}
button{{font:inherit;padding:.5rem 1rem}}</style></head>
<body><h1>{title}</h1><p>{text}</p>{form}</body></html>
"""


class SwitchIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool


def page(title: str, text: str, form: str = "", status: int = 200) -> HTMLResponse:
    return HTMLResponse(
        PAGE.format(title=escape(title), text=escape(text), form=form),
        status,
        headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"},
    )


def what(category: str | None, channel: str) -> str:
    return f"{category} messages by {channel}" if category else f"messages by {channel}"


def mount_unsubscribe(
    router: APIRouter,
    tidings: ApiNode,
    require_scope: RequireScope,
    errors: dict[int | str, dict[str, Any]],
) -> None:
    for prefix, who in per_user(tidings, require_scope):
        user = Annotated[Caller, Depends(who)]

        @router.put(
            f"{prefix}/categories/{{category}}/{{channel}}", responses=errors, tags=["preferences"]
        )
        async def set_category(
            category: Category, channel: Channel, body: SwitchIn, caller: user
        ) -> JSONResponse:
            """Turn a category on or off on one channel for the user (messages with that
            ``category`` are not sent there while it is off)."""
            await pipeline_call(
                tidings.pipeline.set_category(caller[0], category, channel, body.enabled)
            )
            return JSONResponse({"category": category, "channel": channel, "enabled": body.enabled})

    @router.get("/unsubscribe", response_class=HTMLResponse, tags=["preferences"])
    async def confirm_unsubscribe(token: Token) -> HTMLResponse:
        """The page an email's unsubscribe link opens: it asks before changing anything."""
        links = tidings.pipeline.links
        try:
            if links is None:
                raise InvalidArgument("this service sends no unsubscribe links")
            found = links.check(token)
        except InvalidArgument as exc:
            return page("This link does not work", str(exc), status=400)
        form = (
            f'<form method="post" action="?token={escape(token, quote=True)}">'
            '<input type="hidden" name="List-Unsubscribe" value="One-Click">'
            "<button>Unsubscribe</button></form>"
        )
        return page("Unsubscribe?", f"Stop {what(found.category, found.channel)}.", form)

    @router.post("/unsubscribe", response_class=HTMLResponse, tags=["preferences"])
    async def unsubscribe(token: Token) -> HTMLResponse:
        """One-click unsubscribe (RFC 8058): the link's category (or channel) is turned off;
        ``400`` saying why for a forged, altered or expired link, and nothing changes."""
        try:
            found = await tidings.pipeline.unsubscribe(token)
        except InvalidArgument as exc:
            return page("This link does not work", str(exc), status=400)
        return page(
            "Unsubscribed",
            f"You will no longer get {what(found.category, found.channel)}. You can turn them "
            "back on in the application's settings.",
        )
