"""The sans-I/O codec of wire contract v1."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pytest

from tidings.core.models import Notification
from tidings.errors import ProtocolError
from tidings.fanout import codec as protocol


def test_parses_authenticate() -> None:
    """authenticate carries a token and an optional session id."""
    frame = protocol.parse_frame('{"type":"authenticate","token":"t","session_id":"s","x":1}')
    assert frame == protocol.Authenticate(None, "t", "s")


def test_parses_get_unseen_with_default_limit() -> None:
    """getUnseen defaults its limit and keeps the id."""
    assert protocol.parse_frame('{"type":"getUnseen","id":7}') == protocol.GetUnseen(7, 100)
    assert protocol.parse_frame('{"type":"getUnseen","id":"a","limit":5}').limit == 5


def test_parses_mark_seen() -> None:
    """markSeen carries a list of ids."""
    frame = protocol.parse_frame('{"type":"markSeen","id":1,"notification_ids":["a","b"]}')
    assert frame == protocol.MarkSeen(1, ["a", "b"])


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("{not json", protocol.INVALID_JSON),
        ("[1,2]", protocol.INVALID_FRAME),
        ('"hello"', protocol.INVALID_FRAME),
        ('{"id":1}', protocol.INVALID_FRAME),
        ('{"type":5}', protocol.INVALID_FRAME),
        ('{"type":"launchMissiles","id":1}', protocol.UNKNOWN_TYPE),
        ('{"type":"getUnseen","limit":0}', protocol.INVALID_FRAME),
        ('{"type":"getUnseen","limit":"10"}', protocol.INVALID_FRAME),
        ('{"type":"getUnseen","limit":true}', protocol.INVALID_FRAME),
        ('{"type":"getUnseen","limit":100000}', protocol.INVALID_FRAME),
        ('{"type":"markSeen","notification_ids":[]}', protocol.INVALID_FRAME),
        ('{"type":"markSeen","notification_ids":"a"}', protocol.INVALID_FRAME),
        ('{"type":"markSeen","notification_ids":[1]}', protocol.INVALID_FRAME),
        ('{"type":"authenticate"}', protocol.INVALID_FRAME),
        ('{"type":"authenticate","token":"t","session_id":7}', protocol.INVALID_FRAME),
        ('{"type":"getUnseen","id":{"nested":1}}', protocol.INVALID_FRAME),
        ('{"type":"getUnseen","id":"' + "x" * 200 + '"}', protocol.INVALID_FRAME),
    ],
)
def test_bad_frames_raise_protocol_errors(text: str, code: str) -> None:
    """Each malformed frame is refused with its own error code."""
    with pytest.raises(ProtocolError) as info:
        protocol.parse_frame(text)
    assert info.value.code == code


def test_error_keeps_the_frame_id_when_known() -> None:
    """A frame with a usable id gets its error addressed to that id."""
    with pytest.raises(ProtocolError) as info:
        protocol.parse_frame('{"type":"nope","id":"q1"}')
    assert info.value.frame_id == "q1"


@pytest.mark.parametrize("kind", ["markSeen", "markRead", "archive", "unarchive", "ack"])
def test_too_many_ids_are_refused(kind: str) -> None:
    """Frames naming notifications accept at most MAX_IDS_PER_FRAME ids, and at least one."""
    ids = [str(i) for i in range(protocol.MAX_IDS_PER_FRAME + 1)]
    for listed in (ids, []):
        text = orjson.dumps({"type": kind, "id": 1, "notification_ids": listed}).decode()
        with pytest.raises(ProtocolError):
            protocol.parse_frame(text)
    text = orjson.dumps({"type": kind, "id": 1, "notification_ids": ids[:-1]}).decode()
    assert protocol.parse_frame(text) is not None


def test_server_frames_have_contract_shapes() -> None:
    """Server frames carry exactly the fields of wire contract v1 (a notification with v1.1's
    inbox fields)."""
    welcome = orjson.loads(
        protocol.welcome(connection_id="c", session_id="s", user_id="u", node="n")
    )
    assert welcome == {
        "type": "welcome",
        "connection_id": "c",
        "session_id": "s",
        "user_id": "u",
        "node": "n",
    }
    assert orjson.loads(protocol.count_changed(3, 9)) == {
        "type": "newNotificationCountChanged",
        "count": 3,
        "version": 9,
        "unread": 0,
    }
    assert orjson.loads(protocol.count_changed(3, 9, 5, {"orders": 2})) == {
        "type": "newNotificationCountChanged",
        "count": 3,
        "version": 9,
        "unread": 5,
        "categories": {"orders": 2},
    }
    note = Notification("n1", "u", {"k": 1}, datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC))
    data = orjson.loads(protocol.notification_data(4, [note]))
    assert data == {
        "type": "newNotificationData",
        "id": 4,
        "notifications": [
            {
                "notification_id": "n1",
                "user_id": "u",
                "data": {"k": 1},
                "creation_date": "2026-01-02T03:04:05.000006Z",
                "seen_date": None,
                "category": None,
                "read_date": None,
                "archived_date": None,
            }
        ],
    }
    error = orjson.loads(protocol.error("x", "not_found", "gone", notification_ids=["a"]))
    assert error == {
        "type": "error",
        "id": "x",
        "code": "not_found",
        "message": "gone",
        "notification_ids": ["a"],
    }


def test_notification_data_respects_byte_budget() -> None:
    """Past the budget notifications are left for the next getUnseen; one always goes."""
    notes = [
        Notification(f"n{i}", "u", "x" * 1000, datetime(2026, 1, 1, tzinfo=UTC)) for i in range(10)
    ]
    frame = orjson.loads(protocol.notification_data(1, notes, max_bytes=3500))
    assert [n["notification_id"] for n in frame["notifications"]] == ["n0", "n1", "n2"]
    one = orjson.loads(protocol.notification_data(1, notes, max_bytes=10))
    assert len(one["notifications"]) == 1
    assert orjson.loads(protocol.notification_data(None, [])) == {
        "type": "newNotificationData",
        "id": None,
        "notifications": [],
    }


def test_mounted_path_is_seen_relative_to_root() -> None:
    """Mounted under a prefix, /prefix/ws is still the gateway's path."""
    from tidings.node.app import _local_path

    assert _local_path({"path": "/push/ws", "root_path": "/push"}) == "/ws"
    assert _local_path({"path": "/ws", "root_path": ""}) == "/ws"


def test_parses_topic_frames() -> None:
    """subscribe/unsubscribe carry topics (deduplicated); readNotifications a topic and since."""
    frame = protocol.parse_frame('{"type":"subscribe","id":1,"topics":["pet","pet","owner"]}')
    assert frame == protocol.Subscribe(1, ["pet", "owner"])
    assert protocol.parse_frame('{"type":"unsubscribe","topics":["pet"]}') == protocol.Unsubscribe(
        None, ["pet"]
    )
    read = protocol.parse_frame('{"type":"readNotifications","id":2,"topic":"pet","since":7}')
    assert read == protocol.ReadNotifications(2, "pet", 7)
    assert protocol.parse_frame('{"type":"readNotifications","topic":"pet"}').since == 0


@pytest.mark.parametrize(
    "text",
    [
        '{"type":"subscribe","topics":[]}',
        '{"type":"subscribe","topics":"pet"}',
        '{"type":"subscribe","topics":[""]}',
        '{"type":"subscribe","topics":["a\\nb"]}',
        '{"type":"readNotifications","topic":"pet","since":-1}',
        '{"type":"readNotifications","topic":"pet","since":"3"}',
        '{"type":"readNotifications","topic":"pet","since":9223372036854775808}',
        '{"type":"readNotifications","since":3}',
        '{"type":"authenticate","token":"t","deliver":"yes"}',
        '{"type":"ack","notification_ids":[]}',
    ],
)
def test_bad_topic_and_delivery_frames(text: str) -> None:
    """Malformed topic, replay and delivery frames are invalid_frame."""
    with pytest.raises(ProtocolError) as info:
        protocol.parse_frame(text)
    assert info.value.code == protocol.INVALID_FRAME
