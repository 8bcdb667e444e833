"""The WebSocket handshake as pure functions: what a device asks for (its headers, query,
cookie and token), whether its ``Origin`` may connect, and the ``Set-Cookie`` it gets.

Nothing here awaits or sends: :func:`read_handshake` turns an ASGI scope into either a
:class:`HandshakeRequest` or a :class:`Refusal`, and the endpoint (:mod:`tidings.gateway.asgi`)
acts on it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tidings.auth.base import Principal
from tidings.core.ids import CONNECTION_ID
from tidings.core.limits import MAX_ID_LENGTH

#: the cookie that keeps a browser's device id
COOKIE_NAME = "tidings_cid"

Scope = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Refusal:
    """The handshake is refused: with ``status`` as an HTTP answer when the server allows one
    (else a close frame), a JSON body ``{"error": code, "message": message}``."""

    status: int
    code: str
    message: str


@dataclass(frozen=True, slots=True)
class HandshakeRequest:
    """What a device's handshake asks for, before it is authenticated."""

    #: the request's headers, names lower-cased (repeated ``Cookie`` headers joined)
    headers: dict[str, str]
    #: the device id the browser's cookie holds, if it is well formed
    cookie_cid: str | None
    #: the device id asked for (cookie first, else ``?connection_id=``)
    presented: str | None
    session_id: str | None
    #: deliver mode (``?deliver=1``)
    deliver: bool
    #: the bearer token of ``Authorization``, else ``?access_token=``
    token: str | None
    #: the application authenticates this device by its request (cookies or its own header)
    delegated: bool


@dataclass(slots=True)
class Handshake:
    """What the handshake settled, until the device is bound to its user."""

    principal: Principal
    #: the device id asked for (cookie or query), bound if it is free or the user's
    presented: str | None
    session_id: str | None
    deliver: bool
    #: the handshake's scope while it is still to be answered (token at the handshake)
    pending: Scope | None
    #: the device id the browser's cookie holds (no Set-Cookie when it stays)
    cookie_cid: str | None


FORBIDDEN_ORIGIN = Refusal(403, "forbidden_origin", "this Origin may not connect")


def read_handshake(
    scope: Scope, *, delegation: bool, allowed_origins: Sequence[str] | None
) -> HandshakeRequest | Refusal:
    """What the handshake in ``scope`` asks for, or why it is refused (a ``session_id`` too
    long, a foreign ``Origin``). ``delegation``: the node has an application that
    authenticates devices by their request."""
    headers = read_headers(scope)
    query = read_query(scope)
    cookie_cid = cookie_value(headers.get("cookie", ""), COOKIE_NAME)
    if cookie_cid is not None and not CONNECTION_ID.match(cookie_cid):
        cookie_cid = None
    session_id = first(query, "session_id")
    if session_id is not None and not 0 < len(session_id) <= MAX_ID_LENGTH:
        return Refusal(400, "invalid_request", "session_id is too long")
    token = bearer(headers.get("authorization")) or first(query, "access_token")
    # Delegated mode: the application decides for devices that bring its credentials
    # (cookies, or an Authorization the application issued); others may still use a JWT.
    delegated = for_the_application(headers, token, delegation=delegation)
    # What goes to the delegate may be a browser's ambient credentials, sent along by a page
    # elsewhere: its cookies, or HTTP credentials the browser caches and attaches by itself (a
    # page cannot set Authorization on a WebSocket). Only a principal that comes from a token
    # tidings verifies skips the same-site rule.
    if not origin_allowed(scope, headers, allowed_origins, cookies=delegated):
        return FORBIDDEN_ORIGIN
    return HandshakeRequest(
        headers=headers,
        cookie_cid=cookie_cid,
        presented=cookie_cid or first(query, "connection_id"),
        session_id=session_id,
        deliver=first(query, "deliver") in ("1", "true"),
        token=token,
        delegated=delegated,
    )


def embedded_handshake(
    scope: Scope,
    principal: Principal,
    *,
    session_id: str | None,
    deliver: bool,
    pending: bool,
) -> Handshake:
    """The settled handshake of a socket the host application authenticated (embedded
    mode); ``pending`` when its handshake is still to be answered."""
    cookie_cid = cookie_value(read_headers(scope).get("cookie", ""), COOKIE_NAME)
    return Handshake(
        principal,
        cookie_cid or first(read_query(scope), "connection_id"),
        session_id,
        deliver,
        pending=scope if pending else None,
        cookie_cid=cookie_cid,
    )


def origin_allowed(
    scope: Scope,
    headers: dict[str, str],
    allowed: Sequence[str] | None,
    *,
    cookies: bool,
) -> bool:
    """Cross-site WebSocket hijacking guard (browsers always send ``Origin``).

    With an allow-list, only listed origins. Without one, any origin for token auth, but only
    the node's own site when the browser's own credentials authenticate the device
    (``cookies``: delegated or embedded mode): a page elsewhere would otherwise ride the
    user's cookies or cached HTTP credentials.
    """
    origin = headers.get("origin")
    if origin is None:
        return True  # not a browser: it has to present credentials of its own
    if allowed is not None:
        if origin_key(origin) in {origin_key(o) for o in allowed if o != "*"}:
            return True
        if "*" not in allowed:
            return False
        # '*' admits any page that brings its own token, never one riding the user's
        # cookies: with cookie auth it means the node's own site only.
    if not cookies:
        return True
    secure = scope.get("scheme") in ("wss", "https")
    own = origin_key(f"{'https' if secure else 'http'}://{headers.get('host', '')}")
    return origin_key(origin) == own


def cookie_header(
    scope: Scope,
    cid: str,
    presented: str | None,
    *,
    secure: bool | None,
    samesite: str,
    max_age: int,
) -> list[tuple[bytes, bytes]]:
    """The ``Set-Cookie`` that gives the browser device id ``cid`` (none when its cookie
    holds it already); ``secure`` None: Secure on ``wss`` or with ``SameSite=None``."""
    if cid == presented:
        return []
    if secure is None:
        secure = scope.get("scheme") == "wss" or samesite == "None"
    value = (
        f"{COOKIE_NAME}={cid}; Path=/; Max-Age={max_age}; HttpOnly; "
        f"SameSite={samesite}{'; Secure' if secure else ''}"
    )
    return [(b"set-cookie", value.encode("latin-1"))]


def read_headers(scope: Scope) -> dict[str, str]:
    """The scope's headers by lower-cased name: repeated ``Cookie`` headers are joined, of
    other repeated headers the first counts."""
    found: dict[str, str] = {}
    for name, value in scope.get("headers", ()):
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        if key == "cookie" and key in found:
            found[key] = f"{found[key]}; {text}"
        else:
            found.setdefault(key, text)
    return found


def read_query(scope: Scope) -> dict[str, list[str]]:
    query: bytes = scope.get("query_string", b"")
    return parse_qs(query.decode("latin-1"))


def first(query: dict[str, list[str]], key: str) -> str | None:
    """The first value of ``key`` in the query, None when absent or empty."""
    values = query.get(key)
    return values[0] if values and values[0] else None


def bearer(value: str | None) -> str | None:
    """The token of an ``Authorization: Bearer`` header."""
    if not value:
        return None
    scheme, _, credentials = value.partition(" ")
    if scheme.lower() != "bearer" or not credentials.strip():
        return None
    return credentials.strip()


def cookie_value(header: str, name: str) -> str | None:
    """The value of cookie ``name``, parsed leniently as browsers send it (one odd cookie of
    the host application must not hide ours)."""
    for part in header.split(";"):
        key, sep, value = part.partition("=")
        if sep and key.strip() == name:
            value = value.strip().strip('"')
            return value or None
    return None


def origin_key(origin: str) -> tuple[str, str, int]:
    """``(scheme, host, port)`` of an origin, with default ports filled in and case folded."""
    parts = urlsplit(origin.strip().lower().rstrip("/"))
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    try:
        port = parts.port or (443 if scheme == "https" else 80)
    except ValueError:
        port = -1
    return scheme, parts.hostname or "", port


def looks_like_jwt(token: str | None) -> bool:
    return token is not None and token.count(".") == 2


def for_the_application(headers: Mapping[str, str], token: str | None, *, delegation: bool) -> bool:
    """Whether the request's credentials are the application's to judge (delegated mode):
    its cookies, or an ``Authorization`` that is not a tidings JWT (``token``, the bearer)."""
    return delegation and (
        "cookie" in headers or ("authorization" in headers and not looks_like_jwt(token))
    )
