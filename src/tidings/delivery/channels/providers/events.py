"""What a provider tells tidings about a message after it took it: delivered, bounced,
complained about. Each provider's own format is read by its module (``ses.py``,
``postmark.py``, ``twilio.py``) into :class:`ProviderEvent`; ``callbacks.py`` applies them."""

from __future__ import annotations

from dataclasses import dataclass

#: the history's reasons an event records; the first two end the delivery ``failed``
BOUNCED, UNDELIVERED = "bounced", "undelivered"
DELIVERED, SOFT_BOUNCE, COMPLAINED = "delivered", "soft_bounce", "complained"
FAILING = frozenset({BOUNCED, UNDELIVERED})
#: the longest detail kept of a provider's words
MAX_DETAIL = 500


@dataclass(frozen=True, slots=True)
class ProviderEvent:
    """One event about the message a provider knows as ``provider_id`` (the delivery's
    ``provider_id``) on ``channel``."""

    provider: str
    channel: str
    provider_id: str
    #: the history entry's reason: delivered, bounced, soft_bounce, complained, undelivered
    reason: str
    detail: str

    @property
    def fails(self) -> bool:
        """Whether the delivery ends ``failed`` (a permanent bounce, an undelivered SMS)."""
        return self.reason in FAILING

    @property
    def complaint(self) -> bool:
        """Whether the user marked it as spam: the channel is switched off for them."""
        return self.reason == COMPLAINED


def detail(*parts: object) -> str:
    """The non-empty ``parts`` joined, on one line, at most :data:`MAX_DETAIL` characters."""
    text = " ".join(" ".join(str(p).split()) for p in parts if p not in (None, ""))
    return text[:MAX_DETAIL]


def text(value: object) -> str:
    """A payload's field as text (``""`` when absent or not a scalar)."""
    return (
        str(value) if isinstance(value, str | int | float) and not isinstance(value, bool) else ""
    )


class CallbackRefused(Exception):
    """An inbound callback is not taken: ``status`` is the HTTP answer (401/403 for a request
    that is not the provider's, 404 when the route is not configured), nothing changed."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
