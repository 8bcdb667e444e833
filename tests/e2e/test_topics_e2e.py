"""Topics and sessions against real server processes (two nodes, PostgreSQL, Redis)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable

import httpx
import orjson
import pytest
from websockets.asyncio.client import connect

from conftest import REDIS_URL, ServerProcess, device_token, require_service
from tidings.client import DeviceClient
from tidings.errors import ClientError


def tag() -> str:
    return uuid.uuid4().hex[:6]


@pytest.fixture
def two_nodes(postgres_url: str, start_server: Callable[..., ServerProcess]) -> list[ServerProcess]:
    require_service("Redis", REDIS_URL)
    bus = f"{REDIS_URL}?prefix=t{tag()}:"
    env = {"TIDINGS_TOPIC_TTLS": '{"short:*": 1}'}
    return [start_server(TIDINGS_STORE=postgres_url, TIDINGS_BUS=bus, **env) for _ in range(2)]


def publish(
    node: ServerProcess, token: str, topic: str, data: object, origin: str | None = None
) -> int:
    body = {"topic": topic, "data": data}
    if origin:
        body["origin_session_id"] = origin
    response = httpx.post(
        f"{node.url}/publish", json=body, headers={"Authorization": f"Bearer {token}"}
    )
    assert response.status_code == 202, response.text
    return int(response.json()["seq"])


async def topic_frames(device: DeviceClient, n: int, timeout: float = 10) -> list[dict]:
    frames = []
    async with asyncio.timeout(timeout):
        while len(frames) < n:
            frame = await device.next_event(timeout=timeout)
            assert frame is not None
            if frame["type"] == "topicMessage":
                frames.append(frame)
    return frames


async def no_topic_frame(device: DeviceClient, wait: float = 0.7) -> None:
    with pytest.raises(TimeoutError):
        while True:
            frame = await device.next_event(timeout=wait)
            assert frame is None or frame["type"] != "topicMessage", frame


async def test_publish_skips_the_originating_session(two_nodes: list[ServerProcess]) -> None:
    """Two users on different nodes subscribed to `pet`: a publish with the first's session id
    reaches only the second; a session subscribed to `owner` gets nothing."""
    a, b = two_nodes
    first = DeviceClient(a.ws_url, token=device_token(f"u1-{tag()}"), session_id=f"s1-{tag()}")
    second = DeviceClient(b.ws_url, token=device_token(f"u2-{tag()}"), session_id=f"s2-{tag()}")
    third = DeviceClient(b.ws_url, token=device_token(f"u3-{tag()}"), session_id=f"s3-{tag()}")
    for device in (first, second, third):
        await device.connect()
    try:
        assert await first.subscribe("pet") == ["pet"]
        await second.subscribe("pet")
        await third.subscribe("owner")
        token = await asyncio.to_thread(a.service_token, "publish")
        seq = await asyncio.to_thread(publish, a, token, "pet", {"name": "Rex"}, first.session_id)
        [frame] = await topic_frames(second, 1)
        assert frame["topic"] == "pet" and frame["seq"] == seq
        assert frame["data"] == {"name": "Rex"} and frame["creation_date"].endswith("Z")
        await no_topic_frame(first)
        await no_topic_frame(third)
    finally:
        for device in (first, second, third):
            await device.close()


async def test_session_reconnects_elsewhere_and_replays_what_it_missed(
    two_nodes: list[ServerProcess],
) -> None:
    """A session away while 50 messages are published comes back to the other node with its
    session id: subscriptions are active again, nothing it had is repeated, and
    readNotifications brings all 50 in order with recovered: true."""
    a, b = two_nodes
    user, session = f"u-{tag()}", f"tab-{tag()}"
    topic = f"pet-{tag()}"
    token = await asyncio.to_thread(a.service_token, "publish")
    device = DeviceClient(a.ws_url, token=device_token(user), session_id=session)
    await device.connect()
    await device.subscribe(topic)
    for i in range(3):
        await asyncio.to_thread(publish, a, token, topic, i)
    had = await topic_frames(device, 3)
    await device.close()

    for i in range(50):
        await asyncio.to_thread(publish, a, token, topic, 100 + i)

    back = DeviceClient(b.ws_url, token=device_token(user), session_id=session)
    back.topic_seq = dict(device.topic_seq)  # the same app remembers the last seq it saw
    await back.connect()
    # Re-activated without subscribing again: a live message arrives.
    assert await back.read_notifications(topic) is True
    replayed = await topic_frames(back, 50)
    assert [f["data"] for f in replayed] == [100 + i for i in range(50)]
    assert {f["seq"] for f in replayed}.isdisjoint({f["seq"] for f in had})
    await asyncio.to_thread(publish, b, token, topic, "live")
    [live] = await topic_frames(back, 1)
    assert live["data"] == "live" and live["seq"] == replayed[-1]["seq"] + 1
    await back.close()


async def test_replay_past_the_ttl_is_not_recovered(two_nodes: list[ServerProcess]) -> None:
    """A sequence older than what is kept answers recovered: false (never a silent gap)."""
    a, _ = two_nodes
    topic = f"short:{tag()}"
    token = await asyncio.to_thread(a.service_token, "publish")
    for i in range(3):
        await asyncio.to_thread(publish, a, token, topic, i)
    await asyncio.sleep(1.5)
    last = await asyncio.to_thread(publish, a, token, topic, "fresh")
    async with DeviceClient(a.ws_url, token=device_token(f"u-{tag()}")) as device:
        assert await device.read_notifications(topic, since=0) is False
        [frame] = await topic_frames(device, 1)
        assert frame["seq"] == last and frame["data"] == "fresh"
        assert await device.read_notifications(topic, since=last - 1) is True


async def test_refused_topics_are_named_and_nothing_changes(server: ServerProcess) -> None:
    """Another user's private topic is refused by name; the allowed ones are not subscribed
    either (all or nothing)."""
    alice = f"alice-{tag()}"
    async with DeviceClient(server.ws_url, token=device_token(alice)) as device:
        with pytest.raises(ClientError) as info:
            await device.subscribe("pet", "user:bob", f"user:{alice}")
        assert info.value.code == "forbidden_topic"
        assert info.value.details["topics"] == ["user:bob"]
        assert await device.subscribe(f"user:{alice}") == [f"user:{alice}"]
        with pytest.raises(ClientError):
            await device.read_notifications("user:bob", since=0)


async def test_topics_granted_by_claim_and_patterns(
    start_server: Callable[..., ServerProcess],
) -> None:
    """With public patterns configured, other topics need a grant in the device JWT."""
    node = start_server(TIDINGS_TOPIC_PATTERNS='["news:*"]')
    plain = DeviceClient(node.ws_url, token=device_token(f"u-{tag()}"))
    granted = DeviceClient(node.ws_url, token=device_token(f"u-{tag()}", topics=["team:7:*"]))
    for device in (plain, granted):
        await device.connect()
    assert await plain.subscribe("news:today") == ["news:today"]
    with pytest.raises(ClientError):
        await plain.subscribe("team:7:chat")
    assert await granted.subscribe("team:7:chat") == ["team:7:chat"]
    for device in (plain, granted):
        await device.close()


async def test_connection_caps_answer_503(start_server: Callable[..., ServerProcess]) -> None:
    """Past the node's connection cap, or its rate of new connections, the handshake is 503."""
    node = start_server(TIDINGS_MAX_CONNECTIONS="2")
    held = [DeviceClient(node.ws_url, token=device_token(f"u-{tag()}")) for _ in range(2)]
    for device in held:
        await device.connect()
    with pytest.raises(ClientError) as info:
        await DeviceClient(node.ws_url, token=device_token("x")).connect()
    assert info.value.status == 503
    for device in held:
        await device.close()

    slow = start_server(TIDINGS_MAX_CONNECTS_PER_SECOND="1")
    statuses = []
    for _ in range(3):
        try:
            async with connect(slow.ws_url) as ws:
                await ws.send(
                    orjson.dumps({"type": "authenticate", "token": device_token("y")}).decode()
                )
                statuses.append(200)
        except Exception as exc:
            statuses.append(getattr(getattr(exc, "response", None), "status_code", 0))
    assert 503 in statuses


def test_publish_needs_its_scope_and_logs_feed_consumers(server: ServerProcess) -> None:
    """/publish needs scope publish; topic and notification logs serve consumers' cursors."""
    topic = f"feed-{tag()}"
    notify_only = server.service_token("notify")
    headers = {"Authorization": f"Bearer {notify_only}"}
    denied = httpx.post(f"{server.url}/publish", json={"topic": topic, "data": 1}, headers=headers)
    assert denied.status_code == 403
    token = server.service_token("publish", "admin", "notify")
    headers = {"Authorization": f"Bearer {token}"}
    for i in range(3):
        publish(server, token, topic, i)
    log = httpx.get(f"{server.url}/topics/{topic}/messages?since=1", headers=headers).json()
    assert [m["data"] for m in log["messages"]] == [1, 2] and log["recovered"]
    bad = httpx.post(f"{server.url}/publish", json={"topic": "a\nb", "data": 1}, headers=headers)
    assert bad.status_code == 422
    alice = f"alice-{tag()}"
    for i in range(2):
        response = httpx.post(
            f"{server.url}/notify", json={"user_id": alice, "data": i}, headers=headers
        )
        assert response.status_code == 201
    page = httpx.get(f"{server.url}/log/notifications?limit=1000", headers=headers).json()
    mine = [n for n in page["notifications"] if n["user_id"] == alice]
    assert [n["data"] for n in mine] == [0, 1]
    after = httpx.get(
        f"{server.url}/log/notifications", params={"after": page["next_after"]}, headers=headers
    ).json()
    assert after["notifications"] == [] and after["next_after"] == page["next_after"]
    bad = httpx.get(f"{server.url}/log/notifications?after=x.y", headers=headers)
    assert bad.status_code == 422
    assert (
        httpx.get(
            f"{server.url}/log/notifications", headers={"Authorization": f"Bearer {notify_only}"}
        ).status_code
        == 403
    )


async def test_replay_after_reconnect_repeats_nothing(server: ServerProcess) -> None:
    """A live message received after reconnecting is not sent again by the replay; a `since`
    beyond the topic's end is capped, and live messages keep coming."""
    user, session, topic = f"u-{tag()}", f"tab-{tag()}", f"pet-{tag()}"
    token = await asyncio.to_thread(server.service_token, "publish")
    device = DeviceClient(server.ws_url, token=device_token(user), session_id=session)
    await device.connect()
    await device.subscribe(topic)
    await device.close()
    for i in range(3):
        await asyncio.to_thread(publish, server, token, topic, i)
    back = DeviceClient(server.ws_url, token=device_token(user), session_id=session)
    await back.connect()
    await asyncio.to_thread(publish, server, token, topic, "live")
    [live] = await topic_frames(back, 1)
    assert await back.read_notifications(topic, since=0) is True
    replayed = await topic_frames(back, 3)
    assert [f["data"] for f in replayed] == [0, 1, 2]
    await no_topic_frame(back)
    answer = await back.request({"type": "readNotifications", "topic": topic, "since": 999})
    assert answer["last_seq"] == live["seq"] and answer["recovered"] is True
    await asyncio.to_thread(publish, server, token, topic, "after")
    [after] = await topic_frames(back, 1)
    assert after["data"] == "after"
    await back.close()


async def test_topics_per_session_are_capped(start_server: Callable[..., ServerProcess]) -> None:
    """A session cannot follow more topics than the node allows."""
    node = start_server(TIDINGS_MAX_TOPICS_PER_SESSION="3")
    async with DeviceClient(node.ws_url, token=device_token(f"u-{tag()}")) as device:
        assert len(await device.subscribe("a", "b", "c")) == 3
        with pytest.raises(ClientError) as info:
            await device.subscribe("d")
        assert info.value.code == "invalid_frame"


def test_private_topic_logs_need_admin(server: ServerProcess) -> None:
    """Reading a user: topic over HTTP needs scope admin; names with '/' are readable."""
    token = server.service_token("publish")
    headers = {"Authorization": f"Bearer {token}"}
    publish(server, token, "room/7", "x")
    ok = httpx.get(f"{server.url}/topics/room/7/messages", headers=headers)
    assert ok.status_code == 200 and [m["data"] for m in ok.json()["messages"]] == ["x"]
    private = httpx.get(f"{server.url}/topics/user:alice/messages", headers=headers)
    assert private.status_code == 403
    admin = server.service_token("admin")
    allowed = httpx.get(
        f"{server.url}/topics/user:alice/messages", headers={"Authorization": f"Bearer {admin}"}
    )
    assert allowed.status_code == 200


async def test_a_slow_consumer_cannot_stall_the_others(
    start_server: Callable[..., ServerProcess],
) -> None:
    """A subscriber that stops reading does not hold back the others; once its queue is full
    it is closed with 1013 (try again later)."""
    node = start_server(TIDINGS_OUTBOUND_QUEUE_SIZE="64")
    topic = f"firehose-{tag()}"
    token = await asyncio.to_thread(node.service_token, "publish")
    healthy = DeviceClient(node.ws_url, token=device_token(f"ok-{tag()}"))
    await healthy.connect()
    await healthy.subscribe(topic)
    # The stuck client reads nothing: websockets stops reading the socket once 1 frame waits.
    stuck = await connect(
        node.ws_url,
        additional_headers={"Authorization": f"Bearer {device_token(f'stuck-{tag()}')}"},
        max_queue=1,
    )
    await stuck.send(orjson.dumps({"type": "subscribe", "id": 1, "topics": [topic]}).decode())
    await asyncio.sleep(0.5)
    payload = "x" * 60_000
    started = asyncio.get_running_loop().time()
    async with httpx.AsyncClient(timeout=30) as http:
        for i in range(300):
            response = await http.post(
                f"{node.url}/publish",
                json={"topic": topic, "data": {"i": i, "pad": payload}},
                headers={"Authorization": f"Bearer {token}"},
            )
            assert response.status_code == 202
    frames = await topic_frames(healthy, 300, timeout=60)
    assert [f["data"]["i"] for f in frames] == list(range(300))
    assert asyncio.get_running_loop().time() - started < 60
    # The stuck one was cut off rather than buffered without end.
    async with asyncio.timeout(20):
        try:
            while True:
                await stuck.recv()
        except Exception:
            pass
    assert stuck.close_code == 1013
    await healthy.close()


def test_publish_refusals_match_the_documented_errors(server: ServerProcess) -> None:
    """/publish without a token is 401 with a challenge; oversized data 413, a malformed body
    422 naming the field; a good one 202 with the topic and its seq."""
    topic = f"errors-{tag()}"
    anonymous = httpx.post(f"{server.url}/publish", json={"topic": topic, "data": 1})
    assert anonymous.status_code == 401
    assert anonymous.headers["www-authenticate"].startswith("Bearer")
    headers = {"Authorization": f"Bearer {server.service_token('publish')}"}
    big = httpx.post(
        f"{server.url}/publish", json={"topic": topic, "data": "x" * 70_000}, headers=headers
    )
    assert big.status_code == 413 and big.json()["error"] == "payload_too_large"
    missing = httpx.post(f"{server.url}/publish", json={"data": 1}, headers=headers)
    assert missing.status_code == 422
    assert missing.json()["detail"][0]["loc"] == ["body", "topic"]
    good = httpx.post(f"{server.url}/publish", json={"topic": topic, "data": 1}, headers=headers)
    assert good.status_code == 202 and good.json() == {"topic": topic, "seq": 1}
