"""The dispatcher of delivery-status webhooks in an embedded node: timeouts are retried with
backoff until the event is too old, then it is failed and kept; a 2xx delivers it."""

from __future__ import annotations

import asyncio
import base64
import os
from pathlib import Path

from standardwebhooks import Webhook

from delivery.channel_support import HttpReceiver, Reply
from tidings import Tidings
from tidings.delivery.models import Content
from tidings.delivery.status_types import EVENT_DELIVERED, EVENT_FAILED, StatusEvent

SECRET = "whsec_" + base64.b64encode(os.urandom(32)).decode()


def node(tmp_path: Path, url: str, **settings: object) -> Tidings:
    return Tidings(
        store=f"sqlite:///{tmp_path}/s.db",
        pipeline_poll_interval=0.05,
        pipeline_retry_base=0.05,
        pipeline_retry_max=0.1,
        allow_private_addresses=True,
        status_webhook_urls=[url],
        status_webhook_secret=SECRET,
        **settings,
    )


async def wait_events(tidings: Tidings, state: str, n: int) -> list[StatusEvent]:
    for _ in range(200):
        found = await tidings.pipeline.store.list_status_events(state, 100)
        if len(found) >= n:
            return sorted(found, key=lambda e: e.id)
        await asyncio.sleep(0.05)
    raise AssertionError(f"fewer than {n} {state} events")


async def test_a_silent_endpoint_times_out_until_its_events_are_too_old(tmp_path: Path) -> None:
    """Each POST to an endpoint that never answers ends at the provider timeout and is tried
    again; past TIDINGS_STATUS_WEBHOOK_MAX_AGE the event fails, kept with the error, and
    the delivery's next event goes."""
    async with (
        HttpReceiver(hang=True) as endpoint,
        node(
            tmp_path, f"{endpoint.url}/s", provider_timeout=0.2, status_webhook_max_age=0.6
        ) as tidings,
    ):
        await tidings.pipeline.post(["in_app"], user_ids=["ann"], content=Content("hi"))
        first, *_ = await wait_events(tidings, EVENT_FAILED, 1)
        assert first.type == "delivery.pending" and first.attempts >= 2
        assert first.last_status is None and first.last_error is not None
        assert first.last_error.startswith("timeout: no answer from 127.0.0.1 within 0.2 s")
        later = await wait_events(tidings, EVENT_FAILED, 2)
        assert later[1].type == "delivery.active"


async def test_an_endpoint_that_answers_gets_each_event_signed(tmp_path: Path) -> None:
    """A 500 and then a 204: every event delivered, signed, its webhook-id kept across tries."""
    async with (
        HttpReceiver(Reply(500)) as endpoint,
        node(tmp_path, f"{endpoint.url}/s") as tidings,
    ):
        await tidings.pipeline.post(["in_app"], user_ids=["ann"], content=Content("hi"))
        done = await wait_events(tidings, EVENT_DELIVERED, 3)
        assert [e.type for e in done] == ["delivery.pending", "delivery.active", "delivery.sent"]
        assert [e.attempts for e in done] == [2, 1, 1]
        requests = endpoint.requests
        assert [r.headers["webhook-id"] for r in requests] == [
            done[0].event_id,
            *(e.event_id for e in done),
        ]
        for request, event in zip(requests[1:], done, strict=True):
            assert Webhook(SECRET).verify(request.body, request.headers) == event.payload()
