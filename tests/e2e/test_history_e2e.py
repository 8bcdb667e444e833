"""getNotifications on a real server process: a user's history page by page over the socket,
the same pages as over HTTP; bad filters and cursors (another user's, forged) are an error
frame, and the connection stays up."""

from __future__ import annotations

import uuid

import httpx
import pytest

from conftest import ServerProcess, device_token
from tidings.client import DeviceClient
from tidings.errors import ClientError


async def test_pages_over_the_socket_and_bad_input(
    server: ServerProcess, notify_token: str
) -> None:
    ann, bob = f"ann-{uuid.uuid4().hex[:6]}", f"bob-{uuid.uuid4().hex[:6]}"
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        for user in (ann, bob):
            for n in range(5):
                answer = await http.post(
                    "/notify",
                    json={"user_id": user, "data": {"n": n}},
                    headers={"Authorization": f"Bearer {notify_token}"},
                )
                assert answer.status_code == 201
        over_http = (
            await http.get(
                "/me/notifications?limit=2",
                headers={"Authorization": f"Bearer {device_token(ann)}"},
            )
        ).json()
    async with (
        DeviceClient(server.ws_url, token=device_token(ann)) as device,
        DeviceClient(server.ws_url, token=device_token(bob)) as other,
    ):
        page, cursor = await device.get_notifications(limit=2)
        assert [n["data"]["n"] for n in page] == [4, 3]
        assert page == over_http["notifications"]
        assert {n["user_id"] for n in page} == {ann}
        rest, end = await device.get_notifications(limit=10, cursor=cursor)
        assert [n["data"]["n"] for n in rest] == [2, 1, 0] and end is None
        assert cursor is not None
        for frame, expected in (
            ({"cursor": cursor}, "not one of this user's pages"),  # ann's cursor, bob's socket
            ({"cursor": cursor[:-3] + "xyz"}, "not one of this user's pages"),
            ({"state": "deleted"}, "state must be one of"),
            ({"state": 5}, "'state'"),
            ({"limit": 101}, "'limit'"),
            ({"category": ""}, "'category'"),
        ):
            with pytest.raises(ClientError) as info:
                await other.request({"type": "getNotifications", **frame})
            assert info.value.code == "invalid_frame", frame
            assert expected in str(info.value), (frame, str(info.value))
        # The connection is still up and answers.
        mine, _ = await other.get_notifications(limit=1)
        assert [n["user_id"] for n in mine] == [bob]


async def test_mark_all_seen_over_the_socket_and_http_reaches_every_device(
    server: ServerProcess, notify_token: str
) -> None:
    ann = f"ann-{uuid.uuid4().hex[:6]}"
    service = {"Authorization": f"Bearer {notify_token}"}
    async with (
        httpx.AsyncClient(base_url=server.url, timeout=10) as http,
        DeviceClient(server.ws_url, token=device_token(ann)) as phone,
        DeviceClient(server.ws_url, token=device_token(ann)) as laptop,
    ):
        for n in range(4):
            await http.post("/notify", json={"user_id": ann, "data": {"n": n}}, headers=service)
        await laptop.wait_for_count(lambda count: count == 4)
        version = laptop.version
        answer = await phone.request({"type": "markAllSeen"})
        assert answer["marked"] == 4
        await laptop.wait_for_count(lambda count: count == 0)
        assert laptop.version == version + 1  # one change, however many
        # Over HTTP: a service marks listed ids, then everything.
        ids = []
        for n in range(3):
            made = await http.post(
                "/notify", json={"user_id": ann, "data": {"n": n}}, headers=service
            )
            ids.append(made.json()["notification_id"])
        await laptop.wait_for_count(lambda count: count == 3)
        marked = await http.post(
            f"/users/{ann}/notifications/seen", json={"notification_ids": ids[:1]}, headers=service
        )
        assert marked.json() == {"marked": 1}
        await laptop.wait_for_count(lambda count: count == 2)
        device = {"Authorization": f"Bearer {device_token(ann)}"}
        everything = await http.post("/me/notifications/seen", json={"all": True}, headers=device)
        assert everything.json() == {"marked": 2}
        await laptop.wait_for_count(lambda count: count == 0)
        # Bad input: another user's id marks nothing; neither or both of ids and all.
        other = await http.post(
            "/notify", json={"user_id": "someone-else", "data": {}}, headers=service
        )
        foreign = other.json()["notification_id"]
        refused = await http.post(
            "/me/notifications/seen", json={"notification_ids": [foreign]}, headers=device
        )
        assert refused.status_code == 404 and foreign in refused.text, refused.text
        for body in ({}, {"all": True, "notification_ids": ids}, {"all": False}):
            bad = await http.post("/me/notifications/seen", json=body, headers=device)
            assert bad.status_code == 422, (body, bad.text)


async def test_read_archive_and_unarchive_over_the_socket_and_http(
    server: ServerProcess, notify_token: str
) -> None:
    ann, bob = f"ann-{uuid.uuid4().hex[:6]}", f"bob-{uuid.uuid4().hex[:6]}"
    service = {"Authorization": f"Bearer {notify_token}"}
    device = {"Authorization": f"Bearer {device_token(ann)}"}
    async with (
        httpx.AsyncClient(base_url=server.url, timeout=10) as http,
        DeviceClient(server.ws_url, token=device_token(ann)) as phone,
        DeviceClient(server.ws_url, token=device_token(ann)) as laptop,
    ):
        ids = []
        for n in range(4):
            made = await http.post(
                "/notify", json={"user_id": ann, "data": {"n": n}}, headers=service
            )
            ids.append(made.json()["notification_id"])
        bobs = await http.post("/notify", json={"user_id": bob, "data": {}}, headers=service)
        await laptop.wait_for_count(lambda count: count == 4)
        version = laptop.version

        read = await phone.request({"type": "markRead", "notification_ids": ids[:1]})
        assert read["marked"] == 1
        await laptop.wait_for_count(lambda count: count == 3)  # reading is seeing
        assert laptop.version == version + 1
        unread, _ = await phone.get_notifications(state="unread")
        assert [n["data"]["n"] for n in unread] == [3, 2, 1]

        archived = await phone.request({"type": "archive", "notification_ids": ids[1:3]})
        assert archived["marked"] == 2
        await laptop.wait_for_count(lambda count: count == 1)
        inbox, _ = await phone.get_notifications()
        assert [n["data"]["n"] for n in inbox] == [3, 0]
        shelf, _ = await phone.get_notifications(state="archived")
        assert [n["data"]["n"] for n in shelf] == [2, 1]
        assert all(n["archived_date"] and n["read_date"] for n in shelf)
        back = await phone.request({"type": "unarchive", "notification_ids": ids[1:2]})
        assert back["marked"] == 1
        inbox, _ = await phone.get_notifications()
        assert [n["data"]["n"] for n in inbox] == [3, 1, 0]

        everything = await phone.request({"type": "markAllRead"})
        assert everything["marked"] == 1  # only n=3 was unread: archiving read n=1 and n=2
        await laptop.wait_for_count(lambda count: count == 0)

        # Another user's id: nothing changes, the connection stays up; HTTP says 404.
        foreign = bobs.json()["notification_id"]
        with pytest.raises(ClientError) as info:
            await phone.request({"type": "archive", "notification_ids": [ids[3], foreign]})
        assert info.value.code == "not_found"
        inbox, _ = await phone.get_notifications()
        assert ids[3] in [n["notification_id"] for n in inbox]
        refused = await http.post(
            "/me/notifications/archive", json={"notification_ids": [foreign]}, headers=device
        )
        assert refused.status_code == 404
        # Everything archived over HTTP, then the inbox is empty.
        shelved = await http.post("/me/notifications/archive", json={"all": True}, headers=device)
        assert shelved.json()["marked"] == 3
        assert (await phone.get_notifications())[0] == []
