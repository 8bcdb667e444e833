"""End-to-end checks of the issue's "must hold" points against the wire contract v1.

Devices are real WebSocket clients (``websockets``), services are real HTTP clients (``httpx``),
and the server is a real ``tidings serve`` process. Nothing here uses tidings' own client.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

try:
    from tests.conftest import ServerProcess, device_token
except ImportError:  # tests/ is not a package: conftest.py is importable by its own name
    from conftest import ServerProcess, device_token  # type: ignore[no-redef]

RECV_TIMEOUT = 5.0
QUIET = 0.6  # how long a device must stay silent to count as "received nothing"

Frame = dict[str, Any]


def uid(prefix: str = "user") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def rid() -> str:
    return uuid.uuid4().hex[:8]


class Device:
    """One device: a WebSocket plus a buffer of frames read but not yet asked for."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.pending: list[Frame] = []
        self.welcome: Frame = {}
        self.initial_count: Frame = {}

    async def send(self, frame: Frame | str) -> None:
        await self.ws.send(frame if isinstance(frame, str) else json.dumps(frame))

    async def recv_frame(self, timeout: float = RECV_TIMEOUT) -> Frame:
        async with asyncio.timeout(timeout):
            raw = await self.ws.recv()
        frame = json.loads(raw)
        assert isinstance(frame, dict), f"server frame is not a JSON object: {raw!r}"
        assert "type" in frame, f"server frame without type: {frame}"
        return frame

    @staticmethod
    def _matches(frame: Frame, type_: str, id_: object) -> bool:
        return frame.get("type") == type_ and (id_ is None or frame.get("id") == id_)

    async def expect(self, type_: str, id_: object = None, timeout: float = RECV_TIMEOUT) -> Frame:
        """The next frame of this type (and id), buffering any other frame read meanwhile."""
        for i, frame in enumerate(self.pending):
            if self._matches(frame, type_, id_):
                return self.pending.pop(i)
        deadline = time.monotonic() + timeout
        seen: list[Frame] = []
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(
                    f"no {type_!r} frame (id={id_!r}) within {timeout}s; got meanwhile: {seen}"
                )
            try:
                frame = await self.recv_frame(remaining)
            except TimeoutError:
                raise AssertionError(
                    f"no {type_!r} frame (id={id_!r}) within {timeout}s; got meanwhile: {seen}"
                ) from None
            if self._matches(frame, type_, id_):
                return frame
            seen.append(frame)
            self.pending.append(frame)

    async def expect_count(self, timeout: float = RECV_TIMEOUT) -> Frame:
        frame = await self.expect("newNotificationCountChanged", timeout=timeout)
        assert isinstance(frame.get("count"), int), frame
        assert isinstance(frame.get("version"), int), frame
        return frame

    async def assert_no(self, type_: str, wait: float = QUIET) -> None:
        """No frame of this type arrives within ``wait`` seconds."""
        for frame in self.pending:
            assert frame.get("type") != type_, f"unexpected {type_} frame: {frame}"
        deadline = time.monotonic() + wait
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                frame = await self.recv_frame(remaining)
            except TimeoutError:
                return
            assert frame.get("type") != type_, f"unexpected {type_} frame: {frame}"
            self.pending.append(frame)

    async def get_unseen(self, limit: int = 100) -> list[Frame]:
        req = rid()
        await self.send({"type": "getUnseen", "id": req, "limit": limit})
        frame = await self.expect("newNotificationData", req)
        notifications = frame.get("notifications")
        assert isinstance(notifications, list), frame
        return notifications

    async def mark_seen(self, ids: list[str]) -> Frame:
        req = rid()
        await self.send({"type": "markSeen", "id": req, "notification_ids": ids})
        return await self.expect("reply", req)

    async def mark_seen_error(self, ids: list[str]) -> Frame:
        req = rid()
        await self.send({"type": "markSeen", "id": req, "notification_ids": ids})
        frame = await self.expect_answer(req)
        assert frame["type"] == "error", f"markSeen of {ids} was not refused: {frame}"
        assert_error_shape(frame)
        return frame

    async def expect_answer(self, id_: object, timeout: float = RECV_TIMEOUT) -> Frame:
        """The next frame carrying this id, whatever its type."""
        for i, frame in enumerate(self.pending):
            if frame.get("id") == id_:
                return self.pending.pop(i)
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"no answer with id={id_!r} within {timeout}s"
            try:
                frame = await self.recv_frame(remaining)
            except TimeoutError:
                raise AssertionError(f"no answer with id={id_!r} within {timeout}s") from None
            if frame.get("id") == id_:
                return frame
            self.pending.append(frame)

    async def assert_alive(self) -> None:
        """The connection still answers a normal request."""
        await self.get_unseen(limit=1)


def assert_error_shape(frame: Frame) -> None:
    assert frame.get("type") == "error", frame
    assert "code" in frame and frame["code"] not in (None, ""), frame
    assert isinstance(frame.get("message"), str) and frame["message"], frame


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@asynccontextmanager
async def open_ws(
    url: str, headers: dict[str, str] | None = None, **kwargs: Any
) -> AsyncIterator[ClientConnection]:
    async with connect(
        url,
        additional_headers=headers,
        open_timeout=5,
        close_timeout=2,
        proxy=None,
        **kwargs,
    ) as ws:
        yield ws


@asynccontextmanager
async def device(
    server: ServerProcess,
    user_id: str,
    *,
    cookie: str | None = None,
    **kwargs: Any,
) -> AsyncIterator[Device]:
    """An authenticated device (bearer header) past its welcome and initial count."""
    headers = bearer(device_token(user_id))
    if cookie is not None:
        headers["Cookie"] = f"tidings_cid={cookie}"
    async with open_ws(server.ws_url, headers, **kwargs) as ws:
        dev = Device(ws)
        dev.welcome = await dev.expect("welcome")
        dev.initial_count = await dev.expect_count()
        yield dev


def set_cookie_cid(ws: ClientConnection) -> str | None:
    """The tidings_cid value set by the handshake response, if any."""
    assert ws.response is not None
    for header in ws.response.headers.get_all("Set-Cookie"):
        cookie: SimpleCookie = SimpleCookie()
        cookie.load(header)
        if "tidings_cid" in cookie:
            return cookie["tidings_cid"].value
    return None


async def notify(
    server: ServerProcess,
    token: str,
    user_id: str,
    data: Any,
    notification_id: str | None = None,
    expect_status: int = 201,
) -> Frame:
    body: Frame = {"user_id": user_id, "data": data}
    if notification_id is not None:
        body["notification_id"] = notification_id
    async with httpx.AsyncClient(base_url=server.url, trust_env=False, timeout=10) as http:
        response = await http.post("/notify", json=body, headers=bearer(token))
    assert response.status_code == expect_status, (response.status_code, response.text)
    notification = response.json()
    assert isinstance(notification, dict), notification
    return notification


def assert_notification_shape(n: Frame, user_id: str) -> None:
    assert set(n) >= {"notification_id", "user_id", "data", "creation_date", "seen_date"}, n
    assert n["user_id"] == user_id, n
    assert isinstance(n["notification_id"], str) and n["notification_id"], n
    created = datetime.fromisoformat(n["creation_date"])
    assert created.utcoffset() == timedelta(0), f"creation_date not UTC: {n['creation_date']}"


# --------------------------------------------------------------------------------------------
# 1. Counts on every device of the user, and only of that user
# --------------------------------------------------------------------------------------------


async def test_notify_moves_both_devices_of_user_and_not_other_user(
    server: ServerProcess, notify_token: str
) -> None:
    """A notify moves both devices of its user to the same count and version, not another user."""
    alice, bob = uid("alice"), uid("bob")
    async with (
        device(server, alice) as a1,
        device(server, alice) as a2,
        device(server, bob) as b1,
    ):
        assert a1.initial_count["count"] == 0
        assert a2.initial_count["count"] == 0
        assert b1.initial_count["count"] == 0
        before = max(a1.initial_count["version"], a2.initial_count["version"])

        created = await notify(server, notify_token, alice, {"text": "hello"})
        assert_notification_shape(created, alice)
        assert created["data"] == {"text": "hello"}
        assert created["seen_date"] is None

        c1, c2 = await a1.expect_count(), await a2.expect_count()
        assert c1["count"] == c2["count"] == 1, (c1, c2)
        assert c1["version"] == c2["version"], (c1, c2)
        assert c1["version"] > before, (before, c1)
        await b1.assert_no("newNotificationCountChanged")


async def test_get_unseen_then_mark_seen_zeroes_every_device(
    server: ServerProcess, notify_token: str
) -> None:
    """getUnseen on one device returns the notification; markSeen brings both devices to 0."""
    alice, bob = uid("alice"), uid("bob")
    async with (
        device(server, alice) as a1,
        device(server, alice) as a2,
        device(server, bob) as b1,
    ):
        created = await notify(server, notify_token, alice, {"text": "read me", "n": 1})
        up1, up2 = await a1.expect_count(), await a2.expect_count()
        assert up1["count"] == up2["count"] == 1

        unseen = await a1.get_unseen(limit=10)
        assert len(unseen) == 1, unseen
        got = unseen[0]
        assert_notification_shape(got, alice)
        assert got["notification_id"] == created["notification_id"]
        assert got["data"] == {"text": "read me", "n": 1}
        assert got["seen_date"] is None

        reply = await a1.mark_seen([created["notification_id"]])
        assert reply["type"] == "reply"

        z1, z2 = await a1.expect_count(), await a2.expect_count()
        assert z1["count"] == z2["count"] == 0, (z1, z2)
        assert z1["version"] == z2["version"], (z1, z2)
        assert z1["version"] > up1["version"], (up1, z1)
        await b1.assert_no("newNotificationCountChanged", wait=0.2)

        assert await a2.get_unseen() == []

    async with device(server, alice) as later:
        assert later.initial_count["count"] == 0


# --------------------------------------------------------------------------------------------
# 2. Later devices and restarts
# --------------------------------------------------------------------------------------------


async def test_late_device_gets_current_count_at_once(
    server: ServerProcess, notify_token: str
) -> None:
    """A device connecting later gets the user's current count and version at once."""
    alice = uid("alice")
    async with device(server, alice) as early:
        for i in range(3):
            await notify(server, notify_token, alice, {"i": i})
        last = None
        for _ in range(3):
            last = await early.expect_count()
        assert last is not None and last["count"] == 3

        async with device(server, alice) as late:
            assert late.initial_count["count"] == 3, late.initial_count
            assert late.initial_count["version"] >= last["version"], (last, late.initial_count)

    # a device of a user with no notifications at all still gets a count
    async with device(server, uid("nobody")) as fresh:
        assert fresh.initial_count["count"] == 0


async def test_welcome_then_count_are_the_first_two_frames(server: ServerProcess) -> None:
    """On connect the first frame is welcome and the second newNotificationCountChanged."""
    alice = uid("alice")
    async with open_ws(server.ws_url, bearer(device_token(alice))) as ws:
        dev = Device(ws)
        first = await dev.recv_frame()
        second = await dev.recv_frame()
    assert first["type"] == "welcome", first
    assert first["user_id"] == alice, first
    assert isinstance(first.get("connection_id"), str) and first["connection_id"], first
    assert isinstance(first.get("node"), str) and first["node"], first
    # session_id defaults to the connection id
    assert first.get("session_id") == first["connection_id"], first
    assert second["type"] == "newNotificationCountChanged", second
    assert second["count"] == 0 and isinstance(second["version"], int), second


async def _check_restart_keeps_state(start_server: Any, sigkill: bool) -> None:
    alice = uid("alice")
    first = start_server()
    token = first.service_token("notify")
    created = [await notify(first, token, alice, {"i": i, "t": "x" * i}) for i in range(3)]
    async with device(first, alice) as dev:
        assert dev.initial_count["count"] == 3
        await dev.mark_seen([created[0]["notification_id"]])
        before = await dev.expect_count()
        assert before["count"] == 2
    if sigkill:
        # a notification acknowledged just before a crash must survive it
        created.append(await notify(first, token, alice, {"i": 3}))
        first.kill()
        expected_count = 3
    else:
        first.stop()
        expected_count = 2

    second = start_server(db_path=first.db_path)
    async with device(second, alice) as dev:
        assert dev.initial_count["count"] == expected_count, dev.initial_count
        assert dev.initial_count["version"] >= before["version"], (before, dev.initial_count)
        unseen = {n["notification_id"]: n for n in await dev.get_unseen(limit=100)}
        expected = {n["notification_id"]: n for n in created[1:]}
        assert set(unseen) == set(expected), (unseen, expected)
        for nid, n in unseen.items():
            assert n["data"] == expected[nid]["data"], (n, expected[nid])
            assert n["user_id"] == alice
            assert n["seen_date"] is None
            assert datetime.fromisoformat(n["creation_date"]) == datetime.fromisoformat(
                expected[nid]["creation_date"]
            )

        # versions keep increasing across the restart
        token2 = second.service_token("notify")
        await notify(second, token2, alice, {"after": "restart"})
        after = await dev.expect_count()
        assert after["count"] == expected_count + 1, after
        assert after["version"] > dev.initial_count["version"], (dev.initial_count, after)
        assert after["version"] > before["version"], (before, after)


async def test_restart_keeps_notifications_and_counts(start_server: Any) -> None:
    """Stopping the server and starting a new one on the same SQLite file keeps everything."""
    await _check_restart_keeps_state(start_server, sigkill=False)


async def test_crash_keeps_acknowledged_notifications(start_server: Any) -> None:
    """A notification answered 201 survives a SIGKILL of the server (nothing acknowledged lost)."""
    await _check_restart_keeps_state(start_server, sigkill=True)


async def test_get_unseen_respects_limit(server: ServerProcess, notify_token: str) -> None:
    """getUnseen returns at most `limit` notifications."""
    alice = uid("alice")
    for i in range(3):
        await notify(server, notify_token, alice, {"i": i})
    async with device(server, alice) as dev:
        assert dev.initial_count["count"] == 3
        assert len(await dev.get_unseen(limit=2)) == 2
        assert len(await dev.get_unseen(limit=10)) == 3


# --------------------------------------------------------------------------------------------
# 3. Bad input changes nothing and keeps the connection up
# --------------------------------------------------------------------------------------------


async def test_malformed_json_gets_error_and_connection_stays_up(server: ServerProcess) -> None:
    """A frame that is not JSON gets an error frame; the connection keeps working."""
    async with device(server, uid()) as dev:
        await dev.send('{"type": "getUnseen", "id": ')
        frame = await dev.expect("error")
        assert_error_shape(frame)
        await dev.assert_alive()


@pytest.mark.parametrize(
    "raw",
    [
        "[1, 2, 3]",
        '"just a string"',
        "42",
        '{"id": "no-type"}',
        '{"type": 7, "id": "type-not-string"}',
    ],
)
async def test_non_object_or_typeless_frame_gets_error(server: ServerProcess, raw: str) -> None:
    """Valid JSON that is not a typed object gets an error frame; the connection stays up."""
    async with device(server, uid()) as dev:
        await dev.send(raw)
        frame = await dev.expect("error")
        assert_error_shape(frame)
        await dev.assert_alive()


@pytest.mark.parametrize(
    "frame",
    [
        {"type": "getUnseen", "id": "bad-limit", "limit": "ten"},
        {"type": "markSeen", "id": "bad-ids", "notification_ids": "not-a-list"},
        {"type": "markSeen", "id": "no-ids"},
    ],
)
async def test_malformed_known_frame_gets_error_with_id(
    server: ServerProcess, frame: Frame
) -> None:
    """A known type with malformed fields gets an error carrying the frame's id; still up."""
    async with device(server, uid()) as dev:
        await dev.send(frame)
        answer = await dev.expect_answer(frame["id"])
        assert_error_shape(answer)
        await dev.assert_alive()


async def test_unknown_type_gets_error_with_id(server: ServerProcess) -> None:
    """An unknown type gets an error frame carrying its id; the connection stays up."""
    async with device(server, uid()) as dev:
        await dev.send({"type": "doSomethingOdd", "id": "odd-1", "x": 1})
        frame = await dev.expect("error", "odd-1")
        assert_error_shape(frame)
        await dev.assert_alive()


async def test_unknown_fields_are_ignored(server: ServerProcess, notify_token: str) -> None:
    """Unknown fields in a client frame are ignored and the frame is served normally."""
    alice = uid("alice")
    created = await notify(server, notify_token, alice, {"k": "v"})
    async with device(server, alice) as dev:
        await dev.send(
            {"type": "getUnseen", "id": "extra", "limit": 5, "color": "blue", "nested": {"a": 1}}
        )
        frame = await dev.expect("newNotificationData", "extra")
        assert [n["notification_id"] for n in frame["notifications"]] == [
            created["notification_id"]
        ]


@pytest.mark.parametrize("compression", [None, "deflate"])
async def test_oversized_frame_gets_error_and_connection_stays_up(
    server: ServerProcess, notify_token: str, compression: str | None
) -> None:
    """A frame over 64 KiB gets an error, changes nothing, and the connection stays up."""
    alice = uid("alice")
    created = await notify(server, notify_token, alice, {"keep": True})
    async with device(server, alice, compression=compression) as dev:
        assert dev.initial_count["count"] == 1
        big = json.dumps(
            {
                "type": "markSeen",
                "id": "big-1",
                "notification_ids": [created["notification_id"]],
                "padding": "p" * (70 * 1024),
            }
        )
        assert len(big.encode()) > 64 * 1024
        await dev.send(big)
        frame = await dev.expect("error")
        assert_error_shape(frame)
        await dev.assert_no("newNotificationCountChanged", wait=0.3)
        unseen = await dev.get_unseen()
        assert [n["notification_id"] for n in unseen] == [created["notification_id"]]
        assert unseen[0]["seen_date"] is None


async def test_mark_seen_of_other_users_ids_changes_nothing(
    server: ServerProcess, notify_token: str
) -> None:
    """markSeen of another user's notification is refused; it stays unseen, counts unchanged."""
    alice, mallory = uid("alice"), uid("mallory")
    victim = await notify(server, notify_token, alice, {"secret": 1})
    own = await notify(server, notify_token, mallory, {"mine": 1})
    async with device(server, alice) as a1, device(server, mallory) as m1:
        assert a1.initial_count["count"] == 1
        assert m1.initial_count["count"] == 1
        await m1.mark_seen_error([victim["notification_id"]])
        await a1.assert_no("newNotificationCountChanged")
        await m1.assert_no("newNotificationCountChanged", wait=0.1)

        unseen_a = await a1.get_unseen()
        assert [n["notification_id"] for n in unseen_a] == [victim["notification_id"]]
        assert unseen_a[0]["seen_date"] is None
        unseen_m = await m1.get_unseen()
        assert [n["notification_id"] for n in unseen_m] == [own["notification_id"]]
        await m1.assert_alive()

    async with device(server, alice) as a2, device(server, mallory) as m2:
        assert a2.initial_count["count"] == 1
        assert m2.initial_count["count"] == 1


async def test_mark_seen_of_unknown_ids_changes_nothing(
    server: ServerProcess, notify_token: str
) -> None:
    """markSeen of ids that do not exist is refused and changes no count."""
    alice = uid("alice")
    created = await notify(server, notify_token, alice, {"x": 1})
    async with device(server, alice) as a1, device(server, alice) as a2:
        assert a1.initial_count["count"] == 1
        await a1.mark_seen_error([f"does-not-exist-{uuid.uuid4().hex}"])
        await a1.assert_no("newNotificationCountChanged")
        await a2.assert_no("newNotificationCountChanged", wait=0.1)
        unseen = await a2.get_unseen()
        assert [n["notification_id"] for n in unseen] == [created["notification_id"]]
        assert unseen[0]["seen_date"] is None
        await a1.assert_alive()
    async with device(server, alice) as again:
        assert again.initial_count["count"] == 1


async def _post_notify(
    server: ServerProcess, body: Any, headers: dict[str, str] | None
) -> httpx.Response:
    async with httpx.AsyncClient(base_url=server.url, trust_env=False, timeout=10) as http:
        return await http.post("/notify", json=body, headers=headers or {})


async def _assert_user_untouched(dev: Device) -> None:
    await dev.assert_no("newNotificationCountChanged")
    assert await dev.get_unseen() == []


async def test_notify_without_token_is_401(server: ServerProcess) -> None:
    """POST /notify without a bearer token is 401 and creates nothing."""
    alice = uid("alice")
    async with device(server, alice) as dev:
        response = await _post_notify(server, {"user_id": alice, "data": {"a": 1}}, None)
        assert response.status_code == 401, response.text
        await _assert_user_untouched(dev)


@pytest.mark.parametrize(
    "token",
    ["not-a-jwt", "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl", "DEVICE"],
)
async def test_notify_with_wrong_token_is_401(server: ServerProcess, token: str) -> None:
    """POST /notify with a wrong token (garbage, forged, or a device JWT) is 401, nothing made."""
    alice = uid("alice")
    if token == "DEVICE":
        token = device_token(alice)
    async with device(server, alice) as dev:
        response = await _post_notify(server, {"user_id": alice, "data": {"a": 1}}, bearer(token))
        assert response.status_code == 401, response.text
        await _assert_user_untouched(dev)


async def test_notify_with_token_lacking_scope_is_403(server: ServerProcess) -> None:
    """POST /notify with a valid token whose only scope is publish is 403, nothing made."""
    alice = uid("alice")
    publish_only = server.service_token("publish")
    async with device(server, alice) as dev:
        response = await _post_notify(
            server, {"user_id": alice, "data": {"a": 1}}, bearer(publish_only)
        )
        assert response.status_code == 403, response.text
        await _assert_user_untouched(dev)


@pytest.mark.parametrize("missing", ["user_id", "data"])
async def test_notify_malformed_body_is_422_naming_field(
    server: ServerProcess, notify_token: str, missing: str
) -> None:
    """POST /notify missing a required field is 422 and the body names that field."""
    alice = uid("alice")
    body = {"user_id": alice, "data": {"a": 1}}
    del body[missing]
    async with device(server, alice) as dev:
        response = await _post_notify(server, body, bearer(notify_token))
        assert response.status_code == 422, response.text
        assert missing in response.text, response.text
        await _assert_user_untouched(dev)


async def test_notify_wrong_typed_user_id_is_422(server: ServerProcess, notify_token: str) -> None:
    """POST /notify with a non-JSON body or a user_id of the wrong type is 422."""
    async with httpx.AsyncClient(base_url=server.url, trust_env=False, timeout=10) as http:
        response = await http.post(
            "/notify",
            content=b"{not json",
            headers={**bearer(notify_token), "Content-Type": "application/json"},
        )
        assert response.status_code == 422, response.text
        response = await http.post(
            "/notify", json={"user_id": {"nested": 1}, "data": {}}, headers=bearer(notify_token)
        )
        assert response.status_code == 422, response.text
        assert "user_id" in response.text, response.text


async def test_silent_unauthenticated_socket_closed_4408(server: ServerProcess) -> None:
    """A socket with no token that sends nothing is closed with 4408 about 5 s after connecting."""
    async with open_ws(server.ws_url) as ws:
        started = time.monotonic()
        with pytest.raises(ConnectionClosed) as closed:
            async with asyncio.timeout(10):
                while True:
                    frame = json.loads(await ws.recv())
                    assert frame.get("type") not in {"welcome", "newNotificationCountChanged"}, (
                        f"unauthenticated socket got {frame}"
                    )
        elapsed = time.monotonic() - started
    assert closed.value.rcvd is not None, "no close frame from the server"
    assert closed.value.rcvd.code == 4408, closed.value.rcvd
    assert 4.0 <= elapsed <= 8.0, f"closed after {elapsed:.2f}s"


# --------------------------------------------------------------------------------------------
# 4. Idempotent notify, other auth paths, cookie, health
# --------------------------------------------------------------------------------------------


async def test_same_notification_id_twice_gives_one_notification(
    server: ServerProcess, notify_token: str
) -> None:
    """Two notifies with the same notification_id: 201 then 200, one notification, count +1."""
    alice = uid("alice")
    nid = f"n-{uuid.uuid4().hex}"
    async with device(server, alice) as dev:
        first = await notify(server, notify_token, alice, {"once": 1}, nid, expect_status=201)
        update = await dev.expect_count()
        assert update["count"] == 1
        second = await notify(server, notify_token, alice, {"once": 1}, nid, expect_status=200)
        assert first["notification_id"] == second["notification_id"] == nid
        assert second == first, (first, second)
        await dev.assert_no("newNotificationCountChanged")
        unseen = await dev.get_unseen()
        assert [n["notification_id"] for n in unseen] == [nid]
    async with device(server, alice) as again:
        assert again.initial_count["count"] == 1


async def test_access_token_in_query_authenticates(server: ServerProcess) -> None:
    """A device JWT in the access_token query parameter authenticates the handshake."""
    alice = uid("alice")
    url = f"{server.ws_url}?access_token={quote(device_token(alice))}"
    async with open_ws(url) as ws:
        dev = Device(ws)
        welcome = await dev.expect("welcome")
        count = await dev.expect_count()
    assert welcome["user_id"] == alice
    assert count["count"] == 0


async def test_authenticate_frame_authenticates(server: ServerProcess, notify_token: str) -> None:
    """Without a handshake token, an authenticate first frame authenticates with its session_id."""
    alice = uid("alice")
    session = f"sess-{rid()}"
    async with open_ws(server.ws_url) as ws:
        dev = Device(ws)
        await dev.send(
            {"type": "authenticate", "token": device_token(alice), "session_id": session}
        )
        welcome = await dev.expect("welcome")
        assert welcome["user_id"] == alice
        assert welcome["session_id"] == session
        assert (await dev.expect_count())["count"] == 0
        await notify(server, notify_token, alice, {"via": "authenticate"})
        assert (await dev.expect_count())["count"] == 1
        assert len(await dev.get_unseen()) == 1


async def test_authenticate_frame_with_bad_token_closed_4401(server: ServerProcess) -> None:
    """An authenticate frame with a bad token gets the connection closed with 4401."""
    async with open_ws(server.ws_url) as ws:
        await ws.send(json.dumps({"type": "authenticate", "token": "bogus", "session_id": "s"}))
        with pytest.raises(ConnectionClosed) as closed:
            async with asyncio.timeout(RECV_TIMEOUT):
                while True:
                    frame = json.loads(await ws.recv())
                    assert frame.get("type") != "welcome", f"bad token was welcomed: {frame}"
    assert closed.value.rcvd is not None, "no close frame from the server"
    assert closed.value.rcvd.code == 4401, closed.value.rcvd


@pytest.mark.parametrize("where", ["header", "query"])
async def test_bad_handshake_token_is_401(server: ServerProcess, where: str) -> None:
    """A bad device token at the handshake (header or query) is refused with HTTP 401."""
    forged = device_token(uid())[:-4] + "AAAA"
    if where == "header":
        url, headers = server.ws_url, bearer(forged)
    else:
        url, headers = f"{server.ws_url}?access_token={quote(forged)}", None
    with pytest.raises(InvalidStatus) as refused:
        async with open_ws(url, headers):
            pass
    assert refused.value.response.status_code == 401


async def test_cookie_issued_kept_and_bound_to_user(server: ServerProcess) -> None:
    """tidings_cid is set to the welcome's connection_id, kept on reconnect, not shared by users."""
    alice, bob = uid("alice"), uid("bob")
    async with open_ws(server.ws_url, bearer(device_token(alice))) as ws:
        dev = Device(ws)
        welcome = await dev.expect("welcome")
        cid = set_cookie_cid(ws)
    assert cid is not None, "no Set-Cookie: tidings_cid on first connect"
    assert cid == welcome["connection_id"]

    headers = {**bearer(device_token(alice)), "Cookie": f"tidings_cid={cid}"}
    async with open_ws(server.ws_url, headers) as ws:
        dev = Device(ws)
        again = await dev.expect("welcome")
        reissued = set_cookie_cid(ws)
    assert again["connection_id"] == cid
    assert reissued in (None, cid)

    headers = {**bearer(device_token(bob)), "Cookie": f"tidings_cid={cid}"}
    async with open_ws(server.ws_url, headers) as ws:
        dev = Device(ws)
        other = await dev.expect("welcome")
        bob_cid = set_cookie_cid(ws)
    assert other["user_id"] == bob
    assert other["connection_id"] != cid
    assert bob_cid == other["connection_id"], "no new tidings_cid issued to the other user"


async def test_health_is_200(server: ServerProcess) -> None:
    """GET /health answers 200."""
    async with httpx.AsyncClient(base_url=server.url, trust_env=False, timeout=10) as http:
        response = await http.get("/health")
    assert response.status_code == 200


# --------------------------------------------------------------------------------------------
# Extra contract checks: races, convergence, unauthenticated frames, cookie ownership
# --------------------------------------------------------------------------------------------


async def test_concurrent_notifies_versions_strictly_increase_and_converge(
    server: ServerProcess, notify_token: str
) -> None:
    """Ten concurrent notifies: each device sees every change, versions strictly increase."""
    alice = uid("alice")
    total = 10
    async with device(server, alice) as a1, device(server, alice) as a2:
        await asyncio.gather(*(notify(server, notify_token, alice, {"i": i}) for i in range(total)))
        last: list[Frame] = []
        for dev in (a1, a2):
            updates = [await dev.expect_count() for _ in range(total)]
            versions = [u["version"] for u in updates]
            assert versions == sorted(set(versions)), f"versions not strictly increasing: {updates}"
            assert versions[0] > dev.initial_count["version"], updates
            assert updates[-1]["count"] == total, updates
            last.append(updates[-1])
        assert last[0] == last[1], last
        assert len(await a1.get_unseen(limit=100)) == total


async def test_concurrent_same_notification_id_creates_one(
    server: ServerProcess, notify_token: str
) -> None:
    """Five concurrent notifies with one notification_id: one 201, the rest 200, count 1."""
    alice = uid("alice")
    nid = f"n-{uuid.uuid4().hex}"
    body = {"user_id": alice, "data": {"race": True}, "notification_id": nid}
    async with httpx.AsyncClient(base_url=server.url, trust_env=False, timeout=10) as http:
        responses = await asyncio.gather(
            *(http.post("/notify", json=body, headers=bearer(notify_token)) for _ in range(5))
        )
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200, 200, 200, 200, 201], [(r.status_code, r.text) for r in responses]
    assert len({r.json()["notification_id"] for r in responses}) == 1
    async with device(server, alice) as dev:
        assert dev.initial_count["count"] == 1
        assert [n["notification_id"] for n in await dev.get_unseen()] == [nid]


async def test_concurrent_mark_seen_of_same_id_decrements_once(
    server: ServerProcess, notify_token: str
) -> None:
    """Two devices marking the same notification seen at once leave the count at 0, not -1."""
    alice = uid("alice")
    created = await notify(server, notify_token, alice, {"x": 1})
    keep = await notify(server, notify_token, alice, {"x": 2})
    async with device(server, alice) as a1, device(server, alice) as a2:
        assert a1.initial_count["count"] == 2
        ids = [created["notification_id"]]
        await asyncio.gather(
            a1.send({"type": "markSeen", "id": "m1", "notification_ids": ids}),
            a2.send({"type": "markSeen", "id": "m2", "notification_ids": ids}),
        )
        await a1.expect_answer("m1")
        await a2.expect_answer("m2")
        await asyncio.sleep(0.3)
    async with device(server, alice) as again:
        assert again.initial_count["count"] == 1, again.initial_count
        unseen = await again.get_unseen()
        assert [n["notification_id"] for n in unseen] == [keep["notification_id"]]


async def test_unauthenticated_frames_get_no_data(server: ServerProcess, notify_token: str) -> None:
    """Before authenticating, other frames are not served and the socket is still closed."""
    alice = uid("alice")
    await notify(server, notify_token, alice, {"private": True})
    async with open_ws(server.ws_url) as ws:
        started = time.monotonic()
        with pytest.raises(ConnectionClosed):
            async with asyncio.timeout(9):
                for _ in range(8):
                    await ws.send(json.dumps({"type": "getUnseen", "id": "sneak", "limit": 10}))
                    try:
                        async with asyncio.timeout(1):
                            frame = json.loads(await ws.recv())
                    except TimeoutError:
                        continue
                    assert frame.get("type") not in {
                        "welcome",
                        "newNotificationData",
                        "newNotificationCountChanged",
                    }, f"unauthenticated socket was served: {frame}"
                await ws.recv()
        assert time.monotonic() - started <= 8.0


async def test_cookie_of_user_survives_other_users_attempt(server: ServerProcess) -> None:
    """After another user presents alice's tidings_cid, alice's reconnect still keeps it."""
    alice, bob = uid("alice"), uid("bob")
    async with device(server, alice) as first:
        cid = first.welcome["connection_id"]
    async with device(server, bob, cookie=cid) as other:
        assert other.welcome["connection_id"] != cid
    async with device(server, alice, cookie=cid) as back:
        assert back.welcome["connection_id"] == cid
