"""Deciding, for each (recipient, channel) of a new message, whether it is queued or why not.

Pure functions: the stores call :func:`plan` inside the transaction that writes the message, with
the recipients' preferences and recent delivery counts read in that same transaction, so two
messages created at once cannot both pass a user's rate limit.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from tidings.delivery.models import (
    DELETED,
    FAILED,
    PENDING,
    NewMessage,
    PlannedDelivery,
    QuietHours,
)
from tidings.errors import ConfigurationError, InvalidAddress

_PERIODS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}
_LIMIT = re.compile(r"^\s*(\d+)\s*/\s*(\d+(?:\.\d+)?|second|minute|hour|day)\s*$")


@dataclass(frozen=True, slots=True)
class RateLimit:
    """At most ``count`` deliveries per user within ``period`` seconds."""

    count: int
    period: float

    def since(self, now: datetime) -> datetime:
        return now - timedelta(seconds=self.period)


def parse_rate_limits(
    spec: Mapping[str, str], channels: Iterable[str] | None = None
) -> dict[str, RateLimit]:
    """``{"email": "20/hour"}`` → ``{"email": RateLimit(20, 3600)}``.

    ``channels``: the names a limit may be set for (``None``: any name; the pipeline checks
    them when it starts, once it knows every channel).

    Raises:
        ConfigurationError: an unknown channel or a malformed limit.
    """
    known = None if channels is None else set(channels)
    limits: dict[str, RateLimit] = {}
    for channel, text in spec.items():
        if known is not None and channel not in known:
            raise ConfigurationError(f"rate limit for unknown channel {channel!r}")
        match = _LIMIT.match(str(text))
        if match is None:
            raise ConfigurationError(
                f"rate limit {text!r} for {channel}: expected N/second|minute|hour|day or "
                "N/<seconds>"
            )
        count, period = match.groups()
        seconds = _PERIODS.get(period) or float(period)
        if seconds <= 0:
            raise ConfigurationError(f"rate limit period of {channel} must be positive")
        limits[channel] = RateLimit(int(count), float(seconds))
    return limits


#: validates a contact point for a channel; raises InvalidAddress
Validator = Callable[[str, Any], Any]


@dataclass(frozen=True, slots=True)
class Recipient:
    """What the planner needs to know of one user, read in the message's transaction."""

    user_id: str
    #: channel → enabled (missing: enabled)
    switches: Mapping[str, bool]
    contacts: Mapping[str, Any]
    #: channel → deliveries counted against the limit within its period
    recent: Mapping[str, int]
    #: the user's quiet hours, if any
    quiet: QuietHours | None = None
    #: channel → the delivery of the user's open digest with the message's digest key
    digests: Mapping[str, str] = field(default_factory=dict)
    #: the channels the user turned off for the message's category
    muted: frozenset[str] = frozenset()


def plan(
    message: NewMessage,
    recipients: Iterable[Recipient],
    *,
    limits: Mapping[str, RateLimit],
    available: Mapping[str, bool],
    needs_address: Mapping[str, bool],
    validate: Validator,
) -> list[PlannedDelivery]:
    """One :class:`PlannedDelivery` per (recipient, channel), in recipient then channel order."""
    planned: list[PlannedDelivery] = []
    for recipient in recipients:
        for channel in message.channels:
            planned.append(
                _plan_one(message, recipient, channel, limits, available, needs_address, validate)
            )
    return planned


def _plan_one(
    message: NewMessage,
    recipient: Recipient,
    channel: str,
    limits: Mapping[str, RateLimit],
    available: Mapping[str, bool],
    needs_address: Mapping[str, bool],
    validate: Validator,
) -> PlannedDelivery:
    user = recipient.user_id

    def refuse(state: str, reason: str, detail: str | None = None) -> PlannedDelivery:
        return PlannedDelivery(user, channel, state, reason, detail=detail)

    if not available.get(channel, False):
        return refuse(FAILED, "channel_unavailable", f"no provider is configured for {channel}")
    if not recipient.switches.get(channel, True):
        return refuse(DELETED, "channel_disabled", f"the user turned {channel} off")
    if channel in recipient.muted:
        detail = f"the user turned {message.category} off on {channel}"
        return refuse(DELETED, "category_disabled", detail)
    address = None
    if needs_address.get(channel, True):
        raw = recipient.contacts.get(channel)
        if raw is None:
            return refuse(FAILED, "no_address", f"the user has no {channel} contact point")
        try:
            address = validate(channel, raw)
        except InvalidAddress as exc:
            return refuse(FAILED, "invalid_address", str(exc))
    limit = limits.get(channel)
    over = limit is not None and recipient.recent.get(channel, 0) >= limit.count
    if limit is not None and over and not message.critical:
        return refuse(
            FAILED,
            "rate_limited",
            f"{limit.count} {channel} deliveries per {limit.period:g} s already reached",
        )
    return PlannedDelivery(user, channel, PENDING, "queued", address=address)


def counted_channels(message: NewMessage, limits: Mapping[str, RateLimit]) -> list[str]:
    """The message's channels whose recent deliveries the store must count."""
    return [channel for channel in message.channels if channel in limits]
