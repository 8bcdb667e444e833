"""The service API of a real server process: OAuth2 tokens, /notify, /health."""

from __future__ import annotations

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
