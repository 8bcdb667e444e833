"""HTTP routes of the pipeline: messages, templates, preferences and contact points.

Services call ``/messages`` and ``/templates`` with scope ``messages`` (``admin`` sees every
service's messages), and ``/users/{user_id}/…`` for any user; users call ``/me/…`` with their
device JWT, which always acts on the token's own user.
"""

# No "from __future__ import annotations": FastAPI reads the routes' annotations, which name
# dependencies local to the functions that mount them.
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, Header, Path, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from tidings.api.callers import ERRORS, Caller, per_user
from tidings.api.common import RequireScope, authorize, pipeline_call, pipeline_error
from tidings.api.locales import mount_user_locale
from tidings.api.ports import ApiNode
from tidings.api.quiet_hours import mount_quiet_hours
from tidings.api.schemas import ApiErrorBody
from tidings.api.steps import ChannelName, DelayIn, DigestIn, EscalateIn
from tidings.api.templates import ContentIn, mount_templates
from tidings.api.unsubscribe import mount_unsubscribe
from tidings.auth.base import ServicePrincipal
from tidings.core.limits import (
    MAX_CATEGORY_LENGTH,
    MAX_CHANNEL_NAME_LENGTH,
    MAX_CHANNELS_PER_MESSAGE,
    MAX_IDEMPOTENCY_KEY_LENGTH,
    MAX_TEMPLATE_ID_LENGTH,
    MAX_TOPIC_LENGTH,
    MAX_USER_ID_LENGTH,
)
from tidings.core.models import utcnow
from tidings.delivery.models import NewMessage, message_data_problem
from tidings.delivery.pipeline import body_hash
from tidings.delivery.steps import send_time
from tidings.errors import (
    ApiError,
    InvalidArgument,
    NotFound,
)

ChannelPath = Annotated[str, Path(min_length=1, max_length=MAX_CHANNEL_NAME_LENGTH)]
StateName = Literal["pending", "active", "sent", "failed", "stale", "deleted"]
UserId = Annotated[str, Field(min_length=1, max_length=MAX_USER_ID_LENGTH, pattern=r"^[^\x00]+$")]
Topic = Annotated[str, Field(min_length=1, max_length=MAX_TOPIC_LENGTH, pattern=r"^[^\x00]+$")]


class Recipients(BaseModel):
    """Who gets the message: user ids, or every user subscribed to a topic."""

    model_config = ConfigDict(extra="forbid")

    user_ids: list[UserId] | None = Field(None, min_length=1, max_length=100_000)
    topic: Topic | None = None

    @model_validator(mode="after")
    def _one(self) -> "Recipients":
        if (self.user_ids is None) == (self.topic is None):
            raise ValueError("give exactly one of user_ids and topic")
        return self


class MessageRequest(BaseModel):
    """A message to post (docs/pipeline.md)."""

    recipients: Recipients
    channels: list[ChannelName] = Field(
        min_length=1,
        max_length=MAX_CHANNELS_PER_MESSAGE,
        description="Channel names: in_app, email, webhook, web_push, sms or the application's.",
    )
    template_id: str | None = Field(None, min_length=1, max_length=MAX_TEMPLATE_ID_LENGTH)
    content: ContentIn | None = None
    data: dict[str, Any] = Field(default_factory=dict, description="Values for the template.")
    idempotency_key: str | None = Field(None, min_length=1, max_length=MAX_IDEMPOTENCY_KEY_LENGTH)
    critical: bool = Field(False, description="Bypass the rate limit (still counted).")
    delay: DelayIn | None = Field(None, description="Send no delivery before this.")
    escalate: EscalateIn | None = Field(
        None, description="Send on these channels only if the in-app notification was not seen."
    )
    digest: DigestIn | None = Field(
        None, description="Send messages with one key within a window as one per channel."
    )
    category: str | None = Field(
        None,
        min_length=1,
        max_length=MAX_CATEGORY_LENGTH,
        description="What it is about: users turn categories off per channel, and an email's "
        "unsubscribe link turns its category off.",
    )
    transactional: bool = Field(
        False, description="An email the user cannot unsubscribe from: no List-Unsubscribe."
    )

    @field_validator("data")
    @classmethod
    def _nesting(cls, data: dict[str, Any]) -> dict[str, Any]:
        problem = message_data_problem(data)
        if problem is not None:
            raise ValueError(problem)
        return data

    @model_validator(mode="after")
    def _source(self) -> "MessageRequest":
        if (self.template_id is None) == (self.content is None):
            raise ValueError("give exactly one of template_id and content")
        return self


class Switch(BaseModel):
    enabled: bool


class ContactIn(BaseModel):
    address: str | dict[str, Any] = Field(
        description="Email address, webhook URL, web push subscription object or E.164 number."
    )


class MessageOut(BaseModel):
    """A message; ``deliveries`` only from ``GET /messages/{id}``."""

    message_id: str
    state: str
    created_at: str
    template_id: str | None
    content: dict[str, Any] | None
    channels: list[str]
    recipients: dict[str, Any]
    critical: bool
    idempotency_key: str | None
    counts: dict[str, int]
    deliveries: list[dict[str, Any]] | None = None


def mount_pipeline(
    app: FastAPI,
    tidings: ApiNode,
    require_scope: RequireScope,
) -> None:
    """Add the pipeline's routes to the service API."""
    router = APIRouter()
    errors = ERRORS
    not_found: dict[int | str, dict[str, Any]] = {
        404: {"model": ApiErrorBody, "description": "Unknown (or another's) id"}
    }

    async def messages_or_admin(request: Request) -> str | None:
        """The caller's client id, or ``None`` for an admin (who sees every message)."""
        header = request.headers.get("authorization", "")
        try:
            return (await authorize(tidings, header, "messages")).client_id
        except ApiError as exc:
            if exc.status != 403:
                raise
            await authorize(tidings, header, "admin")
            return None

    def found(message: Any, message_id: str) -> dict[str, Any]:
        if message is None:
            raise ApiError(404, "not_found", f"no message {message_id!r}")
        body: dict[str, Any] = message.to_dict()
        return body

    # Messages

    @router.post(
        "/messages",
        status_code=202,
        response_model=MessageOut,
        response_model_exclude_none=True,
        responses={
            200: {"model": MessageOut, "description": "Posted before (same idempotency key)"},
            409: {"model": ApiErrorBody, "description": "Idempotency key used with another body"},
            **errors,
        },
        tags=["pipeline"],
    )
    async def post_message(
        body: MessageRequest,
        principal: Annotated[ServicePrincipal, Depends(require_scope("messages"))],
        idempotency_key: Annotated[
            str | None, Header(max_length=MAX_IDEMPOTENCY_KEY_LENGTH)
        ] = None,
    ) -> JSONResponse:
        """Post a message for users or a topic's subscribers on one or more channels.

        Answers once the message and every delivery are persisted; workers send them.
        Refused deliveries (opted out, no or invalid address, rate limited) are recorded with
        their reason."""
        key = body.idempotency_key or idempotency_key
        # (no key for a step not given: the bodies of earlier messages keep their hash)
        steps = ("delay", "escalate", "digest", "category")
        absent = {name for name in steps if getattr(body, name) is None}
        if not body.transactional:
            absent.add("transactional")
        fields = body.model_dump(exclude={"idempotency_key", *absent})
        try:
            when = send_time(
                until=body.delay.until if body.delay else None,
                seconds=body.delay.seconds if body.delay else None,
                now=utcnow(),
            )
        except InvalidArgument as exc:
            raise pipeline_error(exc) from None
        message = NewMessage(
            client_id=principal.client_id,
            channels=tuple(dict.fromkeys(body.channels)),
            user_ids=None
            if body.recipients.user_ids is None
            else tuple(dict.fromkeys(body.recipients.user_ids)),
            topic=body.recipients.topic,
            template_id=body.template_id,
            content=body.content.content() if body.content else None,
            data=body.data,
            critical=body.critical,
            idempotency_key=key,
            body_hash=body_hash(fields),
            send_at=when,
            escalate=body.escalate.escalation() if body.escalate else None,
            digest=body.digest.digest(body.channels) if body.digest else None,
            category=body.category,
            transactional=body.transactional,
        )
        limit = tidings.settings.max_recipients
        if message.user_ids is not None and len(message.user_ids) > limit:
            raise ApiError(422, "invalid_argument", f"at most {limit} user ids per message")
        created, fresh = await pipeline_call(tidings.pipeline.create_message(message))
        return JSONResponse(created.to_dict(), 202 if fresh else 200)

    @router.get(
        "/messages",
        response_model=list[MessageOut],
        response_model_exclude_none=True,
        responses=errors,
        tags=["pipeline"],
        dependencies=[Depends(require_scope("admin"))],
    )
    async def list_messages(
        state: Annotated[StateName | None, Query()] = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
    ) -> JSONResponse:
        """Recent messages of every service, newest first (scope ``admin``)."""
        found_messages = await tidings.pipeline.store.list_messages(state, limit)
        return JSONResponse([m.to_dict() for m in found_messages])

    @router.get(
        "/messages/{message_id}",
        response_model=MessageOut,
        responses={**errors, **not_found},
        tags=["pipeline"],
    )
    async def get_message(
        message_id: Annotated[str, Path(max_length=64)],
        client: Annotated[str | None, Depends(messages_or_admin)],
        limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
        offset: Annotated[int, Query(ge=0, le=2**31)] = 0,
    ) -> JSONResponse:
        """The message with its deliveries (``limit`` of them from ``offset``, in creation
        order; ``counts`` covers them all): state, tries, last error and history."""
        message = await tidings.pipeline.store.get_message(
            message_id, client, limit=limit, offset=offset
        )
        return JSONResponse(found(message, message_id))

    @router.delete(
        "/messages/{message_id}",
        response_model=MessageOut,
        responses={**errors, **not_found},
        tags=["pipeline"],
    )
    async def delete_message(
        message_id: Annotated[str, Path(max_length=64)],
        client: Annotated[str | None, Depends(messages_or_admin)],
    ) -> JSONResponse:
        """Move the deliveries not yet sent (``pending``, ``stale``) to ``deleted``; those
        being sent finish."""
        message = await tidings.pipeline.store.delete_message(message_id, client)
        return JSONResponse(found(message, message_id))

    @router.post(
        "/messages/{message_id}/retry",
        response_model=MessageOut,
        responses={**errors, **not_found},
        tags=["pipeline"],
    )
    async def retry_message(
        message_id: Annotated[str, Path(max_length=64)],
        client: Annotated[str | None, Depends(messages_or_admin)],
    ) -> JSONResponse:
        """Queue the message's ``failed`` deliveries again, tries counted from zero."""
        message = await tidings.pipeline.store.retry_message(message_id, client)
        if message is not None:
            await tidings.pipeline.wake_all()
        return JSONResponse(found(message, message_id))

    @router.delete(
        "/messages/{message_id}/deliveries/{delivery_id}",
        response_model=MessageOut,
        responses={**errors, **not_found},
        tags=["pipeline"],
    )
    async def delete_delivery(
        message_id: Annotated[str, Path(max_length=64)],
        delivery_id: Annotated[str, Path(max_length=64)],
        client: Annotated[str | None, Depends(messages_or_admin)],
    ) -> JSONResponse:
        """Move one delivery of the message to ``deleted`` if it is not sent yet."""
        try:
            message = await tidings.pipeline.store.delete_message(message_id, client, delivery_id)
        except NotFound as exc:
            raise ApiError(404, "not_found", str(exc)) from None
        return JSONResponse(found(message, message_id))

    @router.post(
        "/messages/{message_id}/deliveries/{delivery_id}/retry",
        response_model=MessageOut,
        responses={**errors, **not_found},
        tags=["pipeline"],
    )
    async def retry_delivery(
        message_id: Annotated[str, Path(max_length=64)],
        delivery_id: Annotated[str, Path(max_length=64)],
        client: Annotated[str | None, Depends(messages_or_admin)],
    ) -> JSONResponse:
        """Queue one ``failed`` delivery of the message again, tries counted from zero."""
        try:
            message = await tidings.pipeline.store.retry_message(message_id, client, delivery_id)
        except NotFound as exc:
            raise ApiError(404, "not_found", str(exc)) from None
        if message is not None:
            await tidings.pipeline.wake_all()
        return JSONResponse(found(message, message_id))

    mount_templates(router, tidings, require_scope, errors, not_found)
    mount_preferences(router, tidings, require_scope, errors)
    mount_quiet_hours(router, tidings, require_scope, errors)
    mount_user_locale(router, tidings, require_scope, errors)
    mount_unsubscribe(router, tidings, require_scope, errors)
    app.include_router(router)


def mount_preferences(
    router: APIRouter,
    tidings: ApiNode,
    require_scope: RequireScope,
    errors: dict[int | str, dict[str, Any]],
) -> None:
    """The same five routes under ``/me`` (device JWT) and ``/users/{user_id}`` (service)."""
    for prefix, who in per_user(tidings, require_scope):
        user = Annotated[Caller, Depends(who)]

        @router.get(f"{prefix}/preferences", responses=errors, tags=["preferences"])
        async def preferences(caller: user) -> JSONResponse:
            """Channel switches, topic subscriptions and contact points of the user."""
            found = await tidings.pipeline.preferences(caller[0])
            return JSONResponse(found.to_dict())

        @router.put(f"{prefix}/channels/{{channel}}", responses=errors, tags=["preferences"])
        async def set_channel(
            channel: ChannelPath,
            body: Switch,
            caller: user,
        ) -> JSONResponse:
            """Turn a channel on or off for the user (every channel is on until turned off)."""
            await pipeline_call(tidings.pipeline.set_channel(caller[0], channel, body.enabled))
            return JSONResponse({"channel": channel, "enabled": body.enabled})

        @router.put(f"{prefix}/topics/{{topic}}", responses=errors, tags=["preferences"])
        async def subscribe(topic: Topic, caller: user) -> JSONResponse:
            """Subscribe the user to a topic's messages (the topic policy applies)."""
            await pipeline_call(tidings.pipeline.check_topic(caller[0], caller[1], topic))
            await tidings.pipeline.store.set_topic(caller[0], topic, True)
            return JSONResponse({"topic": topic, "subscribed": True})

        @router.delete(f"{prefix}/topics/{{topic}}", responses=errors, tags=["preferences"])
        async def unsubscribe(topic: Topic, caller: user) -> JSONResponse:
            await tidings.pipeline.store.set_topic(caller[0], topic, False)
            return JSONResponse({"topic": topic, "subscribed": False})

        @router.put(f"{prefix}/contacts/{{channel}}", responses=errors, tags=["preferences"])
        async def set_contact(
            channel: ChannelPath,
            body: ContactIn,
            caller: user,
        ) -> JSONResponse:
            """Set the user's contact point on a channel; refused with ``invalid_address``."""
            address = await pipeline_call(
                tidings.pipeline.set_contact(caller[0], channel, body.address)
            )
            return JSONResponse({"channel": channel, "address": address})

        @router.delete(f"{prefix}/contacts/{{channel}}", responses=errors, tags=["preferences"])
        async def delete_contact(
            channel: ChannelPath,
            caller: user,
        ) -> JSONResponse:
            """Remove the user's contact point on a channel."""
            await pipeline_call(tidings.pipeline.set_contact(caller[0], channel, None))
            return JSONResponse({"channel": channel, "address": None})

    @router.get("/webpush/vapid-public-key", tags=["preferences"])
    async def vapid_public_key() -> JSONResponse:
        """The ``applicationServerKey`` browsers subscribe to push with."""
        return JSONResponse({"public_key": tidings.pipeline.vapid_public_key()})
