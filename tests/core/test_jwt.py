"""HS256 tokens are verified by the standard library (``verify_hs256``), not joserfc's generic
JWS path: these tests hold its verdicts to joserfc's on valid tokens, forged ones and random
corruptions of both. It may refuse more (characters outside base64url, ``crit``, ``b64``),
never accept more."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import OctKey

from tidings.auth.jwt import JwtAuthenticator, verify_hs256, verify_jwt
from tidings.errors import InvalidToken

SECRET = "jwt-fast-path-secret-" + "s" * 32
KEY = OctKey.import_key(SECRET)
OTHER = OctKey.import_key("another-secret-of-enough-length-" + "o" * 16)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=10,
)
claim_sets = st.dictionaries(st.text(max_size=12), json_values, max_size=6)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hand_signed(header: Any, payload: bytes, secret: bytes = SECRET.encode()) -> str:
    """A token with any header and payload, correctly HMAC-SHA256 signed."""
    signing = f"{b64(json.dumps(header).encode())}.{b64(payload)}"
    digest = hmac.new(secret, signing.encode(), hashlib.sha256).digest()
    return f"{signing}.{b64(digest)}"


def joserfc_verdict(token: str) -> dict[str, Any] | None:
    try:
        return dict(jwt.decode(token, KEY, algorithms=["HS256"]).claims)
    except (JoseError, ValueError, TypeError):
        return None


def fast_verdict(token: str) -> dict[str, Any] | None:
    try:
        return verify_hs256(token, KEY.raw_value)
    except InvalidToken:
        return None


@settings(max_examples=200, deadline=None)
@given(claims=claim_sets)
def test_valid_tokens_give_the_same_claims(claims: dict[str, Any]) -> None:
    token = jwt.encode({"alg": "HS256", "typ": "JWT"}, claims, KEY)
    assert fast_verdict(token) == joserfc_verdict(token) == claims


@settings(max_examples=100, deadline=None)
@given(claims=claim_sets)
def test_tokens_of_another_key_are_refused(claims: dict[str, Any]) -> None:
    token = jwt.encode({"alg": "HS256"}, claims, OTHER)
    assert fast_verdict(token) is None
    assert joserfc_verdict(token) is None


@st.composite
def corrupted(draw: st.DrawFn) -> str:
    token = jwt.encode({"alg": "HS256"}, draw(claim_sets), draw(st.sampled_from([KEY, OTHER])))
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(token)))
        kind = draw(st.sampled_from(["replace", "insert", "delete", "cut"]))
        char = draw(st.sampled_from("AZaz09-_.=+/ \n!é"))
        if kind == "replace" and at < len(token):
            token = token[:at] + char + token[at + 1 :]
        elif kind == "insert":
            token = token[:at] + char + token[at:]
        elif kind == "delete":
            token = token[:at] + token[at + 1 :]
        else:
            token = token[:at]
    return token


@settings(max_examples=500, deadline=None)
@given(token=corrupted())
def test_corrupted_tokens_are_never_accepted_where_joserfc_refuses(token: str) -> None:
    fast = fast_verdict(token)
    if fast is not None:
        assert joserfc_verdict(token) == fast


@pytest.mark.parametrize(
    "header",
    [
        {"alg": "none"},
        {"alg": "HS512"},
        {"alg": "RS256"},
        {"alg": "hs256"},
        {},
        ["HS256"],
        {"alg": "HS256", "crit": ["exp"]},
        {"alg": "HS256", "b64": False, "crit": ["b64"]},
    ],
)
def test_headers_other_than_plain_hs256_are_refused(header: Any) -> None:
    token = hand_signed(header, b'{"sub": "u1", "exp": 9999999999}')
    with pytest.raises(InvalidToken):
        verify_hs256(token, KEY.raw_value)


@pytest.mark.parametrize("payload", [b"[1, 2]", b'"sub"', b"12", b"not json", b"\xff\xfe"])
def test_a_payload_that_is_not_a_json_object_is_refused(payload: bytes) -> None:
    with pytest.raises(InvalidToken):
        verify_hs256(hand_signed({"alg": "HS256"}, payload), KEY.raw_value)


def test_padding_and_foreign_characters_are_refused() -> None:
    token = jwt.encode({"alg": "HS256"}, {"sub": "u1"}, KEY)
    head, payload, signature = token.split(".")
    for bad in (f"{head}=.{payload}.{signature}", f"{head}.{payload}.{signature}==", f" {token}"):
        with pytest.raises(InvalidToken):
            verify_hs256(bad, KEY.raw_value)


async def test_the_authenticator_checks_the_claims_after_the_signature() -> None:
    auth = JwtAuthenticator(SECRET, audience="app", issuer="me")
    principal = await auth.authenticate(auth.issue("user-1"))
    assert principal.user_id == "user-1"
    expired = auth.issue("user-1", ttl=-3600)
    with pytest.raises(InvalidToken, match="expired"):
        await auth.authenticate(expired)
    wrong_audience = jwt.encode(
        {"alg": "HS256"}, {"sub": "u", "exp": 9999999999, "aud": "x", "iss": "me"}, KEY
    )
    with pytest.raises(InvalidToken, match="audience"):
        verify_jwt(wrong_audience, KEY, audience="app", issuer="me")


def test_only_the_canonical_spelling_of_a_signature_is_accepted() -> None:
    """The last base64url character of a 32-byte signature carries two unused bits: the
    three other characters that decode to the same bytes are refused, as joserfc refuses
    them."""
    token = jwt.encode({"alg": "HS256"}, {"sub": "u1"}, KEY)
    assert fast_verdict(token) == {"sub": "u1"}
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet.index(token[-1])
    for other in range(last & ~3, (last & ~3) + 4):
        if other == last:
            continue
        twin = token[:-1] + alphabet[other]
        assert fast_verdict(twin) is None
        assert joserfc_verdict(twin) is None
