"""A message's steps, and a user's quiet hours: when its deliveries may be sent.

``delay``: no delivery of the message is sent before a time (``until``) or a number of
seconds after it was posted (``seconds``). The time is kept in the outbox row of each delivery
(``available_at``), which the workers claim only once due, with leases, on any node: a delayed
message survives a restart or a SIGKILL and is sent once, by one node (nothing waits in
memory).

``digest``: the deliveries on its channels of messages with one key to one user within a window
become one delivery per channel. The first message opens the digest: its delivery waits until
the window closes (reason ``digest``). A later message joins while that delivery still waits
unclaimed: its own delivery gets no outbox row (reason ``digested``) and ends as the digest's
ends. The worker renders the digest's template over every message in it (``items``).

Quiet hours: a user's daily window (in their time zone) in which nothing but in-app
notifications and ``critical`` messages is sent; a delivery that would go out inside it waits
until the window ends, by the wall clock of the user's zone (across DST changes).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime, time, timedelta
from typing import Any, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from tidings.core.limits import MAX_DELAY_SECONDS, MAX_DIGEST_KEY_LENGTH
from tidings.core.models import NotificationState, isoformat
from tidings.delivery.models import (
    ESCALATE_UNLESS,
    Claim,
    Digest,
    Escalation,
    PlannedDelivery,
    QuietHours,
)
from tidings.errors import InvalidArgument

logger = logging.getLogger("tidings.delivery")

#: the reason of a queued delivery's first history entry when it waits for its time
DELAYED = "delayed"
#: ... when it waits for the end of its user's quiet hours
QUIET_HOURS = "quiet_hours"
#: ... when it waits to see whether the in-app notification is seen in time
ESCALATION = "escalation"
#: the reason a delivery of an escalate step was not sent: the condition was met in time
ESCALATION_SKIPPED = "escalation_skipped"
#: ... when it opens a digest and waits for its window to close
DIGEST = "digest"
#: ... when it is sent in another delivery's digest (it has no outbox row of its own)
DIGESTED = "digested"

#: how far in the past an ``until`` may lie and still mean "now" (clocks of services differ)
CLOCK_SKEW = timedelta(seconds=60)


def send_time(*, until: datetime | None, seconds: float | None, now: datetime) -> datetime | None:
    """When a message with a ``delay`` step may first be sent (None: no delay).

    Raises:
        InvalidArgument: both or neither of ``until`` and ``seconds``; ``until`` without a
            time zone, more than a minute in the past or more than 90 days ahead; ``seconds``
            not above 0 or more than 90 days. The message names the field.
    """
    if until is None and seconds is None:
        return None
    if until is not None and seconds is not None:
        raise InvalidArgument("delay: give one of until and seconds")
    longest = timedelta(seconds=MAX_DELAY_SECONDS)
    if seconds is not None:
        if not 0 < seconds <= MAX_DELAY_SECONDS:
            raise InvalidArgument(f"delay.seconds must be above 0 and at most {MAX_DELAY_SECONDS}")
        return now + timedelta(seconds=seconds)
    assert until is not None
    if until.tzinfo is None or until.utcoffset() is None:
        raise InvalidArgument("delay.until needs a time zone (e.g. 2026-12-24T18:00:00Z)")
    if until < now - CLOCK_SKEW:
        raise InvalidArgument("delay.until is in the past")
    if until > now + longest:
        raise InvalidArgument("delay.until is more than 90 days ahead")
    return max(until.astimezone(UTC), now)


def scheduled(
    planned: list[PlannedDelivery],
    send_at: datetime | None,
    quiet: Mapping[str, QuietHours],
    *,
    critical: bool,
    now: datetime,
    escalate: Escalation | None = None,
    digest: Digest | None = None,
    digests: Mapping[str, Mapping[str, str]] | None = None,
) -> list[PlannedDelivery]:
    """The planned deliveries with their times: those to be sent wait until ``send_at`` (the
    reason ``delayed``); those on an ``escalate`` step's channels ``after`` seconds more (the
    reason ``escalation``: the worker then sends them only if the in-app notification was not
    seen, read or acknowledged); those on a ``digest`` step's channels join their user's open
    digest of the key (``digests``: user id → channel → its delivery; reason ``digested``) or
    open one and wait for its window (reason ``digest``); then, unless the message is critical
    or the channel is ``in_app``, until the end of their user's quiet hours (``quiet`` by user
    id; the reason ``quiet_hours``); the first history entry says until when. The stores put
    the time in the outbox rows."""
    if send_at is None and not quiet and escalate is None and digest is None:
        return planned
    result: list[PlannedDelivery] = []
    for p in planned:
        if not p.queued:
            result.append(p)
            continue
        when, reason = send_at, DELAYED
        if escalate is not None and p.channel in escalate.channels:
            when = (send_at or now) + timedelta(seconds=escalate.after)
            reason = ESCALATION
        if digest is not None and p.channel in digest.channels:
            into = (digests or {}).get(p.user_id, {}).get(p.channel)
            if into is not None:
                detail = f"sent in the digest of delivery {into}"
                result.append(
                    replace(p, reason=DIGESTED, detail=detail, digest_key=digest.key, into=into)
                )
                continue
            when, reason = now + timedelta(seconds=digest.window), DIGEST
            p = replace(p, digest_key=digest.key)
        hours = quiet.get(p.user_id)
        if hours is not None and not critical and p.channel != "in_app":
            ends = quiet_until(when or now, hours)
            if ends is not None:
                when, reason = ends, QUIET_HOURS
        if when is None:
            result.append(p)
        else:
            result.append(
                replace(p, reason=reason, detail=f"until {isoformat(when)}", not_before=when)
            )
    return result


def check_escalation(channels: Sequence[str], escalate: Escalation | None) -> None:
    """Raises InvalidArgument (naming the field) when an ``escalate`` step cannot apply: no
    ``in_app`` channel to watch, channels that are not the message's or are ``in_app``, an
    ``after`` out of range, an unknown ``unless``."""
    if escalate is None:
        return
    if "in_app" not in channels:
        raise InvalidArgument("escalate: the message's channels must include in_app to watch")
    if not escalate.channels:
        raise InvalidArgument("escalate.channels: name at least one channel")
    for channel in escalate.channels:
        if channel == "in_app" or channel not in channels:
            raise InvalidArgument(
                f"escalate.channels: {channel!r} must be one of the message's channels, "
                "other than in_app"
            )
    if not 0 < escalate.after <= MAX_DELAY_SECONDS:
        raise InvalidArgument(f"escalate.after must be above 0 and at most {MAX_DELAY_SECONDS}")
    if escalate.unless not in ESCALATE_UNLESS:
        raise InvalidArgument(f"escalate.unless must be one of {', '.join(ESCALATE_UNLESS)}")


def check_digest(
    channels: Sequence[str],
    digest: Digest | None,
    *,
    escalate: Escalation | None,
    send_at: datetime | None,
) -> None:
    """Raises InvalidArgument (naming the field) when a ``digest`` step cannot apply: a key
    not 1 to 128 printable characters, a window out of range, channels that are not the
    message's, a ``delay`` beside it (a digest waits for its window), or channels an
    ``escalate`` step sends or watches (in_app)."""
    if digest is None:
        return
    key = digest.key
    if (
        not isinstance(key, str)
        or not 0 < len(key) <= MAX_DIGEST_KEY_LENGTH
        or not key.isprintable()
    ):
        raise InvalidArgument(f"digest.key: 1 to {MAX_DIGEST_KEY_LENGTH} printable characters")
    if not 0 < digest.window <= MAX_DELAY_SECONDS:
        raise InvalidArgument(f"digest.window must be above 0 and at most {MAX_DELAY_SECONDS}")
    if not digest.channels:
        raise InvalidArgument(
            "digest.channels: name at least one channel (in_app is digested only when named)"
        )
    for channel in digest.channels:
        if channel not in channels:
            raise InvalidArgument(
                f"digest.channels: {channel!r} must be one of the message's channels"
            )
    if send_at is not None:
        raise InvalidArgument("delay: a digest waits for its window; give no delay with it")
    if escalate is not None and (
        "in_app" in digest.channels or set(digest.channels) & set(escalate.channels)
    ):
        raise InvalidArgument(
            "digest.channels: the channels escalate sends, and the in-app notification it "
            "watches, cannot be digested"
        )


def digest_values(data: Any, items: Sequence[Any]) -> dict[str, Any]:
    """What a digest's template is rendered with: the first message's values (when they are
    an object), ``items`` (each message's values, oldest first) and ``count``."""
    values = dict(data) if isinstance(data, dict) else {}
    values.update(items=list(items), count=len(items))
    return values


def check_quiet_hours(timezone: str, start: str, end: str) -> QuietHours:
    """Quiet hours in normal form (``HH:MM``, or ``HH:MM:SS`` when the seconds matter).

    Raises:
        InvalidArgument: an unknown time zone, a time not ``HH:MM[:SS]`` (00:00 to 23:59:59),
            or a window of no length; the message names the field.
    """
    if not isinstance(timezone, str) or not 0 < len(timezone) <= 64:
        raise InvalidArgument("timezone: an IANA time zone name, e.g. Europe/Paris")
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidArgument(
            f"timezone: unknown time zone {timezone!r} (an IANA name, e.g. Europe/Paris)"
        ) from None
    times = []
    for name, value in (("start", start), ("end", end)):
        match = _HHMM.fullmatch(value) if isinstance(value, str) else None
        if match is None:
            raise InvalidArgument(f"{name}: a time of day as HH:MM (or HH:MM:SS), e.g. 22:00")
        seconds = f":{match[3]}" if match[3] and match[3] != "00" else ""
        times.append(f"{int(match[1]):02d}:{match[2]}{seconds}")
    if times[0] == times[1]:
        raise InvalidArgument("end: quiet hours must end at another time than they start")
    return QuietHours(timezone, times[0], times[1])


def quiet_until(at: datetime, hours: QuietHours) -> datetime | None:
    """The end of the quiet window ``at`` falls in (in UTC), or None when it falls outside,
    or when the stored zone is not known here (a time zone database without it; logged: the
    message is sent rather than refused)."""
    try:
        zone = ZoneInfo(hours.timezone)
    except (ZoneInfoNotFoundError, ValueError):
        logger.warning("quiet hours in unknown time zone %r ignored", hours.timezone)
        return None
    local = at.astimezone(zone)
    start, end = _clock(hours.start), _clock(hours.end)
    now = local.time().replace(tzinfo=None)
    if start < end:
        inside, ends_on = start <= now < end, local.date()
    else:  # the window passes midnight
        inside = now >= start or now < end
        ends_on = local.date() + timedelta(days=1) if now >= start else local.date()
    if not inside:
        return None
    # The wall-clock end in the user's zone (fold 0: the first of a repeated hour; a time the
    # clocks skip maps past the gap), then UTC.
    return datetime.combine(ends_on, end, tzinfo=zone).astimezone(UTC)


def _clock(text: str) -> time:
    parts = [int(part) for part in text.split(":")]
    return time(parts[0], parts[1], parts[2] if len(parts) > 2 else 0)


_HHMM = re.compile(r"([01]?\d|2[0-3]):([0-5]\d)(?::([0-5]\d))?")


class NotificationStates(Protocol):
    """What :func:`escalation_met` reads of the node's store."""

    async def notification_state(
        self, user_id: str, notification_id: str
    ) -> NotificationState | None: ...


async def escalation_met(claim: Claim, store: NotificationStates) -> str | None:
    """Why a delivery of an ``escalate`` step is not to be sent: the user's in-app
    notification of the message was seen, read or acknowledged (as the step asks) by now (the
    words for its history), or None to send it (also when the in-app notification does not
    exist: it was never delivered, so never seen)."""
    escalate = claim.escalate
    if escalate is None or claim.channel not in escalate.channels:
        return None
    if claim.in_app_delivery is None:
        return None
    state = await store.notification_state(claim.user_id, f"pipeline-{claim.in_app_delivery}")
    if state is None:
        return None
    if escalate.unless == "seen" and state.seen_date is not None:
        return f"the in-app notification was seen at {isoformat(state.seen_date)}"
    if escalate.unless == "read" and state.read_date is not None:
        return f"the in-app notification was read at {isoformat(state.read_date)}"
    if escalate.unless == "acked" and state.acked:
        return "a device acknowledged the in-app notification"
    return None
