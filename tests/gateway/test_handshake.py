"""The WebSocket handshake as pure functions: an ASGI scope in, a request or a refusal out."""

from __future__ import annotations

from typing import Any

import pytest

from tidings.auth.base import Principal
from tidings.gateway.handshake import (
    COOKIE_NAME,
    FORBIDDEN_ORIGIN,
    HandshakeRequest,
    Refusal,
    bearer,
    cookie_header,
    cookie_value,
    embedded_handshake,
    origin_allowed,
    origin_key,
    read_handshake,
    read_headers,
)
from tidings.gateway.messages import deny

CID = "abcdefgh12345678"


def scope(
    headers: dict[str, str] | list[tuple[str, str]] | None = None,
    query: str = "",
    scheme: str = "ws",
) -> dict[str, Any]:
    pairs = headers.items() if isinstance(headers, dict) else (headers or [])
    return {
        "type": "websocket",
        "scheme": scheme,
        "headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in pairs],
        "query_string": query.encode("latin-1"),
    }


def read(
    s: dict[str, Any], *, delegation: bool = False, allowed: list[str] | None = None
) -> HandshakeRequest:
    request = read_handshake(s, delegation=delegation, allowed_origins=allowed)
    assert isinstance(request, HandshakeRequest)
    return request


def test_token_from_header_before_query() -> None:
    """``Authorization: Bearer`` wins over ``?access_token=``; the query is the fallback."""
    assert read(scope({"Authorization": "Bearer a.b.c"}, "access_token=q")).token == "a.b.c"
    assert read(scope(query="access_token=q")).token == "q"
    assert read(scope({"Authorization": "Basic xyz"})).token is None


def test_query_values() -> None:
    """connection_id, session_id and deliver come from the query; empty values are absent."""
    request = read(scope(query=f"connection_id={CID}&session_id=s1&deliver=1"))
    assert (request.presented, request.session_id, request.deliver) == (CID, "s1", True)
    request = read(scope(query="session_id=&deliver=no"))
    assert (request.presented, request.session_id, request.deliver) == (None, None, False)


def test_a_long_session_id_is_refused() -> None:
    """A session_id over the id limit is a 400 refusal."""
    refusal = read_handshake(
        scope(query="session_id=" + "s" * 129), delegation=False, allowed_origins=None
    )
    assert refusal == Refusal(400, "invalid_request", "session_id is too long")


def test_the_cookie_is_presented_first_and_only_when_well_formed() -> None:
    """A well-formed tidings_cid cookie beats the query; a malformed one is ignored."""
    request = read(scope({"Cookie": f"a=1; {COOKIE_NAME}={CID}"}, "connection_id=zzzzzzzzzz"))
    assert (request.cookie_cid, request.presented) == (CID, CID)
    request = read(scope({"Cookie": f"{COOKIE_NAME}=bad id!"}, f"connection_id={CID}"))
    assert (request.cookie_cid, request.presented) == (None, CID)


def test_repeated_cookie_headers_are_joined() -> None:
    """Two Cookie headers read as one; of other repeated headers the first counts."""
    headers = read_headers(
        scope([("Cookie", "a=1"), ("Cookie", f"{COOKIE_NAME}={CID}"), ("X", "1"), ("X", "2")])
    )
    assert headers["cookie"] == f"a=1; {COOKIE_NAME}={CID}"
    assert headers["x"] == "1"
    assert cookie_value(headers["cookie"], COOKIE_NAME) == CID


def test_delegation_takes_cookies_and_foreign_authorization_not_jwts() -> None:
    """In delegated mode cookies or a non-JWT Authorization go to the application."""
    assert read(scope({"Cookie": "session=x"}), delegation=True).delegated
    assert read(scope({"Authorization": "Bearer opaque"}), delegation=True).delegated
    assert not read(scope({"Authorization": "Bearer a.b.c"}), delegation=True).delegated
    assert not read(scope({"Cookie": "session=x"}), delegation=False).delegated


@pytest.mark.parametrize(
    ("origin", "allowed", "cookies", "expected"),
    [
        (None, [], True, True),  # not a browser
        ("https://elsewhere.example", None, False, True),  # token: any origin
        ("https://elsewhere.example", None, True, False),  # cookies: own site only
        ("http://node.example", None, True, True),
        ("http://NODE.example:80/", None, True, True),  # default port, case, slash
        ("https://app.example", ["https://app.example"], True, True),
        ("https://other.example", ["https://app.example"], False, False),
        ("https://other.example", ["*"], False, True),  # '*' with a token
        ("https://other.example", ["*"], True, False),  # '*' never rides cookies
    ],
)
def test_origin_rule(
    origin: str | None, allowed: list[str] | None, cookies: bool, expected: bool
) -> None:
    """The cross-site hijacking guard, case by case."""
    headers = {"host": "node.example"}
    if origin is not None:
        headers["origin"] = origin
    assert origin_allowed(scope(headers), headers, allowed, cookies=cookies) is expected


def test_a_foreign_origin_riding_cookies_is_refused_at_read() -> None:
    """A delegated handshake from another site is refused with 403."""
    s = scope({"Cookie": "session=x", "Origin": "https://evil.example", "Host": "node.example"})
    assert read_handshake(s, delegation=True, allowed_origins=None) == FORBIDDEN_ORIGIN


def test_origin_key_defaults() -> None:
    """ws and wss count as http and https, with their default ports."""
    assert origin_key("wss://A.example") == ("https", "a.example", 443)
    assert origin_key("http://a.example:bad") == ("http", "a.example", -1)


def test_cookie_header() -> None:
    """Set-Cookie only for a new id; Secure on wss or with SameSite=None unless set."""
    s = scope(scheme="wss")
    assert cookie_header(s, CID, CID, secure=None, samesite="Lax", max_age=60) == []
    ((name, value),) = cookie_header(s, CID, None, secure=None, samesite="Lax", max_age=60)
    assert name == b"set-cookie"
    assert (
        value == f"{COOKIE_NAME}={CID}; Path=/; Max-Age=60; HttpOnly; SameSite=Lax; Secure".encode()
    )
    ((_, plain),) = cookie_header(scope(), CID, None, secure=None, samesite="Lax", max_age=60)
    assert not plain.endswith(b"Secure")
    ((_, forced),) = cookie_header(scope(), CID, None, secure=True, samesite="Lax", max_age=60)
    assert forced.endswith(b"; Secure")


def test_bearer() -> None:
    """Only the Bearer scheme, with a non-blank token, yields a token."""
    assert bearer("bearer  tok ") == "tok"
    assert bearer("Bearer ") is None
    assert bearer(None) is None


def test_embedded_handshake() -> None:
    """An adopted socket keeps its cookie's id (unchecked) and is pending when asked."""
    s = scope({"Cookie": f"{COOKIE_NAME}=x"}, "connection_id=y")
    settled = embedded_handshake(s, Principal("u"), session_id=None, deliver=True, pending=True)
    assert (settled.presented, settled.cookie_cid, settled.pending) == ("x", "x", s)
    s = scope(query="connection_id=y")
    settled = embedded_handshake(s, Principal("u"), session_id="s", deliver=False, pending=False)
    assert (settled.presented, settled.session_id, settled.pending) == ("y", "s", None)


@pytest.mark.parametrize(
    ("status", "close_code"), [(401, 4401), (400, 1008), (403, 1013), (503, 1013)]
)
async def test_a_refusal_is_a_close_frame_without_http_answers(
    status: int, close_code: int
) -> None:
    """A server without ``websocket.http.response`` gets the refusal as a close code."""
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await deny(scope(), send, Refusal(status, "code", "why"))
    assert sent == [{"type": "websocket.close", "code": close_code, "reason": ""}]


async def test_a_refusal_is_an_http_answer_when_the_server_allows() -> None:
    """With the extension, a 401 carries its challenge and JSON body."""
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    s = {**scope(), "extensions": {"websocket.http.response": {}}}
    await deny(s, send, Refusal(401, "invalid_token", "expired"))
    start, body = sent
    assert start["status"] == 401
    assert (b"www-authenticate", b'Bearer error="invalid_token"') in start["headers"]
    assert body["body"] == b'{"error":"invalid_token","message":"expired"}'
