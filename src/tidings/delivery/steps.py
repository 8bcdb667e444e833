"""A message's steps: when its deliveries may be sent.

``delay``: no delivery of the message is sent before a time (``until``) or a number of
seconds after it was posted (``seconds``). The time is kept in the outbox row of each delivery
(``available_at``), which the workers claim only once due, with leases, on any node: a delayed
message survives a restart or a SIGKILL and is sent once, by one node (nothing waits in
memory).
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from tidings.core.limits import MAX_DELAY_SECONDS
from tidings.core.models import isoformat
from tidings.delivery.models import PlannedDelivery
from tidings.errors import InvalidArgument

#: the reason of a queued delivery's first history entry when it waits for its time
DELAYED = "delayed"

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


def delayed(planned: list[PlannedDelivery], send_at: datetime | None) -> list[PlannedDelivery]:
    """The planned deliveries, those to be sent marked as waiting until ``send_at``
    (``delayed``, ``until <time>`` in their first history entry); the stores put ``send_at``
    in their outbox rows."""
    if send_at is None:
        return planned
    detail = f"until {isoformat(send_at)}"
    return [replace(p, reason=DELAYED, detail=detail) if p.queued else p for p in planned]
