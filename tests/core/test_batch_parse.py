"""``POST /notify/batch`` reads valid bodies with msgspec (``batch_items``) and leaves
everything else to pydantic: on any body, msgspec either declines (None) or gives exactly the
items pydantic's :class:`NotifyBatchRequest` gives, and it declines only bodies pydantic refuses
or that need pydantic's leniency (lone surrogates, ``NaN`` …)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from tidings.api.bodies import batch_items, notify_body
from tidings.api.schemas import NotifyBatchRequest, NotifyRequest

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.sampled_from([2**63, 2**64 - 1, 2**64, -(2**63), -(2**63) - 1, 10**25, -(10**30)])
    | st.floats()
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=8,
)
ids = st.one_of(
    st.text(min_size=0, max_size=3),
    st.text(min_size=125, max_size=130),
    st.text(min_size=250, max_size=260),
    st.integers(),
    st.none(),
)
items = st.one_of(
    st.fixed_dictionaries(
        {"user_id": ids, "data": json_values},
        optional={"notification_id": ids, "extra": json_values},
    ),
    st.fixed_dictionaries({}, optional={"user_id": ids, "data": json_values}),
    json_values,
)
bodies = st.one_of(
    st.fixed_dictionaries(
        {"notifications": st.lists(items, max_size=4)}, optional={"other": json_values}
    ),
    st.fixed_dictionaries({"notifications": json_values}),
    json_values,
)


def pydantic_items(raw: bytes) -> list[tuple[str, Any, str | None]] | None:
    try:
        request = NotifyBatchRequest.model_validate_json(raw)
    except ValidationError:
        return None
    return [(i.user_id, i.data, i.notification_id) for i in request.notifications]


def own_items(raw: bytes) -> list[tuple[str, Any, str | None]] | None:
    found = batch_items(raw)
    return None if found is None else [(i.user_id, i.data, i.notification_id) for i in found]


def same(a: Any, b: Any) -> bool:
    """Equal, with NaN equal to itself."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


@settings(max_examples=600, deadline=None)
@given(body=bodies)
def test_the_parser_agrees_with_pydantic_or_declines(body: Any) -> None:
    """On any body msgspec gives pydantic's items, or declines."""
    try:
        raw = json.dumps(body).encode()
    except ValueError:
        return
    own = own_items(raw)
    if own is not None:
        assert same(own, pydantic_items(raw))


def test_a_plain_batch_is_read_without_pydantic() -> None:
    """A valid batch, with unknown fields and the longest ids, is read by msgspec alone."""
    raw = json.dumps(
        {
            "notifications": [
                {"user_id": "u1", "data": {"a": [1, 2.5, None, True]}},
                {"user_id": "ü" * 256, "data": None, "notification_id": "n" * 128, "x": 1},
            ],
            "ignored": True,
        }
    ).encode()
    assert own_items(raw) == pydantic_items(raw)
    assert own_items(raw) is not None


@pytest.mark.parametrize(
    "raw",
    [
        b'{"notifications": [{"user_id": "u", "data": 123456789012345678901234567890}]}',
        b'{"notifications": [{"user_id": "u", "data": [18446744073709551616]}]}',
        b'{"notifications": [{"user_id": "u", "data": -9223372036854775809}]}',
        b'{"notifications": [{"user_id": "u", "data": 9223372036854775808}]}',
        b'{"notifications": [{"user_id": "a", "user_id": "b", "data": 1, "data": 2}]}',
    ],
)
def test_integers_beyond_64_bits_are_read_as_pydantic_reads_them(raw: bytes) -> None:
    """Integers past 64 bits (and repeated keys) come out as pydantic's; the node refuses
    what it cannot store (tests/core/test_fast_routes.py)."""
    assert own_items(raw) is not None
    assert same(own_items(raw), pydantic_items(raw))


@pytest.mark.parametrize(
    "raw",
    [
        b'{"notifications": [{"user_id": "u", "data": NaN}]}',
        b'{"notifications": [{"user_id": "u", "data": 1e400}]}',
        b'{"notifications": [{"user_id": "\\ud800", "data": 1}]}',
        b'{"notifications": [{"user_id": "u", "data": "\\ud800"}]}',
        b'{"notifications": [{"user_id": "u", "data": 1}',
        b'{"notifications": []}',
        b'{"notifications": [{"user_id": "", "data": 1}]}',
        b'{"notifications": [{"user_id": "u", "data": 1, "notification_id": ""}]}',
        b'{"notifications": [{"user_id": "u"}]}',
        b"[]",
    ],
)
def test_what_needs_pydantic_is_left_to_it(raw: bytes) -> None:
    """Malformed, mistyped or only leniently valid bodies are left to pydantic."""
    assert batch_items(raw) is None


def fields(request: Any) -> tuple[Any, ...] | None:
    return None if request is None else (request.user_id, request.data, request.notification_id)


@settings(max_examples=400, deadline=None)
@given(body=items)
def test_a_notify_body_is_read_as_pydantic_reads_it(body: Any) -> None:
    """``POST /notify``: the same verdict and values as pydantic's :class:`NotifyRequest`."""
    try:
        raw = json.dumps(body).encode()
    except ValueError:
        return
    try:
        expected = fields(NotifyRequest.model_validate_json(raw))
    except ValidationError:
        expected = None
    try:
        got = fields(notify_body(raw))
    except ValidationError:
        got = None
    assert same(got, expected)
