"""Follow-ups to the hostile-client bounds (test_topic_bounds_e2e.py): credentials a browser
attaches by itself other than cookies, and the other sockets of a session that a subscribe
joins to a topic.

Real ``tidings serve`` processes, a real delegate HTTP endpoint, real WebSocket clients and a
Redis broker that is really restarted.
"""

from __future__ import annotations

import asyncio
import base64
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from conftest import BrokerProcess, ServerProcess, device_token, free_port


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


class _BasicDelegate(BaseHTTPRequestHandler):
    """An application that authenticates with HTTP Basic (``u-<name>:pw``) or its own opaque
    bearer tokens (``app-u-<name>``)."""

    def do_GET(self) -> None:
        scheme, _, value = self.headers.get("Authorization", "").partition(" ")
        user_id = ""
        if scheme == "Basic":
            user, _, password = base64.b64decode(value).decode().partition(":")
            user_id = user if password == "pw" else ""
        elif scheme == "Bearer" and value.startswith("app-"):
            user_id = value.removeprefix("app-")
        status, body = (200, {"user_id": user_id}) if user_id.startswith("u-") else (401, {})
        payload = orjson.dumps(body)
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def basic_delegate_url() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", free_port()), _BasicDelegate)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/push-auth"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


async def handshake(node: ServerProcess, headers: dict[str, str]) -> int | str:
    """The HTTP status a handshake is refused with, or the user id its welcome names."""
    try:
        async with connect(
            node.ws_url, additional_headers=headers, open_timeout=5, proxy=None
        ) as ws:
            return str(orjson.loads(await ws.recv())["user_id"])
    except InvalidStatus as exc:
        return exc.response.status_code


async def test_ambient_http_credentials_from_a_foreign_page_are_refused(
    start_server: Callable[..., ServerProcess], basic_delegate_url: str
) -> None:
    """A browser attaches cached HTTP (Basic) credentials to a WebSocket handshake by itself,
    as it does cookies, and a page cannot set ``Authorization`` on a WebSocket at all: a
    delegated handshake from a foreign Origin is refused whatever credentials it carries. The
    own site, clients without Origin (native apps) and tidings device JWTs from any origin are
    still admitted."""
    node = start_server(TIDINGS_DELEGATE_URL=basic_delegate_url)
    victim = uid("u-victim")
    basic = "Basic " + base64.b64encode(f"{victim}:pw".encode()).decode()
    foreign = "https://evil.example"
    own = f"http://127.0.0.1:{node.port}"
    assert await handshake(node, {"Authorization": basic, "Origin": foreign}) == 403
    assert (
        await handshake(node, {"Authorization": f"Bearer app-{victim}", "Origin": foreign}) == 403
    )
    assert await handshake(node, {"Authorization": basic, "Origin": own}) == victim
    assert await handshake(node, {"Authorization": f"Bearer app-{victim}"}) == victim
    mallory = uid("mallory")
    jwt = {"Authorization": f"Bearer {device_token(mallory)}", "Origin": foreign}
    assert await handshake(node, jwt) == mallory


async def _frames(ws: ClientConnection, seconds: float) -> list[dict[str, Any]]:
    frames: list[dict[str, Any]] = []
    deadline = asyncio.get_running_loop().time() + seconds
    while (left := deadline - asyncio.get_running_loop().time()) > 0:
        try:
            frames.append(orjson.loads(await asyncio.wait_for(ws.recv(), left)))
        except TimeoutError:
            break
    return frames


def _metric(node: ServerProcess, name: str) -> float:
    for line in httpx.get(f"{node.url}/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in the metrics")


@pytest.mark.timeout(90)
async def test_a_subscribe_joins_the_sessions_other_sockets_by_their_own_grant_and_start(
    start_server: Callable[..., ServerProcess],
    private_broker: Callable[[str], BrokerProcess],
) -> None:
    """Two sockets of one session, one whose token grants the topic ``vault`` and one whose
    token does not (it comes back after the first subscribed, and is not given the topic).
    The first subscribing again must not make the second follow ``vault``, and nothing may
    send the second the topic's 50 old messages when the bus comes back."""
    broker = private_broker("redis")
    node = start_server(TIDINGS_BUS=broker.url, TIDINGS_TOPIC_PATTERNS='["pub:*"]')
    token = await asyncio.to_thread(node.service_token, "publish")
    user, topic = uid("owner"), uid("vault")
    async with httpx.AsyncClient(timeout=10) as http:

        async def publish(data: object) -> int:
            answer = await http.post(
                f"{node.url}/publish",
                json={"topic": topic, "data": data},
                headers={"Authorization": f"Bearer {token}"},
            )
            assert answer.status_code == 202, answer.text
            return int(answer.json()["seq"])

        for n in range(50):
            await publish({"old": n})
        granted = device_token(user, topics=[topic])
        plain = device_token(user)
        query = "&session_id=tab-1"
        async with connect(f"{node.ws_url}?access_token={granted}{query}") as first:
            await _frames(first, 0.3)  # welcome, count
            subscribe = {"type": "subscribe", "id": 1, "topics": [topic]}
            await first.send(orjson.dumps(subscribe).decode())
            await _frames(first, 0.3)
            # The second socket comes back to the session: its token does not grant the topic.
            second = await connect(f"{node.ws_url}?access_token={plain}{query}")
            await _frames(second, 0.3)
            await first.send(orjson.dumps({**subscribe, "id": 2}).decode())
            await _frames(first, 0.3)
            reconnects = _metric(node, "tidings_bus_reconnects_total")
            await asyncio.to_thread(broker.restart, 0.5)
            deadline = time.monotonic() + 20
            while _metric(node, "tidings_bus_reconnects_total") == reconnects:
                assert time.monotonic() < deadline, "the bus never reconnected"
                await asyncio.sleep(0.2)
            await asyncio.sleep(1.0)
            new = await publish({"new": 1})
            got_first = [f["seq"] for f in await _frames(first, 1.5) if f["type"] == "topicMessage"]
            got_second = [f for f in await _frames(second, 0.5) if f["type"] == "topicMessage"]
            await second.close()
    assert got_first == [new]
    assert got_second == [], f"{len(got_second)} frames of {topic}: {got_second[:3]}"
