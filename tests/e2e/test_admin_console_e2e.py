"""The admin console (``/admin``) in a real Chromium (Debian's), driven by Playwright: sign-in
that never brings up the browser's own login dialog, sign-out, live charts from the node's
metrics, every action end to end (test notification, publish, disconnect a device, retry and
cancel deliveries), a user's page, and a phone-sized screen. Screenshots go to
tests/artifacts/."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from conftest import ServerProcess
from e2e.test_browser_e2e import ARTIFACTS, browser
from tidings.core.limits import MAX_USER_ID_LENGTH

__all__ = ["browser"]  # the fixture

#: a device of ``user`` in the page (tidings.js, token from the demo route), its events kept
CLIENT_SCRIPT = """
async ({ user }) => {
  const { Tidings } = await import("/tidings.js");
  const events = [];
  const client = new Tidings("/ws", {
    deliver: true,
    backoffBase: 100,
    getToken: async () => (await (await fetch("/demo/token", {
      method: "POST", headers: { "content-type": "application/json" },
      body: JSON.stringify({ user_id: user }),
    })).json()).token,
  });
  for (const type of ["notification", "topicMessage", "welcome", "close"]) {
    client.addEventListener(type, (e) => events.push({ type, ...e.detail }));
  }
  window.client = client;
  window.events = events;
  client.connect();
  await new Promise((resolve) => client.addEventListener("open", resolve, { once: true }));
  return client.connectionId;
}
"""


class Receiver:
    """A webhook receiver on a loopback port: what it was sent."""

    def __init__(self) -> None:
        received: list[bytes] = []
        self.received = received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                received.append(self.rfile.read(int(self.headers["Content-Length"])))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    receiver = Receiver()
    yield receiver
    receiver.close()


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A demo node (device tokens for the test's pages) whose webhooks may reach loopback."""
    proc = ServerProcess(
        tmp_path_factory.mktemp("admin") / "tidings.db",
        env={
            "TIDINGS_DEMO": "true",
            "TIDINGS_ALLOW_PRIVATE_ADDRESSES": "true",
            "TIDINGS_PIPELINE_POLL_INTERVAL": "0.2",
        },
    ).start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def operator(node: ServerProcess) -> tuple[str, str]:
    """The console's client: every scope its actions use."""
    return node.create_client("admin", "notify", "publish")


class Console:
    """The admin page in a fresh browser context, recording script errors and dialogs."""

    def __init__(self, browser: Any, node: ServerProcess, **context: Any) -> None:
        self.context = browser.new_context(**context)
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.dialogs: list[str] = []
        self.challenges: list[str] = []
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))
        self.page.on(
            "console",
            lambda m: (
                self.errors.append(m.text)
                # the refusals the tests provoke are logged by Chromium as failed loads
                if m.type == "error" and not m.text.startswith("Failed to load resource")
                else None
            ),
        )
        self.page.on("dialog", self._dialog)
        self.page.on("response", self._response)
        self.page.goto(f"{node.url}/admin")

    def _dialog(self, dialog: Any) -> None:
        self.dialogs.append(dialog.message)
        dialog.dismiss()

    def _response(self, response: Any) -> None:
        challenge = response.headers.get("www-authenticate")
        if challenge and challenge.lower().startswith("basic"):
            self.challenges.append(response.url)

    def sign_in(self, client_id: str, secret: str) -> None:
        self.page.fill("#clientId", client_id)
        self.page.fill("#clientSecret", secret)
        self.page.click("#credentials button")

    def signed_in(self, node: ServerProcess) -> None:
        self.page.wait_for_selector(f"#nodes >> text=node-{node.port}")

    def shot(self, name: str, *, full_page: bool = False) -> None:
        self.page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=full_page)

    def close(self) -> None:
        assert self.dialogs == [], f"the browser showed a dialog: {self.dialogs}"
        assert self.challenges == [], f"a Basic challenge reached the browser: {self.challenges}"
        assert self.errors == [], self.errors
        self.context.close()


@pytest.fixture
def console(browser: Any, node: ServerProcess, operator: tuple[str, str]) -> Iterator[Console]:
    console = Console(browser, node)
    console.sign_in(*operator)
    console.signed_in(node)
    yield console
    console.close()


def device_page(console: Console, node: ServerProcess, user: str) -> tuple[Any, str]:
    """A page of the same browser with a connected device of ``user``; its connection id."""
    page = console.context.new_page()
    page.goto(f"{node.url}/static/style.css")  # any page of the origin
    return page, page.evaluate(CLIENT_SCRIPT, {"user": user})


def wait_events(page: Any, kind: str, n: int = 1) -> list[dict[str, Any]]:
    page.wait_for_function(
        "([kind, n]) => window.events.filter((e) => e.type === kind).length >= n",
        arg=[kind, n],
        timeout=15_000,
    )
    return [e for e in page.evaluate("window.events") if e["type"] == kind]


def test_wrong_secret_shows_the_error_in_the_page_then_the_right_one_signs_in(
    browser: Any, node: ServerProcess, operator: tuple[str, str]
) -> None:
    """A mistyped secret: the page says so (no browser dialog, no Basic challenge, nothing
    hangs); the right secret then signs in; signing out forgets the token."""
    console = Console(browser, node)
    client_id, secret = operator
    console.sign_in(client_id, secret + "x")
    console.page.wait_for_selector("#loginError:has-text('Wrong client_id or client_secret')")
    assert console.page.is_hidden("#console")
    assert console.page.evaluate("sessionStorage.getItem('tidings.admin.token')") is None
    console.shot("admin-wrong-secret")
    console.sign_in("nobody", "wrong")
    console.page.wait_for_selector("#loginError:has-text('Wrong')")
    console.sign_in(client_id, secret)
    console.signed_in(node)
    assert console.page.inner_text("#loginError") == ""
    assert client_id in console.page.inner_text("#who")
    console.page.reload()  # the tab keeps its session
    console.signed_in(node)
    console.page.click("#signOut")
    console.page.wait_for_selector("#login")
    assert console.page.is_hidden("#console")
    assert console.page.evaluate("sessionStorage.getItem('tidings.admin.token')") is None
    console.page.reload()
    console.page.wait_for_selector("#credentials")
    assert console.page.is_hidden("#console")
    console.close()


def test_charts_follow_the_nodes_metrics(console: Console, node: ServerProcess) -> None:
    """Connections and notifies per second come from the node's own metrics, polled."""
    user = f"chart-{uuid.uuid4().hex[:6]}"
    device, _ = device_page(console, node, user)
    token = node.service_token("notify")
    for n in range(5):
        response = httpx.post(
            f"{node.url}/notify",
            json={"user_id": user, "data": {"n": n}},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert response.status_code == 201, response.text
    console.page.wait_for_function(
        "() => Number(document.querySelector('#chartConnections .value').textContent) >= 1"
    )
    console.page.wait_for_function(
        "() => Number(document.getElementById('chartNotifies').dataset.points) >= 2"
        " && parseInt(document.querySelector('#chartNotifies .note').textContent) >= 5",
        timeout=15_000,
    )
    points = console.page.get_attribute("#chartNotifies polyline", "points")
    assert points and len(points.split()) >= 2
    assert console.page.inner_text("#chartLatency .value") != "\u2013"
    console.shot("admin-charts")
    device.close()


def test_send_a_test_notification_and_publish_to_a_topic(
    console: Console, node: ServerProcess
) -> None:
    """The console's forms call POST /notify and POST /publish; a device gets both."""
    user = f"dora-{uuid.uuid4().hex[:6]}"
    topic = f"news-{uuid.uuid4().hex[:6]}"
    device, _ = device_page(console, node, user)
    device.evaluate(f"window.client.subscribe({topic!r})")
    page = console.page
    page.fill("#notifyUser", user)
    page.fill("#notifyText", "Hello from the console")
    page.fill("#notifyCategory", "ops")
    page.click("#notifyForm button")
    page.wait_for_selector(f"#notifyStatus:has-text('to {user}')")
    [note] = wait_events(device, "notification")
    assert note["notification"]["data"] == {"text": "Hello from the console"}
    assert note["notification"]["category"] == "ops"
    page.wait_for_selector(f"#recent >> text={user}")
    page.fill("#publishTopic", topic)
    page.fill("#publishData", '{"headline": "tidings 2"}')
    page.click("#publishForm button")
    page.wait_for_selector(f"#publishStatus:has-text('Published to {topic} (seq 1)')")
    [message] = wait_events(device, "topicMessage")
    assert (message["topic"], message["data"]) == (topic, {"headline": "tidings 2"})
    page.fill("#notifyUser", "x" * (MAX_USER_ID_LENGTH + 1))  # refused: the page says why
    page.click("#notifyForm button")
    page.wait_for_selector("#notifyStatus.error:has-text('Refused (422)')")
    console.shot("admin-actions")
    device.close()


def test_look_up_a_user_and_disconnect_their_device(console: Console, node: ServerProcess) -> None:
    """A user's page shows their device with its queue, their counts and notifications; the
    Disconnect button logs the device out (DELETE …/devices/{id}) and its socket closes."""
    user = f"eli-{uuid.uuid4().hex[:6]}"
    device, connection_id = device_page(console, node, user)
    token = node.service_token("notify")
    response = httpx.post(
        f"{node.url}/notify",
        json={"user_id": user, "data": {"text": "unseen"}, "category": "billing"},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert response.status_code == 201
    wait_events(device, "notification")
    page = console.page
    page.fill("#userQuery", user)
    page.click("#userForm button")
    page.wait_for_selector(f"#userDevices >> text={connection_id}")
    assert page.inner_text("#userCounts dd[data-count='unseen']") == "1"
    assert page.inner_text("#userCounts dd[data-count='categories']") == "billing 1"
    page.wait_for_selector("#userNotes >> text=unseen")
    console.shot("admin-user")
    page.click(f"#userDevices tr:has-text('{connection_id}') button:has-text('Disconnect')")
    page.wait_for_selector(f"#userStatus.ok:has-text('{connection_id} disconnected')")
    wait_events(device, "close")
    device.close()


def test_retry_a_failed_delivery(console: Console, node: ServerProcess, receiver: Receiver) -> None:
    """A delivery that failed for want of an address is retried from the user's page once the
    user has one, and shows sent."""
    headers = {"Authorization": f"Bearer {node.service_token('messages')}"}
    user = f"finn-{uuid.uuid4().hex[:6]}"
    failed = httpx.post(
        f"{node.url}/messages",
        headers=headers,
        json={
            "recipients": {"user_ids": [user]},
            "channels": ["webhook"],
            "content": {"text": "Your parcel is at the door"},
        },
    )
    assert failed.status_code == 202 and failed.json()["counts"] == {"failed": 1}
    message_id = failed.json()["message_id"]
    contact = httpx.put(
        f"{node.url}/users/{user}/contacts/webhook",
        headers=headers,
        json={"address": receiver.url},
    )
    assert contact.status_code == 200, contact.text
    page = console.page
    page.fill("#userQuery", user)
    page.click("#userForm button")
    row = f"#userDeliveries tr:has-text('{message_id}')"
    page.wait_for_selector(f"{row} >> text=no_address")
    page.click(f"{row} button:has-text('Retry')")
    page.wait_for_selector("#userStatus.ok:has-text('queued again')")
    for _ in range(30):  # the worker sends it; the page shows sent on its next look
        page.click("#userForm button")
        if page.locator(f"{row} td", has_text="sent").count():
            break
        page.wait_for_timeout(500)
    page.wait_for_selector(f"{row} td >> text=/^sent$/")
    assert any(b"Your parcel is at the door" in body for body in receiver.received)


def test_cancel_pending_deliveries(browser: Any, start_server: Any, receiver: Receiver) -> None:
    """On a node without workers a delivery stays pending: the message panel cancels it, and
    the user's page shows it deleted."""
    quiet = start_server(TIDINGS_WORKERS="0", TIDINGS_ALLOW_PRIVATE_ADDRESSES="true")
    headers = {"Authorization": f"Bearer {quiet.service_token('messages')}"}
    user = f"gus-{uuid.uuid4().hex[:6]}"
    httpx.put(
        f"{quiet.url}/users/{user}/contacts/webhook",
        headers=headers,
        json={"address": receiver.url},
    ).raise_for_status()
    posted = httpx.post(
        f"{quiet.url}/messages",
        headers=headers,
        json={
            "recipients": {"user_ids": [user]},
            "channels": ["webhook"],
            "content": {"text": "never sent"},
        },
    )
    assert posted.status_code == 202 and posted.json()["counts"] == {"pending": 1}, posted.text
    message_id = posted.json()["message_id"]
    console = Console(browser, quiet)
    console.sign_in(*quiet.create_client("admin"))
    console.signed_in(quiet)
    page = console.page
    page.fill("#userQuery", user)
    page.click("#userForm button")
    row = f"#userDeliveries tr:has-text('{message_id}')"
    page.wait_for_selector(f"{row} td >> text=/^pending$/")
    page.click(f"#messages >> text={message_id}")
    page.wait_for_selector(f"#messageId:has-text('{message_id}')")
    page.click("#cancel")
    page.wait_for_selector("#messageStatus.ok:has-text('cancelled')")
    page.wait_for_selector("#deliveries td >> text=/^deleted$/")
    page.wait_for_selector(f"{row} td >> text=/^deleted$/")
    state = httpx.get(f"{quiet.url}/messages/{message_id}", headers=headers).json()
    assert [d["state"] for d in state["deliveries"]] == ["deleted"]
    console.shot("admin-cancelled")
    console.close()


def test_phone_screen_headers_whole_and_no_sideways_page(
    browser: Any, node: ServerProcess, operator: tuple[str, str]
) -> None:
    """At 390 px the page does not scroll sideways (wide tables scroll inside their box) and
    no table header breaks inside a word."""
    console = Console(browser, node, viewport={"width": 390, "height": 844}, is_mobile=True)
    console.sign_in(*operator)
    console.signed_in(node)
    console.page.fill("#userQuery", f"phone-{uuid.uuid4().hex[:6]}")
    console.page.click("#userForm button")
    console.page.wait_for_selector("#userView:not([hidden])")
    width = console.page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390, f"the page scrolls sideways ({width}px)"
    broken = console.page.evaluate(
        """() => [...document.querySelectorAll("th")].filter((th) => th.offsetParent !== null)
          .filter((th) => {
            const range = document.createRange();
            range.selectNodeContents(th);
            const lines = new Set([...range.getClientRects()].map((r) => Math.round(r.top)));
            return lines.size > 1 && !/\\s/.test(th.textContent.trim());
          }).map((th) => th.textContent)"""
    )
    assert broken == [], f"headers broken inside a word: {broken}"
    wrapped = console.page.evaluate(
        """() => [...document.querySelectorAll("th")]
          .filter((th) => th.offsetParent !== null)
          .filter((th) => getComputedStyle(th).whiteSpace !== "nowrap")
          .map((th) => th.textContent)"""
    )
    assert wrapped == []
    console.shot("admin-phone", full_page=True)
    console.close()
