"""Service tokens from a third-party OAuth2 issuer (oauth2-mock-server), verified with its JWKS."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Callable

import httpx
import pytest

from conftest import ServerProcess


@pytest.fixture
def node(oauth_issuer: str, start_server: Callable[..., ServerProcess]) -> ServerProcess:
    return start_server(
        TIDINGS_SERVICE_JWKS_URL=f"{oauth_issuer}/jwks",
        TIDINGS_SERVICE_ISSUER=oauth_issuer,
        TIDINGS_SERVICE_AUDIENCE="tidings-api",
    )


def third_party_token(issuer: str, **form: str) -> str:
    """A client-credentials token from the third-party issuer."""
    response = httpx.post(
        f"{issuer}/token", data={"grant_type": "client_credentials", "client_id": "shop", **form}
    )
    response.raise_for_status()
    return str(response.json()["access_token"])


def notify(node: ServerProcess, token: str) -> httpx.Response:
    return httpx.post(
        f"{node.url}/notify",
        json={"user_id": f"u-{uuid.uuid4().hex[:6]}", "data": "hi"},
        headers={"Authorization": f"Bearer {token}"},
    )


def test_token_of_a_third_party_issuer_is_accepted(oauth_issuer: str, node: ServerProcess) -> None:
    """/notify accepts a token minted by an OAuth2 server nobody here wrote."""
    assert notify(node, third_party_token(oauth_issuer)).status_code == 201


def test_wrong_audience_is_refused(oauth_issuer: str, node: ServerProcess) -> None:
    """A token for another API is 401."""
    response = notify(node, third_party_token(oauth_issuer, audience="another-api"))
    assert response.status_code == 401 and "audience" in response.json()["message"]


def test_wrong_scope_is_refused(oauth_issuer: str, node: ServerProcess) -> None:
    """A valid token without scope notify is 403."""
    response = notify(node, third_party_token(oauth_issuer, scope="publish"))
    assert response.status_code == 403


def test_expired_token_is_refused(oauth_issuer: str, node: ServerProcess) -> None:
    """An expired token is 401."""
    response = notify(node, third_party_token(oauth_issuer, expired="1"))
    assert response.status_code == 401 and "expired" in response.json()["message"]


def test_alg_none_is_refused(oauth_issuer: str, node: ServerProcess) -> None:
    """An unsigned token (alg none) carrying the right claims is 401."""
    genuine = third_party_token(oauth_issuer)
    claims = genuine.split(".")[1]
    header = base64.urlsafe_b64encode(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    forged = f"{header.decode().rstrip('=')}.{claims}."
    assert notify(node, forged).status_code == 401
    # The issuer's claims signed with the server's own HS256 key name would not help either:
    tampered = genuine.rsplit(".", 1)[0] + ".c2lnbmF0dXJl"
    assert notify(node, tampered).status_code == 401


def test_built_in_tokens_still_work(node: ServerProcess) -> None:
    """With an external issuer configured, the built-in token endpoint keeps working."""
    assert notify(node, node.service_token("notify")).status_code == 201
