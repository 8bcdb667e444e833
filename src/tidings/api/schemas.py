"""Request and response bodies of the HTTP API (they make the OpenAPI document)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from tidings.core.limits import (
    MAX_BATCH_ITEMS,
    MAX_CATEGORY_LENGTH,
    MAX_ID_LENGTH,
    MAX_TOPIC_LENGTH,
    MAX_USER_ID_LENGTH,
)
from tidings.core.models import Notification

#: limits of the request models, also checked by the batch endpoint's own parser
MAX_USER_ID_CHARS = MAX_USER_ID_LENGTH
MAX_NOTIFICATION_ID_CHARS = MAX_ID_LENGTH


class NotifyRequest(BaseModel):
    """A notification for one user."""

    model_config = ConfigDict(extra="ignore")

    user_id: str = Field(min_length=1, max_length=MAX_USER_ID_CHARS, description="The recipient.")
    data: Any = Field(description="Any JSON value; the application's payload.")
    notification_id: str | None = Field(
        None,
        min_length=1,
        max_length=MAX_NOTIFICATION_ID_CHARS,
        description="Idempotency key: sending the same id again returns the first notification.",
    )
    category: str | None = Field(
        None,
        min_length=1,
        max_length=MAX_CATEGORY_LENGTH,
        description="The inbox's category (filters and per-category counts), if any.",
    )


class NotificationOut(BaseModel):
    notification_id: str
    user_id: str
    data: Any
    creation_date: datetime
    seen_date: datetime | None
    #: the inbox's fields (wire contract 1.1)
    category: str | None = None
    read_date: datetime | None = None
    archived_date: datetime | None = None

    @classmethod
    def of(cls, notification: Notification) -> NotificationOut:
        return cls(
            notification_id=notification.notification_id,
            user_id=notification.user_id,
            data=notification.data,
            creation_date=notification.creation_date,
            seen_date=notification.seen_date,
            category=notification.category,
            read_date=notification.read_date,
            archived_date=notification.archived_date,
        )


class NotifyBatchRequest(BaseModel):
    """Several notifications in one request (one transaction on SQLite)."""

    notifications: list[NotifyRequest] = Field(
        min_length=1,
        max_length=MAX_BATCH_ITEMS,
        description="At most `TIDINGS_MAX_BATCH_SIZE` (default 1000) items.",
    )


class BatchItem(BaseModel):
    """The outcome of one item, at its index in the request."""

    status: int = Field(
        description="201 created, 200 already sent (same notification_id), 409 notification_id "
        "used for another, 413 data too large, 422 invalid"
    )
    notification: NotificationOut | None = None
    error: str | None = None
    message: str | None = None


class NotifyBatchResponse(BaseModel):
    results: list[BatchItem]
    created: int
    existing: int
    refused: int


class TokenResponse(BaseModel):
    access_token: str
    token_type: str = "Bearer"
    expires_in: int
    scope: str


class OAuthError(BaseModel):
    error: str
    error_description: str


class ApiErrorBody(BaseModel):
    error: str
    message: str


class Health(BaseModel):
    status: str
    node: str
    connections: int
    users: int


class PublishRequest(BaseModel):
    """A message for every session subscribed to a topic."""

    model_config = ConfigDict(extra="ignore")

    topic: str = Field(min_length=1, max_length=MAX_TOPIC_LENGTH, description="The topic.")
    data: Any = Field(description="Any JSON value.")
    origin_session_id: str | None = Field(
        None,
        min_length=1,
        max_length=MAX_ID_LENGTH,
        description="The session whose change caused this message: it does not receive it.",
    )


class Published(BaseModel):
    topic: str
    seq: int


class TopicMessageOut(BaseModel):
    topic: str
    seq: int
    data: Any
    creation_date: datetime
    origin_session_id: str | None


class TopicLog(BaseModel):
    messages: list[TopicMessageOut]
    recovered: bool = Field(description="False when messages after `since` already expired.")
    last_seq: int


class LoggedNotification(NotificationOut):
    seq: int


class NotificationLog(BaseModel):
    notifications: list[LoggedNotification]
    next_after: str = Field(description="Opaque log position: pass as `after` to continue.")
