"""The service API of a real server process: OAuth2 tokens, /notify, /health."""

from __future__ import annotations

import asyncio
import base64
import uuid

import httpx
import pytest

from conftest import ServerProcess
from tidings.client import TidingsClient
from tidings.errors import ClientError


def user() -> str:
    return f"user-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="module")
def credentials(server: ServerProcess) -> tuple[str, str]:
    return server.create_client("notify", "publish")


def test_token_with_basic_auth(server: ServerProcess, credentials: tuple[str, str]) -> None:
    """client_credentials with HTTP Basic returns a bearer token with the client's scopes."""
    response = httpx.post(
        f"{server.url}/oauth/token", data={"grant_type": "client_credentials"}, auth=credentials
    )
    assert response.status_code == 200
    body = response.json()
    assert body["token_type"] == "Bearer" and body["expires_in"] > 0
    assert body["scope"] == "notify publish"
    assert response.headers["cache-control"] == "no-store"


def test_token_with_body_credentials_and_narrowed_scope(
    server: ServerProcess, credentials: tuple[str, str]
) -> None:
    """Credentials in the body work and a requested subset of scopes is honoured."""
    client_id, secret = credentials
    response = httpx.post(
        f"{server.url}/oauth/token",
        data={
            "grant_type": "client_credentials",
            "client_id": client_id,
            "client_secret": secret,
            "scope": "notify",
        },
    )
    assert response.status_code == 200 and response.json()["scope"] == "notify"


@pytest.mark.parametrize(
    ("form", "auth", "status", "error"),
    [
        ({"grant_type": "password"}, "good", 400, "unsupported_grant_type"),
        ({"grant_type": "client_credentials"}, None, 401, "invalid_client"),
        ({"grant_type": "client_credentials"}, "wrong", 401, "invalid_client"),
        ({"grant_type": "client_credentials"}, "unknown", 401, "invalid_client"),
        ({"grant_type": "client_credentials", "scope": "admin"}, "good", 400, "invalid_scope"),
        ({"grant_type": "client_credentials", "scope": "root"}, "good", 400, "invalid_scope"),
    ],
)
def test_token_errors_follow_rfc_6749(
    server: ServerProcess,
    credentials: tuple[str, str],
    form: dict[str, str],
    auth: str | None,
    status: int,
    error: str,
) -> None:
    """Bad grants, clients and scopes get the RFC 6749 error codes."""
    client_id, secret = credentials
    basic = {
        "good": (client_id, secret),
        "wrong": (client_id, secret + "x"),
        "unknown": ("tc_nobody", secret),
        None: None,
    }[auth]
    response = httpx.post(f"{server.url}/oauth/token", data=form, auth=basic)
    assert response.status_code == status
    assert response.json()["error"] == error


def test_malformed_basic_header_is_invalid_client(server: ServerProcess) -> None:
    """Garbage in the Basic header is refused cleanly."""
    response = httpx.post(
        f"{server.url}/oauth/token",
        data={"grant_type": "client_credentials"},
        headers={"Authorization": "Basic %%%"},
    )
    assert response.status_code == 401


def test_device_token_is_not_a_service_token(server: ServerProcess) -> None:
    """A device JWT cannot call /notify."""
    from conftest import device_token

    response = httpx.post(
        f"{server.url}/notify",
        json={"user_id": "u", "data": 1},
        headers={"Authorization": f"Bearer {device_token('u')}"},
    )
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")


def test_notify_validation_names_fields(server: ServerProcess, notify_token: str) -> None:
    """422 bodies name the offending field; oversized data is 413; nothing is stored."""
    headers = {"Authorization": f"Bearer {notify_token}"}
    for body, field in [
        ({"data": 1}, "user_id"),
        ({"user_id": "u"}, "data"),
        ({"user_id": "", "data": 1}, "user_id"),
        ({"user_id": "u", "data": 1, "notification_id": ""}, "notification_id"),
    ]:
        response = httpx.post(f"{server.url}/notify", json=body, headers=headers)
        assert response.status_code == 422
        assert response.json()["detail"][0]["loc"] == ["body", field]
    response = httpx.post(
        f"{server.url}/notify",
        content=b"{not json",
        headers={**headers, "content-type": "application/json"},
    )
    assert response.status_code == 422
    big = {"user_id": "big-user", "data": "x" * 70_000}
    response = httpx.post(f"{server.url}/notify", json=big, headers=headers)
    assert response.status_code == 413
    assert response.json()["error"] == "payload_too_large"


def test_notify_conflicting_id_is_409(server: ServerProcess, notify_token: str) -> None:
    """A notification_id reused for other content is a 409, not a silent overwrite."""
    headers = {"Authorization": f"Bearer {notify_token}"}
    nid = uuid.uuid4().hex
    alice = user()
    first = httpx.post(
        f"{server.url}/notify",
        json={"user_id": alice, "data": 1, "notification_id": nid},
        headers=headers,
    )
    assert first.status_code == 201
    other = httpx.post(
        f"{server.url}/notify",
        json={"user_id": user(), "data": 1, "notification_id": nid},
        headers=headers,
    )
    assert other.status_code == 409


def test_health_and_openapi(server: ServerProcess) -> None:
    """/health answers with the node; /openapi.json documents /notify and /oauth/token."""
    health = httpx.get(f"{server.url}/health").json()
    assert health["status"] == "ok" and health["node"] == f"node-{server.port}"
    paths = httpx.get(f"{server.url}/openapi.json").json()["paths"]
    assert {"/notify", "/oauth/token", "/health"} <= set(paths)


def test_ws_path_over_plain_http_is_426(server: ServerProcess) -> None:
    """GET /ws without an upgrade says it speaks WebSocket only."""
    assert httpx.get(f"{server.url}/ws").status_code == 426


async def test_python_client_notifies_with_token_refresh(
    server: ServerProcess, credentials: tuple[str, str]
) -> None:
    """TidingsClient fetches a token, notifies, and is idempotent by notification_id."""
    alice = user()
    async with TidingsClient(server.url, *credentials) as client:
        first = await client.notify(alice, {"k": 1}, notification_id="same-" + alice)
        again = await client.notify(alice, {"k": 1}, notification_id="same-" + alice)
        assert first == again
        client._token = "expired.garbage.token"
        assert (await client.notify(alice, 2))["data"] == 2
        with pytest.raises(ClientError) as info:
            await client.notify("", 1)
        assert info.value.status == 422


async def test_python_client_reports_bad_credentials(server: ServerProcess) -> None:
    """Wrong client credentials surface as ClientError 401 invalid_client."""
    async with TidingsClient(server.url, "tc_nobody", "nope") as client:
        with pytest.raises(ClientError) as info:
            await client.notify("u", 1)
    assert info.value.status == 401 and info.value.code == "invalid_client"


def test_basic_credentials_are_form_decoded(server: ServerProcess) -> None:
    """Basic credentials are form-urlencoded per RFC 6749 §2.3.1 (a '+' means a space)."""
    raw = base64.b64encode(b"tc_no+body:x").decode()
    response = httpx.post(
        f"{server.url}/oauth/token",
        data={"grant_type": "client_credentials"},
        headers={"Authorization": f"Basic {raw}"},
    )
    assert response.status_code == 401


async def test_notify_batch_commits_items_and_pushes_each_count_once(
    server: ServerProcess, notify_token: str
) -> None:
    """POST /notify/batch answers one result per item in order: 201 created, 200 for a
    repeated id, 409, 413 and 422 for refused items (which change nothing); each device gets
    its user's final count."""
    from conftest import device_token
    from tidings.client import DeviceClient

    alice, bob = user(), user()
    device = DeviceClient(server.ws_url, token=device_token(alice))
    await device.connect()
    try:
        nid = uuid.uuid4().hex
        items = [
            {"user_id": alice, "data": {"n": 1}},
            {"user_id": bob, "data": {"n": 2}, "notification_id": nid},
            {"user_id": alice, "data": {"n": 3}},
            {"user_id": bob, "data": {"n": 2}, "notification_id": nid},
            {"user_id": alice, "data": {"other": True}, "notification_id": nid},
            {"user_id": alice, "data": "x" * 70_000},
            {"user_id": "nul\u0000inside", "data": 1},
        ]
        response = await asyncio.to_thread(
            httpx.post,
            f"{server.url}/notify/batch",
            json={"notifications": items},
            headers={"Authorization": f"Bearer {notify_token}"},
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert [r["status"] for r in body["results"]] == [201, 201, 201, 200, 409, 413, 422]
        assert (body["created"], body["existing"], body["refused"]) == (3, 1, 3)
        assert body["results"][1]["notification"]["notification_id"] == nid
        assert body["results"][4]["error"] == "conflict"
        assert await device.wait_for_count(2) == 2
        unseen = await device.get_unseen()
        assert [n["data"] for n in unseen] == [{"n": 1}, {"n": 3}]
    finally:
        await device.close()


def test_notify_batch_limits(server: ServerProcess, notify_token: str) -> None:
    """An empty batch and a body over the batch size limit are refused whole."""
    headers = {"Authorization": f"Bearer {notify_token}"}
    empty = httpx.post(f"{server.url}/notify/batch", json={"notifications": []}, headers=headers)
    assert empty.status_code == 422
    many = {"notifications": [{"user_id": user(), "data": 1}] * 1001}
    too_many = httpx.post(f"{server.url}/notify/batch", json=many, headers=headers)
    assert too_many.status_code == 422
    assert too_many.json()["error"] == "invalid_argument"
    unauthorized = httpx.post(f"{server.url}/notify/batch", json={"notifications": []})
    assert unauthorized.status_code == 401
