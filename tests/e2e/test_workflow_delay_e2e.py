"""The ``delay`` step of a message (docs/pipeline.md, "Steps"), end to end on real processes:
``tidings serve`` on PostgreSQL with its workers, email to an aiosmtpd sink.

A delayed message is not sent before its time, survives its node's SIGKILL (the time is in
the store's outbox, not in memory) and is sent once by the node that takes over; a delay out of
range or contradicting itself is refused (422 naming the field) and writes nothing.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
from pipeline_support import (
    SmtpSink,
    api_client,
    delivery,
    get_message,
    post_message,
    sink,
    wait_message,
)

from conftest import ServerProcess, device_token

DELAY = 3.0  # seconds a message waits: long enough to kill and restart its node meanwhile
PIPELINE = {
    "TIDINGS_PIPELINE_POLL_INTERVAL": "0.1",
    "TIDINGS_PIPELINE_RETRY_BASE": "0.2",
    "TIDINGS_PIPELINE_RETRY_MAX": "0.5",
}


def email_user(http: httpx.Client) -> tuple[str, str]:
    user = f"delayed-{uuid.uuid4().hex[:10]}"
    address = f"{user}@example.org"
    response = http.put(f"/users/{user}/contacts/email", json={"address": address})
    assert response.status_code < 300, response.text
    return user, address


def email_to(user: str, **extra: Any) -> dict[str, Any]:
    return {
        "recipients": {"user_ids": [user]},
        "channels": ["email"],
        "content": {"subject": "Later", "text": "Sent when it was due"},
        **extra,
    }


def in_app_to(user: str, **extra: Any) -> dict[str, Any]:
    return {
        "recipients": {"user_ids": [user]},
        "channels": ["in_app"],
        "content": {"text": "Later"},
        **extra,
    }


@pytest.mark.slow
def test_a_delayed_message_waits_survives_a_sigkill_and_is_sent_once(
    postgres_url: str, start_server: Callable[..., ServerProcess], sink: SmtpSink
) -> None:
    """Posted with ``delay: {seconds: 3}``: pending with the reason ``delayed`` and its time;
    its node is SIGKILLed at once; nothing reaches the SMTP server before the time; a new node
    on the same store sends it once after it."""
    env = {"TIDINGS_STORE": postgres_url, "TIDINGS_SMTP_URL": sink.url, **PIPELINE}
    first = start_server(**env)
    token = first.service_token("messages")  # the message's client, on either node
    with api_client(first, token) as http:
        user, address = email_user(http)
        posted_at = datetime.now(UTC)
        message = post_message(http, email_to(user, delay={"seconds": DELAY}))
        pending = delivery(get_message(http, message["message_id"]), user, "email")
    first.kill()
    assert pending["state"] == "pending"
    entry = pending["history"][0]
    assert (entry["state"], entry["reason"]) == ("pending", "delayed"), entry
    due = datetime.fromisoformat(entry["detail"].removeprefix("until ").replace("Z", "+00:00"))
    assert (
        posted_at + timedelta(seconds=DELAY - 0.5) < due < posted_at + timedelta(seconds=DELAY + 2)
    )

    second = start_server(**env)
    with api_client(second, token) as http:
        while datetime.now(UTC) < due - timedelta(seconds=0.3):
            assert not sink.records(address=address), "sent before its time"
            time.sleep(0.05)
        done = wait_message(http, message["message_id"], timeout=20)
        sent = delivery(done, user, "email")
        assert sent["state"] == "sent", sent
        assert datetime.fromisoformat(sent["sent_at"].replace("Z", "+00:00")) >= due
        time.sleep(1.0)  # a second send would come within the poll interval
        assert len(sink.accepted(address=address)) == 1, sink.records(address=address)


@pytest.mark.slow
def test_a_timer_due_while_its_node_is_dead_fires_once_on_the_other_node(
    postgres_url: str, start_server: Callable[..., ServerProcess], sink: SmtpSink
) -> None:
    """Two nodes with workers on one PostgreSQL store: ten messages delayed 2 s posted to
    the first, which is SIGKILLed at once; the second node sends each once, none early."""
    env = {"TIDINGS_STORE": postgres_url, "TIDINGS_SMTP_URL": sink.url, **PIPELINE}
    doomed, survivor = start_server(**env), start_server(**env)
    token = doomed.service_token("messages")
    with api_client(doomed, token) as http:
        users = [email_user(http) for _ in range(10)]
        due = datetime.now(UTC) + timedelta(seconds=1.8)  # before the first one's time
        posted = [post_message(http, email_to(user, delay={"seconds": 2.0})) for user, _ in users]
    doomed.kill()
    with api_client(survivor, token) as http:
        while datetime.now(UTC) < due:
            assert not sink.records(), "sent before its time"
            time.sleep(0.05)
        for message, (user, _) in zip(posted, users, strict=True):
            done = wait_message(http, message["message_id"], timeout=20)
            assert delivery(done, user, "email")["state"] == "sent"
        time.sleep(1.0)  # a second send would come within the poll interval
        for _, address in users:
            assert len(sink.accepted(address=address)) == 1, sink.records(address=address)


@pytest.mark.parametrize(
    ("delay", "named"),
    [
        ({}, "delay"),
        ({"seconds": 10, "until": "2030-01-01T00:00:00Z"}, "delay"),
        ({"seconds": 0}, "seconds"),
        ({"seconds": -5}, "seconds"),
        ({"seconds": 91 * 24 * 3600}, "seconds"),
        ({"seconds": "soon"}, "seconds"),
        ({"until": "2030-01-01T00:00:00"}, "until"),  # no time zone
        ({"until": "2001-01-01T00:00:00Z"}, "delay.until"),  # past
        ({"until": "2099-01-01T00:00:00Z"}, "delay.until"),  # more than 90 days ahead
        ({"after": 5}, "after"),  # not a field of delay
        ("tomorrow", "delay"),
    ],
)
def test_a_delay_out_of_range_or_contradicting_itself_is_refused(
    api_node: ServerProcess, delay: Any, named: str
) -> None:
    """422 naming the field; nothing is written (the idempotency key stays free)."""
    with api_client(api_node, api_node.service_token("messages")) as http:
        key = f"delay-{uuid.uuid4().hex}"
        body = in_app_to("someone", delay=delay, idempotency_key=key)
        refused = http.post("/messages", json=body)
        assert refused.status_code == 422, refused.text
        assert named in refused.text, refused.text
        body.pop("delay")
        accepted = http.post("/messages", json=body)  # the key was not taken
        assert accepted.status_code == 202, accepted.text


def test_until_in_a_time_zone_is_kept_as_that_moment(api_node: ServerProcess) -> None:
    """``until`` with an offset is the same moment in UTC; the delivery waits until then."""
    with api_client(api_node, api_node.service_token("messages")) as http:
        india = timezone(timedelta(hours=5, minutes=30))
        until = (datetime.now(UTC) + timedelta(hours=2)).astimezone(india).replace(microsecond=0)
        answer = post_message(http, in_app_to("someone-tz", delay={"until": until.isoformat()}))
        (pending,) = get_message(http, answer["message_id"])["deliveries"]
        assert (pending["state"], pending["history"][0]["reason"]) == ("pending", "delayed")
        moment = until.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S")
        assert pending["history"][0]["detail"] == f"until {moment}.000000Z"


@pytest.fixture(scope="module")
def api_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A node on SQLite (in-app deliveries only: those under test are refused or wait)."""
    proc = ServerProcess(tmp_path_factory.mktemp("delay") / "tidings.db").start()
    yield proc
    proc.stop()


def test_a_waiting_message_can_be_cancelled_and_its_key_repeats_it(api_node: ServerProcess) -> None:
    """The same key and delay answer 200 with the first message; DELETE moves its waiting
    deliveries to ``deleted``, so they are never sent."""
    with api_client(api_node, api_node.service_token("messages")) as http:
        body = in_app_to("someone-later", delay={"seconds": 3600}, idempotency_key=uuid.uuid4().hex)
        first = post_message(http, body)
        again = post_message(http, body, expect=200)
        assert again["message_id"] == first["message_id"]
        cancelled = http.delete(f"/messages/{first['message_id']}")
        assert cancelled.status_code == 200, cancelled.text
        (gone,) = get_message(http, first["message_id"])["deliveries"]
        assert (gone["state"], gone["reason"]) == ("deleted", "deleted_by_request")


# Quiet hours (docs/pipeline.md, "Quiet hours")


@pytest.fixture
def mail_node(start_server: Callable[..., ServerProcess], sink: SmtpSink) -> ServerProcess:
    return start_server(TIDINGS_SMTP_URL=sink.url, **PIPELINE)


def test_a_delivery_in_quiet_hours_waits_for_their_end_in_the_users_zone(
    mail_node: ServerProcess, sink: SmtpSink
) -> None:
    """Quiet hours set in Asia/Kolkata ending 4 s from now: an email waits (reason
    ``quiet_hours``, until the window's end in UTC) and goes out after it; the same user's
    in-app notification and a critical email go at once."""
    zone = ZoneInfo("Asia/Kolkata")
    with api_client(mail_node, mail_node.service_token("messages")) as http:
        user, address = email_user(http)
        local = datetime.now(zone)
        start, end = local - timedelta(hours=1), local + timedelta(seconds=4)
        answer = http.put(
            f"/users/{user}/quiet-hours",
            json={
                "timezone": "Asia/Kolkata",
                "start": start.strftime("%H:%M:%S"),
                "end": end.strftime("%H:%M:%S"),
            },
        )
        assert answer.status_code == 200, answer.text
        shown = http.get(f"/users/{user}/preferences").json()["quiet_hours"]
        assert shown == {
            "timezone": "Asia/Kolkata",
            "start": start.strftime("%H:%M:%S"),
            "end": end.strftime("%H:%M:%S"),
        }
        quiet = post_message(http, {**email_to(user), "channels": ["email", "in_app"]})
        urgent = post_message(http, email_to(user, critical=True))
        waiting = delivery(get_message(http, quiet["message_id"]), user, "email")
        assert (waiting["state"], waiting["history"][0]["reason"]) == ("pending", "quiet_hours")
        ends = end.replace(microsecond=0).astimezone(UTC)
        assert waiting["history"][0]["detail"] == f"until {ends:%Y-%m-%dT%H:%M:%S}.000000Z"
        in_app = wait_message(
            http,
            quiet["message_id"],
            until=lambda m: delivery(m, user, "in_app")["state"] == "sent",
        )
        assert delivery(in_app, user, "email")["state"] == "pending"
        wait_message(http, urgent["message_id"], timeout=10)
        assert len(sink.accepted(address=address)) == 1  # the critical one
        while datetime.now(UTC) < ends - timedelta(seconds=0.3):
            assert len(sink.records(address=address)) == 1, "sent inside quiet hours"
            time.sleep(0.05)
        done = wait_message(http, quiet["message_id"], timeout=15)
        sent = delivery(done, user, "email")
        assert sent["state"] == "sent"
        assert datetime.fromisoformat(sent["sent_at"].replace("Z", "+00:00")) >= ends
        assert len(sink.accepted(address=address)) == 2


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ({"timezone": "Mars/Olympus", "start": "22:00", "end": "07:00"}, "timezone"),
        ({"timezone": "Europe/Paris", "start": "25:00", "end": "07:00"}, "start"),
        ({"timezone": "Europe/Paris", "start": "22:00", "end": "soon"}, "end"),
        ({"timezone": "Europe/Paris", "start": "22:00", "end": "22:00"}, "end"),
        ({"timezone": "Europe/Paris", "start": "22:00"}, "end"),
        ({"timezone": "Europe/Paris", "start": "22:00", "end": "07:00", "days": 5}, "days"),
    ],
)
def test_quiet_hours_out_of_range_are_refused_and_change_nothing(
    api_node: ServerProcess, body: dict[str, Any], named: str
) -> None:
    with api_client(api_node, api_node.service_token("messages")) as http:
        user = f"quiet-{uuid.uuid4().hex[:8]}"
        kept = {"timezone": "Asia/Tokyo", "start": "23:00", "end": "06:30"}
        assert http.put(f"/users/{user}/quiet-hours", json=kept).status_code == 200
        refused = http.put(f"/users/{user}/quiet-hours", json=body)
        assert refused.status_code == 422, refused.text
        assert named in refused.text, refused.text
        assert http.get(f"/users/{user}/preferences").json()["quiet_hours"] == kept
        assert http.delete(f"/users/{user}/quiet-hours").status_code == 200
        assert http.get(f"/users/{user}/preferences").json()["quiet_hours"] is None


# Escalate (docs/pipeline.md, "Steps")


@pytest.mark.slow
def test_an_escalation_is_skipped_when_seen_in_time_and_sent_when_not_on_two_nodes(
    postgres_url: str, start_server: Callable[..., ServerProcess], sink: SmtpSink
) -> None:
    """Two nodes on PostgreSQL. In-app plus email escalating after 2 s unless seen, to two
    users: one marks the in-app notification seen through the other node within the 2 s, and
    their email ends ``deleted`` with the reason ``escalation_skipped``; the other's is sent."""
    env = {"TIDINGS_STORE": postgres_url, "TIDINGS_SMTP_URL": sink.url, **PIPELINE}
    posting, reading = start_server(**env), start_server(**env)
    token = posting.service_token("messages")
    with api_client(posting, token) as http:
        (reader, reader_address), (idle, idle_address) = email_user(http), email_user(http)
        body = {
            "recipients": {"user_ids": [reader, idle]},
            "channels": ["in_app", "email"],
            "content": {"subject": "You have a message", "text": "Read it"},
            "escalate": {"after": 2.0, "unless": "seen", "channels": ["email"]},
        }
        message = post_message(http, body)
        waiting = delivery(get_message(http, message["message_id"]), reader, "email")
        assert (waiting["state"], waiting["history"][0]["reason"]) == ("pending", "escalation")
        in_app = delivery(
            wait_message(
                http,
                message["message_id"],
                until=lambda m: delivery(m, reader, "in_app")["state"] == "sent",
            ),
            reader,
            "in_app",
        )
    with httpx.Client(base_url=reading.url, timeout=10) as me:
        seen = me.post(
            "/me/notifications/seen",
            json={"notification_ids": [f"pipeline-{in_app['delivery_id']}"]},
            headers={"Authorization": f"Bearer {device_token(reader)}"},
        )
        assert seen.status_code == 200, seen.text
    with api_client(posting, token) as http:
        done = wait_message(http, message["message_id"], timeout=20)
    skipped, sent = delivery(done, reader, "email"), delivery(done, idle, "email")
    assert (skipped["state"], skipped["reason"]) == ("deleted", "escalation_skipped"), skipped
    assert "seen at" in skipped["history"][-1]["detail"]
    assert sent["state"] == "sent"
    assert not sink.records(address=reader_address)
    assert len(sink.accepted(address=idle_address)) == 1


@pytest.mark.parametrize(
    ("escalate", "channels", "named"),
    [
        ({"after": 60, "channels": ["email"]}, ["email"], "in_app"),  # nothing to watch
        ({"after": 60, "channels": ["in_app"]}, ["in_app", "email"], "escalate.channels"),
        ({"after": 60, "channels": ["sms"]}, ["in_app", "email"], "escalate.channels"),
        ({"after": 60, "channels": []}, ["in_app", "email"], "channels"),
        ({"after": 0, "channels": ["email"]}, ["in_app", "email"], "after"),
        ({"after": 60, "unless": "opened", "channels": ["email"]}, ["in_app", "email"], "unless"),
        ({"after": 60, "channels": ["email"], "when": 1}, ["in_app", "email"], "when"),
    ],
)
def test_an_escalation_that_cannot_apply_is_refused(
    api_node: ServerProcess, escalate: dict[str, Any], channels: list[str], named: str
) -> None:
    with api_client(api_node, api_node.service_token("messages")) as http:
        key = f"escalate-{uuid.uuid4().hex}"
        body = {**in_app_to("someone"), "channels": channels, "escalate": escalate}
        refused = http.post("/messages", json={**body, "idempotency_key": key})
        assert refused.status_code == 422, refused.text
        assert named in refused.text, refused.text
        body.pop("escalate")
        assert http.post("/messages", json={**body, "idempotency_key": key}).status_code == 202


__all__ = ["sink"]  # the fixture
