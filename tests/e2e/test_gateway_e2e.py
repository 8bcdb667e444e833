"""Device connections against a real server process, through tidings.client."""

from __future__ import annotations

import asyncio
import uuid

import httpx
import orjson
import pytest
from websockets.asyncio.client import connect

from conftest import ServerProcess, device_token
from tidings.client import DeviceClient
from tidings.errors import ClientError


def user() -> str:
    return f"user-{uuid.uuid4().hex[:10]}"


async def notify(server: ServerProcess, token: str, user_id: str, data: object) -> dict:
    async with httpx.AsyncClient() as http:
        response = await http.post(
            f"{server.url}/notify",
            json={"user_id": user_id, "data": data},
            headers={"Authorization": f"Bearer {token}"},
        )
    assert response.status_code == 201, response.text
    return dict(response.json())


async def test_client_sees_count_fetches_and_marks(
    server: ServerProcess, notify_token: str
) -> None:
    """The Python client follows the count, fetches unseen and marks them seen."""
    alice = user()
    async with DeviceClient(server.ws_url, token=device_token(alice)) as device:
        assert await device.wait_for_count(0) == 0
        sent = await notify(server, notify_token, alice, {"text": "hi"})
        await device.wait_for_count(1)
        notes = await device.get_unseen()
        assert [n["notification_id"] for n in notes] == [sent["notification_id"]]
        assert await device.mark_seen([sent["notification_id"]]) == 1
        await device.wait_for_count(0)
        assert await device.mark_seen([sent["notification_id"]]) == 0


@pytest.mark.parametrize("auth", ["header", "query", "frame"])
async def test_every_auth_path_admits_the_user(server: ServerProcess, auth: str) -> None:
    """Header, query and authenticate-frame auth all end in welcome for the token's user."""
    alice = user()
    device = DeviceClient(server.ws_url, token=device_token(alice), auth=auth)  # type: ignore[arg-type]
    welcome = await device.connect()
    try:
        assert welcome["user_id"] == alice
        assert welcome["node"] == f"node-{server.port}"
        assert welcome["session_id"] == welcome["connection_id"]
    finally:
        await device.close()


async def test_session_id_is_kept(server: ServerProcess) -> None:
    """A session id chosen by the client is echoed in welcome (query and frame)."""
    for auth in ("query", "frame"):
        device = DeviceClient(
            server.ws_url,
            token=device_token(user()),
            session_id="tab-42",
            auth=auth,  # type: ignore[arg-type]
        )
        assert (await device.connect())["session_id"] == "tab-42"
        await device.close()


async def test_cookie_is_issued_kept_and_never_shared(server: ServerProcess) -> None:
    """tidings_cid is set on first connect, kept on reconnect, replaced for another user."""
    alice, mallory = user(), user()
    async with connect(
        server.ws_url, additional_headers={"Authorization": f"Bearer {device_token(alice)}"}
    ) as ws:
        cookie = ws.response.headers["set-cookie"]
        welcome = orjson.loads(await ws.recv())
        cid = welcome["connection_id"]
        assert cookie.startswith(f"tidings_cid={cid};") and "HttpOnly" in cookie
    headers = {"Authorization": f"Bearer {device_token(alice)}", "Cookie": f"tidings_cid={cid}"}
    async with connect(server.ws_url, additional_headers=headers) as ws:
        assert "set-cookie" not in ws.response.headers
        assert orjson.loads(await ws.recv())["connection_id"] == cid
    headers["Authorization"] = f"Bearer {device_token(mallory)}"
    async with connect(server.ws_url, additional_headers=headers) as ws:
        new_cid = orjson.loads(await ws.recv())["connection_id"]
        assert new_cid != cid
        assert ws.response.headers["set-cookie"].startswith(f"tidings_cid={new_cid};")


async def test_frames_before_authenticate_are_refused(server: ServerProcess) -> None:
    """Before authenticate, other frames get not_authenticated and the socket stays open."""
    async with connect(server.ws_url) as ws:
        await ws.send('{"type":"getUnseen","id":1}')
        error = orjson.loads(await ws.recv())
        assert (error["type"], error["id"], error["code"]) == ("error", 1, "not_authenticated")
        await ws.send(
            orjson.dumps({"type": "authenticate", "token": device_token(user())}).decode()
        )
        assert orjson.loads(await ws.recv())["type"] == "welcome"


async def test_bad_token_in_frame_closes_4401(server: ServerProcess) -> None:
    """A forged token in authenticate closes the socket with 4401."""
    forged = device_token("alice")[:-4] + "AAAA"
    async with connect(server.ws_url) as ws:
        await ws.send(orjson.dumps({"type": "authenticate", "token": forged}).decode())
        async with asyncio.timeout(5):
            await ws.wait_closed()
        assert ws.close_code == 4401


async def test_expired_token_is_refused_at_handshake(server: ServerProcess) -> None:
    """An expired device token gets HTTP 401 before the upgrade."""
    device = DeviceClient(server.ws_url, token=device_token("alice", exp=1))
    with pytest.raises(ClientError) as info:
        await device.connect()
    assert info.value.status == 401


async def test_second_authenticate_and_binary_frames_get_errors(server: ServerProcess) -> None:
    """authenticate after auth and binary frames are errors; the connection stays usable."""
    async with DeviceClient(server.ws_url, token=device_token(user())) as device:
        with pytest.raises(ClientError) as info:
            await device.request({"type": "authenticate", "token": device_token("x")})
        assert info.value.code == "already_authenticated"
        assert device._ws is not None
        await device._ws.send(b'{"type":"getUnseen"}')
        event = await device.next_event()
        while event and event["type"] != "error":
            event = await device.next_event()
        assert event is not None and event["code"] == "binary_frame"
        assert await device.get_unseen() == []


async def test_oversized_frame_error_keeps_connection(server: ServerProcess) -> None:
    """A frame over 64 KiB is answered with frame_too_large; the next frame works."""
    async with DeviceClient(server.ws_url, token=device_token(user())) as device:
        big = orjson.dumps({"type": "getUnseen", "pad": "x" * 70_000}).decode()
        await device.send_raw(big)
        event = await device.next_event()
        while event and event["type"] != "error":
            event = await device.next_event()
        assert event is not None and event["code"] == "frame_too_large"
        assert await device.get_unseen() == []


async def test_many_devices_converge_on_same_version(
    server: ServerProcess, notify_token: str
) -> None:
    """Ten devices of a user end with the same count and version after a burst."""
    alice = user()
    devices = [DeviceClient(server.ws_url, token=device_token(alice)) for _ in range(10)]
    await asyncio.gather(*(d.connect() for d in devices))
    try:
        await asyncio.gather(*(notify(server, notify_token, alice, i) for i in range(20)))
        await asyncio.gather(*(d.wait_for_count(20) for d in devices))
        assert {d.version for d in devices} == {20}
    finally:
        await asyncio.gather(*(d.close() for d in devices))


async def test_shutdown_closes_devices_for_reconnect(start_server) -> None:  # type: ignore[no-untyped-def]
    """SIGTERM closes every device with 1012 (restart; 1001 when embedded) to reconnect."""
    proc = start_server()
    device = DeviceClient(proc.ws_url, token=device_token(user()))
    await device.connect()
    await asyncio.to_thread(proc.stop)
    assert await device.next_event(timeout=10) in (
        None,
        {"type": "newNotificationCountChanged", "count": 0, "version": 0, "unread": 0},
    )
    await device.close()
    assert device.close_code in (1001, 1012)
