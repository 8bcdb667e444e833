"""The inbox over HTTP: a user's history, page by page (``GET /me/notifications`` with the
device JWT; ``GET /users/{user_id}/notifications`` for a service with scope ``notify``)."""

# No "from __future__ import annotations": FastAPI reads the routes' annotations, which name
# dependencies local to the function that mounts them.
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Query
from pydantic import BaseModel, Field

from tidings.api.callers import ERRORS, Caller, device_caller, service_caller
from tidings.api.common import RequireScope
from tidings.api.ports import ApiNode
from tidings.errors import ApiError, InvalidArgument


class HistoryPage(BaseModel):
    """A page of a user's notifications, newest first."""

    notifications: list[dict[str, Any]] = Field(
        description="Notifications as on the socket: with category, seen_date, read_date and "
        "archived_date."
    )
    next_cursor: str | None = Field(
        description="Ask again with this cursor for the next page; null at the end."
    )


def mount_inbox(app: FastAPI, tidings: ApiNode, require_scope: RequireScope) -> None:
    router = APIRouter()
    for prefix, who in (
        ("/me", device_caller(tidings)),
        ("/users/{user_id}", service_caller(require_scope, "notify")),
    ):
        user = Annotated[Caller, Depends(who)]

        @router.get(
            f"{prefix}/notifications", response_model=HistoryPage, responses=ERRORS, tags=["inbox"]
        )
        async def notifications(
            caller: user,
            state: Annotated[str, Query(max_length=16)] = "all",
            category: Annotated[str | None, Query(min_length=1, max_length=64)] = None,
            cursor: Annotated[str | None, Query(min_length=1, max_length=512)] = None,
            limit: Annotated[int, Query(ge=1, le=100)] = 50,
        ) -> HistoryPage:
            """The user's notifications, newest first: ``state`` all (not archived), unseen,
            unread or archived; ``category``; continue with ``cursor`` (from ``next_cursor``;
            a cursor serves only the user and the filters it came with). New notifications
            never move a page already begun."""
            try:
                notes, next_cursor = await tidings.notifications(
                    caller[0], state=state, category=category, cursor=cursor, limit=limit
                )
            except InvalidArgument as exc:
                raise ApiError(422, "invalid_argument", str(exc)) from None
            return HistoryPage(notifications=[n.to_dict() for n in notes], next_cursor=next_cursor)

    app.include_router(router)
