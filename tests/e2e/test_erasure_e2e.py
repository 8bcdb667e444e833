"""Erasing a user (``DELETE /users/{user_id}``, scope ``admin``) on two server processes over
PostgreSQL and Redis: everything of the user goes, their sockets close on both nodes, another
user keeps all of theirs, and nobody without ``admin`` can do it."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable

import httpx
import pytest

from conftest import REDIS_URL, BrokerProcess, ServerProcess, device_token, require_service
from tidings.client import DeviceClient


@pytest.fixture
def nodes(postgres_url: str, start_server: Callable[..., ServerProcess]) -> list[ServerProcess]:
    require_service("Redis", REDIS_URL)
    bus = f"{REDIS_URL}?prefix=e{uuid.uuid4().hex[:8]}:"
    return [start_server(TIDINGS_STORE=postgres_url, TIDINGS_BUS=bus) for _ in range(2)]


async def closed(device: DeviceClient, timeout: float = 5.0) -> int | None:
    """Read until the server closes the socket; its close code."""
    async with asyncio.timeout(timeout):
        while await device.next_event() is not None:
            pass
    return device.close_code


async def test_erasing_a_user_on_two_nodes(nodes: list[ServerProcess]) -> None:
    a, b = nodes
    ann, bob = f"ann-{uuid.uuid4().hex[:6]}", f"bob-{uuid.uuid4().hex[:6]}"
    admin = {"Authorization": f"Bearer {a.service_token('admin')}"}
    service = {"Authorization": f"Bearer {a.service_token('notify', 'messages')}"}
    async with httpx.AsyncClient(base_url=a.url, timeout=10) as http:
        for user in (ann, bob):
            answer = await http.post(
                f"/users/{user}/push-tokens",
                json={"platform": "fcm", "token": f"fcm-{user}"},
                headers=service,
            )
            assert answer.status_code == 201, answer.text
            answer = await http.put(
                f"/users/{user}/channels/email", json={"enabled": False}, headers=service
            )
            assert answer.status_code == 200, answer.text
        ann_a = DeviceClient(a.ws_url, token=device_token(ann), deliver=True)
        ann_b = DeviceClient(b.ws_url, token=device_token(ann))
        bob_b = DeviceClient(b.ws_url, token=device_token(bob))
        for device in (ann_a, ann_b, bob_b):
            await device.connect()
        for user in (ann, bob):
            answer = await http.post("/notify", json={"user_id": user, "data": {}}, headers=service)
            assert answer.status_code == 201, answer.text
        await ann_b.wait_for_count(lambda count: count == 1)
        await bob_b.wait_for_count(lambda count: count == 1)
        seen_version = ann_b.version

        # Without admin, or for a malformed id: refused, nothing changed.
        assert (await http.delete(f"/users/{ann}", headers=service)).status_code == 403
        assert (await http.delete("/users/" + "x" * 257, headers=admin)).status_code == 422
        assert (await http.delete("/users/a%00b", headers=admin)).status_code == 422
        tokens = await http.get(f"/users/{ann}/push-tokens", headers=service)
        assert len(tokens.json()) == 1

        answer = await http.delete(f"/users/{ann}", headers=admin)
        assert answer.status_code == 200, answer.text
        erased = answer.json()
        assert erased["user_id"] == ann
        assert {
            k: erased["erased"][k] for k in ("notifications", "push_tokens", "preferences")
        } == {
            "notifications": 1,
            "push_tokens": 1,
            "preferences": 1,
        }
        assert erased["erased"]["devices"] == 2

        # Ann's sockets close on both nodes; Bob's stays open and keeps getting counts.
        assert await closed(ann_a) == 1000
        assert await closed(ann_b) == 1000
        answer = await http.post("/notify", json={"user_id": bob, "data": {}}, headers=service)
        assert answer.status_code == 201
        await bob_b.wait_for_count(lambda count: count == 2)
        await bob_b.close()

        tokens = await http.get(f"/users/{ann}/push-tokens", headers=service)
        assert tokens.json() == []
        tokens = await http.get(f"/users/{bob}/push-tokens", headers=service)
        assert [t["token"] for t in tokens.json()] == [f"fcm-{bob}"]
        prefs = (await http.get(f"/users/{ann}/preferences", headers=service)).json()
        assert prefs["channels"] == {}

        # Signing in again starts afresh: no notifications, a count above the old version.
        async with DeviceClient(b.ws_url, token=device_token(ann)) as back:
            await back.wait_for_count(lambda count: count == 0)
            assert back.version > seen_version
        # Erasing again takes only what came since: the device that signed in again.
        again = await http.delete(f"/users/{ann}", headers=admin)
        assert again.status_code == 200
        assert {k: n for k, n in again.json()["erased"].items() if n} == {"devices": 1}


@pytest.mark.timeout(60)
async def test_erasing_with_the_broker_dead_still_erases_and_closes_local_sockets(
    start_server: Callable[..., ServerProcess],
    private_broker: Callable[[str], BrokerProcess],
) -> None:
    """The bus is down: the erasure still happens and the node's own sockets of the user
    close; only the event to other nodes is lost (they find the device gone at their next
    queue read)."""
    broker = private_broker("redis")
    node = start_server(TIDINGS_BUS=broker.url)
    admin = {"Authorization": f"Bearer {node.service_token('admin')}"}
    service = {"Authorization": f"Bearer {node.service_token('notify')}"}
    ann = f"ann-{uuid.uuid4().hex[:6]}"
    async with httpx.AsyncClient(base_url=node.url, timeout=10) as http:
        answer = await http.post("/notify", json={"user_id": ann, "data": {}}, headers=service)
        assert answer.status_code == 201
        device = DeviceClient(node.ws_url, token=device_token(ann))
        await device.connect()
        broker.kill()
        erased = await http.delete(f"/users/{ann}", headers=admin)
        assert erased.status_code == 200, erased.text
        assert erased.json()["erased"]["notifications"] == 1
        assert await closed(device) == 1000
        page = await http.get(f"/users/{ann}/notifications", headers=service)
        assert page.json()["notifications"] == []
