"""The ``expo`` channel end to end: ``POST /messages`` on a real node (SQLite, its own
workers) to a fake Expo push service at the HTTP boundary (support/fake_expo.py: tickets at
once, receipts later, push security on). Tokens come from ``/me/push-tokens``."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from phone_support import post, register, service_api, settled

from conftest import JWT_SECRET
from support.fake_expo import FakeExpo
from tidings import Tidings

ACCESS = "expo-access-token-for-tests"


def expo_token(name: str) -> str:
    return f"ExponentPushToken[{name}]"


@pytest.fixture(scope="module")
def expo() -> Iterator[FakeExpo]:
    with FakeExpo(tls=True, access_token=ACCESS) as fake:
        yield fake


@pytest.fixture
async def node(
    tmp_path: Path, expo: FakeExpo
) -> AsyncIterator[tuple[Tidings, httpx.AsyncClient, dict[str, str]]]:
    async with (
        Tidings(
            store=f"sqlite:///{tmp_path}/e.db",
            jwt_secret=JWT_SECRET,
            pipeline_poll_interval=0.05,
            pipeline_retry_base=0.05,
            pipeline_retry_max=2.0,
            badge_sync_interval=0,
            expo_url=expo.url,
            expo_access_token=ACCESS,
            expo_receipt_delay=0.2,
            push_ca_file=str(expo.ca_path),
        ) as tidings,
        service_api(tidings) as (http, service),
    ):
        yield tidings, http, service


async def test_one_request_reaches_every_token_with_the_badge(node: Any, expo: FakeExpo) -> None:
    """The user's tokens go in one authorized request with the rendered title and body, the
    message's data and the unseen count as the badge; the delivery is sent, each ticket
    noted."""
    tidings, http, service = node
    phone, tablet = expo_token("ann-phone"), expo_token("ann-tablet")
    await register(http, "ann", "expo", phone)
    await register(http, "ann", "expo", tablet)
    await tidings.notify("ann", {"n": 1})
    sends_before = len(expo.requests_to("send"))
    done = await settled(tidings, await post(http, service, "ann", "expo"))
    [delivery] = done.deliveries or []
    assert delivery.state == "sent"
    assert len(expo.requests_to("send")) == sends_before + 1
    for token in (phone, tablet):
        [message] = expo.messages_to(token)
        assert (message["title"], message["body"], message["badge"]) == (
            "Order 42",
            "Order 42 has shipped",
            1,
        )
        assert message["data"]["data"] == {"n": 42}
    assert [h.reason for h in delivery.history].count("token_sent") == 2


async def test_gone_tokens_leave_by_ticket_and_by_receipt(node: Any, expo: FakeExpo) -> None:
    """A DeviceNotRegistered ticket removes its token at once; a token whose receipt says
    DeviceNotRegistered is removed once the receipts are checked; the other stays."""
    tidings, http, service = node
    keep, at_once, later = expo_token("bob-1"), expo_token("bob-2"), expo_token("bob-3")
    expo.ticket_error(at_once, "DeviceNotRegistered")
    expo.receipt_error(later, "DeviceNotRegistered")
    for token in (keep, at_once, later):
        await register(http, "bob", "expo", token)
    done = await settled(tidings, await post(http, service, "bob", "expo"))
    assert [d.state for d in done.deliveries or []] == ["sent"]
    tokens = {t.token for t in await tidings.store.push_tokens("bob")}
    assert at_once not in tokens and keep in tokens
    deadline = time.monotonic() + 5
    while later in {t.token for t in await tidings.store.push_tokens("bob")}:
        assert time.monotonic() < deadline, "the receipt's DeviceNotRegistered was not acted on"
        await asyncio.sleep(0.05)
    assert [t.token for t in await tidings.store.push_tokens("bob")] == [keep]
    assert expo.requests_to("receipts")


async def test_a_busy_service_is_retried_after_retry_after(node: Any, expo: FakeExpo) -> None:
    """HTTP 429 with ``Retry-After: 1`` on the send: the delivery is retried no sooner, then
    sent; a MessageRateExceeded ticket is retried too."""
    tidings, http, service = node
    token = expo_token("cyd-1")
    await register(http, "cyd", "expo", token)
    expo.fail_requests(429, times=1, retry_after=1, token=token)
    done = await settled(tidings, await post(http, service, "cyd", "expo"))
    [delivery] = done.deliveries or []
    assert delivery.state == "sent"
    retried = next(h for h in delivery.history if h.reason == "token_retry")
    sent = next(h for h in delivery.history if h.reason == "token_sent")
    assert (sent.at - retried.at).total_seconds() >= 0.9
    expo.ticket_error(token, "MessageRateExceeded", times=1)
    done = await settled(tidings, await post(http, service, "cyd", "expo"))
    assert [d.state for d in done.deliveries or []] == ["sent"]


async def test_other_ticket_errors_fail_and_no_token_is_no_address(
    node: Any, expo: FakeExpo
) -> None:
    tidings, http, service = node
    token = expo_token("dan-1")
    expo.ticket_error(token, "InvalidCredentials")
    await register(http, "dan", "expo", token)
    [delivery] = (await settled(tidings, await post(http, service, "dan", "expo"))).deliveries or []
    assert (delivery.state, delivery.reason) == ("failed", "rejected")
    assert "InvalidCredentials" in (delivery.last_error or "")
    [delivery] = (
        await settled(tidings, await post(http, service, "nobody", "expo"))
    ).deliveries or []
    assert (delivery.state, delivery.reason) == ("failed", "no_address")


async def test_a_count_change_sets_the_badge_silently(tmp_path: Path, expo: FakeExpo) -> None:
    """With badge updates on, a notify sends the user's Expo tokens the new count as a badge
    without an alert."""
    token = expo_token("eve-1")
    async with Tidings(
        store=f"sqlite:///{tmp_path}/b.db",
        badge_sync_interval=0.2,
        expo_url=expo.url,
        expo_access_token=ACCESS,
        push_ca_file=str(expo.ca_path),
    ) as tidings:
        await tidings.store.register_push_token("eve", "expo", token, None, max_per_user=100)
        await tidings.notify("eve", {"n": 1})
        deadline = time.monotonic() + 5
        while not expo.messages_to(token):
            assert time.monotonic() < deadline, "no badge update"
            await asyncio.sleep(0.05)
        [update] = expo.messages_to(token)
        assert update["badge"] == 1 and "title" not in update and "body" not in update


async def test_badges_of_many_users_at_once_reach_only_their_own_phones(
    tmp_path: Path, expo: FakeExpo
) -> None:
    """Count changes of 60 users at the same moment (their token reads are made together): each
    user with Expo tokens gets their own count on each of their phones, and nothing goes to a
    user without tokens."""
    async with Tidings(
        store=f"sqlite:///{tmp_path}/m.db",
        badge_sync_interval=0.2,
        expo_url=expo.url,
        expo_access_token=ACCESS,
        push_ca_file=str(expo.ca_path),
    ) as tidings:
        phones = {
            f"many-{u}": [expo_token(f"many-{u}-{k}") for k in range(u % 3)] for u in range(60)
        }
        for user, tokens in phones.items():
            for token in tokens:
                await tidings.store.register_push_token(user, "expo", token, None, max_per_user=9)
        await asyncio.gather(
            *(tidings.notify(user, {"n": n}) for user in phones for n in range(1 + len(user) % 2))
        )
        wanted = {token: 1 + len(user) % 2 for user, tokens in phones.items() for token in tokens}
        deadline = time.monotonic() + 5
        while not all(expo.messages_to(token) for token in wanted):
            assert time.monotonic() < deadline, "badge updates missing"
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)  # folded updates of the interval's end
        for token, count in wanted.items():
            assert expo.messages_to(token)[-1]["badge"] == count, token


async def test_receipts_to_check_survive_a_restart(tmp_path: Path, expo: FakeExpo) -> None:
    """A node that stops before its receipts are due leaves them in the store: the next node
    on the same store asks for them and removes the token a receipt calls gone."""

    def node(delay: float) -> Tidings:
        return Tidings(
            store=f"sqlite:///{tmp_path}/r.db",
            jwt_secret=JWT_SECRET,
            pipeline_poll_interval=0.05,
            badge_sync_interval=0,
            expo_url=expo.url,
            expo_access_token=ACCESS,
            expo_receipt_delay=delay,
            push_ca_file=str(expo.ca_path),
        )

    gone = expo_token("cid-gone")
    expo.receipt_error(gone, "DeviceNotRegistered")
    asked_before = len(expo.requests_to("receipts"))
    async with node(3.0) as first, service_api(first) as (http, service):
        await register(http, "cid", "expo", gone)
        done = await settled(first, await post(http, service, "cid", "expo"))
        assert [d.state for d in done.deliveries or []] == ["sent"]
    # The first node stopped before its receipt was due (3 s after the send): nobody asked.
    assert len(expo.requests_to("receipts")) == asked_before
    async with node(3.0) as second:
        assert [t.token for t in await second.store.push_tokens("cid")] == [gone]
        deadline = time.monotonic() + 15
        while await second.store.push_tokens("cid"):
            assert time.monotonic() < deadline, "the kept receipt was not checked"
            await asyncio.sleep(0.1)
        assert len(expo.requests_to("receipts")) > asked_before
        await asyncio.sleep(0.2)
        assert await second.store.due_push_receipts("expo", 10, 0.0) == []
