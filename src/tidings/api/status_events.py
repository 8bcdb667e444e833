"""``GET /status-events`` (scope ``admin``): the delivery-status webhooks' events and how
posting each went (docs/pipeline.md, "Delivery-status webhooks")."""

# No "from __future__ import annotations": FastAPI reads the handler's annotations.

from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from tidings.api.callers import ERRORS
from tidings.api.common import RequireScope
from tidings.api.ports import ApiNode


class StatusEventOut(BaseModel):
    """One event for one endpoint."""

    event_id: str = Field(description="Its webhook-id: the same on every try and endpoint.")
    endpoint: str
    type: str = Field(description="delivery.pending, delivery.sent, …")
    state: Literal["pending", "delivered", "failed"]
    attempts: int = Field(description="POSTs tried.")
    last_status: int | None = Field(description="The endpoint's HTTP status at the last try.")
    last_error: str | None = Field(description="Why the last try failed.")
    last_attempt_at: str | None
    next_attempt_at: str | None = Field(description="When a pending event is tried next.")
    delivered_at: str | None
    payload: dict[str, Any] = Field(description="The body posted: {type, timestamp, data}.")


def mount_status_events(app: FastAPI, tidings: ApiNode, require_scope: RequireScope) -> None:
    @app.get(
        "/status-events",
        response_model=list[StatusEventOut],
        responses=ERRORS,
        tags=["pipeline"],
        dependencies=[Depends(require_scope("admin"))],
    )
    async def list_status_events(
        state: Annotated[Literal["pending", "delivered", "failed"] | None, Query()] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> JSONResponse:
        """The latest events of delivery-status webhooks, newest first: each with its tries,
        the endpoint's last answer and the payload posted."""
        found = await tidings.pipeline.store.list_status_events(state, limit)
        return JSONResponse([event.to_dict() for event in found])
