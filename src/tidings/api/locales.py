"""HTTP routes of a user's locale (docs/pipeline.md, "Locales"): the user with the device JWT
under ``/me``, services with scope ``messages`` under ``/users/{user_id}``.
"""

# No "from __future__ import annotations": FastAPI reads the routes' annotations, which name
# dependencies local to the functions that mount them.
from typing import Annotated, Any

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from tidings.api.callers import Caller, per_user
from tidings.api.common import RequireScope, pipeline_call
from tidings.api.ports import ApiNode
from tidings.delivery.locales import MAX_LOCALE_LENGTH


class LocaleIn(BaseModel):
    """The user's locale: which translation of a template they get, and how dates and numbers
    read."""

    model_config = ConfigDict(extra="forbid")

    locale: str = Field(
        min_length=1, max_length=MAX_LOCALE_LENGTH, description="BCP 47, e.g. fr or fr-CA"
    )


def mount_user_locale(
    router: APIRouter,
    tidings: ApiNode,
    require_scope: RequireScope,
    errors: dict[int | str, dict[str, Any]],
) -> None:
    """``PUT`` and ``DELETE`` of ``/me/locale`` and ``/users/{user_id}/locale`` (``GET
    …/preferences`` shows it)."""
    for prefix, who in per_user(tidings, require_scope):
        user = Annotated[Caller, Depends(who)]

        @router.put(f"{prefix}/locale", responses=errors, tags=["preferences"])
        async def set_locale(body: LocaleIn, caller: user) -> JSONResponse:
            """Set the user's locale (normal form in the answer); ``422`` names an unknown
            one."""
            locale = await pipeline_call(tidings.pipeline.set_locale(caller[0], body.locale))
            return JSONResponse({"locale": locale})

        @router.delete(f"{prefix}/locale", responses=errors, tags=["preferences"])
        async def delete_locale(caller: user) -> JSONResponse:
            """Remove the user's locale: templates' own locale serves them."""
            await tidings.pipeline.set_locale(caller[0], None)
            return JSONResponse({"locale": None})
