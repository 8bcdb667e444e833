"""The ``apns`` channel end to end: ``POST /messages`` on a real node (SQLite, its own
workers) to a fake APNs at the HTTP boundary (TLS, HTTP/2 only, provider tokens verified with
the test auth key, support/fake_apns.py). Push tokens come from ``/me/push-tokens``; each
token's outcome is in the delivery's history."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
from phone_support import post, register, service_api, settled

from conftest import JWT_SECRET
from support.fake_apns import FakeApns, make_p8_key
from tidings import Tidings
from tidings.errors import ConfigurationError

BUNDLE_ID = "com.example.tidings"
PHONE = "ab" * 32
TABLET = "cd" * 32


@pytest.fixture(scope="module")
def apns(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[FakeApns, Path, str, str]]:
    path, key_id, team_id = make_p8_key(tmp_path_factory.mktemp("apns-key"))
    with FakeApns.running(path, team_id=team_id, key_id=key_id, bundle_id=BUNDLE_ID) as fake:
        yield fake, path, key_id, team_id


def apns_settings(apns: tuple[FakeApns, Path, str, str]) -> dict[str, Any]:
    fake, path, key_id, team_id = apns
    return {
        "apns_key_file": str(path),
        "apns_key_id": key_id,
        "apns_team_id": team_id,
        "apns_topic": BUNDLE_ID,
        "apns_url": fake.url,
        "push_ca_file": str(fake.ca_path),
    }


@pytest.fixture
async def node(
    tmp_path: Path, apns: tuple[FakeApns, Path, str, str]
) -> AsyncIterator[tuple[Tidings, httpx.AsyncClient, dict[str, str]]]:
    apns[0].clear()
    async with (
        Tidings(
            store=f"sqlite:///{tmp_path}/a.db",
            jwt_secret=JWT_SECRET,
            pipeline_poll_interval=0.05,
            pipeline_retry_base=0.05,
            pipeline_retry_max=2.0,  # a provider's Retry-After is honoured up to this
            **apns_settings(apns),
        ) as tidings,
        service_api(tidings) as (http, service),
    ):
        yield tidings, http, service


async def history(node: Tidings, message_id: str) -> list[tuple[str, str]]:
    found = await node.pipeline.store.get_message(message_id, None)
    assert found is not None and found.deliveries
    return [(h.reason, h.detail or "") for h in found.deliveries[0].history]


async def test_every_token_gets_the_push_with_the_users_badge(node: Any, apns: Any) -> None:
    """Both phones get the alert with the rendered text, the badge the user's unseen count,
    the topic and push type APNs needs, on one HTTP/2 connection; the delivery is sent and
    its history has each token's outcome."""
    tidings, http, service = node
    fake: FakeApns = apns[0]
    await register(http, "ann", "apns", PHONE, BUNDLE_ID)
    await register(http, "ann", "apns", TABLET, BUNDLE_ID)
    for n in range(3):
        await tidings.notify("ann", {"n": n})
    message_id = await post(http, service, "ann", "apns")
    done = await settled(tidings, message_id)
    assert [d.state for d in done.deliveries or []] == ["sent"]
    for token in (PHONE, TABLET):
        [request] = [r for r in fake.accepted_for(token) if r.headers["apns-push-type"] == "alert"]
        assert request.http_version == "2"
        assert request.headers["apns-topic"] == BUNDLE_ID
        assert request.headers["apns-push-type"] == "alert"
        aps = request.payload["aps"]
        assert aps["alert"] == {"title": "Order 42", "body": "Order 42 has shipped"}
        assert aps["badge"] == 3
        assert request.payload["tidings"]["data"] == {"n": 42}
    assert len(fake.connections) == 1
    notes = await history(tidings, message_id)
    assert sorted(reason for reason, _ in notes if reason.startswith("token_")) == [
        "token_sent",
        "token_sent",
    ]
    # The tokens' last use is written in the background, with the next sends'.
    for _ in range(100):
        tokens = await tidings.store.push_tokens("ann")
        if all(t.last_used_at is not None for t in tokens):
            break
        await asyncio.sleep(0.02)
    assert all(t.last_used_at is not None for t in tokens)


async def test_a_token_apns_calls_unregistered_is_removed(node: Any, apns: Any) -> None:
    """410 Unregistered on one token: the delivery is sent through the other, the gone token
    leaves the registry, and the history says so; a user whose only token is gone gets a
    failed delivery (``gone``)."""
    tidings, http, service = node
    fake: FakeApns = apns[0]
    gone = "ef" * 32
    fake.unregister(gone)
    await register(http, "bob", "apns", PHONE, BUNDLE_ID)
    await register(http, "bob", "apns", gone, BUNDLE_ID)
    message_id = await post(http, service, "bob", "apns")
    done = await settled(tidings, message_id)
    assert [d.state for d in done.deliveries or []] == ["sent"]
    assert [t.token for t in await tidings.store.push_tokens("bob")] == [PHONE]
    notes = await history(tidings, message_id)
    assert ("token_removed", f"…{gone[-8:]}: 410 Unregistered") in notes
    bad = "0f" * 32
    fake.script(bad, 400, "BadDeviceToken")
    await register(http, "cyd", "apns", bad, BUNDLE_ID)
    message_id = await post(http, service, "cyd", "apns")
    done = await settled(tidings, message_id)
    [delivery] = done.deliveries or []
    assert (delivery.state, delivery.reason) == ("failed", "gone")
    assert await tidings.store.push_tokens("cyd") == []


async def test_429_is_retried_after_retry_after(node: Any, apns: Any) -> None:
    """APNs 429 with ``retry-after: 1``: the delivery waits at least that long, then is
    sent; the history shows the retry and the token's two outcomes."""
    tidings, http, service = node
    fake: FakeApns = apns[0]
    busy = "12" * 32
    fake.script(busy, 429, "TooManyRequests", retry_after=1, times=1)
    await register(http, "dan", "apns", busy, BUNDLE_ID)
    message_id = await post(http, service, "dan", "apns")
    done = await settled(tidings, message_id)
    assert [d.state for d in done.deliveries or []] == ["sent"]
    tries = [r for r in fake.received if r.device_token == busy]
    assert [r.status for r in tries] == [429, 200]
    assert tries[1].received_at - tries[0].received_at >= 0.9
    reasons = [reason for reason, _ in await history(tidings, message_id)]
    assert reasons.index("token_retry") < reasons.index("retry") < reasons.index("token_sent")


async def test_other_refusals_fail_with_apns_reason(node: Any, apns: Any) -> None:
    """A 4xx that is not about the token fails the delivery with APNs' reason; a user
    without a token gets ``no_address``; nothing is removed."""
    tidings, http, service = node
    fake: FakeApns = apns[0]
    odd = "34" * 32
    fake.script(odd, 400, "BadExpirationDate")
    await register(http, "eve", "apns", odd, BUNDLE_ID)
    message_id = await post(http, service, "eve", "apns")
    [delivery] = (await settled(tidings, message_id)).deliveries or []
    assert (delivery.state, delivery.reason) == ("failed", "rejected")
    assert "BadExpirationDate" in (delivery.last_error or "")
    assert len(await tidings.store.push_tokens("eve")) == 1
    message_id = await post(http, service, "nobody", "apns")
    [delivery] = (await settled(tidings, message_id)).deliveries or []
    assert (delivery.state, delivery.reason) == ("failed", "no_address")


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"apns_key_file": "/nonexistent/AuthKey.p8"}, "TIDINGS_APNS_KEY_FILE"),
        ({"apns_key_id": None}, "TIDINGS_APNS_KEY_ID"),
        ({"apns_topic": None}, "TIDINGS_APNS_TOPIC"),
        ({"push_ca_file": "/nonexistent/ca.pem"}, "TIDINGS_PUSH_CA_FILE"),
    ],
)
async def test_unusable_credentials_stop_the_node_naming_the_setting(
    tmp_path: Path, apns: Any, change: dict[str, Any], named: str
) -> None:
    settings = {**apns_settings(apns), **change}
    with pytest.raises(ConfigurationError, match=named):
        async with Tidings(store=f"sqlite:///{tmp_path}/c.db", **settings):
            pass


async def test_a_file_that_is_not_an_auth_key_is_refused(tmp_path: Path, apns: Any) -> None:
    bogus = tmp_path / "AuthKey.p8"
    bogus.write_text("-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")
    settings = {**apns_settings(apns), "apns_key_file": str(bogus)}
    with pytest.raises(ConfigurationError, match="is not an APNs auth key"):
        async with Tidings(store=f"sqlite:///{tmp_path}/c.db", **settings):
            pass


def badges(fake: FakeApns, token: str) -> list[int]:
    """The badge counts of the silent updates ``token`` got, in order."""
    return [
        r.payload["aps"]["badge"]
        for r in fake.accepted_for(token)
        if r.headers.get("apns-push-type") == "background"
    ]


async def test_every_phone_badge_follows_the_count(tmp_path: Path, apns: Any) -> None:
    """Two phones and the user's other devices: a notify sends both phones a silent badge
    update with the new count; marking it seen elsewhere (``mark_seen``, what a browser's
    ``markSeen`` frame calls) brings both to 0. Updates are background pushes (priority 5),
    collapsed, and at most one per ``badge_sync_interval`` per user, the last one carrying
    the latest count."""
    fake: FakeApns = apns[0]
    fake.clear()
    async with Tidings(
        store=f"sqlite:///{tmp_path}/b.db", badge_sync_interval=0.3, **apns_settings(apns)
    ) as tidings:
        for token in (PHONE, TABLET):
            await tidings.store.register_push_token(
                "fay", "apns", token, BUNDLE_ID, max_per_user=100
            )
        first = await tidings.notify("fay", {"n": 1})
        await fake.wait_for_async(lambda f: badges(f, PHONE) and badges(f, TABLET))
        assert badges(fake, PHONE) == badges(fake, TABLET) == [1]
        await asyncio.sleep(0.4)  # past the interval: the next change goes at once
        await tidings.mark_seen("fay", [first.notification.notification_id])
        await fake.wait_for_async(
            lambda f: len(badges(f, PHONE)) == 2 and len(badges(f, TABLET)) == 2
        )
        assert badges(fake, PHONE) == badges(fake, TABLET) == [1, 0]
        [update] = [
            r for r in fake.accepted_for(PHONE) if r.headers.get("apns-push-type") == "background"
        ][-1:]
        assert update.headers["apns-priority"] == "5"
        assert update.headers["apns-collapse-id"] == "tidings-badge"
        assert update.payload["aps"]["content-available"] == 1
        await asyncio.sleep(0.4)
        for n in range(5):  # a burst: one update now, one with the latest count at the end
            await tidings.notify("fay", {"n": n})
        for token in (PHONE, TABLET):
            await fake.wait_for_async(lambda f, t=token: badges(f, t)[-1:] == [5])  # type: ignore[misc]
            burst = badges(fake, token)[2:]
            assert burst[0] == 1 and burst[-1] == 5
            assert len(burst) < 5  # folded: fewer updates than changes
        await tidings.notify("gus", {"n": 1})  # no phones: nothing is sent
        await asyncio.sleep(0.1)
        assert all(r.device_token in (PHONE, TABLET) for r in fake.received)


def test_provider_tokens_are_renewed_as_apns_allows(
    apns: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A provider token is kept for 50 minutes (APNs: at most 60), and after APNs refused it
    a new one is made only once the last is 20 minutes old (APNs refuses more frequent
    updates with TooManyProviderTokenUpdates)."""
    from tidings.delivery.channels import apns as module

    _, path, key_id, team_id = apns
    channel = module.ApnsChannel(
        cast(Any, None),
        key=module.load_auth_key(str(path)),
        key_id=key_id,
        team_id=team_id,
        topic=BUNDLE_ID,
    )
    now = [1_800_000_000.0]
    monkeypatch.setattr(module.time, "time", lambda: now[0])
    first = channel.provider_token()
    now[0] += 10 * 60
    assert channel.provider_token() == first
    channel._refused = True  # what a 403 ExpiredProviderToken/InvalidProviderToken sets
    assert channel.provider_token() == first  # too soon for APNs
    now[0] += 11 * 60
    second = channel.provider_token()
    assert second != first
    now[0] += 49 * 60
    assert channel.provider_token() == second
    now[0] += 60
    assert channel.provider_token() not in (first, second)
