"""What delivery-status webhooks are made of (docs/pipeline.md, "Delivery-status webhooks"):
the event types, an event as its outbox row holds it, the envelope posted, and the checks of
their settings. Pure: the stores write events with :func:`status_rows` in the transaction of
each change (``write_history``), and :mod:`tidings.delivery.status_events` posts them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from tidings.core.ids import new_sorted_ids
from tidings.core.models import isoformat
from tidings.delivery.models import ACTIVE, DELETED, FAILED, PENDING, SENT, STALE

#: an event's own states: waiting to be posted (or retried), accepted with a 2xx, given up
EVENT_PENDING = "pending"
EVENT_DELIVERED = "delivered"
EVENT_FAILED = "failed"
EVENT_STATES = (EVENT_PENDING, EVENT_DELIVERED, EVENT_FAILED)

#: the type of the event a delivery's change to each state makes
STATE_TYPES = {
    PENDING: "delivery.pending",
    ACTIVE: "delivery.active",
    SENT: "delivery.sent",
    FAILED: "delivery.failed",
    DELETED: "delivery.deleted",
    STALE: "delivery.stale",
}
#: reasons that name what a provider reported after the send, whatever the delivery's state
REPORTED_TYPES = {
    "delivered": "delivery.delivered",
    "bounced": "delivery.bounced",
    "complained": "delivery.complained",
}
#: every type, in the catalogue's order
EVENT_TYPES = (*STATE_TYPES.values(), *REPORTED_TYPES.values())
#: the only reason of the entry that moves a delivery into these states: an entry in them with
#: another reason is a note (a token's outcome during a try, a provider's soft bounce)
CHANGE_REASONS = {ACTIVE: "claimed", SENT: "sent"}

#: the error of the pending events of an endpoint taken out of the setting
ENDPOINT_REMOVED = "the endpoint is no longer in TIDINGS_STATUS_WEBHOOK_URLS"


def event_type(state: str, reason: str) -> str | None:
    """The type of the event a history entry makes, or ``None`` when it makes none (a note,
    not a change of state)."""
    if reason in REPORTED_TYPES:
        return REPORTED_TYPES[reason]
    if CHANGE_REASONS.get(state, reason) != reason:
        return None
    return STATE_TYPES.get(state)


#: a history entry that makes an event: (event_id, type, delivery_id, state, reason, detail)
EventRow = tuple[str, str, str, str, str, str | None]


def events_of(entries: Sequence[tuple[str, str, str, str | None]]) -> list[tuple[str, str] | None]:
    """Per history entry ((delivery_id, state, reason, detail)): the (event id, type) of the
    event it makes, the id new (the event's ``webhook-id``), or ``None``."""
    kinds = [event_type(state, reason) for _, state, reason, _ in entries]
    ids = iter(new_sorted_ids(sum(kind is not None for kind in kinds)))
    return [None if kind is None else (f"evt_{next(ids)}", kind) for kind in kinds]


def status_rows(entries: Sequence[tuple[str, str, str, str | None]]) -> list[EventRow]:
    """The events of history ``entries``, in their order."""
    return [
        (*event, *entry)
        for event, entry in zip(events_of(entries), entries, strict=True)
        if event is not None
    ]


@dataclass(frozen=True, slots=True)
class StatusEvent:
    """One event for one endpoint, and how posting it went."""

    id: int  # the row's, in the order the changes were written
    event_id: str
    endpoint: str
    type: str
    delivery_id: str
    message_id: str
    user_id: str
    channel: str
    delivery_state: str
    reason: str
    detail: str | None
    at: datetime
    delivery_attempts: int
    provider_id: str | None
    state: str
    attempts: int
    available_at: datetime
    last_status: int | None = None
    last_error: str | None = None
    last_attempt_at: datetime | None = None
    delivered_at: datetime | None = None

    def payload(self) -> dict[str, Any]:
        """The body posted: the Standard Webhooks envelope ``{type, timestamp, data}``."""
        return {
            "type": self.type,
            "timestamp": isoformat(self.at),
            "data": {
                "delivery_id": self.delivery_id,
                "message_id": self.message_id,
                "user_id": self.user_id,
                "channel": self.channel,
                "state": self.delivery_state,
                "reason": self.reason,
                "detail": self.detail,
                "at": isoformat(self.at),
                "attempts": self.delivery_attempts,
                "provider_id": self.provider_id,
            },
        }

    def to_dict(self) -> dict[str, Any]:
        """As ``GET /status-events`` lists it."""
        return {
            "event_id": self.event_id,
            "endpoint": self.endpoint,
            "type": self.type,
            "state": self.state,
            "attempts": self.attempts,
            "last_status": self.last_status,
            "last_error": self.last_error,
            "last_attempt_at": _time(self.last_attempt_at),
            "next_attempt_at": _time(self.available_at) if self.state == EVENT_PENDING else None,
            "delivered_at": _time(self.delivered_at),
            "payload": self.payload(),
        }


def _time(moment: datetime | None) -> str | None:
    return None if moment is None else isoformat(moment)


@dataclass(frozen=True, slots=True)
class StatusResult:
    """How one try of an event ended: ``state`` delivered, pending (tried again at
    ``retry_at``) or failed; the endpoint's HTTP status when it answered, else the error."""

    id: int
    attempts: int  # the claim's: a result of an older claim is ignored
    state: str
    status: int | None
    error: str | None
    retry_at: datetime | None = None


def check_status_urls(urls: Iterable[str], *, allow_private: bool) -> tuple[str, ...]:
    """``TIDINGS_STATUS_WEBHOOK_URLS``: each an absolute http(s) URL the webhook channel would
    take (a literal non-public address only with ``allow_private``), once each.

    Raises:
        ValueError: one is not; the message says which and why.
    """
    from tidings.delivery.channels._net import check_http_url
    from tidings.errors import InvalidAddress
    from tidings.logs import safe_url

    given = list(urls)
    checked: list[str] = []
    for n, url in enumerate(given, 1):
        try:
            checked.append(check_http_url(url, allow_private=allow_private, what="URL"))
        except InvalidAddress as exc:
            if len(given) == 1:
                raise ValueError(str(exc)) from None
            try:
                shown = repr(safe_url(url))
            except (TypeError, ValueError):
                shown = f"URL {n}"
            raise ValueError(f"{shown}: {exc}") from None
    return tuple(dict.fromkeys(checked))


def check_status_secret(secret: str | None) -> str | None:
    """``TIDINGS_STATUS_WEBHOOK_SECRET``, a ``whsec_`` secret as the webhook channel takes.

    Raises:
        ValueError: it is not one.
    """
    from tidings.delivery.channels.webhook import WebhookChannel
    from tidings.errors import ConfigurationError

    if not secret:
        return None
    try:
        WebhookChannel(secret)
    except ConfigurationError as exc:
        raise ValueError(str(exc)) from None
    return secret
