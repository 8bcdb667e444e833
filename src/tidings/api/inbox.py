"""The inbox over HTTP: a user's history, page by page (``GET /me/notifications`` with the
device JWT; ``GET /users/{user_id}/notifications`` for a service with scope ``notify``)."""

# No "from __future__ import annotations": FastAPI reads the routes' annotations, which name
# dependencies local to the function that mounts them.
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Query
from pydantic import BaseModel, ConfigDict, Field, model_validator

from tidings.api.callers import ERRORS, Caller, per_user
from tidings.api.common import RequireScope
from tidings.api.ports import ApiNode
from tidings.api.schemas import ApiErrorBody
from tidings.core.limits import MAX_ID_LENGTH, MAX_IDS_PER_FRAME
from tidings.core.models import StateChange
from tidings.errors import ApiError, InvalidArgument, NotFound


class SeenIn(BaseModel):
    """Which notifications to mark seen: ``notification_ids``, or ``all``."""

    model_config = ConfigDict(extra="forbid")

    notification_ids: list[Annotated[str, Field(min_length=1, max_length=MAX_ID_LENGTH)]] | None = (
        Field(None, min_length=1, max_length=MAX_IDS_PER_FRAME)
    )
    all: bool = Field(False, description="Every notification unseen at the moment of the request.")

    @model_validator(mode="after")
    def one_of_them(self) -> "SeenIn":
        if (self.notification_ids is None) == (not self.all):
            raise ValueError('give either notification_ids or "all": true')
        return self


class Marked(BaseModel):
    marked: int = Field(description="How many were unseen and are seen now.")


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
    for prefix, who in per_user(tidings, require_scope, "notify"):
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

        for action, change in MARKS:
            router.add_api_route(
                f"{prefix}/notifications/{action}",
                mark_route(tidings, user, action, change),
                methods=["POST"],
                response_model=Marked,
                responses={404: {"model": ApiErrorBody, "description": "Unknown ids"}, **ERRORS},
                tags=["inbox"],
                name=f"{prefix.strip('/').split('/')[0]}_mark_{action}",
            )

    app.include_router(router)


def mark_route(
    tidings: ApiNode, user: Any, action: str, change: StateChange | None
) -> Callable[..., Awaitable[Marked]]:
    """The route that marks notifications ``action`` (seen, read, archive, unarchive)."""

    async def mark(body: SeenIn, caller: user) -> Marked:
        try:
            if change is None:
                result = await (
                    tidings.mark_all_seen(caller[0])
                    if body.all
                    else tidings.mark_seen(caller[0], body.notification_ids or [])
                )
            else:
                result = await tidings.change_state(
                    caller[0], change, None if body.all else body.notification_ids
                )
        except NotFound as exc:
            listed = ", ".join(exc.ids[:20])
            listed += " …" if len(exc.ids) > 20 else ""
            raise ApiError(404, "not_found", f"{exc}: {listed}") from None
        except InvalidArgument as exc:  # an id the store cannot hold (NUL)
            raise ApiError(422, "invalid_argument", str(exc)) from None
        return Marked(marked=len(result.marked))

    mark.__doc__ = MARK_DOCS[action]
    return mark


#: the marking routes: ``/notifications/<action>`` and the change of state it makes
MARKS: tuple[tuple[str, StateChange | None], ...] = (
    ("seen", None),
    ("read", "read"),
    ("archive", "archive"),
    ("unarchive", "unarchive"),
)

MARK_DOCS = {
    "seen": """Mark notifications seen: the listed ones (1 to 1000 of the user's own; an
    unknown or another user's id marks nothing and answers 404 naming it), or with
    ``{"all": true}`` every one unseen now, in one change of the count. Every device of the
    user gets the new count.""",
    "read": """Mark notifications read (and seen): listed, or ``{"all": true}``; as
    ``/seen`` for unknown ids and the count.""",
    "archive": """Archive notifications (they leave the inbox's ``all``, and are seen and
    read): listed, or ``{"all": true}``; as ``/seen`` for unknown ids and the count.""",
    "unarchive": """Bring archived notifications back to the inbox (still read): listed, or
    ``{"all": true}``; as ``/seen`` for unknown ids.""",
}
