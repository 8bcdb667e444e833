"""JWKS keys: caching, rotation without restart, and no refetch storms."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from joserfc import jwt
from joserfc.jwk import RSAKey

from tidings.auth.jwks import JwksCache
from tidings.auth.jwt import JwtAuthenticator
from tidings.errors import InvalidToken, IssuerUnavailable

SECRET = "jwks-test-secret-" + "q" * 32


class Issuer:
    """A real HTTP server publishing a JWKS that the test can rotate."""

    def __init__(self) -> None:
        self.keys = [RSAKey.generate_key(2048, parameters={"kid": "k1"})]
        self.fetches = 0
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                issuer.fetches += 1
                body = json.dumps({"keys": [k.as_dict(private=False) for k in issuer.keys]})
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.end_headers()
                self.wfile.write(body.encode())

            def log_message(self, *args: object) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/jwks"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def token(self, user: str, key: RSAKey | None = None) -> str:
        key = key or self.keys[-1]
        claims = {"sub": user, "exp": int(time.time()) + 60}
        return jwt.encode({"alg": "RS256", "kid": key.kid}, claims, key)


@pytest.fixture
def issuer() -> Iterator[Issuer]:
    server = Issuer()
    yield server
    server.server.shutdown()
    server.server.server_close()


async def test_rotated_key_is_picked_up_without_restart(issuer: Issuer) -> None:
    """A token signed with a new key triggers one refetch and is accepted."""
    cache = JwksCache(issuer.url, min_refresh=0.0)
    auth = JwtAuthenticator(SECRET, jwks=cache)
    assert (await auth.authenticate(issuer.token("alice"))).user_id == "alice"
    assert (await auth.authenticate(issuer.token("alice"))).user_id == "alice"
    assert issuer.fetches == 1  # cached
    issuer.keys.append(RSAKey.generate_key(2048, parameters={"kid": "k2"}))
    assert (await auth.authenticate(issuer.token("bob"))).user_id == "bob"
    assert issuer.fetches == 2
    await cache.aclose()


async def test_unknown_kids_do_not_hammer_the_issuer(issuer: Issuer) -> None:
    """Tokens with made-up kids cause at most one refetch per min_refresh."""
    cache = JwksCache(issuer.url, min_refresh=30.0)
    auth = JwtAuthenticator(SECRET, jwks=cache)
    await auth.authenticate(issuer.token("alice"))
    stranger = RSAKey.generate_key(2048, parameters={"kid": "unknown"})
    for _ in range(20):
        with pytest.raises(InvalidToken):
            await auth.authenticate(issuer.token("eve", stranger))
    assert issuer.fetches == 1
    await cache.aclose()


async def test_hs256_secret_still_works_beside_jwks(issuer: Issuer) -> None:
    """The shared-secret path is kept; an RS256 token is never checked against the secret."""
    cache = JwksCache(issuer.url)
    auth = JwtAuthenticator(SECRET, jwks=cache)
    assert (await auth.authenticate(auth.issue("carol"))).user_id == "carol"
    await cache.aclose()


async def test_unreachable_issuer_refuses_cleanly() -> None:
    """Without keys the token is refused, not crashed on."""
    cache = JwksCache("http://127.0.0.1:9/jwks", timeout=1)
    auth = JwtAuthenticator(SECRET, jwks=cache)
    key = RSAKey.generate_key(2048, parameters={"kid": "k"})
    token = jwt.encode({"alg": "RS256", "kid": "k"}, {"sub": "x", "exp": 9999999999}, key)
    with pytest.raises(IssuerUnavailable):  # 503/1013 to the caller, not "bad token"
        await auth.authenticate(token)
    await cache.aclose()
