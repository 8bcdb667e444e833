"""When a message's deliveries may go out (delivery/steps.py): the delay step's bounds, a
user's quiet hours in their time zone across daylight-saving changes (the IANA database through
``zoneinfo`` decides the offsets), and which deliveries wait for what."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from tidings.core.models import NotificationState
from tidings.delivery.models import (
    PENDING,
    Claim,
    Digest,
    Escalation,
    PlannedDelivery,
    QuietHours,
)
from tidings.delivery.steps import (
    DELAYED,
    DIGEST,
    DIGESTED,
    ESCALATION,
    QUIET_HOURS,
    check_digest,
    check_escalation,
    check_quiet_hours,
    digest_values,
    escalation_met,
    quiet_until,
    scheduled,
    send_time,
)
from tidings.errors import InvalidArgument

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
NIGHT = QuietHours("Europe/Paris", "22:00", "07:00")


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def test_delay_seconds_and_until_within_bounds() -> None:
    assert send_time(until=None, seconds=None, now=NOW) is None
    assert send_time(until=None, seconds=90, now=NOW) == NOW + timedelta(seconds=90)
    plus_one = timezone(timedelta(hours=1))
    until = datetime(2026, 12, 24, 18, 0, tzinfo=plus_one)
    assert send_time(until=until, seconds=None, now=NOW) == utc(2026, 12, 24, 17, 0)
    # Up to a minute in the past is "now" (clocks differ).
    assert send_time(until=NOW - timedelta(seconds=30), seconds=None, now=NOW) == NOW


@pytest.mark.parametrize(
    ("until", "seconds", "named"),
    [
        (NOW, 5.0, "one of until and seconds"),
        (None, 0.0, "delay.seconds"),
        (None, 91 * 86400.0, "delay.seconds"),
        (datetime(2026, 12, 24, 18, 0), None, "delay.until needs a time zone"),
        (NOW - timedelta(minutes=2), None, "delay.until is in the past"),
        (NOW + timedelta(days=91), None, "delay.until is more than 90 days ahead"),
    ],
)
def test_delay_out_of_range_is_refused_naming_the_field(
    until: datetime | None, seconds: float | None, named: str
) -> None:
    with pytest.raises(InvalidArgument, match=named):
        send_time(until=until, seconds=seconds, now=NOW)


def test_quiet_hours_are_checked_and_put_in_normal_form() -> None:
    assert check_quiet_hours("Europe/Paris", "7:05", "22:00") == QuietHours(
        "Europe/Paris", "07:05", "22:00"
    )
    assert check_quiet_hours("Asia/Kolkata", "22:00:30", "06:00:00").end == "06:00"
    assert check_quiet_hours("Asia/Kolkata", "22:00:30", "06:00:00").start == "22:00:30"
    for zone, start, end, named in [
        ("Mars/Olympus", "22:00", "07:00", "timezone"),
        ("", "22:00", "07:00", "timezone"),
        ("../../etc/passwd", "22:00", "07:00", "timezone"),
        ("Europe/Paris", "24:00", "07:00", "start"),
        ("Europe/Paris", "22:00", "7", "end"),
        ("Europe/Paris", "22:00", "22:00", "end"),
    ]:
        with pytest.raises(InvalidArgument, match=named):
            check_quiet_hours(zone, start, end)


def test_a_night_window_ends_the_next_morning_in_the_users_zone() -> None:
    # 23:30 in Paris (UTC+1 in December) is inside 22:00-07:00; it ends at 07:00 Paris.
    assert quiet_until(utc(2026, 12, 6, 22, 30), NIGHT) == utc(2026, 12, 7, 6, 0)
    # 05:00 Paris, the same window, the same morning.
    assert quiet_until(utc(2026, 12, 7, 4, 0), NIGHT) == utc(2026, 12, 7, 6, 0)
    # Noon in Paris is outside it.
    assert quiet_until(utc(2026, 12, 7, 11, 0), NIGHT) is None
    # 07:00 sharp is outside (the window ends then); 22:00 sharp is inside.
    assert quiet_until(utc(2026, 12, 7, 6, 0), NIGHT) is None
    assert quiet_until(utc(2026, 12, 7, 21, 0), NIGHT) == utc(2026, 12, 8, 6, 0)


def test_a_window_stored_in_a_zone_unknown_here_holds_nothing_back() -> None:
    """A zone the time zone database does not know (written by other means, or dropped by a
    tzdata update) does not fail the message: the window is ignored."""
    assert (
        quiet_until(utc(2026, 12, 6, 23, 0), QuietHours("Mars/Olympus", "22:00", "07:00")) is None
    )


def test_a_daytime_window_and_another_zone() -> None:
    lunch = QuietHours("America/New_York", "12:00", "13:30")
    assert quiet_until(utc(2026, 12, 7, 17, 15), lunch) == utc(2026, 12, 7, 18, 30)  # 12:15 EST
    assert quiet_until(utc(2026, 12, 7, 16, 59), lunch) is None  # 11:59 EST


def test_the_window_follows_the_wall_clock_across_daylight_saving_changes() -> None:
    # Paris leaves summer time in the night of 24 to 25 October 2026 (03:00 CEST -> 02:00 CET):
    # 23:00 CEST is 21:00 UTC; 07:00 CET the next morning is 06:00 UTC (a night of nine hours).
    assert quiet_until(utc(2026, 10, 24, 21, 0), NIGHT) == utc(2026, 10, 25, 6, 0)
    # ... and enters it in the night of 28 to 29 March 2026 (02:00 CET -> 03:00 CEST): 23:00
    # CET is 22:00 UTC; 07:00 CEST is 05:00 UTC (a night of seven hours).
    assert quiet_until(utc(2026, 3, 28, 22, 0), NIGHT) == utc(2026, 3, 29, 5, 0)
    # New York on 8 March 2026 (02:00 EST -> 03:00 EDT): 22:00 EST on the 7th is 03:00 UTC
    # on the 8th; 07:00 EDT is 11:00 UTC.
    new_york = QuietHours("America/New_York", "22:00", "07:00")
    assert quiet_until(utc(2026, 3, 8, 3, 0), new_york) == utc(2026, 3, 8, 11, 0)


def planned(user: str, channel: str, state: str = PENDING) -> PlannedDelivery:
    return PlannedDelivery(user, channel, state, "queued" if state == PENDING else "no_address")


def test_what_waits_for_what() -> None:
    items = [
        planned("ann", "email"),
        planned("ann", "in_app"),
        planned("bob", "email"),
        planned("ann", "sms", state="failed"),
    ]
    night = utc(2026, 12, 6, 23, 0)  # midnight in Paris
    # Ann has quiet hours: her email waits until 07:00 Paris; in-app and Bob's go at once.
    out = scheduled(items, None, {"ann": NIGHT}, critical=False, now=night)
    assert (out[0].reason, out[0].not_before) == (QUIET_HOURS, utc(2026, 12, 7, 6, 0))
    assert out[0].detail == "until 2026-12-07T06:00:00.000000Z"
    assert out[1] == items[1] and out[2] == items[2] and out[3] == items[3]
    # Critical messages do not wait for quiet hours.
    assert scheduled(items, None, {"ann": NIGHT}, critical=True, now=night) == items
    # A delay into the quiet window waits on to its end; a delay past it only for itself.
    into = scheduled(items, utc(2026, 12, 7, 5, 0), {"ann": NIGHT}, critical=False, now=night)
    assert (into[0].reason, into[0].not_before) == (QUIET_HOURS, utc(2026, 12, 7, 6, 0))
    assert (into[2].reason, into[2].not_before) == (DELAYED, utc(2026, 12, 7, 5, 0))
    assert (into[1].reason, into[1].not_before) == (DELAYED, utc(2026, 12, 7, 5, 0))
    past = scheduled(items, utc(2026, 12, 7, 9, 0), {"ann": NIGHT}, critical=False, now=night)
    assert (past[0].reason, past[0].not_before) == (DELAYED, utc(2026, 12, 7, 9, 0))
    assert past[3] == items[3]  # refused deliveries stay as they are


def test_an_escalation_waits_after_the_send_time_then_for_quiet_hours() -> None:
    escalate = Escalation(120.0, "seen", ("email",))
    items = [planned("ann", "in_app"), planned("ann", "email"), planned("ann", "sms")]
    out = scheduled(items, None, {}, critical=False, now=NOW, escalate=escalate)
    assert out[0] == items[0] and out[2] == items[2]
    assert (out[1].reason, out[1].not_before) == (ESCALATION, NOW + timedelta(seconds=120))
    later = scheduled(
        items, NOW + timedelta(hours=1), {}, critical=False, now=NOW, escalate=escalate
    )
    assert later[1].not_before == NOW + timedelta(hours=1, seconds=120)
    assert (later[0].reason, later[0].not_before) == (DELAYED, NOW + timedelta(hours=1))
    night = utc(2026, 12, 6, 22, 59)  # 23:59 in Paris: the escalation falls in quiet hours
    quiet = scheduled(items, None, {"ann": NIGHT}, critical=False, now=night, escalate=escalate)
    assert (quiet[1].reason, quiet[1].not_before) == (QUIET_HOURS, utc(2026, 12, 7, 6, 0))


def test_an_escalation_that_cannot_apply_is_refused_naming_the_field() -> None:
    check_escalation(("in_app", "email"), Escalation(60.0, "read", ("email",)))
    check_escalation(("email",), None)
    for channels, escalate, named in [
        (("email",), Escalation(60.0, "seen", ("email",)), "in_app"),
        (("in_app", "email"), Escalation(60.0, "seen", ("in_app",)), "escalate.channels"),
        (("in_app", "email"), Escalation(60.0, "seen", ("sms",)), "escalate.channels"),
        (("in_app", "email"), Escalation(60.0, "seen", ()), "escalate.channels"),
        (("in_app", "email"), Escalation(0.0, "seen", ("email",)), "escalate.after"),
        (("in_app", "email"), Escalation(60.0, "opened", ("email",)), "escalate.unless"),
    ]:
        with pytest.raises(InvalidArgument, match=named):
            check_escalation(channels, escalate)


def test_a_digest_opens_or_joins_then_waits_for_quiet_hours() -> None:
    digest = Digest("comments", 600.0, ("email",))
    items = [planned("ann", "in_app"), planned("ann", "email"), planned("bob", "email")]
    # Ann has a digest of the key open on email (its delivery d-9); Bob has none.
    out = scheduled(
        items, None, {}, critical=False, now=NOW, digest=digest, digests={"ann": {"email": "d-9"}}
    )
    assert out[0] == items[0]  # in_app is not in the digest's channels
    assert (out[1].reason, out[1].into, out[1].digest_key) == (DIGESTED, "d-9", "comments")
    assert out[1].not_before is None and not out[1].queued  # no outbox row of its own
    assert out[1].detail == "sent in the digest of delivery d-9"
    assert (out[2].reason, out[2].not_before) == (DIGEST, NOW + timedelta(seconds=600))
    assert out[2].queued and out[2].into is None and out[2].digest_key == "comments"
    # A window that closes inside quiet hours waits on to their end (and gathers until then).
    night = utc(2026, 12, 6, 20, 55)  # 21:55 in Paris: the window closes at 22:05
    quiet = scheduled(items, None, {"bob": NIGHT}, critical=False, now=night, digest=digest)
    assert (quiet[2].reason, quiet[2].not_before) == (QUIET_HOURS, utc(2026, 12, 7, 6, 0))
    assert quiet[2].digest_key == "comments"


def test_a_digest_that_cannot_apply_is_refused_naming_the_field() -> None:
    check_digest(("in_app", "email"), Digest("k", 60.0, ("email",)), escalate=None, send_at=None)
    check_digest(("email",), None, escalate=None, send_at=NOW)
    escalate = Escalation(60.0, "seen", ("sms",))
    check_digest(
        ("in_app", "email", "sms"), Digest("k", 60.0, ("email",)), escalate=escalate, send_at=None
    )
    for channels, digest, named in [
        (("email",), Digest("", 60.0, ("email",)), "digest.key"),
        (("email",), Digest("k" * 129, 60.0, ("email",)), "digest.key"),
        (("email",), Digest("a\nb", 60.0, ("email",)), "digest.key"),
        (("email",), Digest("k", 0.0, ("email",)), "digest.window"),
        (("email",), Digest("k", 91 * 86400.0, ("email",)), "digest.window"),
        (("email",), Digest("k", 60.0, ()), "digest.channels"),
        (("email",), Digest("k", 60.0, ("sms",)), "digest.channels"),
        (("in_app", "sms"), Digest("k", 60.0, ("sms",)), "digest.channels"),  # escalate's
        (("in_app", "email", "sms"), Digest("k", 60.0, ("in_app",)), "digest.channels"),
    ]:
        with pytest.raises(InvalidArgument, match=named):
            check_digest(
                channels, digest, escalate=escalate if "in_app" in channels else None, send_at=None
            )
    with pytest.raises(InvalidArgument, match="delay"):
        check_digest(("email",), Digest("k", 60.0, ("email",)), escalate=None, send_at=NOW)


def test_a_digest_renders_with_its_items_and_count() -> None:
    values = digest_values({"post": "p-1"}, [{"n": 1}, {"n": 2}])
    assert values == {"post": "p-1", "items": [{"n": 1}, {"n": 2}], "count": 2}
    assert digest_values(["not", "an", "object"], [1]) == {"items": [1], "count": 1}


class States:
    def __init__(self, state: NotificationState | None) -> None:
        self.state = state
        self.asked: list[tuple[str, str]] = []

    async def notification_state(self, user_id: str, notification_id: str) -> Any:
        self.asked.append((user_id, notification_id))
        return self.state


def claim(channel: str, escalate: Escalation | None, in_app: str | None = "d-1") -> Claim:
    return Claim("d-2", "m-1", "ann", channel, None, 1, None, None, {}, False, escalate, in_app)


async def test_the_in_app_notifications_state_decides_an_escalation() -> None:
    seen = NotificationState(NOW, None, False)
    for unless, state, met in [
        ("seen", seen, True),
        ("read", seen, False),
        ("read", NotificationState(NOW, NOW, False), True),
        ("acked", seen, False),
        ("acked", NotificationState(None, None, True), True),
        ("seen", NotificationState(None, None, True), False),
        ("seen", None, False),  # no in-app notification (never delivered): never seen
    ]:
        store = States(state)
        found = await escalation_met(claim("email", Escalation(5.0, unless, ("email",))), store)
        assert (found is not None) == met, (unless, state)
        assert store.asked == [("ann", "pipeline-d-1")]
    untouched = States(seen)
    assert (
        await escalation_met(claim("sms", Escalation(5.0, "seen", ("email",))), untouched) is None
    )
    assert await escalation_met(claim("email", None), untouched) is None
    assert untouched.asked == []
