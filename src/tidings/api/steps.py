"""The bodies of a message's steps in ``POST /messages`` (docs/pipeline.md, "Steps")."""

# No "from __future__ import annotations": pydantic reads the annotations.
from collections.abc import Sequence
from typing import Annotated, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from tidings.core.limits import (
    MAX_CHANNEL_NAME_LENGTH,
    MAX_CHANNELS_PER_MESSAGE,
    MAX_DELAY_SECONDS,
    MAX_DIGEST_KEY_LENGTH,
)
from tidings.delivery.models import Digest, Escalation

#: a channel's name: a built-in one or one the application registered (the pipeline checks it)
ChannelName = Annotated[str, Field(min_length=1, max_length=MAX_CHANNEL_NAME_LENGTH)]


class DelayIn(BaseModel):
    """A ``delay`` step: no delivery is sent before ``until`` or ``seconds`` from now."""

    model_config = ConfigDict(extra="forbid")

    until: AwareDatetime | None = Field(
        None, description="RFC 3339 time with a zone, at most 90 days ahead."
    )
    seconds: float | None = Field(None, gt=0, le=MAX_DELAY_SECONDS)

    @model_validator(mode="after")
    def _one(self) -> "DelayIn":
        if (self.until is None) == (self.seconds is None):
            raise ValueError("give one of until and seconds")
        return self


class EscalateIn(BaseModel):
    """An ``escalate`` step: the deliveries on ``channels`` go ``after`` seconds, and only if
    the user's in-app notification of the message was not ``unless`` by then."""

    model_config = ConfigDict(extra="forbid")

    after: float = Field(gt=0, le=MAX_DELAY_SECONDS, description="Seconds to wait.")
    unless: Literal["seen", "read", "acked"] = Field(
        "seen", description="What of the in-app notification makes the escalation unneeded."
    )
    channels: list[ChannelName] = Field(
        min_length=1,
        max_length=MAX_CHANNELS_PER_MESSAGE,
        description="Channels of the message (not in_app) sent only then.",
    )

    def escalation(self) -> Escalation:
        return Escalation(self.after, self.unless, tuple(dict.fromkeys(self.channels)))


class DigestIn(BaseModel):
    """A ``digest`` step: the deliveries on ``channels`` of messages with this ``key`` to one
    user within ``window`` seconds of the first go as one per channel when it closes, the
    template rendered over all of them (``items``, ``count``)."""

    model_config = ConfigDict(extra="forbid")

    key: str = Field(
        min_length=1,
        max_length=MAX_DIGEST_KEY_LENGTH,
        description="Messages with one key to one user are digested together.",
    )
    window: float = Field(
        gt=0, le=MAX_DELAY_SECONDS, description="Seconds from the first message to the send."
    )
    channels: list[ChannelName] | None = Field(
        None,
        min_length=1,
        max_length=MAX_CHANNELS_PER_MESSAGE,
        description="Channels digested (default: the message's, but in_app).",
    )

    def digest(self, channels: Sequence[str]) -> Digest:
        """The step, for a message on ``channels``."""
        chosen = self.channels or [c for c in channels if c != "in_app"]
        return Digest(self.key, self.window, tuple(dict.fromkeys(chosen)))
