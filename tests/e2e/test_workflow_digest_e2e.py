"""The ``digest`` step of a message (docs/pipeline.md, "Digest"), end to end on real processes:
``tidings serve`` with its workers, email to an aiosmtpd sink.

Ten messages with one digest key to one user within the window become one email listing the
ten, sent when the window closes (not before); the first opens the digest, the others join it
and end ``sent`` with it. On two nodes sharing PostgreSQL, messages posted to both at once still
make one digest. A digest that cannot apply is refused (422 naming the field), writing nothing.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from pipeline_support import (
    SmtpSink,
    api_client,
    delivery,
    get_message,
    post_message,
    sink,
    text_part,
    wait_message,
)

from conftest import ServerProcess

WINDOW = 2.5  # seconds a digest stays open
PIPELINE = {
    "TIDINGS_PIPELINE_POLL_INTERVAL": "0.1",
    "TIDINGS_PIPELINE_RETRY_BASE": "0.2",
    "TIDINGS_PIPELINE_RETRY_MAX": "0.5",
}
TEMPLATE = {
    "subject": "{{ count }} new comments on {{ post }}",
    "text": "{% for item in items %}- {{ item.author }}: {{ item.comment }}\n{% endfor %}",
}


def email_user(http: httpx.Client) -> tuple[str, str]:
    user = f"digest-{uuid.uuid4().hex[:10]}"
    address = f"{user}@example.org"
    response = http.put(f"/users/{user}/contacts/email", json={"address": address})
    assert response.status_code < 300, response.text
    return user, address


def comment(user: str, n: int, **extra: Any) -> dict[str, Any]:
    return {
        "recipients": {"user_ids": [user]},
        "channels": ["in_app", "email"],
        "template_id": "comments",
        "data": {"post": "Rust vs Python", "author": f"author-{n}", "comment": f"comment {n}"},
        "digest": {"key": "post-7-comments", "window": WINDOW},
        **extra,
    }


def listed(record: Any) -> list[str]:
    text = text_part(record.message, "plain") or ""
    return [line for line in text.splitlines() if line.startswith("- ")]


def test_ten_messages_with_one_key_give_one_email_listing_ten(
    start_server: Callable[..., ServerProcess], sink: SmtpSink
) -> None:
    """Ten messages within the window: the first's email waits (reason ``digest``) and the
    others join it (``digested``); their in-app notifications go at once; nothing is emailed
    before the window closes, then one email lists the ten in order and every message ends
    ``sent``. An eleventh after that opens a new digest."""
    node = start_server(**PIPELINE, TIDINGS_SMTP_URL=sink.url)
    with api_client(node, node.service_token("messages")) as http:
        assert http.put("/templates/comments", json=TEMPLATE).status_code in (200, 201)
        user, address = email_user(http)
        opened_at = datetime.now(UTC)
        messages = [post_message(http, comment(user, n)) for n in range(1, 11)]
        first = delivery(get_message(http, messages[0]["message_id"]), user, "email")
        assert (first["state"], first["history"][0]["reason"]) == ("pending", "digest")
        for message in messages[1:]:
            joined = delivery(get_message(http, message["message_id"]), user, "email")
            assert (joined["state"], joined["reason"]) == ("pending", "digested")
            assert first["delivery_id"] in joined["history"][0]["detail"]
        for message in messages:  # in-app is not digested: each goes at once
            wait_message(
                http,
                message["message_id"],
                until=lambda m: delivery(m, user, "in_app")["state"] == "sent",
            )
        closes = opened_at + timedelta(seconds=WINDOW)
        while datetime.now(UTC) < closes - timedelta(seconds=0.3):
            assert not sink.records(address=address), "emailed before the window closed"
            time.sleep(0.05)
        [record] = sink.wait_records(lambda found: len(found) >= 1, address=address, timeout=15)
        assert record.message["Subject"] == "10 new comments on Rust vs Python"
        assert listed(record) == [f"- author-{n}: comment {n}" for n in range(1, 11)]
        for message in messages:
            done = wait_message(http, message["message_id"], timeout=15)
            assert delivery(done, user, "email")["state"] == "sent", done
        last = delivery(get_message(http, messages[-1]["message_id"]), user, "email")
        assert last["history"][-1]["detail"] == f"in the digest of delivery {first['delivery_id']}"
        time.sleep(0.5)  # a second email would come within the poll interval
        assert len(sink.accepted(address=address)) == 1

        later = post_message(http, comment(user, 11))
        again = delivery(get_message(http, later["message_id"]), user, "email")
        assert again["history"][0]["reason"] == "digest"


@pytest.mark.slow
def test_messages_posted_to_two_nodes_at_once_make_one_digest(
    postgres_url: str, start_server: Callable[..., ServerProcess], sink: SmtpSink
) -> None:
    """Two nodes on PostgreSQL, twelve messages with one key posted to both concurrently:
    one of them opens the digest, the others join it, and one email lists all twelve."""
    env = {"TIDINGS_STORE": postgres_url, "TIDINGS_SMTP_URL": sink.url, **PIPELINE}
    nodes = [start_server(**env), start_server(**env)]
    token = nodes[0].service_token("messages")
    with api_client(nodes[0], token) as http:
        assert http.put("/templates/comments", json=TEMPLATE).status_code in (200, 201)
        user, address = email_user(http)

    def post(n: int) -> dict[str, Any]:
        with api_client(nodes[n % 2], token) as client:
            return post_message(client, {**comment(user, n), "channels": ["email"]})

    with ThreadPoolExecutor(6) as pool:
        messages = list(pool.map(post, range(1, 13)))
    with api_client(nodes[1], token) as http:
        reasons = sorted(
            delivery(get_message(http, m["message_id"]), user, "email")["history"][0]["reason"]
            for m in messages
        )
        assert reasons == ["digest"] + ["digested"] * 11
        [record] = sink.wait_records(lambda found: len(found) >= 1, address=address, timeout=20)
        assert sorted(listed(record)) == sorted(f"- author-{n}: comment {n}" for n in range(1, 13))
        for message in messages:
            done = wait_message(http, message["message_id"], timeout=15)
            assert delivery(done, user, "email")["state"] == "sent"
    time.sleep(0.5)
    assert len(sink.accepted(address=address)) == 1


@pytest.fixture(scope="module")
def api_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A node on SQLite: the messages under test are refused."""
    proc = ServerProcess(tmp_path_factory.mktemp("digest") / "tidings.db").start()
    yield proc
    proc.stop()


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        ({"digest": {"key": "k", "window": 0}}, "window"),
        ({"digest": {"key": "k", "window": 91 * 86400}}, "window"),
        ({"digest": {"key": "", "window": 60}}, "key"),
        ({"digest": {"key": "k" * 129, "window": 60}}, "key"),
        ({"digest": {"window": 60}}, "key"),
        ({"digest": {"key": "k", "window": 60, "channels": ["sms"]}}, "digest.channels"),
        ({"digest": {"key": "k", "window": 60, "every": 2}}, "every"),
        ({"digest": {"key": "k", "window": 60}, "delay": {"seconds": 30}}, "delay"),
        (
            {
                "digest": {"key": "k", "window": 60},
                "escalate": {"after": 60, "channels": ["email"]},
            },
            "digest.channels",
        ),
    ],
)
def test_a_digest_that_cannot_apply_is_refused_and_writes_nothing(
    api_node: ServerProcess, extra: dict[str, Any], named: str
) -> None:
    with api_client(api_node, api_node.service_token("messages")) as http:
        key = f"digest-{uuid.uuid4().hex}"
        body = {
            "recipients": {"user_ids": ["someone"]},
            "channels": ["in_app", "email"],
            "content": {"text": "hello"},
            **extra,
        }
        refused = http.post("/messages", json={**body, "idempotency_key": key})
        assert refused.status_code == 422, refused.text
        assert named in refused.text, refused.text
        # Nothing was written: the key is still free for another body.
        fine = {**body, "channels": ["in_app"]}
        for step in ("digest", "delay", "escalate"):
            fine.pop(step, None)
        assert http.post("/messages", json={**fine, "idempotency_key": key}).status_code == 202


__all__ = ["sink"]  # the fixture
