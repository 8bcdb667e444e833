"""What a device cannot make a node keep, replay or trust: stalled replays, endless sessions,
a whole topic history after a bus outage, a delegate fooled by a junk Authorization header,
and sockets of a node's previous life.

Real ``tidings serve`` processes, real WebSocket clients (``websockets``, and raw sockets for
a client that never reads), a Redis broker that is really restarted, SIGKILL.
"""

from __future__ import annotations

import asyncio
import socket
import sqlite3
import time
import uuid
from collections.abc import Callable

import httpx
import orjson
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from conftest import BrokerProcess, ServerProcess, device_token
from e2e.test_isolation_e2e import delegate_url, raw_socket
from e2e.test_transport_abuse_e2e import open_ws, rss_mib

__all__ = ["delegate_url"]  # fixture


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def publish(http: httpx.Client, node: ServerProcess, token: str, topic: str, data: object) -> int:
    response = http.post(
        f"{node.url}/publish",
        json={"topic": topic, "data": data},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert response.status_code == 202, response.text
    return int(response.json()["seq"])


def metric(node: ServerProcess, name: str) -> float:
    for line in httpx.get(f"{node.url}/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in the metrics")


def send_frame(sock: socket.socket, frame: dict[str, object]) -> None:
    """One masked text frame from a raw client."""
    payload = orjson.dumps(frame)
    assert len(payload) < 126
    mask = b"\x01\x02\x03\x04"
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    sock.sendall(bytes((0x81, 0x80 | len(payload))) + mask + masked)


def test_a_stalled_replay_holds_back_a_bounded_number_of_live_messages(
    start_server: Callable[..., ServerProcess],
) -> None:
    """A device asks for a topic's long history and never reads: the live messages that wait
    behind the replay are bounded like its queue; past that it is closed as too slow, and
    the node's memory stays within 50 MiB of where it was, through 6,000 live messages of
    16 KB."""
    node = start_server()
    assert node.process is not None
    token = node.service_token("publish")
    topic = uid("history")
    blob = "x" * 16_000
    with httpx.Client(timeout=10) as http:
        for n in range(2000):
            publish(http, node, token, topic, {"n": n, "blob": blob})
        baseline = rss_mib(node.process.pid)
        sock = open_ws(node, device_token(uid("reader")), rcvbuf=4096)
        try:
            send_frame(sock, {"type": "subscribe", "id": 1, "topics": [topic]})
            send_frame(sock, {"type": "readNotifications", "id": 2, "topic": topic, "since": 0})
            time.sleep(0.5)
            peak = baseline
            for n in range(6000):
                publish(http, node, token, topic, {"live": n, "blob": blob})
                if n % 200 == 0:
                    peak = max(peak, rss_mib(node.process.pid))
            peak = max(peak, rss_mib(node.process.pid))
        finally:
            sock.close()
    assert peak - baseline < 50, f"RSS grew from {baseline:.0f} to {peak:.0f} MiB"
    assert metric(node, "tidings_slow_connections_closed_total") >= 1


def test_a_user_keeps_subscriptions_of_a_bounded_number_of_sessions(
    start_server: Callable[..., ServerProcess],
) -> None:
    """A device that reconnects under a new session id each time and subscribes: the store
    keeps the subscriptions of at most ``TIDINGS_MAX_SESSIONS_PER_USER`` sessions (the least
    recently active are dropped), and the newest still work."""
    node = start_server(TIDINGS_MAX_SESSIONS_PER_USER="5")
    user = uid("sessions")

    async def run() -> None:
        for i in range(12):
            url = f"{node.ws_url}?access_token={device_token(user)}&session_id=s{i}"
            async with connect(url, open_timeout=5) as ws:
                await ws.recv()  # welcome
                await ws.send(
                    orjson.dumps({"type": "subscribe", "id": 1, "topics": ["pet"]}).decode()
                )
                while orjson.loads(await ws.recv())["type"] != "reply":
                    pass

    asyncio.run(run())
    with sqlite3.connect(node.db_path) as db:
        sessions = sorted(
            row[0]
            for row in db.execute(
                "SELECT DISTINCT session_id FROM session_topics WHERE user_id = ?", (user,)
            )
        )
    assert sessions == ["s10", "s11", "s7", "s8", "s9"]


@pytest.mark.timeout(90)
async def test_after_a_bus_restart_a_socket_catches_up_only_from_where_it_joined(
    start_server: Callable[..., ServerProcess],
    private_broker: Callable[[str], BrokerProcess],
) -> None:
    """A socket subscribed to a topic with 50 old messages, without asking for a replay:
    after the Redis broker restarts, it gets what was published since it joined (none of
    the 50), and new messages as before."""
    broker = private_broker("redis")
    node = start_server(TIDINGS_BUS=broker.url)
    token = await asyncio.to_thread(node.service_token, "publish")
    topic = uid("news")
    with httpx.Client(timeout=10) as http:
        for n in range(50):
            publish(http, node, token, topic, {"old": n})
    url = f"{node.ws_url}?access_token={device_token(uid('subscriber'))}"
    async with connect(url, open_timeout=5) as ws:
        await ws.recv()
        await ws.send(orjson.dumps({"type": "subscribe", "id": 1, "topics": [topic]}).decode())
        seen: list[int] = []

        async def read(seconds: float) -> None:
            deadline = asyncio.get_running_loop().time() + seconds
            while (left := deadline - asyncio.get_running_loop().time()) > 0:
                try:
                    frame = orjson.loads(await asyncio.wait_for(ws.recv(), left))
                except TimeoutError:
                    return
                if frame["type"] == "topicMessage":
                    seen.append(frame["seq"])

        await read(0.5)
        reconnects = metric(node, "tidings_bus_reconnects_total")
        await asyncio.to_thread(broker.restart, 0.5)
        deadline = time.monotonic() + 20
        while metric(node, "tidings_bus_reconnects_total") == reconnects:
            assert time.monotonic() < deadline, "the bus never reconnected"
            await asyncio.sleep(0.2)
        await read(1.5)
        with httpx.Client(timeout=10) as http:
            new = publish(http, node, token, topic, {"new": 1})
        await read(2.0)
    assert seen == [new], f"expected only seq {new}, got {seen[:10]} ({len(seen)} frames)"


async def test_a_junk_authorization_header_does_not_let_a_foreign_page_ride_cookies(
    start_server: Callable[..., ServerProcess], delegate_url: str
) -> None:
    """Delegated mode: a handshake from a foreign Origin with the victim's cookie is refused
    whatever Authorization header comes along (Basic, a Bearer that is no token of ours),
    since the cookie still reaches the delegate; a real device token from any origin, without
    cookies, is still admitted."""
    node = start_server(TIDINGS_DELEGATE_URL=delegate_url)
    victim = uid("u-victim")
    for authorization in ("Basic eDp5", "Bearer x", "Bearer not-a-jwt-at-all"):
        headers = {
            "Cookie": f"app_session={victim}",
            "Origin": "https://evil.example",
            "Authorization": authorization,
        }
        with pytest.raises(InvalidStatus) as info:
            async with raw_socket(node, headers=headers):
                pass
        assert info.value.response.status_code == 403, authorization
    mallory = uid("mallory")
    headers = {"Origin": "https://evil.example", "Authorization": f"Bearer {device_token(mallory)}"}
    async with raw_socket(node, headers=headers) as sock:
        assert (await sock.expect("welcome"))["user_id"] == mallory


async def test_a_node_restarted_after_sigkill_shows_no_sockets_of_its_previous_life(
    start_server: Callable[..., ServerProcess], tmp_path: object
) -> None:
    """A node killed with SIGKILL and started again under the same TIDINGS_NODE_ID lists
    only the sockets it really holds: its previous life's are gone at once, not after the
    reaper's timeout."""
    node_id = uid("node")
    first = start_server(TIDINGS_NODE_ID=node_id)
    sockets = [
        await connect(f"{first.ws_url}?access_token={device_token(uid('ghost'))}") for _ in range(3)
    ]
    for ws in sockets:
        await ws.recv()
    first.kill()
    for ws in sockets:
        ws.transport.abort()
    second = start_server(db_path=first.db_path, port=first.port, TIDINGS_NODE_ID=node_id)
    token = await asyncio.to_thread(second.service_token, "admin")
    async with connect(f"{second.ws_url}?access_token={device_token(uid('live'))}") as live:
        await live.recv()
        async with httpx.AsyncClient() as http:
            answer = await http.get(
                f"{second.url}/admin/overview", headers={"Authorization": f"Bearer {token}"}
            )
        overview = answer.json()
    users = [s["user_id"] for s in overview["sockets"]]
    assert len(users) == 1 and users[0].startswith("live-"), users
    assert [n["sockets"] for n in overview["nodes"] if n["node_id"] == node_id] == [1]
