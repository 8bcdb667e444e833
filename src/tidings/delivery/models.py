"""Value types of the pipeline: messages, deliveries, their states, templates, preferences."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson

from tidings.core.limits import MAX_DATA_DEPTH
from tidings.core.models import isoformat, nests_deeper, too_deep_message

#: a message's template values may nest one level less than a notification's data: the in-app
#: channel's notification holds them under "data"
MESSAGE_DATA_DEPTH = MAX_DATA_DEPTH - 1


def message_data_problem(data: Any) -> str | None:
    """Why a message's template values cannot be taken (not JSON tidings can write, such as
    integers beyond 64 bits or lone surrogates; too deep), or None."""
    try:
        encoded = orjson.dumps(data)
    except orjson.JSONEncodeError as exc:
        return f"data cannot be stored as JSON: {exc}"
    if nests_deeper(data, encoded, MESSAGE_DATA_DEPTH):
        return too_deep_message("data (held one level down in-app)", MESSAGE_DATA_DEPTH)
    return None


# States of a delivery (docs/pipeline.md)
PENDING = "pending"
ACTIVE = "active"
SENT = "sent"
FAILED = "failed"
STALE = "stale"
DELETED = "deleted"
STATES = (PENDING, ACTIVE, SENT, FAILED, STALE, DELETED)
#: states a worker may still pick up
QUEUED = (PENDING, STALE)
#: states that end a delivery
FINAL = (SENT, FAILED, DELETED)


@dataclass(frozen=True, slots=True)
class Content:
    """What a message says: Jinja sources of its parts (a stored template or inline)."""

    text: str
    subject: str | None = None
    html: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"subject": self.subject, "text": self.text, "html": self.html}


@dataclass(frozen=True, slots=True)
class Template:
    """A stored template; ``version`` rises with every change (the caches' key)."""

    template_id: str
    content: Content
    version: int
    created_at: datetime
    updated_at: datetime
    #: the locale ``content`` is written in (what dates and numbers follow when no
    #: translation serves the user)
    locale: str = "en"
    #: the content in other locales, by tag (``fr``, ``fr-CA``)
    translations: dict[str, Content] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "template_id": self.template_id,
            **self.content.to_dict(),
            "locale": self.locale,
            "translations": {tag: c.to_dict() for tag, c in sorted(self.translations.items())},
            "version": self.version,
            "created_at": isoformat(self.created_at),
            "updated_at": isoformat(self.updated_at),
        }


#: what an escalation waits for on the in-app notification: seen, read, or a device's ack
ESCALATE_UNLESS = ("seen", "read", "acked")


@dataclass(frozen=True, slots=True)
class Escalation:
    """An ``escalate`` step: the deliveries on ``channels`` are sent ``after`` seconds only
    if the user's in-app notification of the message was not ``unless`` by then."""

    after: float
    unless: str  # one of ESCALATE_UNLESS
    channels: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"after": self.after, "unless": self.unless, "channels": list(self.channels)}

    @classmethod
    def from_dict(cls, found: dict[str, Any]) -> Escalation:
        return cls(float(found["after"]), str(found["unless"]), tuple(found["channels"]))


@dataclass(frozen=True, slots=True)
class Digest:
    """A ``digest`` step: the deliveries on ``channels`` of messages with one ``key`` to one
    user within ``window`` seconds of the first become one delivery per channel, sent when the
    window closes, its template rendered over all of them (``items``)."""

    key: str
    window: float
    channels: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "window": self.window, "channels": list(self.channels)}


@dataclass(frozen=True, slots=True)
class NewMessage:
    """A ``POST /messages`` request, checked."""

    client_id: str
    channels: tuple[str, ...]
    user_ids: tuple[str, ...] | None
    topic: str | None
    template_id: str | None
    content: Content | None
    data: Any
    critical: bool
    idempotency_key: str | None
    #: digest of the request's canonical JSON: the same key with another body is a conflict
    body_hash: str
    #: a ``delay`` step: no delivery is sent before this time (None: at once)
    send_at: datetime | None = None
    #: an ``escalate`` step
    escalate: Escalation | None = None
    #: a ``digest`` step
    digest: Digest | None = None
    #: what the message is about (``comments``): users may turn a category off per channel,
    #: and an email's unsubscribe link turns off its category
    category: str | None = None
    #: an email the user cannot unsubscribe from (a receipt, a password reset): no
    #: ``List-Unsubscribe`` header
    transactional: bool = False

    def recipients(self) -> dict[str, Any]:
        if self.topic is not None:
            return {"topic": self.topic}
        return {"user_ids": list(self.user_ids or ())}


@dataclass(frozen=True, slots=True)
class QuietHours:
    """A user's quiet hours: every day from ``start`` to ``end`` (``HH:MM``, wall-clock time
    in the IANA zone ``timezone``; a window that passes midnight when ``start`` is later)."""

    timezone: str
    start: str
    end: str

    def to_dict(self) -> dict[str, str]:
        return {"timezone": self.timezone, "start": self.start, "end": self.end}


@dataclass(frozen=True, slots=True)
class Preferences:
    """One user's channel switches, topic subscriptions, contact points and quiet hours."""

    user_id: str
    channels: dict[str, bool] = field(default_factory=dict)
    topics: list[str] = field(default_factory=list)
    contacts: dict[str, Any] = field(default_factory=dict)
    quiet_hours: QuietHours | None = None
    #: the user's locale (``fr-CA``), if they chose one
    locale: str | None = None
    #: category → channel → enabled (missing: enabled)
    categories: dict[str, dict[str, bool]] = field(default_factory=dict)

    def enabled(self, channel: str) -> bool:
        return self.channels.get(channel, True)

    def to_dict(self) -> dict[str, Any]:
        return {
            "user_id": self.user_id,
            "channels": self.channels,
            "topics": self.topics,
            "contacts": self.contacts,
            "quiet_hours": self.quiet_hours.to_dict() if self.quiet_hours else None,
            "locale": self.locale,
            "categories": self.categories,
        }


@dataclass(frozen=True, slots=True)
class PlannedDelivery:
    """What the planner decided for one (user, channel) of a new message."""

    user_id: str
    channel: str
    state: str  # PENDING, or FAILED / DELETED with the reason it will not be sent
    reason: str
    address: Any = None
    detail: str | None = None
    #: not sent before this (a delay step, quiet hours); None: at once
    not_before: datetime | None = None
    #: the digest key this delivery is part of (it opens a digest, or joins one: ``into``)
    digest_key: str | None = None
    #: the open digest's delivery this one is sent in (it waits without an outbox row of its
    #: own, and ends as that delivery ends)
    into: str | None = None

    @property
    def queued(self) -> bool:
        """It waits in the outbox for a worker (pending, and not sent in another's digest)."""
        return self.state == PENDING and self.into is None


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    state: str
    reason: str
    detail: str | None
    at: datetime

    def to_dict(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "reason": self.reason,
            "detail": self.detail,
            "at": isoformat(self.at),
        }


@dataclass(frozen=True, slots=True)
class Delivery:
    """One (recipient, channel) of a message, with its state and history."""

    delivery_id: str
    message_id: str
    user_id: str
    channel: str
    state: str
    reason: str
    attempts: int
    last_error: str | None
    provider_id: str | None
    created_at: datetime
    updated_at: datetime
    sent_at: datetime | None
    history: list[HistoryEntry] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "delivery_id": self.delivery_id,
            "user_id": self.user_id,
            "channel": self.channel,
            "state": self.state,
            "reason": self.reason,
            "attempts": self.attempts,
            "last_error": self.last_error,
            "provider_id": self.provider_id,
            "created_at": isoformat(self.created_at),
            "updated_at": isoformat(self.updated_at),
            "sent_at": isoformat(self.sent_at) if self.sent_at else None,
            "history": [entry.to_dict() for entry in self.history],
        }


def message_state(counts: dict[str, int]) -> str:
    """A message's state, derived from how many of its deliveries are in each state."""
    live = {state: n for state, n in counts.items() if n}
    total = sum(live.values())
    if not total:
        return SENT  # nothing to send (a topic nobody follows): done, not waiting
    if live.get(DELETED, 0) == total:
        return DELETED
    if live.get(STALE):
        return STALE
    if live.get(ACTIVE):
        return ACTIVE
    done = sum(live.get(state, 0) for state in FINAL)
    if done == total:
        return FAILED if live.get(FAILED) else SENT
    return ACTIVE if done else PENDING


@dataclass(frozen=True, slots=True)
class Message:
    """A message as stored, with its deliveries' counts (and the deliveries when asked)."""

    message_id: str
    client_id: str
    channels: list[str]
    recipients: dict[str, Any]
    template_id: str | None
    content: Content | None
    data: Any
    critical: bool
    idempotency_key: str | None
    created_at: datetime
    counts: dict[str, int]
    deliveries: list[Delivery] | None = None

    @property
    def state(self) -> str:
        return message_state(self.counts)

    @classmethod
    def created(
        cls, message_id: str, new: NewMessage, at: datetime, planned: list[PlannedDelivery]
    ) -> Message:
        """The message a store just wrote, with the counts of what was planned."""
        counts: dict[str, int] = {}
        for delivery in planned:
            counts[delivery.state] = counts.get(delivery.state, 0) + 1
        return cls(
            message_id,
            new.client_id,
            list(new.channels),
            new.recipients(),
            new.template_id,
            new.content,
            new.data,
            new.critical,
            new.idempotency_key,
            at,
            counts,
        )

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "message_id": self.message_id,
            "state": self.state,
            "created_at": isoformat(self.created_at),
            "template_id": self.template_id,
            "content": self.content.to_dict() if self.content else None,
            "channels": self.channels,
            "recipients": self.recipients,
            "critical": self.critical,
            "idempotency_key": self.idempotency_key,
            "counts": {state: n for state, n in self.counts.items() if n},
        }
        if self.deliveries is not None:
            body["deliveries"] = [delivery.to_dict() for delivery in self.deliveries]
        return body


@dataclass(frozen=True, slots=True)
class Claim:
    """A delivery a worker holds: what it needs to render and send it."""

    delivery_id: str
    message_id: str
    user_id: str
    channel: str
    address: Any
    #: this claim's try number; a completion with an older one is ignored
    attempt: int
    template_id: str | None
    content: Content | None
    data: Any
    critical: bool
    #: the message's escalate step, and the user's in-app delivery of it (its notification)
    escalate: Escalation | None = None
    in_app_delivery: str | None = None
    #: it sends a digest: rendered over the data of each message in it
    digest: bool = False
    #: the message has a digest step: rendered over its items (this message alone when not
    #: ``digest``)
    digest_step: bool = False
    #: the user's locale: which translation of the template, and how dates and numbers read
    locale: str | None = None
    #: the message's category, and whether it is transactional (no unsubscribe link)
    category: str | None = None
    transactional: bool = False


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a send ended: ``sent``, ``retry`` at ``retry_at``, or ``failed``."""

    state: str  # SENT, PENDING (retry) or FAILED
    reason: str
    error: str | None = None
    provider_id: str | None = None
    retry_at: datetime | None = None
    #: ``(reason, detail)`` per address a send went to (a user's push tokens), written to the
    #: delivery's history before the outcome's own entry
    notes: tuple[tuple[str, str], ...] = ()
