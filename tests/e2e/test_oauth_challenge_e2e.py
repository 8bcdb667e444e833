"""``POST /oauth/token`` challenges with ``WWW-Authenticate: Basic`` only a client that tried
HTTP Basic (RFC 6749 §5.2): one that sent its credentials in the body gets a plain 401, so a
browser (the admin console's login form) shows no login dialog of its own."""

from __future__ import annotations

import base64

import httpx
import pytest

from conftest import ServerProcess


@pytest.fixture(scope="module")
def client_id(server: ServerProcess) -> str:
    return server.create_client("notify")[0]


def test_wrong_secret_in_the_body_gets_no_basic_challenge(
    server: ServerProcess, client_id: str
) -> None:
    for body in (
        {"grant_type": "client_credentials", "client_id": client_id, "client_secret": "wrong"},
        {"grant_type": "client_credentials", "client_id": "nobody", "client_secret": "wrong"},
        {"grant_type": "client_credentials"},  # no credentials at all
    ):
        response = httpx.post(f"{server.url}/oauth/token", data=body)
        assert response.status_code == 401, response.text
        assert response.json()["error"] == "invalid_client"
        assert "www-authenticate" not in response.headers
    response = httpx.post(
        f"{server.url}/oauth/token",
        json={"grant_type": "client_credentials", "client_id": client_id, "client_secret": "x"},
    )
    assert response.status_code == 401
    assert "www-authenticate" not in response.headers


def test_wrong_basic_credentials_get_the_basic_challenge(
    server: ServerProcess, client_id: str
) -> None:
    for authorization in (
        "Basic " + base64.b64encode(f"{client_id}:wrong".encode()).decode(),
        "Basic " + base64.b64encode(b"nobody:wrong").decode(),
        "Basic !!!not-base64!!!",
    ):
        response = httpx.post(
            f"{server.url}/oauth/token",
            data={"grant_type": "client_credentials"},
            headers={"Authorization": authorization},
        )
        assert response.status_code == 401, response.text
        assert response.json()["error"] == "invalid_client"
        assert response.headers["www-authenticate"].startswith("Basic")


def test_right_credentials_either_way_still_get_a_token(
    server: ServerProcess, client_id: str
) -> None:
    client_id, secret = server.create_client("notify")
    by_body = httpx.post(
        f"{server.url}/oauth/token",
        data={"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret},
    )
    by_basic = httpx.post(
        f"{server.url}/oauth/token",
        data={"grant_type": "client_credentials"},
        auth=(client_id, secret),
    )
    assert by_body.status_code == by_basic.status_code == 200
