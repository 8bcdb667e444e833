"""The browser client, demo inbox and admin console in a real Chromium (Debian's), driven by
Playwright. Screenshots are kept in tests/artifacts/."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conftest import ServerProcess

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

playwright_api = pytest.importorskip("playwright.sync_api")


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not Path(CHROMIUM).exists():
        message = "Debian's chromium is not installed (apt-get install chromium)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message)
        pytest.skip(message)
    ARTIFACTS.mkdir(exist_ok=True)
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield browser
        browser.close()


class Tab:
    """A page of the demo inbox, recording console errors."""

    def __init__(self, context: object, url: str) -> None:
        self.page = context.new_page()  # type: ignore[attr-defined]
        self.errors: list[str] = []
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))
        self.page.on(
            "console",
            lambda message: self.errors.append(message.text) if message.type == "error" else None,
        )
        self.page.goto(url)

    def badge(self, value: str, timeout: float = 10_000) -> None:
        self.page.wait_for_function(
            "value => document.getElementById('badge').textContent === value",
            arg=value,
            timeout=timeout,
        )

    def online(self, timeout: float = 15_000) -> None:
        self.page.wait_for_selector("#status.online", timeout=timeout)

    def shot(self, name: str) -> None:
        self.page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


@pytest.fixture
def demo(start_server: Callable[..., ServerProcess]) -> ServerProcess:
    return start_server(TIDINGS_DEMO="true")


def test_two_tabs_follow_one_count(browser: object, demo: ServerProcess) -> None:
    """Two tabs of one user show the count; opening the panel in one zeroes the other."""
    user = f"alice-{uuid.uuid4().hex[:6]}"
    context = browser.new_context()  # type: ignore[attr-defined]
    one = Tab(context, f"{demo.url}/demo?user={user}")
    two = Tab(context, f"{demo.url}/demo?user={user}")
    for tab in (one, two):
        tab.online()
        tab.badge("0")
    one.page.fill("#text", "Your order shipped")
    one.page.click("#sendButton")
    one.page.fill("#text", "It has arrived")
    one.page.click("#sendButton")
    for tab in (one, two):
        tab.badge("2")
    two.shot("two-tabs-before-opening")
    one.page.click("#bell")
    one.page.wait_for_selector("#notes li >> text=It has arrived")
    two.badge("0")
    one.badge("0")
    one.shot("panel-open")
    assert one.errors == [] and two.errors == []
    context.close()


def test_tabs_reconnect_by_themselves_after_a_restart(
    browser: object, start_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    """Killing the server and starting it again: the tabs reconnect on their own and show the
    right count."""
    db = tmp_path / "restart.db"
    node = start_server(db_path=db, TIDINGS_DEMO="true")
    user = f"bob-{uuid.uuid4().hex[:6]}"
    context = browser.new_context()  # type: ignore[attr-defined]
    tabs = [Tab(context, f"{node.url}/demo?user={user}") for _ in range(2)]
    for tab in tabs:
        tab.online()
    tabs[0].page.click("#sendButton")
    for tab in tabs:
        tab.badge("1")
    node.kill()
    tabs[0].page.wait_for_selector("#status.offline", timeout=10_000)
    tabs[0].shot("server-down")
    again = start_server(db_path=db, port=node.port, TIDINGS_DEMO="true")
    for tab in tabs:
        tab.online(timeout=30_000)
        tab.badge("1")
    import httpx

    httpx.post(f"{again.url}/demo/notify", json={"user_id": user, "text": "after restart"})
    for tab in tabs:
        tab.badge("2")
    tabs[1].shot("reconnected")
    context.close()


def test_phone_viewport_without_errors(browser: object, demo: ServerProcess) -> None:
    """On a phone-sized screen the inbox works and logs no JavaScript error."""
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True)  # type: ignore[attr-defined]
    tab = Tab(context, f"{demo.url}/demo?user=phone-{uuid.uuid4().hex[:6]}")
    tab.online()
    tab.page.click("#sendButton")
    tab.badge("1")
    tab.page.click("#bell")
    tab.badge("0")
    width = tab.page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390, f"the page scrolls sideways ({width}px)"
    tab.shot("phone")
    assert tab.errors == []
    context.close()


def test_admin_console_lists_nodes_devices_and_notifications(
    browser: object, demo: ServerProcess
) -> None:
    """The admin console signs in with an admin client and shows the live node."""
    user = f"carol-{uuid.uuid4().hex[:6]}"
    context = browser.new_context()  # type: ignore[attr-defined]
    inbox = Tab(context, f"{demo.url}/demo?user={user}")
    inbox.online()
    inbox.page.click("#sendButton")
    inbox.badge("1")
    client_id, secret = demo.create_client("admin")
    admin = Tab(context, f"{demo.url}/admin")
    admin.page.fill("#clientId", client_id)
    admin.page.fill("#clientSecret", secret)
    admin.page.click("#credentials button")
    admin.page.wait_for_selector(f"#nodes >> text=node-{demo.port}")
    admin.page.wait_for_selector(f"#sockets >> text={user}")
    admin.page.wait_for_selector(f"#recent >> text={user}")
    admin.shot("admin")
    assert admin.errors == [] and inbox.errors == []
    context.close()


def test_admin_console_refuses_a_client_without_admin(browser: object, demo: ServerProcess) -> None:
    """A client lacking scope admin cannot sign in."""
    client_id, secret = demo.create_client("notify")
    context = browser.new_context()  # type: ignore[attr-defined]
    admin = Tab(context, f"{demo.url}/admin")
    admin.page.fill("#clientId", client_id)
    admin.page.fill("#clientSecret", secret)
    admin.page.click("#credentials button")
    admin.page.wait_for_selector("#loginError:has-text('scope')")
    context.close()


CLIENT_SCRIPT = """
async ({ user, deliver }) => {
  const { Tidings } = await import("/tidings.js");
  const events = [];
  const client = new Tidings("/ws", {
    deliver,
    backoffBase: 100,
    getToken: async () => (await (await fetch("/demo/token", {
      method: "POST", headers: { "content-type": "application/json" },
      body: JSON.stringify({ user_id: user }),
    })).json()).token,
  });
  for (const type of ["notification", "topicMessage", "queueGap", "welcome"]) {
    client.addEventListener(type, (e) => events.push({ type, ...e.detail }));
  }
  window.client = client;
  window.events = events;
  client.connect();
  await new Promise((resolve) => client.addEventListener("open", resolve, { once: true }));
  return client.connectionId;
}
"""


def _wait_events(page: object, kind: str, n: int) -> list[dict]:
    page.wait_for_function(  # type: ignore[attr-defined]
        "([kind, n]) => window.events.filter((e) => e.type === kind).length >= n",
        arg=[kind, n],
        timeout=15_000,
    )
    return [e for e in page.evaluate("window.events") if e["type"] == kind]  # type: ignore[attr-defined]


def test_browser_client_deliver_mode_acks_and_dedupes(browser: object, demo: ServerProcess) -> None:
    """tidings.js in deliver mode receives what the device missed once, acknowledges it, and
    the next connection of the same browser gets nothing again."""
    import httpx

    user = f"dana-{uuid.uuid4().hex[:6]}"
    context = browser.new_context()  # type: ignore[attr-defined]
    page = context.new_page()
    page.goto(f"{demo.url}/static/style.css")  # any page of the origin
    cid = page.evaluate(CLIENT_SCRIPT, {"user": user, "deliver": True})
    page.evaluate("window.client.close()")
    for text in ("one", "two", "three"):
        httpx.post(f"{demo.url}/demo/notify", json={"user_id": user, "text": text})
    again = page.evaluate(CLIENT_SCRIPT, {"user": user, "deliver": True})
    assert again == cid  # the tidings_cid cookie kept the device
    notes = _wait_events(page, "notification", 3)
    assert [n["notification"]["data"]["text"] for n in notes] == ["one", "two", "three"]
    page.wait_for_timeout(300)  # the acks go out
    page.evaluate("window.client.close()")
    page.evaluate(CLIENT_SCRIPT, {"user": user, "deliver": True})
    page.wait_for_timeout(700)
    assert [e for e in page.evaluate("window.events") if e["type"] == "notification"] == []
    context.close()


def test_browser_client_topics_replay_after_a_dropped_connection(
    browser: object, demo: ServerProcess
) -> None:
    """tidings.js subscribes; after its socket drops and it reconnects by itself, the messages
    published meanwhile are replayed, each once."""
    import httpx

    token = demo.service_token("publish")
    topic = f"news-{uuid.uuid4().hex[:6]}"

    def publish(data: str) -> None:
        response = httpx.post(
            f"{demo.url}/publish",
            json={"topic": topic, "data": data},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert response.status_code == 202

    context = browser.new_context()  # type: ignore[attr-defined]
    page = context.new_page()
    page.goto(f"{demo.url}/static/style.css")
    page.evaluate(CLIENT_SCRIPT, {"user": f"erin-{uuid.uuid4().hex[:6]}", "deliver": False})
    quiet = f"quiet-{uuid.uuid4().hex[:6]}"
    page.evaluate(f"window.client.subscribe({topic!r}, {quiet!r})")
    publish("first")
    _wait_events(page, "topicMessage", 1)
    page.evaluate("window.client._ws.close(4000)")  # the network drops the socket
    publish("second")
    publish("third")
    response = httpx.post(
        f"{demo.url}/publish",
        json={"topic": quiet, "data": "quiet one"},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert response.status_code == 202
    messages = _wait_events(page, "topicMessage", 4)
    busy = [m for m in messages if m["topic"] == topic]
    assert [m["data"] for m in busy] == ["first", "second", "third"]
    assert [m["seq"] for m in busy] == [1, 2, 3]
    # A topic that had got nothing before the drop is replayed too.
    assert [m["data"] for m in messages if m["topic"] == quiet] == ["quiet one"]
    assert len(_wait_events(page, "welcome", 2)) >= 2  # it did reconnect
    context.close()


def test_admin_console_retries_a_failed_pipeline_delivery(
    browser: object, start_server: Callable[..., ServerProcess]
) -> None:
    """The admin console lists pipeline messages with their deliveries; a delivery that failed
    for want of an address is retried from it once the user has one, and shows sent."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    import httpx

    received: list[bytes] = []

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append(self.rfile.read(int(self.headers["Content-Length"])))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            return None

    receiver = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    try:
        node = start_server(
            TIDINGS_ALLOW_PRIVATE_ADDRESSES="true", TIDINGS_PIPELINE_POLL_INTERVAL="0.2"
        )
        headers = {"Authorization": f"Bearer {node.service_token('messages')}"}
        user = f"carol-{uuid.uuid4().hex[:6]}"
        posted = httpx.post(
            f"{node.url}/messages",
            headers=headers,
            json={
                "recipients": {"user_ids": [user]},
                "channels": ["webhook"],
                "content": {"text": "Your parcel is at the door"},
            },
        )
        assert posted.status_code == 202, posted.text
        message_id = posted.json()["message_id"]
        assert posted.json()["counts"] == {"failed": 1}
        url = f"http://127.0.0.1:{receiver.server_address[1]}/hook"
        contact = httpx.put(
            f"{node.url}/users/{user}/contacts/webhook", headers=headers, json={"address": url}
        )
        assert contact.status_code == 200, contact.text

        client_id, secret = node.create_client("admin")
        context = browser.new_context()  # type: ignore[attr-defined]
        admin = Tab(context, f"{node.url}/admin")
        admin.page.fill("#clientId", client_id)
        admin.page.fill("#clientSecret", secret)
        admin.page.click("#credentials button")
        admin.page.click(f"#messages >> text={message_id}")
        admin.page.wait_for_selector("#deliveries >> text=no_address")
        admin.shot("admin-message-failed")
        admin.page.click("#retry")
        admin.page.wait_for_selector("#deliveries td >> text=/^sent$/", timeout=15_000)
        admin.shot("admin-message-retried")
        assert len(received) == 1 and b"Your parcel is at the door" in received[0]
        assert admin.errors == []
        context.close()
    finally:
        receiver.shutdown()
        receiver.server_close()
