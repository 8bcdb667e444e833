"""The ``fcm`` channel end to end: ``POST /messages`` on a real node (SQLite, its own workers)
to a fake FCM at the HTTP boundary (support/fake_fcm.py: over TLS, the service-account JWT
bearer grant checked at the account's ``token_uri``, then ``messages:send``). Push tokens come
from ``/me/push-tokens``; each token's outcome is in the delivery's history."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from phone_support import post, register, service_api, settled

from conftest import JWT_SECRET
from support.fake_fcm import FakeFcm
from tidings import Tidings
from tidings.errors import ConfigurationError

PHONE = "fcm-phone-token-1"
TABLET = "fcm-tablet-token-2"


@pytest.fixture(scope="module")
def fcm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[FakeFcm, Path]]:
    with FakeFcm(tls=True) as fake:
        path = fake.account.write(tmp_path_factory.mktemp("fcm") / "service-account.json")
        yield fake, path


def fcm_settings(fcm: tuple[FakeFcm, Path]) -> dict[str, Any]:
    fake, path = fcm
    return {
        "fcm_credentials_file": str(path),
        "fcm_url": fake.url,
        "push_ca_file": str(fake.ca_path),
    }


@pytest.fixture
async def node(
    tmp_path: Path, fcm: tuple[FakeFcm, Path]
) -> AsyncIterator[tuple[Tidings, httpx.AsyncClient, dict[str, str]]]:
    async with (
        Tidings(
            store=f"sqlite:///{tmp_path}/f.db",
            jwt_secret=JWT_SECRET,
            pipeline_poll_interval=0.05,
            pipeline_retry_base=0.05,
            pipeline_retry_max=2.0,
            badge_sync_interval=0,
            **fcm_settings(fcm),
        ) as tidings,
        service_api(tidings) as (http, service),
    ):
        yield tidings, http, service


async def test_every_token_gets_the_message_with_the_users_badge(node: Any, fcm: Any) -> None:
    """Both tokens get the rendered notification, the data as strings and the unseen count
    as the badge; one access token serves every send; each token's outcome is noted."""
    tidings, http, service = node
    fake: FakeFcm = fcm[0]
    issued_before = fake.tokens_issued
    await register(http, "ann", "fcm", PHONE)
    await register(http, "ann", "fcm", TABLET)
    for n in range(2):
        await tidings.notify("ann", {"n": n})
    first = await post(http, service, "ann", "fcm")
    second = await post(http, service, "ann", "fcm")
    for message_id in (first, second):
        done = await settled(tidings, message_id)
        assert [d.state for d in done.deliveries or []] == ["sent"]
    for token in (PHONE, TABLET):
        sent = fake.messages_to(token)
        assert len(sent) == 2
        message = sent[0]
        assert message["notification"] == {"title": "Order 42", "body": "Order 42 has shipped"}
        assert message["data"]["data"] == '{"n":42}'
        assert message["android"]["notification"]["notification_count"] == 2
        assert message["apns"]["payload"]["aps"]["badge"] == 2
    assert fake.tokens_issued - issued_before == 1
    found = await tidings.pipeline.store.get_message(first, None)
    assert found is not None and found.deliveries
    notes = [h.reason for h in found.deliveries[0].history]
    assert notes.count("token_sent") == 2


async def test_unregistered_and_invalid_tokens_are_removed(node: Any, fcm: Any) -> None:
    """404 UNREGISTERED and 400 INVALID_ARGUMENT on the token remove it from the registry:
    the delivery is sent through the token left; a user whose tokens are all gone gets
    ``gone``."""
    tidings, http, service = node
    fake: FakeFcm = fcm[0]
    fake.unregister("fcm-gone-1")
    fake.fail("fcm-bad-2", "INVALID_ARGUMENT")
    for token in ("fcm-ok-0", "fcm-gone-1", "fcm-bad-2"):
        await register(http, "bob", "fcm", token)
    done = await settled(tidings, await post(http, service, "bob", "fcm"))
    assert [d.state for d in done.deliveries or []] == ["sent"]
    assert [t.token for t in await tidings.store.push_tokens("bob")] == ["fcm-ok-0"]
    fake.unregister("fcm-gone-3")
    await register(http, "cyd", "fcm", "fcm-gone-3")
    [delivery] = (await settled(tidings, await post(http, service, "cyd", "fcm"))).deliveries or []
    assert (delivery.state, delivery.reason) == ("failed", "gone")


async def test_quota_exceeded_is_retried_after_retry_after(node: Any, fcm: Any) -> None:
    """429 QUOTA_EXCEEDED with ``Retry-After: 1``: sent on the next try, a second or more
    later; 503 UNAVAILABLE is retried too."""
    tidings, http, service = node
    fake: FakeFcm = fcm[0]
    fake.fail("fcm-busy-4", "QUOTA_EXCEEDED", times=1, retry_after=1)
    await register(http, "dan", "fcm", "fcm-busy-4")
    message_id = await post(http, service, "dan", "fcm")
    done = await settled(tidings, message_id)
    [delivery] = done.deliveries or []
    assert delivery.state == "sent"
    history = delivery.history
    retried = next(h for h in history if h.reason == "token_retry")
    sent = next(h for h in history if h.reason == "token_sent")
    assert (sent.at - retried.at).total_seconds() >= 0.9
    assert [a.status for a in fake.attempts_to("fcm-busy-4")] == [429, 200]
    fake.fail("fcm-down-5", "UNAVAILABLE", times=1)
    await register(http, "dan", "fcm", "fcm-down-5")
    done = await settled(tidings, await post(http, service, "dan", "fcm"))
    assert [d.state for d in done.deliveries or []] == ["sent"]


async def test_a_revoked_access_token_is_fetched_again(node: Any, fcm: Any) -> None:
    """FCM answers 401 once the access token is revoked: the channel fetches a new one and
    the retry is sent."""
    tidings, http, service = node
    fake: FakeFcm = fcm[0]
    await register(http, "eve", "fcm", "fcm-eve-6")
    await settled(tidings, await post(http, service, "eve", "fcm"))
    fake.revoke_tokens()
    issued = fake.tokens_issued
    done = await settled(tidings, await post(http, service, "eve", "fcm"))
    assert [d.state for d in done.deliveries or []] == ["sent"]
    assert fake.tokens_issued == issued + 1


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (None, "No such file"),
        ("not json", "is not JSON"),
        ('{"type": "service_account"}', "is not a service-account key file"),
    ],
)
async def test_unusable_credentials_stop_the_node(
    tmp_path: Path, fcm: Any, content: str | None, problem: str
) -> None:
    path = tmp_path / "sa.json"
    if content is not None:
        path.write_text(content)
    settings = {**fcm_settings(fcm), "fcm_credentials_file": str(path)}
    with pytest.raises(ConfigurationError, match=f"TIDINGS_FCM_CREDENTIALS_FILE=.*{problem}"):
        async with Tidings(store=f"sqlite:///{tmp_path}/c.db", **settings):
            pass
