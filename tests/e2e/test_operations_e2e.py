"""Operations against a real server: limits per user and per connection, Prometheus metrics,
readiness during a graceful shutdown, JSON logs."""

from __future__ import annotations

import asyncio
import signal
import uuid
from collections.abc import Callable

import httpx
import orjson
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from conftest import ServerProcess, device_token


def user() -> str:
    return f"ops-{uuid.uuid4().hex[:10]}"


async def welcomed(server: ServerProcess, user_id: str):  # type: ignore[no-untyped-def]
    socket = await connect(f"{server.ws_url}?access_token={device_token(user_id)}")
    assert orjson.loads(await socket.recv())["type"] == "welcome"
    return socket


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in the metrics")


async def test_a_user_over_the_connection_cap_is_refused_on_every_node(
    start_server: Callable[..., ServerProcess],
) -> None:
    """With TIDINGS_MAX_CONNECTIONS_PER_USER=2 a user's third socket is closed with 4429,
    other users are unaffected, and a socket closed frees a place."""
    server = start_server(TIDINGS_MAX_CONNECTIONS_PER_USER="2")
    alice = user()
    first, second = await welcomed(server, alice), await welcomed(server, alice)
    third = await welcomed(server, alice)
    try:
        await asyncio.wait_for(third.recv(), 5)
        raise AssertionError("the third socket stayed open")
    except ConnectionClosed as closed:
        assert closed.rcvd is not None and closed.rcvd.code == 4429
    other = await welcomed(server, user())
    await other.close()
    await first.close()
    await asyncio.sleep(0.3)  # the registry row goes once the server saw the close
    again = await welcomed(server, alice)
    count = orjson.loads(await asyncio.wait_for(again.recv(), 5))
    assert count["type"] == "newNotificationCountChanged"
    await again.close()
    await second.close()


async def test_frames_over_the_rate_are_refused_then_the_flooder_is_closed(
    start_server: Callable[..., ServerProcess],
) -> None:
    """Over TIDINGS_MAX_FRAMES_PER_SECOND a frame gets `rate_limited` and the connection stays;
    a client that keeps flooding through the refusals is closed with 1008."""
    server = start_server(TIDINGS_MAX_FRAMES_PER_SECOND="5")
    socket = await welcomed(server, user())
    await socket.recv()  # the count
    for n in range(20):
        await socket.send(orjson.dumps({"type": "getUnseen", "id": n}).decode())
    answers = [orjson.loads(await asyncio.wait_for(socket.recv(), 5)) for _ in range(20)]
    limited = [a for a in answers if a.get("code") == "rate_limited"]
    served = [a for a in answers if a["type"] == "newNotificationData"]
    assert len(served) == 10 and len(limited) == 10  # a burst of two seconds' worth
    await asyncio.sleep(1.0)
    await socket.send(orjson.dumps({"type": "getUnseen", "id": "later"}).decode())
    while (answer := orjson.loads(await asyncio.wait_for(socket.recv(), 5)))["type"] == "error":
        pass
    assert answer["id"] == "later"  # the budget refilled: served again
    try:
        for _ in range(200):
            await socket.send('{"type":"getUnseen"}')
        while True:  # the close frame follows the ~50 refusals within a few seconds
            await asyncio.wait_for(socket.recv(), 15)
    except ConnectionClosed as closed:
        assert closed.rcvd is not None and closed.rcvd.code == 1008


async def test_metrics_follow_connections_frames_and_notifies(server: ServerProcess) -> None:
    """/metrics counts sockets, frames and notify latency, and lists the pipeline's queues."""
    token = server.service_token("notify")
    async with httpx.AsyncClient(base_url=server.url) as http:
        before = (await http.get("/metrics")).text
        socket = await welcomed(server, alice := user())
        await socket.recv()
        answer = await http.post(
            "/notify",
            json={"user_id": alice, "data": {"n": 1}},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert answer.status_code == 201
        await socket.recv()
        await socket.send('{"type":"nonsense"}')
        await socket.recv()
        during = (await http.get("/metrics")).text
        assert metric(during, "tidings_connections") >= 1
        assert (
            metric(during, "tidings_frames_sent_total")
            >= metric(before, "tidings_frames_sent_total") + 3
        )
        assert metric(during, "tidings_frames_received_total") > metric(
            before, "tidings_frames_received_total"
        )
        assert metric(during, "tidings_notify_seconds_count") >= 1
        assert 'tidings_errors_total{kind="unknown_type"}' in during
        assert metric(during, "tidings_device_queue_notifications") == 0  # none in deliver mode
        assert metric(during, "process_resident_memory_bytes") > 0
        await socket.close()


async def test_readiness_goes_false_before_the_node_stops(
    start_server: Callable[..., ServerProcess],
) -> None:
    """On SIGTERM /ready answers 503 at once while devices stay connected for the drain
    delay; new sockets are refused; then devices are closed to reconnect elsewhere."""
    server = start_server(TIDINGS_SHUTDOWN_DELAY="1.5")
    socket = await welcomed(server, user())
    async with httpx.AsyncClient(base_url=server.url) as http:
        assert (await http.get("/ready")).status_code == 200
        assert server.process is not None
        server.process.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.3)
        ready = await http.get("/ready")
        assert ready.status_code == 503 and ready.json()["status"] == "draining"
        assert (await http.get("/health")).status_code == 200  # alive, just not ready
        refused = await http.get(f"/ws?access_token={device_token(user())}")
        assert refused.status_code in (426, 503)
    try:
        await asyncio.wait_for(socket.recv(), 10)
        await asyncio.wait_for(socket.recv(), 10)
    except ConnectionClosed as closed:
        assert closed.rcvd is not None and closed.rcvd.code in (1001, 1012)
    await asyncio.to_thread(server.process.wait, 15)


async def test_json_logs_carry_the_connection_and_hide_tokens(
    start_server: Callable[..., ServerProcess],
) -> None:
    """With TIDINGS_LOG_FORMAT=json every line is a JSON object; a device's warnings carry its
    connection id, and a token in a URL is redacted."""
    server = start_server(TIDINGS_LOG_FORMAT="json", TIDINGS_MAX_FRAMES_PER_SECOND="1")
    token = device_token(user())
    socket = await connect(f"{server.ws_url}?access_token={token}")
    welcome = orjson.loads(await socket.recv())
    for _ in range(15):  # refusals are logged as warnings of this connection
        await socket.send('{"type":"getUnseen"}')
    await asyncio.sleep(0.5)
    await socket.close()
    server.stop()
    lines = [line for line in server.log().splitlines() if line.startswith("{")]
    records = [orjson.loads(line) for line in lines]
    assert records, server.log()
    assert token not in server.log()
    assert any(r.get("connection_id") == welcome["connection_id"] for r in records)
