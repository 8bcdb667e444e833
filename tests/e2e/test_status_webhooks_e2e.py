"""Delivery-status webhooks (docs/pipeline.md) against real server processes: an SMTP sink, a
status endpoint that is a real HTTP server, signatures checked with the ``standardwebhooks``
library, and on PostgreSQL two nodes posting from one outbox.

What is guaranteed, and checked here: each change of a delivery reaches each endpoint, and is
accepted once (a 2xx) under one ``webhook-id``, also after the endpoint first answered 500; one
delivery's events reach an endpoint in the order of its changes, one at a time.
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from pipeline_support import (
    HttpReceiver,
    Json,
    Received,
    SmtpSink,
    api_client,
    delivery,
    post_message,
    sink,
    wait_message,
)
from standardwebhooks import Webhook

from conftest import ServerProcess

SECRET = "whsec_" + base64.b64encode(os.urandom(32)).decode()
MAX_ATTEMPTS = 3
SETTINGS = {
    "TIDINGS_ALLOW_PRIVATE_ADDRESSES": "true",
    "TIDINGS_PIPELINE_RETRY_BASE": "0.1",
    "TIDINGS_PIPELINE_RETRY_MAX": "0.3",
    "TIDINGS_PIPELINE_POLL_INTERVAL": "0.1",
    "TIDINGS_STATUS_WEBHOOK_SECRET": SECRET,
    "TIDINGS_STATUS_WEBHOOK_MAX_ATTEMPTS": str(MAX_ATTEMPTS),
}
WAIT = 15.0


@pytest.fixture
def receiver() -> Iterator[HttpReceiver]:
    http = HttpReceiver()
    # http.server's backlog of 5 drops the connections of a burst of POSTs (SYN retried 1 s
    # later): an endpoint's server listens with a real backlog
    http.server.socket.listen(128)
    http.start()
    yield http
    http.close()


def verified(request: Received) -> Json:
    """The payload of a POST whose Standard Webhooks signature holds (raises otherwise)."""
    payload = Webhook(SECRET).verify(request.body, request.headers)
    assert isinstance(payload, dict)
    return payload


def accepted(receiver: HttpReceiver, path: str, refused: int) -> list[tuple[str, Json]]:
    """(webhook-id, payload) of the POSTs to ``path`` after the first ``refused`` ones."""
    return [(r.headers["webhook-id"], verified(r)) for r in receiver.received(path)[refused:]]


def wait_for(predicate: Callable[[], Any], what: str, timeout: float = WAIT) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        found = predicate()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(0.05)


def events_of(found: list[tuple[str, Json]], delivery_id: str) -> list[tuple[str, Json]]:
    return [(i, p) for i, p in found if p["data"]["delivery_id"] == delivery_id]


def test_every_change_reaches_the_endpoint_once_even_after_a_500(
    start_server: Callable[..., ServerProcess], sink: SmtpSink, receiver: HttpReceiver
) -> None:
    """pending → active → sent: the endpoint gets each change once, signed, in order; its 500
    to the first POST only delays that event (and, behind it, the delivery's later ones). An
    endpoint that keeps failing gets each event MAX_ATTEMPTS times, then it is failed and
    listed by GET /status-events."""
    receiver.script("/status", 500)
    receiver.script("/down", *[503] * 50)
    urls = f"{receiver.url('/status')},{receiver.url('/down')}"
    node = start_server(**SETTINGS, TIDINGS_SMTP_URL=sink.url, TIDINGS_STATUS_WEBHOOK_URLS=urls)
    with api_client(node, node.service_token("messages", "admin")) as http:
        user = f"user-{uuid.uuid4().hex[:8]}"
        assert http.put(
            f"/users/{user}/contacts/email", json={"address": f"{user}@example.org"}
        ).is_success
        body = {"recipients": {"user_ids": [user]}, "channels": ["email"], "content": {"text": "x"}}
        message = wait_message(http, post_message(http, body)["message_id"])
        sent = delivery(message, user, "email")
        assert sent["state"] == "sent"

        found = wait_for(
            lambda: len(got := accepted(receiver, "/status", 1)) >= 3 and got, "3 events accepted"
        )
        time.sleep(0.5)  # nothing more comes
        found = accepted(receiver, "/status", 1)
        assert [p["type"] for _, p in found] == [
            "delivery.pending",
            "delivery.active",
            "delivery.sent",
        ]
        ids = [i for i, _ in found]
        assert len(set(ids)) == 3
        refused = receiver.received("/status")[0]
        assert refused.headers["webhook-id"] == ids[0]  # the same event, accepted the 2nd time
        assert verified(refused) == found[0][1]
        history = [(h["state"], h["reason"]) for h in sent["history"]]
        assert [(p["data"]["state"], p["data"]["reason"]) for _, p in found] == history
        last = found[-1][1]["data"]
        assert last["message_id"] == message["message_id"] and last["user_id"] == user
        assert (last["delivery_id"], last["channel"], last["attempts"]) == (
            sent["delivery_id"],
            "email",
            1,
        )
        assert found[-1][1]["timestamp"] == last["at"]

        # the failing endpoint: every event tried MAX_ATTEMPTS times, then failed, kept
        failed = wait_for(
            lambda: len(got := listed(http, "failed")) == 3 and got, "3 failed events"
        )
        assert {e["endpoint"] for e in failed} == {receiver.url("/down")}
        assert all(e["attempts"] == MAX_ATTEMPTS and e["last_status"] == 503 for e in failed)
        assert {e["event_id"] for e in failed} == set(ids)
        assert len(receiver.received("/down")) == 3 * MAX_ATTEMPTS
        delivered = listed(http, "delivered")
        assert sorted(e["event_id"] for e in delivered) == sorted(ids)
        assert all(e["delivered_at"] and e["last_status"] == 200 for e in delivered)
        assert sum(e["attempts"] for e in delivered) == 4  # the pending event's 500 and 200
        assert listed(http, "pending") == []
        metrics = http.get("/metrics").text
        assert 'tidings_status_events{state="failed"} 3.0' in metrics
        assert 'tidings_status_events{state="pending"} 0.0' in metrics
        assert http.get("/status-events", params={"state": "sent"}).status_code == 422
    with api_client(node, node.service_token("messages")) as http:
        assert http.get("/status-events").status_code == 403


def listed(http: httpx.Client, state: str) -> list[Json]:
    response = http.get("/status-events", params={"state": state, "limit": 100})
    assert response.status_code == 200, response.text
    found = response.json()
    assert isinstance(found, list)
    return found


def test_failed_and_deleted_deliveries_give_their_events(
    start_server: Callable[..., ServerProcess], sink: SmtpSink, receiver: HttpReceiver
) -> None:
    """A delivery failed at creation (no address) and one deleted while it waits."""
    node = start_server(
        **SETTINGS, TIDINGS_SMTP_URL=sink.url, TIDINGS_STATUS_WEBHOOK_URLS=receiver.url("/s")
    )
    with api_client(node, node.service_token("messages")) as http:
        user = f"user-{uuid.uuid4().hex[:8]}"
        body: Json = {"recipients": {"user_ids": [user]}, "content": {"text": "x"}}
        refused = post_message(http, {**body, "channels": ["email"]})
        waiting = post_message(http, {**body, "channels": ["in_app"], "delay": {"seconds": 3600}})
        assert http.delete(f"/messages/{waiting['message_id']}").is_success
        failed = delivery(wait_message(http, refused["message_id"]), user, "email")["delivery_id"]
        deleted = delivery(wait_message(http, waiting["message_id"]), user, "in_app")["delivery_id"]
        found = wait_for(lambda: len(got := accepted(receiver, "/s", 0)) >= 3 and got, "3 events")
        time.sleep(0.3)
        found = accepted(receiver, "/s", 0)
        assert len(found) == 3
        assert [(p["type"], p["data"]["reason"]) for _, p in events_of(found, failed)] == [
            ("delivery.failed", "no_address")
        ]
        assert [(p["type"], p["data"]["reason"]) for _, p in events_of(found, deleted)] == [
            ("delivery.pending", "delayed"),
            ("delivery.deleted", "deleted_by_request"),
        ]


def test_two_postgres_nodes_post_each_event_once(
    start_server: Callable[..., ServerProcess], receiver: HttpReceiver, postgres_url: str
) -> None:
    """Two nodes' dispatchers share the outbox: every change of 20 deliveries is accepted
    once, in order per delivery, though the endpoint answers 500 to its first POSTs."""
    receiver.script("/s", 500, 500, 500)
    env = {
        **SETTINGS,
        "TIDINGS_STORE": postgres_url,
        "TIDINGS_STATUS_WEBHOOK_URLS": receiver.url("/s"),
    }
    first = start_server(**env)
    start_server(**env)
    users = [f"user-{uuid.uuid4().hex[:8]}" for _ in range(20)]
    with api_client(first, first.service_token("messages")) as http:
        body = {"recipients": {"user_ids": users}, "channels": ["in_app"], "content": {"text": "x"}}
        message = wait_message(http, post_message(http, body)["message_id"])
    ids = {d["delivery_id"] for d in message["deliveries"]}
    assert all(d["state"] == "sent" for d in message["deliveries"])
    wait_for(lambda: len(accepted(receiver, "/s", 3)) >= 60, "60 events accepted", 30)
    time.sleep(0.5)
    found = accepted(receiver, "/s", 3)
    assert len(found) == 60 and len({i for i, _ in found}) == 60
    for delivery_id in ids:
        assert [p["type"] for _, p in events_of(found, delivery_id)] == [
            "delivery.pending",
            "delivery.active",
            "delivery.sent",
        ]


def test_a_malformed_url_stops_the_server_in_one_line(tmp_path: Any) -> None:
    """A malformed URL in the setting: one line naming it, no traceback."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TIDINGS_")}
    result = subprocess.run(
        [sys.executable, "-m", "tidings", "serve"],
        cwd=tmp_path,
        env={**clean, "TIDINGS_STATUS_WEBHOOK_URLS": "https://ok.example/s,htp:/broken"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1, result
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith("Error: TIDINGS_STATUS_WEBHOOK_URLS="), lines
    assert "'htp:/broken'" in lines[0] and "http:// or https://" in lines[0]


__all__ = ["sink"]  # the fixture
