"""The Python ``DeviceClient`` coming back by itself (``reconnect=True``) against real
processes: a ``tidings serve`` SIGKILLed and restarted on the same port and SQLite file, a
deliver-mode device that misses nothing and shows nothing twice, a topic follower that gets
what was published meanwhile without subscribing again, cookie and header authentication
(delegated to the application, and embedded in the example shop), and the answers that end the
attempts (refused credentials, a device logged out)."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import httpx
import orjson
import pytest

from conftest import ServerProcess, device_token, free_port
from e2e.test_embedded_e2e import Shop
from tidings.client import DeviceClient, TidingsClient
from tidings.client_reconnect import backoff, handshake, verdict

FAST = {"reconnect": True, "backoff_base": 0.2, "backoff_max": 1.0}


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


class Recorder:
    """Everything a device's :meth:`~DeviceClient.events` yields, read in the background."""

    def __init__(self, device: DeviceClient) -> None:
        self.device = device
        self.events: list[dict[str, Any]] = []
        self.ended = False
        self._changed = asyncio.Event()
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        try:
            async for event in self.device.events():
                self.events.append(event)
                self._changed.set()
        finally:
            self.ended = True
            self._changed.set()

    async def until(self, predicate: Callable[[Recorder], bool], timeout: float = 15.0) -> None:
        async with asyncio.timeout(timeout):
            while not predicate(self):
                self._changed.clear()
                await self._changed.wait()

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [event for event in self.events if event["type"] == kind]

    def ids(self) -> list[str]:
        return [event["notification"]["notification_id"] for event in self.of("notification")]

    def seqs(self, topic: str) -> list[int]:
        return [event["seq"] for event in self.of("topicMessage") if event["topic"] == topic]


class Gate:
    """A device's ``get_token``: counts the attempts, and holds them while it is shut."""

    def __init__(self, user_id: str) -> None:
        self.user_id = user_id
        self.calls = 0
        self.open = asyncio.Event()
        self.open.set()

    async def __call__(self) -> str:
        self.calls += 1
        await self.open.wait()
        return device_token(self.user_id)


async def test_sigkill_and_restart_deliver_mode_misses_nothing(
    start_server: Callable[..., ServerProcess],
) -> None:
    """Must hold: a deliver-mode ``DeviceClient`` whose node is SIGKILLed and restarted comes
    back by itself and misses nothing; every notification surfaces exactly once, and a topic
    follower gets what was published while it was away, then live, without subscribing again."""
    node = start_server()
    alice = uid("alice")
    client_id, secret = await asyncio.to_thread(node.create_client, "notify", "publish")
    gates = [Gate(alice) for _ in range(3)]
    auto = DeviceClient(node.ws_url, get_token=gates[0], deliver=True, **FAST)
    # Acknowledges nothing: the whole queue comes again on each connection, and is dropped.
    manual = DeviceClient(node.ws_url, get_token=gates[1], deliver=True, auto_ack=False, **FAST)
    follower = DeviceClient(node.ws_url, get_token=gates[2], auth="frame", **FAST)
    devices = (auto, manual, follower)
    sent: list[str] = []
    async with TidingsClient(node.url, client_id, secret) as service:

        async def notify(stage: str, count: int) -> None:
            for i in range(count):
                note = await service.notify(alice, {"stage": stage, "i": i})
                sent.append(note["notification_id"])

        for device in devices:
            await device.connect()
        recorders = [Recorder(device) for device in devices]
        rec_auto, rec_manual, rec_follower = recorders
        assert await follower.subscribe("pets") == ["pets"]
        identity = [(d.connection_id, d.session_id) for d in devices]

        await notify("before", 5)
        await service.publish("pets", {"name": "Rex"})
        for rec in (rec_auto, rec_manual):
            await rec.until(lambda r: len(r.ids()) == 5)
        await rec_follower.until(lambda r: r.seqs("pets") == [1])

        await asyncio.to_thread(node.kill)
        for rec in recorders:
            await rec.until(lambda r: bool(r.of("disconnected")))
            assert r_code(rec) == 1006  # no close frame: the process died
        # Each tries the dead port at least once, then the next attempts wait at the gate.
        async with asyncio.timeout(10):
            while any(gate.calls < 2 for gate in gates):
                await asyncio.sleep(0.02)
        for gate in gates:
            gate.open.clear()
        await asyncio.to_thread(node.start)  # the same port and SQLite file

        await notify("while away", 3)
        await service.publish("pets", {"name": "Fido"})
        assert not any(device.connected for device in devices)
        for gate in gates:
            gate.open.set()
        for rec in recorders:
            await rec.until(lambda r: bool(r.of("reconnected")))
        assert [(d.connection_id, d.session_id) for d in devices] == identity
        # Replayed from the last seq seen; then seq 3 can only come live, from the session's
        # subscription that the server restored.
        await rec_follower.until(lambda r: r.seqs("pets") == [1, 2])
        await service.publish("pets", {"name": "Lassie"})
        await notify("after", 2)

        for rec in (rec_auto, rec_manual):
            await rec.until(lambda r: len(r.ids()) >= 10)
        await rec_follower.until(lambda r: len(r.seqs("pets")) >= 3)
        await asyncio.sleep(0.5)  # anything late would show up now
        await auto.wait_for_count(10)

    for rec in (rec_auto, rec_manual):
        assert rec.ids() == sent, "each notification once, in creation order"
    assert manual.duplicates == 5  # the five unacknowledged ones came again and were dropped
    assert rec_follower.seqs("pets") == [1, 2, 3]
    names = [e["data"]["name"] for e in rec_follower.of("topicMessage")]
    assert names == ["Rex", "Fido", "Lassie"]
    for rec, device in zip(recorders, devices, strict=True):
        [back] = rec.of("reconnected")
        assert back["connection_id"] == device.connection_id and back["attempts"] >= 2
        assert not rec.of("stopped") and not rec.of("error")
    for device in devices:
        await device.close()
    for rec in recorders:
        await rec.until(lambda r: r.ended)
    assert not any(device.connected for device in devices)


def r_code(rec: Recorder) -> int:
    return int(rec.of("disconnected")[0]["code"])


async def test_refused_credentials_and_logging_out_end_the_attempts(
    start_server: Callable[..., ServerProcess],
) -> None:
    """After a restart under another JWT secret, a device's token is refused: with the header
    (HTTP 401) it stops at once; with ``get_token`` and the ``authenticate`` frame (close
    4401) after a second refusal in a row. ``forget()`` (close 1000) ends it too."""
    node = start_server()
    alice = uid("alice")
    tokens_asked = 0

    async def stale_token() -> str:
        nonlocal tokens_asked
        tokens_asked += 1
        return device_token(alice)  # signed with the secret the node no longer has

    header = DeviceClient(node.ws_url, token=device_token(alice), **FAST)
    framed = DeviceClient(node.ws_url, get_token=stale_token, auth="frame", **FAST)
    leaving = DeviceClient(node.ws_url, token=device_token(alice), deliver=True, **FAST)
    for device in (header, framed, leaving):
        await device.connect()
    rec_header, rec_framed, rec_leaving = (Recorder(d) for d in (header, framed, leaving))

    await leaving.forget()
    await rec_leaving.until(lambda r: r.ended)
    kinds = {event["type"] for event in rec_leaving.events}
    assert kinds == {"newNotificationCountChanged", "stopped"}  # never "disconnected"
    [stopped] = rec_leaving.of("stopped")
    assert stopped["why"] == "final" and stopped["code"] == 1000

    await asyncio.to_thread(node.stop)  # SIGTERM: close 1012, "reconnect with backoff"
    node.env["TIDINGS_JWT_SECRET"] = "another-secret-" + "y" * 40
    await asyncio.to_thread(node.start)
    for rec in (rec_header, rec_framed):
        await rec.until(lambda r: r.ended)
        [lost] = rec.of("disconnected")
        assert lost["code"] == 1012
        [stopped] = rec.of("stopped")
        assert stopped["why"] == "unauthorized"
    assert rec_header.of("stopped")[0]["status"] == 401
    assert rec_framed.of("stopped")[0]["code"] == 4401
    asked = tokens_asked
    await asyncio.sleep(1.5)  # longer than the longest backoff: no attempt comes
    assert tokens_asked == asked
    assert not header.connected and not framed.connected
    with pytest.raises(Exception, match="stopped"):
        await header.wait_connected(timeout=1)
    for device in (header, framed, leaving):
        await device.close()


class _Delegate(BaseHTTPRequestHandler):
    """The application's subscribe endpoint: cookie ``app_session=<user>`` or the header
    ``Authorization: App <user>`` is that user (users start with ``u-``)."""

    seen: ClassVar[list[dict[str, str]]] = []

    def do_GET(self) -> None:
        headers = {k.lower(): v for k, v in self.headers.items()}
        self.seen.append(headers)
        cookies = dict(
            part.strip().partition("=")[::2] for part in headers.get("cookie", "").split(";")
        )
        scheme, _, value = headers.get("authorization", "").partition(" ")
        user_id = cookies.get("app_session") or (value if scheme == "App" else "")
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
def delegate() -> Iterator[tuple[str, list[dict[str, str]]]]:
    """A delegated-auth endpoint on a loopback port, and the headers of each call it got."""
    seen: ClassVar[list[dict[str, str]]] = []
    handler = type("Delegate", (_Delegate,), {"seen": seen})
    httpd = ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/push-auth", seen
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


async def test_cookie_and_header_auth_survive_a_restart(
    start_server: Callable[..., ServerProcess],
    delegate: tuple[str, list[dict[str, str]]],
) -> None:
    """A node delegating device authentication to the application: one device logs in with
    the application's cookie, another with its own ``Authorization``; both send an extra
    header the node forwards. After a SIGKILL and restart they come back with the same
    credentials, and the deliver-mode one gets what was sent meanwhile."""
    url, seen = delegate
    node = start_server(
        TIDINGS_DELEGATE_URL=url,
        TIDINGS_DELEGATE_CACHE_TTL="0",
        TIDINGS_DELEGATE_HEADERS="X-Device",
    )
    alice, bob = uid("u-alice"), uid("u-bob")
    by_cookie = DeviceClient(
        node.ws_url,
        cookies={"app_session": alice},
        headers={"X-Device": "kitchen-tablet"},
        deliver=True,
        **FAST,
    )
    by_header = DeviceClient(
        node.ws_url, headers={"Authorization": f"App {bob}", "X-Device": "phone"}, **FAST
    )
    assert (await by_cookie.connect())["user_id"] == alice
    assert (await by_header.connect())["user_id"] == bob
    rec_cookie, rec_header = Recorder(by_cookie), Recorder(by_header)
    identity = [(d.connection_id, d.session_id) for d in (by_cookie, by_header)]
    service = {"Authorization": f"Bearer {await asyncio.to_thread(node.service_token, 'notify')}"}
    async with httpx.AsyncClient(base_url=node.url, headers=service, timeout=10) as http:
        first = (await http.post("/notify", json={"user_id": alice, "data": 1})).json()
        await rec_cookie.until(lambda r: r.ids() == [first["notification_id"]])

        await asyncio.to_thread(node.kill)
        await asyncio.to_thread(node.start)
        second = (await http.post("/notify", json={"user_id": alice, "data": 2})).json()
        third = (await http.post("/notify", json={"user_id": bob, "data": 3})).json()
    for rec in (rec_cookie, rec_header):
        await rec.until(lambda r: bool(r.of("reconnected")))
    await rec_cookie.until(lambda r: len(r.ids()) >= 2)
    assert rec_cookie.ids() == [first["notification_id"], second["notification_id"]]
    await by_header.wait_for_count(lambda count: count >= 1)
    assert third["user_id"] == bob and by_header.user_id == bob
    assert [(d.connection_id, d.session_id) for d in (by_cookie, by_header)] == identity

    cookies = [h["cookie"] for h in seen if "cookie" in h]
    assert len(cookies) >= 2 and all(c == f"app_session={alice}" for c in cookies)
    assert {h.get("x-device") for h in seen} == {"kitchen-tablet", "phone"}
    assert sum(h.get("authorization") == f"App {bob}" for h in seen) >= 2
    for device in (by_cookie, by_header):
        await device.close()


async def test_the_shops_cookie_login_with_the_device_client(tmp_path: Path) -> None:
    """The example shop (tidings embedded, its own ``/subscribe`` authenticating by the shop's
    session cookie): a ``DeviceClient`` with that cookie follows alice's orders in deliver
    mode, through a SIGKILL and restart of the shop."""
    shop = await asyncio.to_thread(Shop(tmp_path).start)
    try:
        cookie = await asyncio.to_thread(shop.login, "alice", "wonderland")
        device = DeviceClient(
            f"ws://127.0.0.1:{shop.port}/subscribe",
            cookies={"shop_session": cookie},
            deliver=True,
            **FAST,
        )
        assert (await device.connect())["user_id"] == "alice"
        recorder = Recorder(device)
        identity = (device.connection_id, device.session_id)
        async with httpx.AsyncClient(cookies={"shop_session": cookie}) as http:
            first = (await http.post(f"{shop.url}/orders")).json()
            await recorder.until(lambda r: len(r.ids()) == 1)
            await asyncio.to_thread(shop.stop)  # SIGKILL
            await asyncio.to_thread(shop.start)  # the same port and store
            second = (await http.post(f"{shop.url}/orders")).json()
        await recorder.until(lambda r: len(r.ids()) >= 2)
        assert recorder.ids() == [first["notification_id"], second["notification_id"]]
        assert len(recorder.of("reconnected")) == 1
        assert (device.connection_id, device.session_id) == identity
        await device.close()
    finally:
        await asyncio.to_thread(shop.stop)


def test_handshake_backoff_and_verdicts() -> None:
    """What a handshake carries, the delays between attempts, and which answers end them."""
    url, headers = handshake(
        "ws://node/ws?v=1",
        token="jwt",
        auth="header",
        session_id="tab-1",
        connection_id="device-01",
        deliver=True,
        cookies={"app_session": "abc"},
        headers={"cookie": "theme=dark", "authorization": "App xyz", "X-Tenant": "acme"},
    )
    assert url == "ws://node/ws?v=1&session_id=tab-1&deliver=1&connection_id=device-01"
    assert headers == {
        "authorization": "App xyz",
        "X-Tenant": "acme",
        "Cookie": "theme=dark; app_session=abc",
    }
    url, headers = handshake(
        "ws://node/ws",
        token="jwt",
        auth="frame",
        session_id="tab-1",
        connection_id="device-01",
        deliver=True,
        cookies={},
        headers={},
    )
    assert (url, headers) == ("ws://node/ws?connection_id=device-01", {})
    for attempt in range(12):
        ceiling = min(30.0, 0.5 * 2**attempt)
        assert ceiling / 2 <= backoff(attempt, 0.5, 30.0) <= ceiling
    assert backoff(10_000, 0.5, 30.0) <= 30.0
    assert [verdict(code) for code in (None, 1001, 1011, 1012, 1013, 4408)] == ["retry"] * 6
    assert [verdict(code) for code in (1000, 1002, 4403, 4429)] == ["stop"] * 4
    assert verdict(4401) == verdict(status=401) == "unauthorized"
    assert verdict(status=503) == "retry" and verdict(status=403) == "stop"
