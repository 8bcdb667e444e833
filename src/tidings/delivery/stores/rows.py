"""The pipeline's rows in both dialects: column lists, decoders and what is built from them.

The tables are the same in SQLite and PostgreSQL (the migrations ``005_pipeline.sql`` and
``006_pipeline.sql``); the dialects differ in how a row comes back. SQLite gives time as ISO
text and booleans as integers, PostgreSQL ``timestamptz`` and ``bool``; both give JSON as text
(PostgreSQL's ``jsonb`` columns are read through :func:`json_as_text`). So a decoder is given
the dialect's :data:`Time`, and passes booleans through ``bool``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import replace
from datetime import datetime
from typing import Any

import orjson

from tidings.delivery.models import (
    ACTIVE,
    PENDING,
    SENT,
    STALE,
    Claim,
    Content,
    Delivery,
    Escalation,
    HistoryEntry,
    Message,
    NewMessage,
    Outcome,
    QuietHours,
    Template,
)
from tidings.delivery.planner import Recipient
from tidings.delivery.stores.base import decode_content
from tidings.errors import Conflict, InvalidArgument

MESSAGE_COLUMNS = (
    "message_id, client_id, channels, recipients, template_id, content, data, critical, "
    "idempotency_key, created_at"
)
DELIVERY_COLUMNS = (
    "delivery_id, message_id, user_id, channel, state, reason, attempts, last_error, "
    "provider_id, created_at, updated_at, sent_at"
)
TEMPLATE_COLUMNS = "template_id, subject, text, html, version, created_at, updated_at, locale"
HISTORY_COLUMNS = "delivery_id, state, reason, detail, at"
#: the columns holding JSON, in any of the tables above
JSON_COLUMNS = frozenset({"channels", "recipients", "content", "data", "address"})

#: a time column's value back to a datetime (SQLite: ISO text; PostgreSQL: as it comes)
Time = Callable[[Any], datetime]
#: a history entry to write: (delivery_id, state, reason, detail)
HistoryRow = tuple[str, str, str, str | None]

#: the states of a delivery still in its digest (a deleted one has left it)
DIGEST_LIVE = (PENDING, ACTIVE, STALE)

#: the detail of the history entry of a delivery whose lease lapsed
LEASE_EXPIRED = "its worker stopped renewing the lease; queued again"


def json_as_text(columns: str) -> str:
    """``columns`` with each of :data:`JSON_COLUMNS` cast to text (PostgreSQL)."""
    return ", ".join(
        f"{name}::text" if name in JSON_COLUMNS else name for name in columns.split(", ")
    )


def native(value: datetime) -> datetime:
    """A time column of a dialect that stores datetimes (PostgreSQL's ``timestamptz``)."""
    return value


def template_of(row: Any, time: Time) -> Template:
    """A template from a row of :data:`TEMPLATE_COLUMNS`."""
    content = Content(row[2], row[1], row[3])
    return Template(row[0], content, row[4], time(row[5]), time(row[6]), row[7])


def with_translations(templates: list[Template], rows: Iterable[Any]) -> list[Template]:
    """``templates`` with their translations: ``rows`` of (template_id, locale, subject,
    text, html)."""
    found: dict[str, dict[str, Content]] = {}
    for template_id, tag, subject, text, html in rows:
        found.setdefault(template_id, {})[tag] = Content(text, subject, html)
    return [replace(t, translations=found.get(t.template_id, {})) for t in templates]


def message_of(row: Any, counts: dict[str, int], time: Time) -> Message:
    """A message, without its deliveries, from a row of :data:`MESSAGE_COLUMNS`."""
    return Message(
        row[0],
        row[1],
        orjson.loads(row[2]),
        orjson.loads(row[3]),
        row[4],
        decode_content(row[5]),
        orjson.loads(row[6]),
        bool(row[7]),
        row[8],
        time(row[9]),
        counts,
    )


def delivery_of(r: Any, time: Time) -> Delivery:
    """A delivery, without its history, from a row of :data:`DELIVERY_COLUMNS`."""
    sent = None if r[11] is None else time(r[11])
    return Delivery(
        r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], time(r[9]), time(r[10]), sent
    )


def with_deliveries(
    message: Message, rows: Iterable[Any], history: Iterable[Any], time: Time
) -> Message:
    """``message`` with the deliveries of ``rows`` (of :data:`DELIVERY_COLUMNS`), each with
    its entries among ``history`` (rows of :data:`HISTORY_COLUMNS`, in order)."""
    entries: dict[str, list[HistoryEntry]] = {}
    for delivery_id, state, reason, detail, at in history:
        entries.setdefault(delivery_id, []).append(HistoryEntry(state, reason, detail, time(at)))
    found = [delivery_of(row, time) for row in rows]
    for delivery in found:
        delivery.history.extend(entries.get(delivery.delivery_id, []))
    return replace(message, deliveries=found)


def claim_of(row: Any) -> Claim:
    """A claim from a row of delivery_id, message_id, user_id, channel, address (JSON), the
    outbox's attempt, the message's template_id, content, data, critical and escalate (JSON),
    the user's in-app delivery of the message when it escalates, whether it sends a digest,
    whether the message has a digest step, the user's locale, and the message's category and
    transactional flag."""
    return Claim(
        delivery_id=row[0],
        message_id=row[1],
        user_id=row[2],
        channel=row[3],
        address=orjson.loads(row[4]) if row[4] is not None else None,
        attempt=row[5],
        template_id=row[6],
        content=decode_content(row[7]),
        data=orjson.loads(row[8]),
        critical=bool(row[9]),
        escalate=Escalation.from_dict(orjson.loads(row[10])) if row[10] else None,
        in_app_delivery=row[11],
        digest=bool(row[12]),
        digest_step=bool(row[13]),
        locale=row[14],
        category=row[15],
        transactional=bool(row[16]),
    )


def followed(
    rows: Iterable[Any], ended: Iterable[tuple[str, str, str]]
) -> tuple[list[tuple[str, str, str]], list[HistoryRow]]:
    """What becomes of the deliveries in digests that ended: ``rows`` (delivery, digest
    delivery) of those still waiting in them, ``ended`` (digest delivery, state, reason).
    (delivery, state, reason) changes and their history entries."""
    outcome = {digest: (state, reason) for digest, state, reason in ended}
    changes: list[tuple[str, str, str]] = []
    history: list[HistoryRow] = []
    for delivery, digest in rows:
        state, reason = outcome[digest]
        changes.append((delivery, state, reason))
        history.append((delivery, state, reason, f"in the digest of delivery {digest}"))
    return changes, history


def promoted(
    rows: Iterable[Any], removed: Iterable[tuple[str, str, Any]]
) -> list[tuple[str, str, str, Any]]:
    """Who sends the digests whose delivery was deleted: ``rows`` (digest delivery, delivery
    still waiting in it), oldest message first; ``removed`` (digest delivery, channel, outbox
    time). (old, new, channel, time) per digest that has a delivery left."""
    left = {digest: (channel, at) for digest, channel, at in removed}
    moves: list[tuple[str, str, str, Any]] = []
    for digest, delivery in rows:
        if digest in left:
            channel, at = left.pop(digest)
            moves.append((digest, delivery, channel, at))
    return moves


def history_of(claim: Claim, outcome: Outcome) -> list[HistoryRow]:
    """The history entries that record how a try ended: its notes (each still ``active``),
    then the outcome itself (the provider's id when sent, else the error)."""
    detail = outcome.error if outcome.state != SENT else outcome.provider_id
    return [
        *((claim.delivery_id, ACTIVE, note, text) for note, text in outcome.notes),
        (claim.delivery_id, outcome.state, outcome.reason, detail),
    ]


def without_user(recipients: Any, user_id: str) -> Any | None:
    """A message's recipients (decoded) with ``user_id`` left out, or ``None`` when it was
    not among them."""
    if not isinstance(recipients, dict) or user_id not in recipients.get("user_ids", ()):
        return None
    return {**recipients, "user_ids": [u for u in recipients["user_ids"] if u != user_id]}


def retry_at(outcome: Outcome) -> datetime:
    """When a retried delivery is due again (the worker always sets it for a retry)."""
    assert outcome.retry_at is not None
    return outcome.retry_at


def recipients_of(
    users: list[str],
    switches: Iterable[Any],
    contacts: Iterable[Any],
    recent: Iterable[tuple[str, str, int]],
    quiet: Iterable[Any] = (),
) -> list[Recipient]:
    """What the planner is told of ``users``: ``switches`` rows (user_id, channel, enabled),
    ``contacts`` rows (user_id, channel, address as JSON), ``recent`` (user_id, channel,
    deliveries counted) and ``quiet`` rows (user_id, timezone, start, end)."""
    enabled: dict[str, dict[str, bool]] = {}
    addresses: dict[str, dict[str, Any]] = {}
    counted: dict[str, dict[str, int]] = {}
    for user, channel, on in switches:
        enabled.setdefault(user, {})[channel] = bool(on)
    for user, channel, address in contacts:
        addresses.setdefault(user, {})[channel] = orjson.loads(address)
    for user, channel, n in recent:
        counted.setdefault(user, {})[channel] = n
    hours = {row[0]: QuietHours(row[1], row[2], row[3]) for row in quiet}
    return [
        Recipient(u, enabled.get(u, {}), addresses.get(u, {}), counted.get(u, {}), hours.get(u))
        for u in users
    ]


def subscribers(message: NewMessage, users: list[str], max_recipients: int) -> list[str]:
    """The subscribers read for ``message``'s topic (up to ``max_recipients + 1`` of them).

    Raises:
        InvalidArgument: there are more than ``max_recipients``.
    """
    if len(users) > max_recipients:
        raise InvalidArgument(
            f"topic {message.topic!r} has more than {max_recipients} subscribers "
            "(TIDINGS_MAX_TOPIC_RECIPIENTS)"
        )
    return users


def check_body(message: NewMessage, body_hash: str) -> None:
    """The earlier message with ``message``'s idempotency key had ``body_hash``.

    Raises:
        Conflict: another body.
    """
    if body_hash != message.body_hash:
        raise Conflict(f"idempotency_key {message.idempotency_key!r} was used with another body")
