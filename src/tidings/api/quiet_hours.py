"""HTTP routes of a user's quiet hours (docs/pipeline.md, "Quiet hours"): the user with the
device JWT under ``/me``, services with scope ``messages`` under ``/users/{user_id}``.
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


class QuietHoursIn(BaseModel):
    """Every day from ``start`` to ``end`` in ``timezone``, only in-app and critical
    deliveries are sent; the others wait until the window ends."""

    model_config = ConfigDict(extra="forbid")

    timezone: str = Field(min_length=1, max_length=64, description="IANA name, e.g. Europe/Paris")
    start: str = Field(min_length=4, max_length=8, description="HH:MM[:SS], e.g. 22:00")
    end: str = Field(min_length=4, max_length=8, description="HH:MM[:SS], e.g. 07:00")


def mount_quiet_hours(
    router: APIRouter,
    tidings: ApiNode,
    require_scope: RequireScope,
    errors: dict[int | str, dict[str, Any]],
) -> None:
    """``PUT`` and ``DELETE`` of ``/me/quiet-hours`` and ``/users/{user_id}/quiet-hours``
    (``GET …/preferences`` shows them)."""
    for prefix, who in per_user(tidings, require_scope):
        user = Annotated[Caller, Depends(who)]

        @router.put(f"{prefix}/quiet-hours", responses=errors, tags=["preferences"])
        async def set_quiet_hours(body: QuietHoursIn, caller: user) -> JSONResponse:
            """Set the user's quiet hours; ``422`` names an unknown time zone or a bad time."""
            hours = await pipeline_call(
                tidings.pipeline.set_quiet_hours(caller[0], body.timezone, body.start, body.end)
            )
            assert hours is not None
            return JSONResponse({"quiet_hours": hours.to_dict()})

        @router.delete(f"{prefix}/quiet-hours", responses=errors, tags=["preferences"])
        async def delete_quiet_hours(caller: user) -> JSONResponse:
            """Remove the user's quiet hours."""
            await tidings.pipeline.set_quiet_hours(caller[0], None)
            return JSONResponse({"quiet_hours": None})
