"""The FCM and Expo fakes hold clients to what the real services check.

The clients here are not tidings code: the assertion is signed with joserfc, requests go out
through httpx, and every expectation comes from Google's and Expo's documentation (see the
fakes' docstrings), so a tidings channel later tested against the fakes meets the real
services' rules rather than its own.
"""

from __future__ import annotations

import gzip
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import RSAKey

from support.fake_expo import FakeExpo
from support.fake_fcm import FCM_SCOPE, JWT_BEARER, FakeFcm, ServiceAccount

Json = dict[str, Any]
TOKEN_A = "ExponentPushToken[aaaaaaaaaaaaaaaaaaaaaa]"
TOKEN_B = "ExponentPushToken[bbbbbbbbbbbbbbbbbbbbbb]"
TOKEN_C = "ExpoPushToken[cccccccccccccccccccccc]"


# ---------------------------------------------------------------------------------------------
# A minimal FCM client written from Google's documentation.


def assertion(
    info: Json,
    *,
    key: RSAKey | None = None,
    now: float | None = None,
    lifetime: int = 3600,
    **overrides: Any,
) -> str:
    """The JWT of the service-account flow, signed RS256 with the key file's private key."""
    issued = int(now if now is not None else time.time())
    claims: Json = {
        "iss": info["client_email"],
        "scope": FCM_SCOPE,
        "aud": info["token_uri"],
        "iat": issued,
        "exp": issued + lifetime,
    }
    claims.update(overrides)
    header = {"alg": "RS256", "typ": "JWT", "kid": info["private_key_id"]}
    signing_key = key or RSAKey.import_key(info["private_key"])
    return jwt.encode(header, claims, signing_key)


def exchange(http: httpx.Client, info: Json, signed: str) -> httpx.Response:
    return http.post(info["token_uri"], data={"grant_type": JWT_BEARER, "assertion": signed})


def access_token(http: httpx.Client, info: Json) -> str:
    answer = exchange(http, info, assertion(info))
    assert answer.status_code == 200, answer.text
    return str(answer.json()["access_token"])


def send(
    http: httpx.Client, fcm: FakeFcm, token: str | None, message: Json, project: str | None = None
) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    url = f"{fcm.url}/v1/projects/{project or fcm.project_id}/messages:send"
    return http.post(url, json={"message": message}, headers=headers)


def fcm_error(answer: httpx.Response) -> tuple[int, str, list[str]]:
    error = answer.json()["error"]
    codes = [d["errorCode"] for d in error.get("details", []) if "errorCode" in d]
    return error["code"], error["status"], codes


@pytest.fixture
def fcm() -> Iterator[FakeFcm]:
    with FakeFcm(project_id="tidings-test", expires_in=120) as server:
        yield server


@pytest.fixture
def info(fcm: FakeFcm, tmp_path: Path) -> Json:
    """The key file as a client reads it from disk."""
    data: Json = json.loads(fcm.account.write(tmp_path / "service-account.json").read_text())
    return data


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10) as client:
        yield client


def test_key_file_has_the_fields_of_a_real_one(fcm: FakeFcm, tmp_path: Path) -> None:
    path = fcm.account.write(tmp_path / "sa.json")
    data = json.loads(path.read_text())
    assert path.stat().st_mode & 0o777 == 0o600
    assert data["type"] == "service_account"
    assert data["project_id"] == "tidings-test"
    assert data["token_uri"] == fcm.token_uri == f"{fcm.url}/token"
    assert data["client_email"].endswith("@tidings-test.iam.gserviceaccount.com")
    assert re.fullmatch(r"[0-9a-f]{40}", data["private_key_id"])
    assert data["private_key"].startswith("-----BEGIN PRIVATE KEY-----")
    assert RSAKey.import_key(data["private_key"]).as_dict()["kty"] == "RSA"
    assert data["client_id"].isdigit()


def test_valid_flow_over_tls(tmp_path: Path) -> None:
    with FakeFcm(tls=True) as fcm:
        assert fcm.url.startswith("https://") and fcm.ca_path is not None
        info = json.loads(fcm.account.write(tmp_path / "sa.json").read_text())
        with httpx.Client(verify=fcm.client_ssl_context(), timeout=10) as http:
            granted = exchange(http, info, assertion(info))
            assert granted.status_code == 200
            body = granted.json()
            assert body["token_type"] == "Bearer" and body["expires_in"] == 3600
            message = {
                "token": "device-1",
                "notification": {"title": "Hi", "body": "there"},
                "data": {"kind": "greeting", "n": "1"},
                "android": {"priority": "high", "ttl": "3600s"},
                "apns": {"headers": {"apns-priority": "10"}, "payload": {"aps": {"badge": 1}}},
            }
            answer = send(http, fcm, body["access_token"], message)
            assert answer.status_code == 200, answer.text
            assert re.fullmatch(r"projects/tidings-test/messages/\d+", answer.json()["name"])
        # A client that does not trust the fake's CA is refused.
        with httpx.Client(timeout=10) as untrusting, pytest.raises(httpx.ConnectError):
            untrusting.post(fcm.token_uri)
    assert fcm.messages_to("device-1") == [message]
    assert fcm.tokens_issued == 1


def test_one_token_serves_many_sends(fcm: FakeFcm, info: Json, http: httpx.Client) -> None:
    token = access_token(http, info)
    for n in range(3):
        assert send(http, fcm, token, {"token": f"d{n}", "data": {"n": str(n)}}).status_code == 200
    assert fcm.tokens_issued == 1
    assert [m.message["token"] for m in fcm.messages] == ["d0", "d1", "d2"]


def test_bad_signature_is_refused(fcm: FakeFcm, info: Json, http: httpx.Client) -> None:
    stranger = RSAKey.generate_key(2048)
    answer = exchange(http, info, assertion(info, key=stranger))
    assert answer.status_code == 400
    assert answer.json()["error"] == "invalid_grant"
    # A signature over other claims (a tampered payload) fails the same way.
    header, _, signature = assertion(info).split(".")
    _, payload, _ = assertion(info, scope="https://www.googleapis.com/auth/cloud-platform").split(
        "."
    )
    tampered = exchange(http, info, f"{header}.{payload}.{signature}")
    assert tampered.json()["error"] == "invalid_grant"
    assert fcm.tokens_issued == 0


@pytest.mark.parametrize(
    ("case", "overrides"),
    [
        ("wrong kid", {"kid": "0" * 40}),
        ("wrong audience", {"aud": "https://oauth2.googleapis.com/token"}),
        ("unknown issuer", {"iss": "someone@else.iam.gserviceaccount.com"}),
        ("lifetime over an hour", {"lifetime": 3601}),
        ("already expired", {"now": time.time() - 7200}),
        ("issued in the future", {"now": time.time() + 3600}),
    ],
)
def test_assertion_claims_are_checked(
    fcm: FakeFcm, info: Json, http: httpx.Client, case: str, overrides: Json
) -> None:
    if "kid" in overrides:
        signed = assertion({**info, "private_key_id": overrides["kid"]})
    else:
        signed = assertion(info, **overrides)
    answer = exchange(http, info, signed)
    assert answer.status_code == 400, case
    assert answer.json()["error"] == "invalid_grant", case
    assert fcm.tokens_issued == 0


def test_token_request_form_is_checked(fcm: FakeFcm, info: Json, http: httpx.Client) -> None:
    wrong_grant = http.post(
        info["token_uri"], data={"grant_type": "client_credentials", "assertion": assertion(info)}
    )
    assert wrong_grant.status_code == 400
    assert wrong_grant.json()["error"] == "unsupported_grant_type"
    no_scope = exchange(http, info, assertion(info, scope=""))
    assert (no_scope.status_code, no_scope.json()["error"]) == (400, "invalid_scope")
    garbage = exchange(http, info, "not.a.jwt")
    assert (garbage.status_code, garbage.json()["error"]) == (400, "invalid_grant")


def test_deleted_key_no_longer_works(fcm: FakeFcm, http: httpx.Client) -> None:
    other = fcm.add_account()
    assert access_token(http, other.info())
    fcm.delete_key(other)
    assert exchange(http, other.info(), assertion(other.info())).status_code == 400


def test_unknown_missing_and_expired_tokens_are_refused(
    fcm: FakeFcm, info: Json, http: httpx.Client
) -> None:
    message = {"token": "device-1"}
    for credential in (None, "ya29.made-up"):
        answer = send(http, fcm, credential, message)
        assert answer.status_code == 401
        assert fcm_error(answer)[:2] == (401, "UNAUTHENTICATED")
        assert answer.headers["WWW-Authenticate"].startswith("Bearer")
    token = access_token(http, info)
    assert send(http, fcm, token, message).status_code == 200
    fcm.advance(121)  # expires_in=120
    expired = send(http, fcm, token, message)
    assert expired.status_code == 401
    assert fcm_error(expired)[1] == "UNAUTHENTICATED"
    fresh = access_token(http, info)
    assert send(http, fcm, fresh, message).status_code == 200
    assert fcm.tokens_issued == 2
    assert len(fcm.messages) == 2


def test_token_without_a_messaging_scope_is_forbidden(
    fcm: FakeFcm, info: Json, http: httpx.Client
) -> None:
    granted = exchange(
        http, info, assertion(info, scope="https://www.googleapis.com/auth/userinfo.email")
    )
    answer = send(http, fcm, granted.json()["access_token"], {"token": "device-1"})
    assert fcm_error(answer)[:2] == (403, "PERMISSION_DENIED")


def test_wrong_project_is_permission_denied(fcm: FakeFcm, info: Json, http: httpx.Client) -> None:
    token = access_token(http, info)
    answer = send(http, fcm, token, {"token": "device-1"}, project="someone-elses")
    assert answer.status_code == 403
    assert fcm_error(answer) == (403, "PERMISSION_DENIED", [])
    other = fcm.add_account("second-project")
    second = access_token(http, other.info())
    ok = send(http, fcm, second, {"token": "device-1"}, project="second-project")
    assert ok.json()["name"].startswith("projects/second-project/messages/")
    assert fcm.messages[0].client_email == other.client_email


@pytest.mark.parametrize(
    ("message", "field"),
    [
        ({"notification": {"title": "no target"}}, "message"),
        ({"token": "d", "topic": "news"}, "message.topic"),
        ({"token": "d", "data": {"count": 12}}, "message.data[0].value"),
        ({"token": "d", "data": {"ok": "1", "nested": {"a": "b"}}}, "message.data[1].value"),
        ({"token": "d", "data": {"from": "me"}}, "message.data"),
        ({"token": "d", "data": {"google.x": "y"}}, "message.data"),
        ({"token": "d", "priority": "high"}, "message.priority"),
        ({"token": "d", "notification": {"title": 1}}, "message.notification.title"),
        ({"token": "d", "android": {"ttl": 3600}}, "message.android.ttl"),
        (
            {"token": "d", "apns": {"headers": {"apns-priority": 10}}},
            "message.apns.headers[0].value",
        ),
        ({"token": "d", "data": {"big": "x" * 4100}}, "message"),
    ],
)
def test_message_shape_is_checked(
    fcm: FakeFcm, info: Json, http: httpx.Client, message: Json, field: str
) -> None:
    answer = send(http, fcm, access_token(http, info), message)
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["status"] == "INVALID_ARGUMENT"
    fields = [v["field"] for d in error.get("details", []) for v in d.get("fieldViolations", [])]
    assert field in fields
    assert fcm.messages == []


def test_empty_registration_token_is_invalid(fcm: FakeFcm, info: Json, http: httpx.Client) -> None:
    answer = send(http, fcm, access_token(http, info), {"token": ""})
    assert fcm_error(answer) == (400, "INVALID_ARGUMENT", ["INVALID_ARGUMENT"])


def test_validate_only_is_answered_but_not_delivered(
    fcm: FakeFcm, info: Json, http: httpx.Client
) -> None:
    answer = http.post(
        f"{fcm.url}/v1/projects/tidings-test/messages:send",
        json={"message": {"token": "d"}, "validate_only": True},
        headers={"Authorization": f"Bearer {access_token(http, info)}"},
    )
    assert answer.json() == {"name": "projects/tidings-test/messages/fake_message_id"}
    assert fcm.messages == []


def test_scripted_unregistered_and_quota(fcm: FakeFcm, info: Json, http: httpx.Client) -> None:
    token = access_token(http, info)
    fcm.unregister("gone")
    fcm.fail("busy", "QUOTA_EXCEEDED", times=2, retry_after=7)
    for _ in range(2):
        gone = send(http, fcm, token, {"token": "gone"})
        assert gone.status_code == 404
        assert fcm_error(gone) == (404, "NOT_FOUND", ["UNREGISTERED"])
        busy = send(http, fcm, token, {"token": "busy"})
        assert busy.status_code == 429
        assert busy.headers["Retry-After"] == "7"
        assert fcm_error(busy) == (429, "RESOURCE_EXHAUSTED", ["QUOTA_EXCEEDED"])
    assert send(http, fcm, token, {"token": "busy"}).status_code == 200
    assert send(http, fcm, token, {"token": "gone"}).status_code == 404
    assert send(http, fcm, token, {"token": "other"}).status_code == 200
    assert [a.status for a in fcm.attempts_to("busy")] == [429, 429, 200]
    assert fcm.messages_to("gone") == []


@pytest.mark.parametrize(
    ("code", "status", "canonical"),
    [
        ("INVALID_ARGUMENT", 400, "INVALID_ARGUMENT"),
        ("UNAVAILABLE", 503, "UNAVAILABLE"),
        ("INTERNAL", 500, "INTERNAL"),
        ("SENDER_ID_MISMATCH", 403, "PERMISSION_DENIED"),
        ("THIRD_PARTY_AUTH_ERROR", 401, "UNAUTHENTICATED"),
    ],
)
def test_other_scripted_errors(
    fcm: FakeFcm, info: Json, http: httpx.Client, code: Any, status: int, canonical: str
) -> None:
    token = access_token(http, info)
    fcm.fail("device-1", code, times=1)
    answer = send(http, fcm, token, {"token": "device-1"})
    assert answer.status_code == status
    assert fcm_error(answer) == (status, canonical, [code])
    assert "Retry-After" not in answer.headers
    assert send(http, fcm, token, {"token": "device-1"}).status_code == 200


def test_outage_for_every_target(fcm: FakeFcm, info: Json, http: httpx.Client) -> None:
    token = access_token(http, info)
    fcm.fail(None, "UNAVAILABLE", times=2, retry_after=1)
    statuses = [send(http, fcm, token, {"token": f"d{n}"}).status_code for n in range(3)]
    assert statuses == [503, 503, 200]


async def test_usable_from_an_async_test(fcm: FakeFcm, info: Json) -> None:
    async with httpx.AsyncClient(timeout=10) as http:
        granted = await http.post(
            info["token_uri"], data={"grant_type": JWT_BEARER, "assertion": assertion(info)}
        )
        answer = await http.post(
            f"{fcm.url}/v1/projects/tidings-test/messages:send",
            json={"message": {"token": "async-device"}},
            headers={"Authorization": f"Bearer {granted.json()['access_token']}"},
        )
    assert answer.status_code == 200
    assert fcm.messages_to("async-device") == [{"token": "async-device"}]


def test_generated_account_is_standalone(tmp_path: Path) -> None:
    account = ServiceAccount.generate("p", "https://example.invalid/token")
    data = json.loads(account.write(tmp_path / "k.json").read_text())
    assert data["project_id"] == "p" and data["token_uri"] == "https://example.invalid/token"


# ---------------------------------------------------------------------------------------------
# Expo.


@pytest.fixture
def expo() -> Iterator[FakeExpo]:
    with FakeExpo() as server:
        yield server


def push(http: httpx.Client, expo: FakeExpo, body: Any, **headers: str) -> httpx.Response:
    return http.post(expo.send_url, json=body, headers=headers)


def receipts(http: httpx.Client, expo: FakeExpo, ids: list[str], **headers: str) -> httpx.Response:
    return http.post(expo.receipts_url, json={"ids": ids}, headers=headers)


def test_expo_ok_ticket_then_receipt(tmp_path: Path) -> None:
    with FakeExpo(tls=True) as expo, httpx.Client(verify=expo.client_ssl_context()) as http:
        answer = push(
            http,
            expo,
            [
                {"to": TOKEN_A, "title": "Hi", "body": "there", "data": {"n": 1}},
                {"to": TOKEN_C, "body": "second", "priority": "high", "sound": "default"},
            ],
        )
        assert answer.status_code == 200, answer.text
        tickets = answer.json()["data"]
        assert [t["status"] for t in tickets] == ["ok", "ok"]
        ids = [t["id"] for t in tickets]
        got = receipts(http, expo, [*ids, "unknown-id"])
    assert got.status_code == 200
    assert got.json() == {"data": {ids[0]: {"status": "ok"}, ids[1]: {"status": "ok"}}}
    assert expo.messages_to(TOKEN_A) == [
        {"to": TOKEN_A, "title": "Hi", "body": "there", "data": {"n": 1}}
    ]


def test_expo_device_not_registered_in_ticket(expo: FakeExpo, http: httpx.Client) -> None:
    expo.ticket_error(TOKEN_B, "DeviceNotRegistered")
    answer = push(http, expo, [{"to": TOKEN_A, "body": "a"}, {"to": TOKEN_B, "body": "b"}])
    ok, gone = answer.json()["data"]
    assert ok["status"] == "ok"
    assert gone["status"] == "error" and "id" not in gone
    assert gone["details"]["error"] == "DeviceNotRegistered"
    assert gone["details"]["expoPushToken"] == TOKEN_B
    assert TOKEN_B in gone["message"]
    assert expo.messages_to(TOKEN_B) == []


def test_expo_device_not_registered_in_receipt(expo: FakeExpo, http: httpx.Client) -> None:
    expo.receipt_error(TOKEN_A, "DeviceNotRegistered", times=1)
    expo.hold_receipts()
    tickets = push(http, expo, [{"to": TOKEN_A, "body": "a"}, {"to": TOKEN_A, "body": "b"}])
    first, second = (t["id"] for t in tickets.json()["data"])
    assert receipts(http, expo, [first, second]).json() == {"data": {}}  # not ready yet
    expo.hold_receipts(False)
    got = receipts(http, expo, [first, second]).json()["data"]
    assert got[first]["status"] == "error"
    assert got[first]["details"] == {"error": "DeviceNotRegistered"}
    assert got[second] == {"status": "ok"}


def test_expo_refuses_more_than_100_notifications(expo: FakeExpo, http: httpx.Client) -> None:
    many = [{"to": f"ExponentPushToken[t{n}]", "body": "x"} for n in range(101)]
    answer = push(http, expo, many)
    assert answer.status_code == 400
    assert answer.json()["errors"][0]["code"] == "PUSH_TOO_MANY_NOTIFICATIONS"
    # `to` lists count recipient by recipient.
    fanned = push(http, expo, [{"to": [f"ExponentPushToken[u{n}]" for n in range(101)]}])
    assert fanned.json()["errors"][0]["code"] == "PUSH_TOO_MANY_NOTIFICATIONS"
    assert expo.messages == []
    exactly = push(http, expo, many[:100])
    assert exactly.status_code == 200 and len(exactly.json()["data"]) == 100


def test_expo_to_list_gets_one_ticket_per_recipient(expo: FakeExpo, http: httpx.Client) -> None:
    answer = push(http, expo, [{"to": [TOKEN_A, TOKEN_C], "body": "both"}])
    assert [t["status"] for t in answer.json()["data"]] == ["ok", "ok"]
    assert expo.messages_to(TOKEN_C) == [{"to": TOKEN_C, "body": "both"}]


def test_expo_single_message_gets_a_single_ticket(expo: FakeExpo, http: httpx.Client) -> None:
    answer = push(http, expo, {"to": TOKEN_A, "body": "one"})
    assert answer.json()["data"]["status"] == "ok"


def test_expo_message_too_big(expo: FakeExpo, http: httpx.Client) -> None:
    answer = push(http, expo, [{"to": TOKEN_A, "body": "x" * 4100}])
    ticket = answer.json()["data"][0]
    assert ticket["status"] == "error"
    assert ticket["details"]["error"] == "MessageTooBig"


@pytest.mark.parametrize(
    "body",
    [
        [{"body": "no recipient"}],
        [{"to": 5}],
        [{"to": TOKEN_A, "data": "not an object"}],
        [{"to": TOKEN_A, "priority": "urgent"}],
        [{"to": TOKEN_A, "badge": -1}],
        [],
        "text",
    ],
)
def test_expo_malformed_requests(expo: FakeExpo, http: httpx.Client, body: Any) -> None:
    answer = push(http, expo, body)
    assert answer.status_code == 400
    assert answer.json()["errors"][0]["code"] == "VALIDATION_ERROR"


def test_expo_not_an_expo_token(expo: FakeExpo, http: httpx.Client) -> None:
    ticket = push(http, expo, [{"to": "fcm-raw-token", "body": "x"}]).json()["data"][0]
    assert ticket["details"]["error"] == "DeviceNotRegistered"


def test_expo_access_token_when_enhanced_security_is_on(http: httpx.Client) -> None:
    with FakeExpo(access_token="expo-secret") as expo:
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            refused = push(http, expo, [{"to": TOKEN_A}], **headers)
            assert refused.status_code == 401
            assert refused.json()["errors"][0]["code"] == "UNAUTHORIZED"
        good = {"Authorization": "Bearer expo-secret"}
        ticket = push(http, expo, [{"to": TOKEN_A}], **good).json()["data"][0]
        assert receipts(http, expo, [ticket["id"]]).status_code == 401
        assert receipts(http, expo, [ticket["id"]], **good).json()["data"][ticket["id"]]
        assert len(expo.messages) == 1


def test_expo_http_failures_for_the_next_requests(expo: FakeExpo, http: httpx.Client) -> None:
    expo.fail_requests(429, times=2, retry_after=3)
    expo.fail_requests(503, times=1, endpoint="receipts")
    statuses = []
    for _ in range(3):
        answer = push(http, expo, [{"to": TOKEN_A}])
        statuses.append(answer.status_code)
    assert statuses == [429, 429, 200]
    first = expo.requests_to("send")[0]
    assert first.response["errors"][0]["code"] == "TOO_MANY_REQUESTS"
    assert len(expo.messages) == 1
    ticket_id = expo.messages[0].ticket_id
    assert receipts(http, expo, [ticket_id]).status_code == 503
    assert receipts(http, expo, [ticket_id]).status_code == 200


def test_expo_http_failure_scripted_per_token(expo: FakeExpo, http: httpx.Client) -> None:
    expo.fail_requests(500, times=1, token=TOKEN_B)
    assert push(http, expo, [{"to": TOKEN_A}]).status_code == 200
    failed = push(http, expo, [{"to": TOKEN_A}, {"to": TOKEN_B}])
    assert failed.status_code == 500
    assert failed.json()["errors"][0]["isTransient"] is True
    assert push(http, expo, [{"to": TOKEN_B}]).status_code == 200


def test_expo_429_headers(expo: FakeExpo, http: httpx.Client) -> None:
    expo.fail_requests(429, retry_after=9)
    answer = push(http, expo, [{"to": TOKEN_A}])
    assert (answer.status_code, answer.headers["Retry-After"]) == (429, "9")


def test_expo_gzip_request_body(expo: FakeExpo, http: httpx.Client) -> None:
    """The Node SDK gzips request bodies over 1 KiB."""
    body = gzip.compress(json.dumps([{"to": TOKEN_A, "body": "y" * 2000}]).encode())
    answer = http.post(
        expo.send_url,
        content=body,
        headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["data"][0]["status"] == "ok"


def test_expo_mixed_projects_are_refused(expo: FakeExpo, http: httpx.Client) -> None:
    expo.assign_project(TOKEN_B, "@someone/else")
    answer = push(http, expo, [{"to": TOKEN_A}, {"to": TOKEN_B}])
    assert answer.status_code == 400
    error = answer.json()["errors"][0]
    assert error["code"] == "PUSH_TOO_MANY_EXPERIENCE_IDS"
    assert error["details"]["@someone/else"] == [TOKEN_B]


def test_expo_receipts_request_is_checked(expo: FakeExpo, http: httpx.Client) -> None:
    too_many = receipts(http, expo, [f"id-{n}" for n in range(1001)])
    assert too_many.json()["errors"][0]["code"] == "PUSH_TOO_MANY_RECEIPTS"
    bad = http.post(expo.receipts_url, json={"ids": "one"})
    assert bad.status_code == 400
