"""Several real `tidings serve` processes sharing PostgreSQL and a bus."""

from __future__ import annotations

import asyncio
import re
import threading
import uuid
from collections.abc import Callable, Iterator

import httpx
import pytest
import websockets
from websockets.exceptions import InvalidStatus

from conftest import (
    NATS_URL,
    POSTGRES_URL,
    REDIS_URL,
    BrokerProcess,
    ServerProcess,
    device_token,
    free_port,
    require_service,
)
from tidings.client import DeviceClient
from tidings.errors import ClientError

FAST_CLUSTER = {"TIDINGS_HEARTBEAT_INTERVAL": "0.5", "TIDINGS_NODE_TIMEOUT": "2"}


def bus_for(kind: str) -> str:
    tag = uuid.uuid4().hex[:8]
    if kind == "redis":
        require_service("Redis", REDIS_URL)
        return f"{REDIS_URL}?prefix=c{tag}:"
    if kind == "nats":
        require_service("NATS", NATS_URL)
        return f"{NATS_URL}?prefix=c{tag}"
    return POSTGRES_URL


def cluster(
    start_server: Callable[..., ServerProcess], store: str, bus: str, n: int = 3
) -> list[ServerProcess]:
    return [start_server(TIDINGS_STORE=store, TIDINGS_BUS=bus, **FAST_CLUSTER) for _ in range(n)]


def notify(node: ServerProcess, token: str, user_id: str, data: object) -> dict:
    response = httpx.post(
        f"{node.url}/notify",
        json={"user_id": user_id, "data": data},
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )
    assert response.status_code == 201, response.text
    return dict(response.json())


@pytest.mark.parametrize("bus_kind", ["redis", "nats", "postgres"])
async def test_devices_on_two_nodes_follow_a_notify_through_a_third(
    bus_kind: str, postgres_url: str, start_server: Callable[..., ServerProcess]
) -> None:
    """Devices on nodes A and B see the same count and version for a notify sent through C;
    markSeen on A zeroes B."""
    a, b, c = cluster(start_server, postgres_url, bus_for(bus_kind))
    alice, bob = f"alice-{uuid.uuid4().hex[:6]}", f"bob-{uuid.uuid4().hex[:6]}"
    on_a = DeviceClient(a.ws_url, token=device_token(alice))
    on_b = DeviceClient(b.ws_url, token=device_token(alice))
    bob_on_b = DeviceClient(b.ws_url, token=device_token(bob))
    for device in (on_a, on_b, bob_on_b):
        await device.connect()
    try:
        assert {on_a.node, on_b.node} == {f"node-{a.port}", f"node-{b.port}"}
        token = await asyncio.to_thread(c.service_token, "notify")
        for i in range(3):
            await asyncio.to_thread(notify, c, token, alice, {"i": i})
        await on_a.wait_for_count(3)
        await on_b.wait_for_count(3)
        assert on_a.version == on_b.version == 3
        notes = await on_a.get_unseen()
        assert [n["data"]["i"] for n in notes] == [0, 1, 2]
        await on_a.mark_seen([n["notification_id"] for n in notes])
        await on_b.wait_for_count(0)
        await on_a.wait_for_count(0)
        assert on_a.version == on_b.version == 4
        assert bob_on_b.count == 0 and bob_on_b.version == 0
    finally:
        for device in (on_a, on_b, bob_on_b):
            await device.close()


async def test_registry_lists_sockets_and_reaps_a_killed_node(
    postgres_url: str, start_server: Callable[..., ServerProcess]
) -> None:
    """Each socket is a registry row with its node; a SIGKILLed node's rows are removed by
    the survivors once it stops heart-beating, and its devices reconnect elsewhere at once."""
    from tidings.storage.postgres import PostgresStore

    a, b = cluster(start_server, postgres_url, bus_for("postgres"), n=2)
    alice = f"alice-{uuid.uuid4().hex[:6]}"
    token = await asyncio.to_thread(a.service_token, "notify")
    await asyncio.to_thread(notify, a, token, alice, "one")
    victim = DeviceClient(b.ws_url, token=device_token(alice), session_id="tab-1")
    await victim.connect()
    survivor = DeviceClient(a.ws_url, token=device_token(alice))
    await survivor.connect()
    async with PostgresStore(postgres_url) as store:
        rows = await store.presence(user_id=alice)
        assert {(r.node_id, r.session_id) for r in rows} == {
            (f"node-{b.port}", "tab-1"),
            (f"node-{a.port}", survivor.connection_id),
        }
        await asyncio.to_thread(b.kill)
        async with asyncio.timeout(15):
            while any(r.node_id == f"node-{b.port}" for r in await store.presence()):
                await asyncio.sleep(0.2)
        assert f"node-{b.port}" not in {n.node_id for n in await store.list_nodes()}
    # The killed node's device comes back through another node with its identity and count.
    back = DeviceClient(a.ws_url, token=device_token(alice), connection_id=victim.connection_id)
    welcome = await back.connect()
    assert welcome["connection_id"] == victim.connection_id
    assert await back.wait_for_count(1) == 1
    for device in (victim, survivor, back):
        await device.close()


async def test_sigkill_loses_no_acknowledged_notification(
    postgres_url: str, start_server: Callable[..., ServerProcess]
) -> None:
    """Notifies keep flowing while a node is SIGKILLed: every notification answered 201 is
    there afterwards, and the devices of the killed node reconnect to the right count."""
    a, b, c = cluster(start_server, postgres_url, bus_for("redis"))
    alice = f"alice-{uuid.uuid4().hex[:6]}"
    devices = [DeviceClient(n.ws_url, token=device_token(alice)) for n in (a, b)]
    for device in devices:
        await device.connect()
    tokens = [await asyncio.to_thread(n.service_token, "notify") for n in (a, c)]
    acknowledged: list[str] = []
    stop = threading.Event()

    def load(node: ServerProcess, token: str) -> None:
        with httpx.Client(timeout=5) as http:
            i = 0
            while not stop.is_set():
                i += 1
                try:
                    response = http.post(
                        f"{node.url}/notify",
                        json={"user_id": alice, "data": i},
                        headers={"Authorization": f"Bearer {token}"},
                    )
                except httpx.HTTPError:
                    continue
                if response.status_code == 201:
                    acknowledged.append(response.json()["notification_id"])

    workers = [
        threading.Thread(target=load, args=(node, token))
        for node, token in zip((a, c), tokens, strict=True)
    ]
    for worker in workers:
        worker.start()
    await asyncio.sleep(1.0)
    await asyncio.to_thread(b.kill)
    await asyncio.sleep(1.0)
    stop.set()
    for worker in workers:
        await asyncio.to_thread(worker.join)
    assert len(acknowledged) > 20
    # The device of the killed node reconnects to C and gets the exact count at once.
    moved = DeviceClient(
        c.ws_url, token=device_token(alice), connection_id=devices[1].connection_id
    )
    await moved.connect()
    assert await moved.wait_for_count(len(acknowledged)) == len(acknowledged)
    await devices[0].wait_for_count(len(acknowledged))
    stored: list[str] = []
    while page := await moved.get_unseen(limit=1000):
        stored += [n["notification_id"] for n in page]
        await moved.mark_seen([n["notification_id"] for n in page])
    assert sorted(stored) == sorted(acknowledged)
    for device in (*devices, moved):
        await device.close()


@pytest.mark.parametrize("kind", ["redis", "nats"])
async def test_broker_restart_under_load_recovers_every_badge(
    kind: str,
    postgres_url: str,
    start_server: Callable[..., ServerProcess],
    private_broker: Callable[[str], BrokerProcess],
) -> None:
    """The broker restarts while notifications flow; no node restarts, and afterwards every
    device shows the right count (re-sent on reconnection even if events were lost)."""
    broker = private_broker(kind)
    nodes = cluster(start_server, postgres_url, broker.url)
    users = [f"u{i}-{uuid.uuid4().hex[:6]}" for i in range(4)]
    devices = [
        DeviceClient(node.ws_url, token=device_token(user)) for node in nodes for user in users
    ]
    for device in devices:
        await device.connect()
    token = await asyncio.to_thread(nodes[0].service_token, "notify")
    sent = dict.fromkeys(users, 0)

    def load(rounds: int, restart_at: int) -> None:
        with httpx.Client(timeout=10) as http:
            for r in range(rounds):
                if r == restart_at:
                    broker.restart(down_for=1.0)
                for user in users:
                    response = http.post(
                        f"{nodes[r % 3].url}/notify",
                        json={"user_id": user, "data": r},
                        headers={"Authorization": f"Bearer {token}"},
                    )
                    assert response.status_code == 201, response.text
                    sent[user] += 1

    await asyncio.to_thread(load, 30, 10)
    try:
        await asyncio.gather(*(d.wait_for_count(sent[d.user_id], timeout=20) for d in devices))
    except TimeoutError:
        seen = [(d.node, d.user_id, d.count, d.version) for d in devices]
        pytest.fail(f"devices did not converge: {seen}, sent {sent}")
    # The bus works again: a new change reaches every device of the user on every node.
    await asyncio.to_thread(notify, nodes[1], token, users[0], "after")
    await asyncio.gather(
        *(d.wait_for_count(sent[users[0]] + 1) for d in devices if d.user_id == users[0])
    )
    for node in nodes:
        assert node.process is not None and node.process.poll() is None
    for device in devices:
        await device.close()


class TcpProxy:
    """A loopback TCP proxy that can cut every connection and refuse new ones."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        self.writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (OSError, asyncio.CancelledError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self.writers -= {writer, up_writer}

    async def cut(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None
        for writer in list(self.writers):
            writer.transport.abort()
        self.writers.clear()

    async def restore(self) -> None:
        await self.start()


@pytest.fixture
async def pg_proxy() -> Iterator[TcpProxy]:  # type: ignore[misc]
    require_service("PostgreSQL", POSTGRES_URL)
    proxy = TcpProxy(5432)
    await proxy.start()
    yield proxy
    await proxy.cut()


async def test_database_outage_answers_503_and_service_resumes(
    postgres_url: str, start_server: Callable[..., ServerProcess], pg_proxy: TcpProxy
) -> None:
    """With PostgreSQL gone /notify, /notify/batch and /messages answer 503 and write nothing;
    devices stay connected; when it returns, notifications and pipeline messages flow again
    without restarting the node (its workers outlive the outage)."""
    via_proxy = postgres_url.replace(":5432/", f":{pg_proxy.port}/")
    # The proxy lives on this event loop: start the server from a thread.
    node = await asyncio.to_thread(
        start_server, TIDINGS_STORE=via_proxy, TIDINGS_BUS=bus_for("redis"), **FAST_CLUSTER
    )
    alice = f"alice-{uuid.uuid4().hex[:6]}"
    token = await asyncio.to_thread(node.service_token, "notify")
    pipeline_token = await asyncio.to_thread(node.service_token, "messages")
    message = {
        "recipients": {"user_ids": [alice]},
        "channels": ["in_app"],
        "content": {"text": "from the pipeline"},
        "idempotency_key": f"outage-{alice}",
    }
    device = DeviceClient(node.ws_url, token=device_token(alice))
    await device.connect()
    await asyncio.to_thread(notify, node, token, alice, "before")
    await device.wait_for_count(1)

    await pg_proxy.cut()
    async with httpx.AsyncClient(timeout=30) as http:
        response = await http.post(
            f"{node.url}/notify",
            json={"user_id": alice, "data": "during"},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert response.status_code == 503
        assert response.json()["error"] == "unavailable"
        batch = await http.post(
            f"{node.url}/notify/batch",
            json={"notifications": [{"user_id": alice, "data": "during, batched"}]},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert batch.status_code == 503  # and nothing of it is written (checked below)
        posted = await http.post(
            f"{node.url}/messages",
            json=message,
            headers={"Authorization": f"Bearer {pipeline_token}"},
        )
        assert posted.status_code == 503
        assert (await http.get(f"{node.url}/health")).status_code == 503
        # The device is still connected and told plainly that storage is down.
        with pytest.raises(ClientError) as info:
            await device.get_unseen()
        assert info.value.code == "unavailable"
        # A device connecting now is refused at the handshake, to retry: its binding and
        # registration are one write, which failed.
        with pytest.raises(InvalidStatus) as refused:
            await websockets.connect(
                node.ws_url,
                additional_headers={"Authorization": f"Bearer {device_token(alice)}"},
                open_timeout=30,
            )
        assert refused.value.response.status_code == 503

        await pg_proxy.restore()
        async with asyncio.timeout(20):
            while (await http.get(f"{node.url}/health")).status_code != 200:
                await asyncio.sleep(0.2)
        # Each refusal was counted, those of the framework-free routes (/notify, /notify/batch)
        # as well as the framework's (/messages).
        metrics = (await http.get(f"{node.url}/metrics")).text
        counted = re.search(
            r'^tidings_errors_total\{kind="store_unavailable"\} (\S+)$', metrics, re.M
        )
        assert counted is not None and float(counted.group(1)) >= 3, metrics[-2000:]
    await asyncio.to_thread(notify, node, token, alice, "after")
    await device.wait_for_count(2)
    assert [n["data"] for n in await device.get_unseen()] == ["before", "after"]
    async with httpx.AsyncClient(timeout=30) as http:
        posted = await http.post(
            f"{node.url}/messages",
            json=message,
            headers={"Authorization": f"Bearer {pipeline_token}"},
        )
    assert posted.status_code == 202  # created now: nothing was written during the outage
    await device.wait_for_count(3)  # the worker that lived through the outage sent it
    assert (await device.get_unseen())[-1]["data"]["text"] == "from the pipeline"
    await device.close()
