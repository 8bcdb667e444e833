"""What the email channel hands its providers: one delivery's email, built once."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from tidings.delivery.channels.base import Outgoing


@dataclass(frozen=True, slots=True)
class Mail:
    """One delivery's email. ``headers`` are all of the email's headers, tidings' own and the
    delivery's extra ones (``Outgoing.extra["headers"]``), exactly as ``raw`` (the MIME message
    the ``smtp`` and ``ses`` providers send) carries them; a provider with a JSON API
    (``postmark``) sends the same headers and parts."""

    outgoing: Outgoing
    #: the ``From`` header (``"Name <addr@host>"`` or an address)
    sender: str
    #: its address alone: the SMTP envelope sender, SES's ``FromEmailAddress``
    envelope_sender: str
    recipient: str
    headers: Mapping[str, str]
    raw: bytes
    message_id: str

    @property
    def text(self) -> str:
        return self.outgoing.rendered.text

    @property
    def html(self) -> str | None:
        return self.outgoing.rendered.html
