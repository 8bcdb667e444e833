"""The :class:`PipelineStore` interface: the pipeline's tables in the node's database.

It is four facets, one abstract class per concern (:class:`TemplateStore`,
:class:`PreferenceStore`, :class:`MessageStore`, :class:`ClaimStore`), as
:mod:`tidings.storage.facets` splits the node's store; each backend writes them one module per
facet. Each backend works on the connection machinery of its :class:`~tidings.storage.Store`
(SQLite's writer thread, PostgreSQL's pool), so a message, its deliveries, their history and
the outbox rows are written in one transaction. Every method raises
:class:`~tidings.errors.StoreUnavailable` when the database cannot be reached, having written
nothing.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

import orjson

from tidings.delivery.models import (
    Claim,
    Content,
    Delivery,
    Message,
    NewMessage,
    Outcome,
    PlannedDelivery,
    Preferences,
    QuietHours,
    Template,
)
from tidings.delivery.planner import Recipient
from tidings.delivery.status_types import StatusEvent, StatusResult

#: deliveries of a message listed at once, unless asked otherwise
DELIVERIES_PAGE = 1000
#: seconds a delivery waits after its ``attempt``-th try went stale
Backoff = Callable[[int], float]
#: called inside the message's transaction with the recipients read there
Planner = Callable[[list[Recipient]], list[PlannedDelivery]]


def encode_json(value: object) -> str:
    """A JSON column's text (both dialects store JSON given as text)."""
    return orjson.dumps(value).decode()


def decode_content(text: str | None) -> Content | None:
    """A ``content`` column back to :class:`Content`."""
    return None if text is None else Content(**orjson.loads(text))


#: the columns of a new message's row, in :func:`message_values`' order
MESSAGE_INSERT_COLUMNS = (
    "message_id, client_id, idempotency_key, body_hash, recipients, channels, template_id, "
    "content, data, critical, created_at, escalate, digest, category, transactional"
)


def message_values(message_id: str, message: NewMessage, at: object) -> tuple[object, ...]:
    """A new message's row of ``pipeline_messages``, in column order, JSON columns encoded
    (``at`` as each dialect stores time)."""
    encode = encode_json
    return (
        message_id,
        message.client_id,
        message.idempotency_key,
        message.body_hash,
        encode(message.recipients()),
        encode(list(message.channels)),
        message.template_id,
        encode(message.content.to_dict()) if message.content else None,
        encode(message.data),
        message.critical,
        at,
        encode(message.escalate.to_dict()) if message.escalate else None,
        encode(message.digest.to_dict()) if message.digest else None,
        message.category,
        message.transactional,
    )


class TemplateStore(ABC):
    """Templates, versioned by the store."""

    @abstractmethod
    async def put_template(
        self, template_id: str, content: Content, locale: str = "en"
    ) -> tuple[Template, bool]:
        """Create or replace a template's content, written in ``locale`` (its translations
        stay); (the template, whether it was created)."""

    @abstractmethod
    async def put_translation(
        self, template_id: str, locale: str, content: Content
    ) -> Template | None:
        """Create or replace the template's content in ``locale``; the template (its version
        risen), or None when there is no such template."""

    @abstractmethod
    async def delete_translation(self, template_id: str, locale: str) -> bool:
        """Remove the template's content in ``locale``; whether there was one."""

    @abstractmethod
    async def get_template(self, template_id: str) -> Template | None: ...

    @abstractmethod
    async def list_templates(self) -> list[Template]: ...

    @abstractmethod
    async def delete_template(self, template_id: str) -> bool: ...


class PreferenceStore(ABC):
    """Each user's channel switches, topic subscriptions and contact points."""

    @abstractmethod
    async def preferences(self, user_id: str) -> Preferences: ...

    @abstractmethod
    async def set_channel(self, user_id: str, channel: str, enabled: bool) -> None: ...

    @abstractmethod
    async def set_topic(self, user_id: str, topic: str, subscribed: bool) -> None: ...

    @abstractmethod
    async def set_contact(self, user_id: str, channel: str, address: Any) -> None:
        """Store a contact point (``None`` removes it)."""

    @abstractmethod
    async def set_category(self, user_id: str, category: str, channel: str, enabled: bool) -> None:
        """Turn ``category`` on ``channel`` on or off for the user."""

    @abstractmethod
    async def set_locale(self, user_id: str, locale: str | None) -> None:
        """Set the user's locale (normal form), or remove it (None)."""

    @abstractmethod
    async def set_quiet_hours(self, user_id: str, hours: QuietHours | None) -> None:
        """Store the user's quiet hours (checked by the caller; ``None`` removes them)."""


class MessageStore(ABC):
    """Messages and their deliveries, as the API creates, reads, deletes and retries them."""

    @abstractmethod
    async def create_message(
        self,
        message: NewMessage,
        counted: Sequence[str],
        since: dict[str, datetime],
        planner: Planner,
        max_recipients: int,
        *,
        conn: Any = None,
        notice: str | None = None,
    ) -> tuple[Message, bool]:
        """Write a message and its deliveries in one transaction: the store's own, or, given
        ``conn`` (an asyncpg connection of the application, in its transaction; PostgreSQL
        only), in that one, NOTIFYing ``notice`` for when it commits.

        Resolves a topic to its subscribers, reads each recipient's switches, contacts and,
        for the ``counted`` channels, how many deliveries were counted since ``since[channel]``,
        calls ``planner`` with them, and writes what it decided: the deliveries, their first
        history entries and an outbox row per queued delivery. (the message, ``True``), or the
        earlier message with the same idempotency key and body (``False``).

        Raises:
            Conflict: the idempotency key was used with another body.
            InvalidArgument: a topic with more than ``max_recipients`` subscribers.
            ConfigurationError: ``conn`` given to a store that cannot write on it.
        """

    @abstractmethod
    async def get_message(
        self,
        message_id: str,
        client_id: str | None,
        *,
        deliveries: bool = True,
        limit: int = DELIVERIES_PAGE,
        offset: int = 0,
    ) -> Message | None:
        """The message (``client_id`` ``None``: whoever created it), with ``limit`` of its
        deliveries from ``offset`` in creation order (its ``counts`` cover all of them)."""

    @abstractmethod
    async def deliveries_of_user(self, user_id: str, limit: int) -> list[Delivery]:
        """The user's latest deliveries (without their history), newest first."""

    @abstractmethod
    async def list_messages(self, state: str | None, limit: int) -> list[Message]:
        """Recent messages, newest first, optionally only those in ``state``."""

    @abstractmethod
    async def delete_message(
        self, message_id: str, client_id: str | None, delivery_id: str | None = None
    ) -> Message | None:
        """Move the message's ``pending`` and ``stale`` deliveries (or only ``delivery_id``)
        to ``deleted``.

        Raises:
            NotFound: ``delivery_id`` is not one of the message's.
        """

    @abstractmethod
    async def retry_message(
        self, message_id: str, client_id: str | None, delivery_id: str | None = None
    ) -> Message | None:
        """Queue the message's ``failed`` deliveries (or only ``delivery_id``) again, tries
        counted from zero.

        Raises:
            NotFound: ``delivery_id`` is not one of the message's.
        """

    @abstractmethod
    async def record_provider_event(
        self, channel: str, provider_id: str, reason: str, detail: str, *, fail: bool
    ) -> list[tuple[str, str, bool]]:
        """Record what a provider reported about the message it knows as ``provider_id`` on
        ``channel`` (``reason``: delivered, bounced, soft_bounce, complained, undelivered):
        a history entry (``detail``, the provider's words) on each such delivery, and a
        ``sent`` one ends ``failed`` with ``reason`` when ``fail``; an event already recorded
        changes nothing. (delivery id, user id, recorded now) per delivery found, none for an
        unknown id (``stores/<dialect>/provider_events.py``)."""


class ClaimStore(ABC):
    """The outbox, as workers claim, renew and complete its deliveries."""

    @abstractmethod
    async def claim(
        self, channels: Sequence[str], owner: str, limit: int, lease: float
    ) -> list[Claim]:
        """Take up to ``limit`` queued deliveries that are due, oldest first, for ``lease``
        seconds; each becomes ``active`` and its try counter rises. Two callers never get the
        same delivery while its lease lasts."""

    @abstractmethod
    async def renew(self, owner: str, claims: Sequence[Claim], lease: float) -> set[str]:
        """Extend the leases ``owner`` still holds; the delivery ids it still holds."""

    async def complete(self, owner: str, claim: Claim, outcome: Outcome) -> bool:
        """Record how a send ended. ``False`` (nothing written) when the claim is no longer
        ``owner``'s: its lease expired and another worker may have it."""
        return (await self.complete_many(owner, [(claim, outcome)]))[0]

    @abstractmethod
    async def complete_many(self, owner: str, done: Sequence[tuple[Claim, Outcome]]) -> list[bool]:
        """Record how several sends ended, in one transaction: per item, as
        :meth:`complete` answers for it. The deliveries sent in a digest end as it ends."""

    @abstractmethod
    async def digest_items(self, digest_ids: Sequence[str]) -> dict[str, list[Any]]:
        """Per delivery that sends a digest: the data of each message still in it (its own
        first, then each that joined, oldest first; not those deleted since)."""

    @abstractmethod
    async def requeue_stale(self, backoff: Backoff | None = None) -> int:
        """Mark deliveries whose lease expired ``stale`` and queue them again, due after
        ``backoff(attempt)`` seconds (at once without one); how many."""

    @abstractmethod
    async def depths(self) -> dict[str, dict[str, int]]:
        """Deliveries per channel per state (for the admin console and metrics)."""


class ErasureStore(ABC):
    """What the pipeline holds about a user, as a whole."""

    @abstractmethod
    async def erase_user(self, user_id: str) -> dict[str, int]:
        """Delete everything the pipeline holds about ``user_id``, in one transaction: their
        deliveries (with their history and outbox rows), contact points, channel
        preferences, topic subscriptions and rate-limit rows, and their id from the
        recipients of the messages that named them. How many rows of each went, by kind
        (``deliveries``, ``contacts``, ``preferences``)."""


class StatusEventStore(ABC):
    """The outbox of delivery-status webhooks: an event per change of a delivery per
    endpoint, written in the change's transaction (``write_history``), posted under leases,
    kept after as its own history."""

    @abstractmethod
    async def set_status_endpoints(self, urls: Sequence[str]) -> None:
        """The endpoints the changes written from now on make events for; the pending events
        of any other endpoint fail."""

    @abstractmethod
    async def claim_status_events(self, owner: str, limit: int, lease: float) -> list[StatusEvent]:
        """Up to ``limit`` pending events that are due, each the oldest pending event of its
        delivery for its endpoint, leased to ``owner`` for ``lease`` seconds (an expired lease
        is taken over), their tries counted."""

    @abstractmethod
    async def complete_status_events(self, owner: str, results: Sequence[StatusResult]) -> int:
        """Record how tries ended, those whose claim ``owner`` still holds; how many. The later
        events of a delivery whose event is tried again wait at least as long."""

    @abstractmethod
    async def list_status_events(self, state: str | None, limit: int) -> list[StatusEvent]:
        """Events (only those in ``state``: pending, delivered, failed), newest first."""

    @abstractmethod
    async def status_event_counts(self) -> dict[str, int]:
        """How many events are pending, and how many failed (delivered ones are not
        counted: they are many until pruned)."""

    @abstractmethod
    async def prune_status_events(self, before: datetime, limit: int = 1000) -> int:
        """Delete up to ``limit`` delivered and failed events of changes before ``before``;
        how many."""


class PipelineStore(
    TemplateStore, PreferenceStore, MessageStore, ClaimStore, ErasureStore, StatusEventStore
):
    """Messages, deliveries, the outbox, templates, preferences and contact points."""
