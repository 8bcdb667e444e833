"""One-click unsubscribe (RFC 8058; docs/pipeline.md, "Unsubscribe") end to end: a node with a
public URL emails through an aiosmtpd sink; the email carries ``List-Unsubscribe`` and
``List-Unsubscribe-Post``; the link's ``GET`` only asks, its ``POST`` (as a mailbox provider
sends it) turns the category off, and the next message of the category is not emailed. A
forged, altered or expired link changes nothing and says why; transactional emails carry no
link."""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import orjson
import pytest
from pipeline_support import SmtpSink, api_client, delivery, post_message, sink, wait_message

from conftest import ServerProcess, free_port

ONE_CLICK = {"List-Unsubscribe": "One-Click"}  # sent form-encoded, as RFC 8058 says


@pytest.fixture
def node(start_server: Callable[..., ServerProcess], sink: SmtpSink) -> ServerProcess:
    port = free_port()
    return start_server(
        port=port,
        TIDINGS_PUBLIC_URL=f"http://127.0.0.1:{port}",
        TIDINGS_SMTP_URL=sink.url,
        TIDINGS_PIPELINE_POLL_INTERVAL="0.1",
        TIDINGS_UNSUBSCRIBE_TTL="4",
    )


def comment(user: str, **extra: Any) -> dict[str, Any]:
    return {
        "recipients": {"user_ids": [user]},
        "channels": ["in_app", "email"],
        "content": {"subject": "New comment", "text": "Someone answered"},
        "category": "comments",
        **extra,
    }


def emailed(http: httpx.Client, sink: SmtpSink, user: str, body: dict[str, Any]) -> Any:
    """Post ``body``, wait for it to settle, and return the email the user got for it."""
    address = f"{user}@example.org"
    before = len(sink.accepted(address=address))
    message = post_message(http, body)
    wait_message(http, message["message_id"], timeout=15)
    found = sink.accepted(address=address)
    assert len(found) == before + 1, "not emailed"
    return found[-1].message


def link_of(email: Any) -> str:
    header = str(email["List-Unsubscribe"]).strip()  # (folded onto its own line: long)
    assert header.startswith("<") and header.endswith(">"), header
    return str(header[1:-1])


def test_one_click_turns_the_category_off_and_only_it(node: ServerProcess, sink: SmtpSink) -> None:
    user = f"reader-{uuid.uuid4().hex[:8]}"
    with api_client(node, node.service_token("messages")) as http:
        http.put(f"/users/{user}/contacts/email", json={"address": f"{user}@example.org"})
        email = emailed(http, sink, user, comment(user))
        assert email["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        link = link_of(email)
        assert link.startswith(f"{node.url}/unsubscribe?token=")

        page = httpx.get(link)  # what a mail scanner does: nothing changes
        assert page.status_code == 200 and "comments messages by email" in page.text
        assert http.get(f"/users/{user}/preferences").json()["categories"] == {}

        done = httpx.post(link, data=ONE_CLICK)  # what the mailbox provider does
        assert done.status_code == 200, done.text
        prefs = http.get(f"/users/{user}/preferences").json()
        assert prefs["categories"] == {"comments": {"email": False}}
        assert prefs["channels"] == {}  # the email channel itself stays on

        muted = post_message(http, comment(user))
        settled = wait_message(http, muted["message_id"], timeout=15)
        email_delivery = delivery(settled, user, "email")
        assert (email_delivery["state"], email_delivery["reason"]) == (
            "deleted",
            "category_disabled",
        )
        assert delivery(settled, user, "in_app")["state"] == "sent"
        # Other emails still go, and a transactional one carries no link.
        receipt = emailed(
            http,
            sink,
            user,
            {**comment(user), "channels": ["email"], "category": "orders", "transactional": True},
        )
        assert receipt["List-Unsubscribe"] is None
        # A message without a category: its link turns the whole channel off.
        plain = {**comment(user), "channels": ["email"]}
        plain.pop("category")
        assert httpx.post(link_of(emailed(http, sink, user, plain)), data=ONE_CLICK).is_success
        assert http.get(f"/users/{user}/preferences").json()["channels"] == {"email": False}


def test_forged_altered_and_expired_links_change_nothing(
    node: ServerProcess, sink: SmtpSink
) -> None:
    alice, bob = (f"{name}-{uuid.uuid4().hex[:8]}" for name in ("alice", "bob"))
    with api_client(node, node.service_token("messages")) as http:
        for user in (alice, bob):
            http.put(f"/users/{user}/contacts/email", json={"address": f"{user}@example.org"})
        link = link_of(emailed(http, sink, alice, comment(alice)))
        token = parse_qs(urlsplit(link).query)["token"][0]
        header, payload, signature = token.split(".")
        claims = orjson.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        claims["sub"] = bob  # alice's link made to name bob
        altered = base64.urlsafe_b64encode(orjson.dumps(claims)).rstrip(b"=").decode()
        for bad in (f"{header}.{altered}.{signature}", token[:-4] + "AAAA", "not-a-link"):
            for answer in (
                httpx.post(f"{node.url}/unsubscribe", params={"token": bad}, data=ONE_CLICK),
                httpx.get(f"{node.url}/unsubscribe", params={"token": bad}),
            ):
                assert answer.status_code == 400, answer.text
                assert "not valid" in answer.text
        time.sleep(5)  # TIDINGS_UNSUBSCRIBE_TTL=4
        expired = httpx.post(link, data=ONE_CLICK)
        assert expired.status_code == 400 and "expired" in expired.text
        for user in (alice, bob):
            prefs = http.get(f"/users/{user}/preferences").json()
            assert (prefs["categories"], prefs["channels"]) == ({}, {})


__all__ = ["sink"]  # the fixture
