"""``DELETE /users/{user_id}`` (scope ``admin``): erase everything tidings holds about a user."""

# No "from __future__ import annotations": FastAPI reads the handler's annotations.

from typing import Annotated

from fastapi import Depends, FastAPI, Path
from pydantic import BaseModel, Field

from tidings.api.callers import ERRORS
from tidings.api.common import RequireScope, check_identifier
from tidings.api.ports import ApiNode
from tidings.core.limits import MAX_USER_ID_LENGTH
from tidings.errors import ApiError, InvalidArgument


class Erased(BaseModel):
    """What an erasure removed."""

    user_id: str
    erased: dict[str, int] = Field(
        description="Rows removed, by kind: notifications, devices, sockets, sessions, "
        "push_tokens, deliveries, contacts, preferences (all 0 for an unknown user)."
    )


def mount_users(app: FastAPI, tidings: ApiNode, require_scope: RequireScope) -> None:
    @app.delete(
        "/users/{user_id}",
        response_model=Erased,
        responses=ERRORS,
        tags=["users"],
        dependencies=[Depends(require_scope("admin"))],
    )
    async def erase_user(
        user_id: Annotated[str, Path(min_length=1, max_length=MAX_USER_ID_LENGTH)],
    ) -> Erased:
        """Erase everything tidings holds about a user, on every node: notifications,
        devices and their queues, sessions, push tokens, contact points, preferences and
        deliveries; the user's sockets are closed. The user's application account is the
        application's: a token it issues for the user again starts afresh. Erasing again
        erases nothing (200 with zeros)."""
        try:
            check_identifier("user_id", user_id, MAX_USER_ID_LENGTH)
        except InvalidArgument as exc:
            raise ApiError(422, "invalid_argument", str(exc)) from None
        return Erased(user_id=user_id, erased=await tidings.erase_user(user_id))
