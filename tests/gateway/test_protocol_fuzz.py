"""Property tests of the sans-I/O codec: whatever text a device sends, ``parse_frame`` either
returns a frame of the contract or raises ``ProtocolError`` with a documented code — never
anything else — and every answer it helps build is JSON with a ``type``."""

from __future__ import annotations

import json
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from tidings.errors import ProtocolError
from tidings.fanout import codec as protocol

CODES = {
    protocol.INVALID_JSON,
    protocol.INVALID_FRAME,
    protocol.UNKNOWN_TYPE,
    protocol.FRAME_TOO_LARGE,
    protocol.BINARY_FRAME,
    protocol.NOT_AUTHENTICATED,
    protocol.ALREADY_AUTHENTICATED,
}
TYPES = [
    "authenticate",
    "getUnseen",
    "markSeen",
    "ack",
    "forgetDevice",
    "subscribe",
    "unsubscribe",
    "readNotifications",
    "nonsense",
    "",
]
FIELDS = ["id", "limit", "notification_ids", "topics", "topic", "since", "token", "session_id"]

json_values: st.SearchStrategy[Any] = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=40),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=20,
)
frames = st.fixed_dictionaries(
    {"type": st.sampled_from(TYPES)},
    optional={name: json_values for name in FIELDS},
)


def check(text: str) -> None:
    try:
        frame = protocol.parse_frame(text)
    except ProtocolError as exc:
        assert exc.code in CODES, exc.code
        answer = orjson.loads(protocol.error(exc.frame_id, exc.code, exc.message))
        assert answer["type"] == "error" and answer["code"] == exc.code
        return
    assert isinstance(frame, protocol.ClientFrame)


@settings(max_examples=400, deadline=None)
@given(frames)
def test_frame_shaped_objects_parse_or_are_refused_with_a_code(raw: dict[str, Any]) -> None:
    """Objects shaped like frames, with any values, parse or get a documented error code."""
    check(json.dumps(raw))  # the standard library writes integers of any size


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_arbitrary_text_never_escapes_the_codec(text: str) -> None:
    """Any text at all ends in a frame or a ProtocolError, never another exception."""
    check(text)


@settings(max_examples=200, deadline=None)
@given(json_values)
def test_any_json_value_never_escapes_the_codec(value: Any) -> None:
    """Any JSON value (not only objects) ends in a frame or a ProtocolError."""
    check(json.dumps(value))
