"""HTTP routes of the push-token registry: a phone registers its APNs, FCM or Expo token with
its device JWT (``/me/push-tokens``), or a service does for any user
(``/users/{user_id}/push-tokens``, scope ``messages``)."""

# No "from __future__ import annotations": FastAPI reads the routes' annotations, which name
# dependencies local to the function that mounts them.
import re
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, FastAPI, Path, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator

from tidings.api.callers import ERRORS, Caller, per_user
from tidings.api.common import RequireScope
from tidings.api.ports import ApiNode
from tidings.api.schemas import ApiErrorBody
from tidings.core.limits import (
    MAX_APP_ID_LENGTH,
    MAX_PUSH_TOKEN_LENGTH,
    MAX_PUSH_TOKENS_PER_USER,
)
from tidings.errors import ApiError

Platform = Literal["apns", "fcm", "expo"]

#: what each provider's tokens look like: a token of another shape would only be refused by
#: the provider at the first send, so it is refused at registration, saying what was expected
TOKEN_SHAPES = {
    "apns": (
        re.compile(r"(?:[0-9a-fA-F]{2}){32,100}"),
        "an apns token is the device token in hexadecimal (64 to 200 digits)",
    ),
    "fcm": (
        re.compile(r"[A-Za-z0-9_:\-]+"),
        "an fcm token is a registration token (letters, digits, '_', ':' and '-')",
    ),
    "expo": (
        re.compile(r"(?:Exponent|Expo)PushToken\[[\x21-\x5c\x5e-\x7e]+\]"),
        "an expo token is ExponentPushToken[…] (or ExpoPushToken[…])",
    ),
}


class PushTokenIn(BaseModel):
    """A device's token at its push provider."""

    model_config = ConfigDict(extra="forbid")

    platform: Platform = Field(description="The push provider: apns, fcm or expo.")
    token: str = Field(
        min_length=1,
        max_length=MAX_PUSH_TOKEN_LENGTH,
        pattern=r"^[\x21-\x7e]+$",
        description="The provider's token for the device (printable ASCII, no spaces).",
    )
    app_id: str | None = Field(
        None,
        min_length=1,
        max_length=MAX_APP_ID_LENGTH,
        description="The app it belongs to (an iOS bundle id, an Android package), if any.",
    )

    @model_validator(mode="after")
    def shaped_for_its_platform(self) -> "PushTokenIn":
        shape, expected = TOKEN_SHAPES[self.platform]
        if not shape.fullmatch(self.token):
            raise ValueError(expected)
        return self


class PushTokenOut(BaseModel):
    """A registered push token."""

    id: str
    platform: str
    token: str
    app_id: str | None
    created_at: str
    last_used_at: str | None


def mount_push_tokens(app: FastAPI, tidings: ApiNode, require_scope: RequireScope) -> None:
    """The push-token routes, under ``/me`` and ``/users/{user_id}``."""
    router = APIRouter()
    errors = ERRORS
    for prefix, who in per_user(tidings, require_scope):
        user = Annotated[Caller, Depends(who)]

        @router.post(
            f"{prefix}/push-tokens",
            status_code=201,
            response_model=PushTokenOut,
            responses={200: {"model": PushTokenOut, "description": "Registered before"}, **errors},
            tags=["push tokens"],
        )
        async def register(body: PushTokenIn, caller: user) -> JSONResponse:
            """Register the device's token (201); the same token again answers 200. A token
            registered by another user moves to this one. Past 100 tokens a user's least
            recently used one is dropped."""
            token, created = await tidings.store.register_push_token(
                caller[0],
                body.platform,
                body.token,
                body.app_id,
                max_per_user=MAX_PUSH_TOKENS_PER_USER,
            )
            return JSONResponse(token.to_dict(), 201 if created else 200)

        @router.get(
            f"{prefix}/push-tokens",
            response_model=list[PushTokenOut],
            responses=errors,
            tags=["push tokens"],
        )
        async def list_tokens(caller: user) -> JSONResponse:
            """The user's push tokens, oldest first."""
            return JSONResponse([t.to_dict() for t in await tidings.store.push_tokens(caller[0])])

        @router.delete(
            f"{prefix}/push-tokens/{{token_id}}",
            status_code=204,
            responses={404: {"model": ApiErrorBody, "description": "Not the user's"}, **errors},
            tags=["push tokens"],
        )
        async def delete_token(
            token_id: Annotated[str, Path(min_length=1, max_length=64)], caller: user
        ) -> Response:
            """Remove one of the user's push tokens (404 for an id that is not the user's)."""
            if not await tidings.store.delete_push_token(caller[0], token_id):
                raise ApiError(404, "not_found", f"no push token {token_id!r} of this user")
            return Response(status_code=204)

    app.include_router(router)
