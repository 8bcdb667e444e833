"""The fake APNs (tests/support/fake_apns.py) against clients it did not write: httpx over
HTTP/2 with JWTs signed by joserfc, as a provider would send them to api.push.apple.com."""

from __future__ import annotations

import asyncio
import json
import ssl
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import ECKey

from support.fake_apns import FakeApns, make_p8_key

BUNDLE_ID = "com.example.tidings"
TOKEN = "a1" * 32  # 64 hex digits, as Apple's device tokens are today


@pytest.fixture(scope="module")
def key_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    path, key_id, team_id = make_p8_key(tmp_path_factory.mktemp("apns-key"))
    return path, key_id, team_id


@pytest.fixture(scope="module")
def apns(key_file: tuple[Path, str, str]) -> Iterator[FakeApns]:
    path, key_id, team_id = key_file
    with FakeApns.running(path, team_id=team_id, key_id=key_id, bundle_id=BUNDLE_ID) as fake:
        yield fake


@pytest.fixture(autouse=True)
def fresh(apns: FakeApns) -> None:
    apns.clear()


def provider_token(
    key_file: tuple[Path, str, str],
    *,
    iat: int | None = None,
    kid: str | None = None,
    iss: str | None = None,
    pem: bytes | None = None,
) -> str:
    path, key_id, team_id = key_file
    key = ECKey.import_key(pem if pem is not None else path.read_bytes())
    header = {"alg": "ES256", "kid": kid or key_id}
    claims = {"iss": iss or team_id, "iat": int(time.time()) if iat is None else iat}
    return jwt.encode(header, claims, key)


def client(apns: FakeApns, *, http2: bool = True) -> httpx.AsyncClient:
    context = ssl.create_default_context(cafile=str(apns.ca_path))
    return httpx.AsyncClient(
        base_url=apns.url, http2=http2, http1=not http2, verify=context, timeout=5
    )


@pytest.fixture
async def h2(apns: FakeApns) -> AsyncIterator[httpx.AsyncClient]:
    async with client(apns) as http:
        yield http


def headers(jwt_: str | None, **extra: str) -> dict[str, str]:
    base = {"apns-topic": BUNDLE_ID, "apns-push-type": "alert", "apns-priority": "10"}
    if jwt_ is not None:
        base["authorization"] = f"bearer {jwt_}"
    base.update({name.replace("_", "-"): value for name, value in extra.items()})
    return {name: value for name, value in base.items() if value != ""}


ALERT: dict[str, Any] = {"aps": {"alert": {"title": "Hi", "body": "You have a tiding"}}}


async def push(
    http: httpx.AsyncClient,
    jwt_: str | None,
    *,
    token: str = TOKEN,
    payload: Any = ALERT,
    body: bytes | None = None,
    **extra: str,
) -> httpx.Response:
    content = body if body is not None else json.dumps(payload).encode()
    return await http.post(f"/3/device/{token}", content=content, headers=headers(jwt_, **extra))


def reason(response: httpx.Response) -> str:
    return str(response.json()["reason"])


async def test_accepts_a_well_formed_push(
    apns: FakeApns, h2: httpx.AsyncClient, key_file: tuple[Path, str, str]
) -> None:
    token = provider_token(key_file)
    response = await push(h2, token)
    assert response.status_code == 200, response.text
    assert response.http_version == "HTTP/2"
    assert uuid.UUID(response.headers["apns-id"])
    assert response.content == b""

    chosen = str(uuid.uuid4())
    echoed = await push(h2, token, apns_id=chosen)
    assert echoed.status_code == 200
    assert echoed.headers["apns-id"] == chosen

    (first, second) = apns.accepted
    assert first.device_token == TOKEN
    assert first.payload == ALERT
    assert first.http_version == "2"
    assert first.headers["apns-topic"] == BUNDLE_ID
    assert first.jwt == token
    assert first.jwt_iat is not None and abs(first.jwt_iat - time.time()) < 60
    assert second.apns_id == chosen
    assert apns.connections == [first.connection]


async def test_refuses_http_1_1(apns: FakeApns, key_file: tuple[Path, str, str]) -> None:
    async with client(apns, http2=False) as http1:
        try:
            response = await push(http1, provider_token(key_file))
        except httpx.HTTPError:
            pass  # refused at the protocol level: fine too
        else:
            assert response.status_code != 200
            assert response.http_version == "HTTP/1.1"
    assert apns.accepted == []


async def test_provider_token_checks(
    apns: FakeApns, h2: httpx.AsyncClient, key_file: tuple[Path, str, str], tmp_path: Path
) -> None:
    missing = await push(h2, None)
    assert (missing.status_code, reason(missing)) == (403, "MissingProviderToken")
    assert missing.headers["apns-id"]

    other_key, _, _ = make_p8_key(tmp_path)
    forged = provider_token(key_file, pem=other_key.read_bytes())
    bad_signature = await push(h2, forged)
    assert (bad_signature.status_code, reason(bad_signature)) == (403, "InvalidProviderToken")

    for wrong in (provider_token(key_file, kid="WRONGKID00"), provider_token(key_file, iss="X")):
        response = await push(h2, wrong)
        assert (response.status_code, reason(response)) == (403, "InvalidProviderToken")

    stale = provider_token(key_file, iat=int(time.time()) - 3601)
    expired = await push(h2, stale)
    assert (expired.status_code, reason(expired)) == (403, "ExpiredProviderToken")
    assert apns.accepted == []


async def test_a_new_provider_token_on_the_same_connection_within_20_minutes_is_refused(
    apns: FakeApns, h2: httpx.AsyncClient, key_file: tuple[Path, str, str]
) -> None:
    first = await push(h2, provider_token(key_file, iat=int(time.time()) - 10))
    assert first.status_code == 200
    again = await push(h2, provider_token(key_file, iat=int(time.time()) - 5))
    assert (again.status_code, reason(again)) == (429, "TooManyProviderTokenUpdates")
    # A new connection may start with a new token.
    async with client(apns) as other:
        fresh_connection = await push(other, provider_token(key_file, iat=int(time.time()) - 5))
    assert fresh_connection.status_code == 200
    assert len(apns.connections) == 2


async def test_header_checks(
    apns: FakeApns, h2: httpx.AsyncClient, key_file: tuple[Path, str, str]
) -> None:
    token = provider_token(key_file)
    cases: list[tuple[dict[str, Any], int, str]] = [
        ({"apns_topic": ""}, 400, "MissingTopic"),
        ({"apns_topic": "com.example.other"}, 400, "TopicDisallowed"),
        ({"apns_topic": "not a topic"}, 400, "BadTopic"),
        ({"apns_push_type": "background", "apns_priority": "10"}, 400, "BadPriority"),
        ({"apns_push_type": "background", "apns_priority": ""}, 400, "BadPriority"),
        ({"apns_push_type": "shout"}, 400, "InvalidPushType"),
        ({"apns_push_type": ""}, 400, "InvalidPushType"),
        ({"apns_push_type": "voip"}, 400, "TopicDisallowed"),
        ({"apns_priority": "7"}, 400, "BadPriority"),
        ({"apns_expiration": "soon"}, 400, "BadExpirationDate"),
        ({"apns_collapse_id": "c" * 65}, 400, "BadCollapseId"),
        ({"apns_id": "not-a-uuid"}, 400, "BadMessageId"),
        ({"token": "zz" * 32}, 400, "BadDeviceToken"),
        ({"token": "abc"}, 400, "BadDeviceToken"),
        ({"payload": {"aps": {"alert": "x" * 4096}}}, 413, "PayloadTooLarge"),
        ({"body": b""}, 400, "PayloadEmpty"),
        ({"payload": {"data": 1}}, 400, "PayloadEmpty"),
        ({"body": b"{not json"}, 400, "BadPayload"),
    ]
    for extra, status, expected in cases:
        response = await push(h2, token, **extra)
        assert (response.status_code, reason(response)) == (status, expected), extra
        assert response.headers["apns-id"]

    fine: list[dict[str, Any]] = [
        {
            "apns_push_type": "background",
            "apns_priority": "5",
            "payload": {"aps": {"content-available": 1}},
        },
        {
            "apns_push_type": "voip",
            "apns_topic": f"{BUNDLE_ID}.voip",
            "payload": {"aps": {}, "call": "x" * 4500},
        },
        {"apns_collapse_id": "c" * 64, "apns_expiration": "0", "apns_priority": "5"},
        {"payload": {"aps": {"alert": "x" * 4000}}},
    ]
    for extra in fine:
        response = await push(h2, token, **extra)
        assert response.status_code == 200, (extra, response.text)
    assert len(apns.accepted) == len(fine)


async def test_method_and_path(h2: httpx.AsyncClient, key_file: tuple[Path, str, str]) -> None:
    auth = headers(provider_token(key_file))
    got = await h2.get(f"/3/device/{TOKEN}", headers=auth)
    assert (got.status_code, reason(got)) == (405, "MethodNotAllowed")
    elsewhere = await h2.post("/2/device/" + TOKEN, headers=auth, content=b"{}")
    assert (elsewhere.status_code, reason(elsewhere)) == (404, "BadPath")
    no_token = await h2.post("/3/device/", headers=auth, content=json.dumps(ALERT))
    assert (no_token.status_code, reason(no_token)) == (400, "MissingDeviceToken")


async def test_scripted_answers(
    apns: FakeApns, h2: httpx.AsyncClient, key_file: tuple[Path, str, str]
) -> None:
    token = provider_token(key_file)
    gone, busy = "b2" * 32, "c3" * 32
    apns.unregister(gone)
    apns.script(busy, 429, "TooManyRequests", retry_after=7, times=1)

    before_ms = int(time.time() * 1000)
    unregistered = await push(h2, token, token=gone)
    assert unregistered.status_code == 410
    body = unregistered.json()
    assert body["reason"] == "Unregistered"
    assert isinstance(body["timestamp"], int) and body["timestamp"] >= before_ms - 1000
    assert (await push(h2, token, token=gone)).status_code == 410  # always

    throttled = await push(h2, token, token=busy)
    assert (throttled.status_code, reason(throttled)) == (429, "TooManyRequests")
    assert throttled.headers["retry-after"] == "7"
    assert (await push(h2, token, token=busy)).status_code == 200  # only the next one

    apns.script(None, 503, "ServiceUnavailable", times=2)
    assert [(await push(h2, token)).status_code for _ in range(3)] == [503, 503, 200]

    # A scripted token still gets the request checks first.
    bad = await push(h2, token, token=gone, apns_topic="com.example.other")
    assert reason(bad) == "TopicDisallowed"
    assert [r.device_token for r in apns.accepted] == [busy, TOKEN]


async def test_concurrent_requests_share_one_connection(
    apns: FakeApns, h2: httpx.AsyncClient, key_file: tuple[Path, str, str]
) -> None:
    token = provider_token(key_file)
    tokens = [f"{n:064x}" for n in range(100)]
    responses = await asyncio.gather(*(push(h2, token, token=device) for device in tokens))
    assert [r.status_code for r in responses] == [200] * 100
    assert len({r.headers["apns-id"] for r in responses}) == 100
    assert sorted(r.device_token for r in apns.accepted) == tokens
    assert len(apns.connections) == 1


async def test_async_runner_with_a_test_clock(key_file: tuple[Path, str, str]) -> None:
    path, key_id, team_id = key_file
    now = [time.time()]
    async with FakeApns.running_async(
        path, team_id=team_id, key_id=key_id, bundle_id=BUNDLE_ID, clock=lambda: now[0]
    ) as fake:
        async with client(fake) as http:
            first = provider_token(key_file, iat=int(now[0]))
            assert (await push(http, first)).status_code == 200
            second = provider_token(key_file, iat=int(now[0]) + 1)
            assert reason(await push(http, second)) == "TooManyProviderTokenUpdates"
            now[0] += 20 * 60 + 1
            assert (await push(http, second)).status_code == 200  # 20 minutes on: allowed
            now[0] += 60 * 60
            assert reason(await push(http, second)) == "ExpiredProviderToken"
        await fake.wait_for_async(lambda f: len(f.accepted) == 2)
        assert [r.status for r in fake.received] == [200, 429, 200, 403]


async def test_token_updates_can_be_relaxed(key_file: tuple[Path, str, str]) -> None:
    path, key_id, team_id = key_file
    async with FakeApns.running_async(
        path, team_id=team_id, key_id=key_id, bundle_id=BUNDLE_ID, token_update_interval=None
    ) as fake:
        async with client(fake) as http:
            for iat in (int(time.time()) - 20, int(time.time()) - 10):
                response = await push(http, provider_token(key_file, iat=iat))
                assert response.status_code == 200
        assert len(fake.accepted) == 2
