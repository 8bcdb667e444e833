"""The :class:`Channel` interface every delivery channel implements.

A channel turns one rendered delivery into one send through a provider (an SMTP server, the
user's webhook, a push service, an SMS gateway). It says how a send failed, because the worker
decides by it::

    DeliveryFailure
    ├── TransientFailure   try again later (4xx SMTP reply, HTTP 5xx/429, timeout, refused)
    └── PermanentFailure   never succeeds as it is (5xx SMTP reply, HTTP 4xx, expired push
                           subscription): the delivery goes ``failed``

Channels must not keep per-delivery state: the same delivery may be sent again by another
worker after this one died (at-least-once), so a provider that accepts an idempotency key is
given :attr:`Outgoing.delivery_id`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Self

from tidings.core.lifecycle import Lifecycle

# Moved to tidings.errors; importable from here for one release.
from tidings.errors import DeliveryFailure as DeliveryFailure
from tidings.errors import InvalidAddress as InvalidAddress
from tidings.errors import PermanentFailure as PermanentFailure
from tidings.errors import TransientFailure as TransientFailure

if TYPE_CHECKING:
    from tidings.delivery.ports import PipelineHost

#: tidings' own channels, in the order they are documented; every channel, these included, is
#: known by the name it registers (:mod:`tidings.delivery.registry`)
CHANNEL_NAMES = ("in_app", "email", "webhook", "web_push", "sms", "apns", "fcm", "expo")


@dataclass(frozen=True, slots=True)
class Rendered:
    """A message rendered for one recipient: the template's parts with the data filled in.

    ``text`` is always there; ``subject`` and ``html`` only when the template has them.
    ``data`` is the message's data as the service sent it (for channels that carry JSON)."""

    text: str
    subject: str | None = None
    html: str | None = None
    data: Any = None


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One delivery, claimed by a worker, ready to be sent."""

    delivery_id: str
    message_id: str
    user_id: str
    channel: str
    #: the contact point as validated by :meth:`Channel.validate` (``None`` for in-app)
    address: Any
    rendered: Rendered
    #: 1 for the first try
    attempt: int
    critical: bool = False
    #: the message's template id, when it had one
    template_id: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Sent:
    """What :meth:`Channel.send` may return instead of a bare provider id, when the send went
    to several addresses: the provider's id(s) and, per address, ``(reason, detail)`` for the
    delivery's history."""

    provider_id: str | None
    notes: tuple[tuple[str, str], ...] = ()


class Channel(Lifecycle, ABC):
    """Sends deliveries of one kind. Implementations are named ``<Kind>Channel``."""

    #: the channel's name in the API, messages, preferences, templates (``{{ channel }}``) and
    #: ``TIDINGS_RATE_LIMITS``; the name it is registered under
    name: ClassVar[str]
    #: whether a user needs a contact point on this channel (in-app needs none)
    needs_address: ClassVar[bool] = True

    @classmethod
    async def from_settings(cls, host: PipelineHost) -> Self | None:
        """The channel as the node's settings configure it, or ``None`` when they leave it out
        (its deliveries then fail with ``channel_unavailable``).

        Called once when a pipeline starts, for every registered channel the application did
        not hand over as an instance. ``host.settings`` holds the ``TIDINGS_*`` settings and
        ``host.store`` keeps generated keys. Default: the class called without arguments.

        Raises:
            ConfigurationError: the settings are there but unusable.
        """
        return cls()

    async def start(self) -> None:
        """Open what the channel keeps open (HTTP client pools). Default: nothing."""

    async def close(self) -> None:
        """Release it. Idempotent. Default: nothing."""

    def validate(self, address: Any) -> Any:
        """The address in its normal form (for example a lower-cased email domain).

        Called when a user or service stores a contact point, and again when a message is
        created, so that an address that became invalid is refused with ``invalid_address``.

        Raises:
            InvalidAddress: the address cannot be used on this channel; the message says why.
        """
        return address

    @abstractmethod
    async def send(self, outgoing: Outgoing) -> str | Sent | None:
        """Send one delivery; the provider's message id when it gives one (a :class:`Sent`
        when the delivery went to several addresses, with a note for each).

        Must finish or raise within the channel's own timeout (well below the worker's lease).

        Raises:
            TransientFailure: try again later.
            PermanentFailure: do not try again.
        """
