"""Phones and a browser of one user, against a real server process and the fake APNs
(support/fake_apns.py: TLS, HTTP/2, provider tokens verified): the badge on both phones
follows the unseen count, including when the user reads in the browser."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from conftest import ServerProcess, _print_logs_if_failed, device_token
from support.fake_apns import FakeApns, make_p8_key
from tidings.client import DeviceClient

BUNDLE_ID = "com.example.phones"
PHONE, TABLET = "a0" * 32, "b0" * 32


@pytest.fixture(scope="module")
def apns(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[FakeApns, Path, str, str]]:
    path, key_id, team_id = make_p8_key(tmp_path_factory.mktemp("apns-key"))
    with FakeApns.running(path, team_id=team_id, key_id=key_id, bundle_id=BUNDLE_ID) as fake:
        yield fake, path, key_id, team_id


@pytest.fixture
def server(
    tmp_path: Path, apns: tuple[FakeApns, Path, str, str], request: pytest.FixtureRequest
) -> Iterator[ServerProcess]:
    fake, path, key_id, team_id = apns
    env = {
        "TIDINGS_APNS_KEY_FILE": str(path),
        "TIDINGS_APNS_KEY_ID": key_id,
        "TIDINGS_APNS_TEAM_ID": team_id,
        "TIDINGS_APNS_TOPIC": BUNDLE_ID,
        "TIDINGS_APNS_URL": fake.url,
        "TIDINGS_PUSH_CA_FILE": str(fake.ca_path),
        "TIDINGS_BADGE_SYNC_INTERVAL": "0.3",
    }
    proc = ServerProcess(tmp_path / "tidings.db", env=env).start()
    try:
        yield proc
    finally:
        _print_logs_if_failed(request, [proc])
        proc.stop()


def badges(fake: FakeApns, token: str) -> list[int]:
    return [
        r.payload["aps"]["badge"]
        for r in fake.accepted_for(token)
        if r.headers.get("apns-push-type") == "background"
    ]


async def test_reading_in_the_browser_clears_both_phone_badges(
    server: ServerProcess, apns: tuple[FakeApns, Path, str, str]
) -> None:
    """Two phones register their tokens; the browser is connected. A notify sends both
    phones a silent badge update to 1; marking it seen in the browser sends both an update
    to 0, and the browser's own count goes to 0."""
    fake = apns[0]
    fake.clear()
    device = {"Authorization": f"Bearer {device_token('ann')}"}
    service = {"Authorization": f"Bearer {server.service_token('notify')}"}
    async with httpx.AsyncClient(base_url=server.url) as http:
        for token in (PHONE, TABLET):
            answer = await http.post(
                "/me/push-tokens", json={"platform": "apns", "token": token}, headers=device
            )
            assert answer.status_code == 201, answer.text
        async with DeviceClient(server.ws_url, token=device_token("ann")) as browser:
            answer = await http.post(
                "/notify", json={"user_id": "ann", "data": {"text": "hi"}}, headers=service
            )
            assert answer.status_code == 201, answer.text
            await browser.wait_for_count(1)
            await fake.wait_for_async(
                lambda f: badges(f, PHONE)[-1:] == badges(f, TABLET)[-1:] == [1]
            )
            [note] = await browser.get_unseen()
            assert await browser.mark_seen([note["notification_id"]]) == 1
            await browser.wait_for_count(0)
            await fake.wait_for_async(
                lambda f: badges(f, PHONE)[-1:] == badges(f, TABLET)[-1:] == [0]
            )
            await asyncio.sleep(0.5)  # nothing more follows: the badge stays at the count
            assert badges(fake, PHONE)[-1] == badges(fake, TABLET)[-1] == 0
