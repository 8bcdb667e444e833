"""``POST /oauth/token``: the OAuth2 client credentials grant (RFC 6749 section 4.4) that
gives services their tokens."""

from __future__ import annotations

import base64
import binascii
from urllib.parse import parse_qs, unquote_plus

import orjson
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse

from tidings.api.ports import ApiNode
from tidings.api.schemas import OAuthError, TokenResponse
from tidings.errors import InvalidClient, InvalidScope


def mount_oauth(app: FastAPI, node: ApiNode) -> None:
    """Add the token endpoint."""

    @app.post(
        "/oauth/token",
        response_model=TokenResponse,
        responses={400: {"model": OAuthError}, 401: {"model": OAuthError}},
        tags=["auth"],
    )
    async def token(request: Request) -> Response:
        """OAuth2 client credentials grant (RFC 6749 §4.4).

        Form-encoded (or JSON) body with ``grant_type=client_credentials`` and optional
        ``scope``; the client authenticates with HTTP Basic or ``client_id`` and
        ``client_secret`` in the body.
        """
        form = await _token_form(request)
        if form.get("grant_type") != "client_credentials":
            return _oauth_error(
                400, "unsupported_grant_type", "only client_credentials is supported"
            )
        client_id, client_secret = _client_credentials(request, form)
        # RFC 6749 §5.2: the Basic challenge answers a client that tried Basic; sent to one
        # that used the body (a login form), it makes browsers show their own login dialog.
        basic = _tried_basic(request)
        if not client_id or not client_secret:
            return _oauth_error(
                401, "invalid_client", "client authentication is required", challenge=basic
            )
        try:
            issued = await node.service_auth.issue(client_id, client_secret, form.get("scope"))
        except InvalidClient as exc:
            return _oauth_error(401, "invalid_client", str(exc), challenge=basic)
        except InvalidScope as exc:
            return _oauth_error(400, "invalid_scope", str(exc))
        return JSONResponse(
            issued.to_dict(), headers={"Cache-Control": "no-store", "Pragma": "no-cache"}
        )


async def _token_form(request: Request) -> dict[str, str]:
    raw = await request.body()
    if request.headers.get("content-type", "").startswith("application/json"):
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return {}
        return (
            {k: v for k, v in data.items() if isinstance(v, str)} if isinstance(data, dict) else {}
        )
    parsed = parse_qs(raw.decode("latin-1"))
    return {key: values[0] for key, values in parsed.items() if values}


def _tried_basic(request: Request) -> bool:
    """Whether the client sent HTTP Basic credentials (well-formed or not)."""
    scheme, _, _ = request.headers.get("authorization", "").partition(" ")
    return scheme.lower() == "basic"


def _client_credentials(request: Request, form: dict[str, str]) -> tuple[str | None, str | None]:
    scheme, _, encoded = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "basic" and encoded:
        try:
            decoded = base64.b64decode(encoded.strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return None, None
        client_id, _, secret = decoded.partition(":")
        # RFC 6749 §2.3.1: both parts are form-urlencoded inside the Basic credentials.
        return unquote_plus(client_id), unquote_plus(secret)
    return form.get("client_id"), form.get("client_secret")


def _oauth_error(
    status: int, code: str, description: str, *, challenge: bool = False
) -> JSONResponse:
    """An RFC 6749 §5.2 error; ``challenge`` adds ``WWW-Authenticate: Basic`` (a 401 to a
    client that tried HTTP Basic)."""
    headers = {"Cache-Control": "no-store"}
    if challenge:
        headers["WWW-Authenticate"] = 'Basic realm="tidings"'
    return JSONResponse({"error": code, "error_description": description}, status, headers=headers)
