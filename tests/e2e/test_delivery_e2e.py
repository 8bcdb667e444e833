"""Deliver mode against real server processes: durable per-device queues."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable

import httpx
import pytest

from conftest import REDIS_URL, ServerProcess, device_token, require_service
from tidings.client import DeviceClient
from tidings.errors import ClientError


def send_many(node: ServerProcess, token: str, user_id: str, n: int) -> list[str]:
    """Notify ``user_id`` n times; returns the ids in creation order."""
    ids = []
    with httpx.Client(timeout=10) as http:
        for i in range(n):
            response = http.post(
                f"{node.url}/notify",
                json={"user_id": user_id, "data": {"i": i}},
                headers={"Authorization": f"Bearer {token}"},
            )
            assert response.status_code == 201, response.text
            ids.append(response.json()["notification_id"])
    return ids


async def drain(device: DeviceClient, expected: int, timeout: float = 30) -> list[dict]:
    """Collect ``notification`` frames until ``expected`` distinct ones arrived."""
    notes: list[dict] = []
    async with asyncio.timeout(timeout):
        while len(notes) < expected:
            frame = await device.next_event(timeout=timeout)
            assert frame is not None, "connection closed early"
            if frame["type"] == "notification":
                notes.append(frame["notification"])
    return notes


async def register(node: ServerProcess, user_id: str, **options: object) -> str:
    """Connect once in deliver mode so the device exists; returns its connection id."""
    device = DeviceClient(node.ws_url, token=device_token(user_id), deliver=True, **options)  # type: ignore[arg-type]
    await device.connect()
    await device.close()
    assert device.connection_id is not None
    return device.connection_id


@pytest.fixture
def pg_cluster(
    postgres_url: str, start_server: Callable[..., ServerProcess]
) -> list[ServerProcess]:
    require_service("Redis", REDIS_URL)
    bus = f"{REDIS_URL}?prefix=d{uuid.uuid4().hex[:8]}:"
    return [start_server(TIDINGS_STORE=postgres_url, TIDINGS_BUS=bus) for _ in range(2)]


async def test_thousand_missed_survive_a_restart_of_every_node(
    pg_cluster: list[ServerProcess],
) -> None:
    """An offline device gets all 1,000 notifications created meanwhile, across a restart of
    every node, in order and once each; they leave its queue only after ack."""
    a, b = pg_cluster
    alice = f"alice-{uuid.uuid4().hex[:6]}"
    cid = await register(a, alice)
    token = await asyncio.to_thread(a.service_token, "notify")
    sent = await asyncio.to_thread(send_many, a, token, alice, 1000)
    for node in (a, b):
        await asyncio.to_thread(node.stop)
    for node in (a, b):
        await asyncio.to_thread(node.start)

    # First return, to node B, without acknowledging: everything arrives, in order.
    device = DeviceClient(
        b.ws_url, token=device_token(alice), connection_id=cid, deliver=True, auto_ack=False
    )
    await device.connect()
    first = await drain(device, 1000)
    assert [n["notification_id"] for n in first] == sent
    assert [n["data"]["i"] for n in first] == list(range(1000))
    await device.close()

    # Not acknowledged, so still queued: a second return gets them again; this time ack.
    device = DeviceClient(a.ws_url, token=device_token(alice), connection_id=cid, deliver=True)
    await device.connect()
    again = await drain(device, 1000)
    assert [n["notification_id"] for n in again] == sent
    await device.close()

    device = DeviceClient(a.ws_url, token=device_token(alice), connection_id=cid, deliver=True)
    await device.connect()
    with pytest.raises(TimeoutError):
        while True:
            frame = await device.next_event(timeout=1.0)
            assert frame is None or frame["type"] != "notification"
    await device.close()


async def test_sigkill_mid_backlog_loses_nothing(pg_cluster: list[ServerProcess]) -> None:
    """The node delivering a backlog is SIGKILLed half-way: on another node the device gets
    the rest, and together nothing is missing (duplicates dropped by the client)."""
    a, b = pg_cluster
    alice = f"alice-{uuid.uuid4().hex[:6]}"
    cid = await register(a, alice)
    token = await asyncio.to_thread(b.service_token, "notify")
    sent = await asyncio.to_thread(send_many, b, token, alice, 600)

    device = DeviceClient(a.ws_url, token=device_token(alice), connection_id=cid, deliver=True)
    await device.connect()
    received = await drain(device, 200)
    await asyncio.to_thread(a.kill)
    async with asyncio.timeout(10):
        # Whatever was in flight, until the socket drops, was received too.
        while (frame := await device.next_event(timeout=10)) is not None:
            if frame["type"] == "notification":
                received.append(frame["notification"])

    survivor = DeviceClient(b.ws_url, token=device_token(alice), connection_id=cid, deliver=True)
    survivor._seen = device._seen  # the same app instance remembers what it already showed
    await survivor.connect()
    missing = set(sent) - {n["notification_id"] for n in received}
    rest = await drain(survivor, len(missing))
    assert {n["notification_id"] for n in rest} == missing
    await survivor.close()


async def test_two_devices_keep_independent_queues(
    server: ServerProcess, notify_token: str
) -> None:
    """One device acknowledging does not empty the other's queue."""
    alice = f"alice-{uuid.uuid4().hex[:6]}"
    phone, laptop = await register(server, alice), await register(server, alice)
    sent = await asyncio.to_thread(send_many, server, notify_token, alice, 5)
    on_phone = DeviceClient(
        server.ws_url, token=device_token(alice), connection_id=phone, deliver=True
    )
    await on_phone.connect()
    assert [n["notification_id"] for n in await drain(on_phone, 5)] == sent
    await on_phone.close()
    on_laptop = DeviceClient(
        server.ws_url, token=device_token(alice), connection_id=laptop, deliver=True
    )
    await on_laptop.connect()
    assert [n["notification_id"] for n in await drain(on_laptop, 5)] == sent
    await on_laptop.close()


async def test_live_notifications_arrive_while_connected(
    server: ServerProcess, notify_token: str
) -> None:
    """A connected device in deliver mode receives new notifications as they are created."""
    alice = f"alice-{uuid.uuid4().hex[:6]}"
    async with DeviceClient(server.ws_url, token=device_token(alice), deliver=True) as device:
        sent = await asyncio.to_thread(send_many, server, notify_token, alice, 3)
        assert [n["notification_id"] for n in await drain(device, 3)] == sent


async def test_queue_limit_is_announced_as_a_gap(
    start_server: Callable[..., ServerProcess],
) -> None:
    """Past the operator's max length the device is told how many were dropped, then gets
    the newest ones."""
    node = start_server(TIDINGS_DEVICE_QUEUE_MAX_LENGTH="3")
    alice = f"alice-{uuid.uuid4().hex[:6]}"
    cid = await register(node, alice)
    token = await asyncio.to_thread(node.service_token, "notify")
    sent = await asyncio.to_thread(send_many, node, token, alice, 8)
    device = DeviceClient(node.ws_url, token=device_token(alice), connection_id=cid, deliver=True)
    await device.connect()
    frame = await device.next_event()
    while frame is not None and frame["type"] != "queueGap":
        frame = await device.next_event()
    assert frame == {"type": "queueGap", "reason": "max_length", "skipped": 5}
    assert [n["notification_id"] for n in await drain(device, 3)] == sent[5:]
    await device.close()


async def test_forget_device_deletes_its_queue(server: ServerProcess, notify_token: str) -> None:
    """forgetDevice answers, closes the socket, and the old id no longer has a queue."""
    alice = f"alice-{uuid.uuid4().hex[:6]}"
    cid = await register(server, alice)
    await asyncio.to_thread(send_many, server, notify_token, alice, 2)
    device = DeviceClient(server.ws_url, token=device_token(alice), connection_id=cid, deliver=True)
    await device.connect()
    await drain(device, 2)
    await device.forget()
    async with asyncio.timeout(5):
        while await device.next_event() is not None:
            pass
    assert device.close_code == 1000
    # Presenting the forgotten id again starts a fresh, empty queue.
    back = DeviceClient(server.ws_url, token=device_token(alice), connection_id=cid, deliver=True)
    await back.connect()
    with pytest.raises(TimeoutError):
        while True:
            frame = await back.next_event(timeout=1.0)
            assert frame is None or frame["type"] != "notification"
    await back.close()


async def test_ack_outside_deliver_mode_and_foreign_ids_are_refused(
    server: ServerProcess, notify_token: str
) -> None:
    """ack needs deliver mode; another user's ids are not_found and change nothing."""
    alice, bob = f"alice-{uuid.uuid4().hex[:6]}", f"bob-{uuid.uuid4().hex[:6]}"
    bob_ids = await asyncio.to_thread(send_many, server, notify_token, bob, 1)
    async with DeviceClient(server.ws_url, token=device_token(alice)) as plain:
        with pytest.raises(ClientError) as info:
            await plain.ack(bob_ids)
        assert info.value.code == "not_deliver_mode"
    async with DeviceClient(
        server.ws_url, token=device_token(alice), deliver=True, auto_ack=False
    ) as device:
        with pytest.raises(ClientError) as info:
            await device.ack(bob_ids)
        assert info.value.code == "not_found"


def test_service_can_log_a_device_out(server: ServerProcess, notify_token: str) -> None:
    """DELETE /users/{user}/devices/{cid} forgets the device; a second time is 404."""
    alice = f"alice-{uuid.uuid4().hex[:6]}"
    cid = asyncio.run(register(server, alice))
    headers = {"Authorization": f"Bearer {notify_token}"}
    url = f"{server.url}/users/{alice}/devices/{cid}"
    assert httpx.delete(url, headers=headers).status_code == 204
    assert httpx.delete(url, headers=headers).status_code == 404
    other = f"{server.url}/users/someone-else/devices/{cid}"
    assert httpx.delete(other, headers=headers).status_code == 404
