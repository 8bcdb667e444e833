"""Deployment modes against real processes: the example shop embedding tidings, and a
separate tidings service delegating device authentication to the shop."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from conftest import ServerProcess, free_port

ROOT = Path(__file__).resolve().parents[2]


class Shop:
    """The example application in examples/shop, run with uvicorn."""

    def __init__(self, workdir: Path, **env: str) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.env = env
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Shop:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TIDINGS_")}
        env.update(
            SHOP_TIDINGS_STORE=f"sqlite:///{self.workdir}/shop-{self.port}.db",
            PYTHONPATH=str(ROOT),
            **self.env,
        )
        log = (self.workdir / f"shop-{self.port}.log").open("ab")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "examples.shop.app:app",
                "--port",
                str(self.port),
                "--log-level",
                "warning",
            ],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                httpx.get(f"{self.url}/docs", timeout=0.5)
                return self
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError("shop did not start")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)

    def login(self, user: str, password: str) -> str:
        response = httpx.post(f"{self.url}/login", json={"username": user, "password": password})
        response.raise_for_status()
        return str(response.cookies["shop_session"])


@pytest.fixture
def start_shop(tmp_path: Path) -> Iterator[Callable[..., Shop]]:
    shops: list[Shop] = []

    def start(**env: str) -> Shop:
        shop = Shop(tmp_path, **env).start()
        shops.append(shop)
        return shop

    yield start
    for shop in shops:
        shop.stop()


async def frames_until(ws: ClientConnection, kind: str, timeout: float = 10) -> dict:
    async with asyncio.timeout(timeout):
        while True:
            frame = orjson.loads(await ws.recv())
            if frame["type"] == kind:
                return dict(frame)


async def count_frame(ws: ClientConnection) -> dict:
    return await frames_until(ws, "newNotificationCountChanged")


async def test_embedded_shop_two_devices(start_shop: Callable[..., Shop]) -> None:
    """A user logs in, opens two devices on the shop's own /subscribe, orders: both get the
    count; one fetches and marks seen, and the other drops to 0."""
    shop = start_shop()
    cookie = await asyncio.to_thread(shop.login, "alice", "wonderland")
    headers = {"Cookie": f"shop_session={cookie}"}
    ws_url = f"ws://127.0.0.1:{shop.port}/subscribe"
    async with (
        connect(ws_url, additional_headers=headers) as one,
        connect(ws_url, additional_headers=headers) as two,
    ):
        for ws in (one, two):
            assert (await frames_until(ws, "welcome"))["user_id"] == "alice"
            assert (await count_frame(ws))["count"] == 0
        async with httpx.AsyncClient(cookies={"shop_session": cookie}) as http:
            placed = (await http.post(f"{shop.url}/orders")).json()
        first, second = await count_frame(one), await count_frame(two)
        assert first == second and first["count"] == 1
        await one.send(orjson.dumps({"type": "getUnseen", "id": 1}).decode())
        data = await frames_until(one, "newNotificationData")
        [note] = data["notifications"]
        assert note["notification_id"] == placed["notification_id"]
        assert note["data"]["order"] == placed["order"]
        await one.send(
            orjson.dumps(
                {"type": "markSeen", "id": 2, "notification_ids": [note["notification_id"]]}
            ).decode()
        )
        assert (await count_frame(two))["count"] == 0


async def test_embedded_shop_refuses_a_bad_session(start_shop: Callable[..., Shop]) -> None:
    """Without a valid shop session the shop's /subscribe refuses the handshake (401)."""
    shop = start_shop()
    ws_url = f"ws://127.0.0.1:{shop.port}/subscribe"
    with pytest.raises(InvalidStatus) as info:
        async with connect(ws_url, additional_headers={"Cookie": "shop_session=alice.forged"}):
            pass
    assert info.value.response.status_code == 401


@pytest.fixture
def delegated(
    start_shop: Callable[..., Shop], start_server: Callable[..., ServerProcess]
) -> Callable[..., tuple[Shop, ServerProcess]]:
    def start(**shop_env: str) -> tuple[Shop, ServerProcess]:
        shop = start_shop(**shop_env)
        node = start_server(
            TIDINGS_DELEGATE_URL=f"{shop.url}/auth",
            TIDINGS_DELEGATE_TIMEOUT="1",
            TIDINGS_DELEGATE_CACHE_TTL="0",
        )
        return shop, node

    return start


async def test_delegated_auth_admits_the_shops_user(
    delegated: Callable[..., tuple[Shop, ServerProcess]],
) -> None:
    """A device with a good shop cookie is admitted by tidings as the user the shop names."""
    shop, node = delegated()
    cookie = await asyncio.to_thread(shop.login, "bob", "builder")
    async with connect(node.ws_url, additional_headers={"Cookie": f"shop_session={cookie}"}) as ws:
        assert (await frames_until(ws, "welcome"))["user_id"] == "bob"


async def test_delegated_auth_refuses_a_bad_cookie(
    delegated: Callable[..., tuple[Shop, ServerProcess]],
) -> None:
    """A bad cookie is refused at the handshake with 401."""
    _, node = delegated()
    with pytest.raises(InvalidStatus) as info:
        async with connect(node.ws_url, additional_headers={"Cookie": "shop_session=bob.bad"}):
            pass
    assert info.value.response.status_code == 401


async def test_hanging_or_dead_application_gets_a_clean_refusal(
    delegated: Callable[..., tuple[Shop, ServerProcess]],
) -> None:
    """An application that hangs, then one that is down: refused with 503 within the timeout,
    and tidings stays healthy."""
    shop, node = delegated(SHOP_AUTH_DELAY="5")
    cookie = await asyncio.to_thread(shop.login, "alice", "wonderland")
    headers = {"Cookie": f"shop_session={cookie}"}
    started = time.monotonic()
    with pytest.raises(InvalidStatus) as info:
        async with connect(node.ws_url, additional_headers=headers, open_timeout=10):
            pass
    assert info.value.response.status_code == 503
    assert time.monotonic() - started < 3
    await asyncio.to_thread(shop.stop)
    started = time.monotonic()
    with pytest.raises(InvalidStatus) as info:
        async with connect(node.ws_url, additional_headers=headers, open_timeout=10):
            pass
    assert info.value.response.status_code == 503 and time.monotonic() - started < 3
    health = await asyncio.to_thread(httpx.get, f"{node.url}/health")
    assert health.status_code == 200


async def test_foreign_origins_cannot_ride_the_cookie(
    delegated: Callable[..., tuple[Shop, ServerProcess]],
) -> None:
    """With cookie (delegated) auth, a page on another site cannot open a socket."""
    shop, node = delegated()
    cookie = await asyncio.to_thread(shop.login, "alice", "wonderland")
    evil = {"Cookie": f"shop_session={cookie}", "Origin": "https://evil.example"}
    with pytest.raises(InvalidStatus) as info:
        async with connect(node.ws_url, additional_headers=evil):
            pass
    assert info.value.response.status_code == 403
    same = {"Cookie": f"shop_session={cookie}", "Origin": f"http://127.0.0.1:{node.port}"}
    async with connect(node.ws_url, additional_headers=same) as ws:
        assert (await frames_until(ws, "welcome"))["user_id"] == "alice"


async def test_origin_allow_list(start_server: Callable[..., ServerProcess]) -> None:
    """An explicit allow-list admits listed origins only."""
    from conftest import device_token

    node = start_server(TIDINGS_ALLOWED_ORIGINS='["https://app.example"]')
    token = {"Authorization": f"Bearer {device_token('alice')}"}
    with pytest.raises(InvalidStatus):
        async with connect(
            node.ws_url, additional_headers={**token, "Origin": "https://x.example"}
        ):
            pass
    async with connect(
        node.ws_url, additional_headers={**token, "Origin": "https://app.example"}
    ) as ws:
        assert (await frames_until(ws, "welcome"))["user_id"] == "alice"


async def test_mounted_tidings_app_serves_devices_and_api(start_shop: Callable[..., Shop]) -> None:
    """tidings.asgi() mounted under /push: /push/health answers and a device with a JWT on
    /push/ws follows the count the shop's orders change."""
    from conftest import JWT_SECRET, device_token

    shop = start_shop(TIDINGS_JWT_SECRET=JWT_SECRET)
    health = await asyncio.to_thread(httpx.get, f"{shop.url}/push/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    token = {"Authorization": f"Bearer {device_token('alice')}"}
    async with connect(f"ws://127.0.0.1:{shop.port}/push/ws", additional_headers=token) as ws:
        assert (await frames_until(ws, "welcome"))["user_id"] == "alice"
        before = (await count_frame(ws))["count"]
        cookie = await asyncio.to_thread(shop.login, "alice", "wonderland")
        async with httpx.AsyncClient(cookies={"shop_session": cookie}) as http:
            await http.post(f"{shop.url}/orders")
        assert (await count_frame(ws))["count"] == before + 1
