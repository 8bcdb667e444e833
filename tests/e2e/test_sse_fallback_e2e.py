"""tidings.js behind a real reverse proxy (Debian's nginx, started here) that strips
``Upgrade``: the WebSocket never opens, the client falls back to Server-Sent Events by itself
(counts only move forward, topic messages arrive, deliver mode's notifications are acked),
then goes back to WebSocket once the proxy lets it through, missing nothing."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from conftest import ServerProcess, device_token, free_port
from e2e.test_browser_e2e import browser
from e2e.test_cross_origin_e2e import site

__all__ = ["browser", "site"]  # the fixtures

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
CONFIG = """
daemon off;
worker_processes 1;
pid %(dir)s/nginx.pid;
error_log %(dir)s/error.log;
events { worker_connections 256; }
http {
  access_log off;
  client_body_temp_path %(dir)s/body;
  proxy_temp_path %(dir)s/proxy;
  fastcgi_temp_path %(dir)s/fastcgi;
  uwsgi_temp_path %(dir)s/uwsgi;
  scgi_temp_path %(dir)s/scgi;
  server {
    listen 127.0.0.1:%(port)d;
    location / {
      proxy_pass http://127.0.0.1:%(upstream)d;
      proxy_http_version 1.1;
      proxy_read_timeout 1h;
      %(upgrade)s
    }
  }
}
"""
STRIP = 'proxy_set_header Upgrade ""; proxy_set_header Connection "";'
PASS = 'proxy_set_header Upgrade $http_upgrade; proxy_set_header Connection "upgrade";'

CLIENT = """
async ({ token }) => {
  const { Tidings } = await import("/tidings.js");
  const seen = { counts: [], notifications: [], topics: [], transports: [] };
  const options = { token, deliver: true, backoffBase: 100, webSocketRetry: 1000 };
  const client = new Tidings("/ws", options);
  client.addEventListener("count", (e) => seen.counts.push(e.detail.version));
  client.addEventListener("notification", (e) => {
    seen.notifications.push(e.detail.notification.data.n);
  });
  client.addEventListener("topicMessage", (e) => seen.topics.push(e.detail.data));
  client.addEventListener("open", () => seen.transports.push(client.transport));
  window.client = client;
  window.seen = seen;
  client.connect();
}
"""


class Proxy:
    """nginx in front of ``upstream``, its config rewritten and reloaded at will."""

    def __init__(self, folder: Path, upstream: int) -> None:
        self.folder, self.upstream, self.port = folder, upstream, free_port()
        self.config = folder / "nginx.conf"
        self.write(STRIP)
        self.process = subprocess.Popen(
            [NGINX, "-c", str(self.config), "-p", str(folder)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                httpx.get(f"{self.url}/health", timeout=1)
                return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError("nginx did not start: " + (folder / "error.log").read_text())

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def write(self, upgrade: str) -> None:
        values = {"dir": self.folder, "port": getattr(self, "port", 0), "upstream": self.upstream}
        self.config.write_text(CONFIG % {**values, "upgrade": upgrade})

    def allow_websockets(self) -> None:
        self.write(PASS)
        subprocess.run([NGINX, "-c", str(self.config), "-p", str(self.folder), "-s", "reload"])

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


@pytest.fixture
def proxy(
    tmp_path: Path, start_server: Callable[..., ServerProcess]
) -> Iterator[tuple[Proxy, ServerProcess]]:
    if not Path(NGINX).exists():
        message = "Debian's nginx is not installed (apt-get install nginx)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message)
        pytest.skip(message)
    node = start_server()
    folder = tmp_path / "nginx"
    folder.mkdir()
    proxy = Proxy(folder, node.port)
    try:
        yield proxy, node
    finally:
        proxy.stop()


def test_falls_back_to_events_and_returns_to_websocket(
    browser: object, proxy: tuple[Proxy, ServerProcess]
) -> None:
    nginx, node = proxy
    user = f"walled-{uuid.uuid4().hex[:6]}"
    service = {"Authorization": f"Bearer {node.service_token('notify', 'publish')}"}

    def notify(n: int) -> None:
        sent = httpx.post(
            f"{node.url}/notify", json={"user_id": user, "data": {"n": n}}, headers=service
        )
        assert sent.status_code == 201, sent.text

    context = browser.new_context()  # type: ignore[attr-defined]
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(f"{nginx.url}/admin")
    page.evaluate(CLIENT, {"token": device_token(user)})
    page.wait_for_function(
        "window.client.connected && window.client.transport === 'sse'", timeout=20_000
    )
    notify(1)
    page.wait_for_function("window.seen.notifications.includes(1)", timeout=10_000)
    assert page.evaluate("window.client.subscribe('news')") == ["news"]
    published = httpx.post(
        f"{node.url}/publish", json={"topic": "news", "data": "extra"}, headers=service
    )
    assert published.status_code in (200, 201, 202), published.text
    page.wait_for_function("window.seen.topics.includes('extra')", timeout=10_000)
    # The acks went by POST: the device's queue is empty on the server.
    admin = {"Authorization": f"Bearer {node.service_token('admin')}"}
    deadline = time.monotonic() + 10
    while True:
        overview = httpx.get(f"{node.url}/admin/overview", headers=admin).json()
        depths = [s["queue_depth"] for s in overview["sockets"] if s["user_id"] == user]
        if depths == [0]:
            break
        assert time.monotonic() < deadline, f"the queue was not emptied: {depths}"
        time.sleep(0.1)

    nginx.allow_websockets()
    page.wait_for_function(
        "window.client.transport === 'websocket' && window.client.connected", timeout=20_000
    )
    notify(2)
    page.wait_for_function("window.seen.notifications.includes(2)", timeout=10_000)
    seen = page.evaluate("window.seen")
    assert seen["transports"][0] == "sse" and seen["transports"][-1] == "websocket"
    assert seen["notifications"] == [1, 2]  # each once: nothing re-delivered across the switch
    assert seen["counts"] == sorted(seen["counts"])  # counts only move forward
    assert errors == []
    context.close()


CROSS = """<!doctype html><meta charset="utf-8"><title>shop</title><body>
<script type="module">
  const { Tidings } = await import("%(proxy)s/tidings.js");
  const client = new Tidings("%(ws)s/ws", { token: "%(token)s", backoffBase: 100 });
  client.addEventListener("count", (e) => (document.body.dataset.count = e.detail.count));
  client.addEventListener("open", () => (document.body.dataset.transport = client.transport));
  client.connect();
</script>"""


@pytest.fixture
def walled(
    site: tuple[Path, str], tmp_path: Path, start_server: Callable[..., ServerProcess]
) -> Iterator[tuple[Proxy, ServerProcess, Path, str]]:
    if not Path(NGINX).exists():
        pytest.skip("Debian's nginx is not installed (apt-get install nginx)")
    root, origin = site
    node = start_server(TIDINGS_ALLOWED_ORIGINS=origin)
    folder = tmp_path / "walled"
    folder.mkdir()
    nginx = Proxy(folder, node.port)
    try:
        yield nginx, node, root, origin
    finally:
        nginx.stop()


def test_a_page_of_another_origin_falls_back_too(
    browser: object, walled: tuple[Proxy, ServerProcess, Path, str]
) -> None:
    """The shop's page imports the module from the tidings service behind the proxy: the
    stream and its frames answer CORS for the shop's origin, and the counts come through."""
    nginx, node, root, origin = walled
    user = f"shop-{uuid.uuid4().hex[:6]}"
    ws = nginx.url.replace("http", "ws", 1)
    (root / "shop.html").write_text(
        CROSS % {"proxy": nginx.url, "ws": ws, "token": device_token(user)}
    )
    context = browser.new_context()  # type: ignore[attr-defined]
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(f"{origin}/shop.html")
    page.wait_for_function(
        "document.body.dataset.transport === 'sse' && document.body.dataset.count === '0'",
        timeout=20_000,
    )
    service = {"Authorization": f"Bearer {node.service_token('notify')}"}
    sent = httpx.post(f"{node.url}/notify", json={"user_id": user, "data": {}}, headers=service)
    assert sent.status_code == 201, sent.text
    page.wait_for_function("document.body.dataset.count === '1'", timeout=10_000)
    # A page of an origin not listed gets no CORS answer from the stream's door.
    foreign = httpx.options(
        f"{nginx.url}/sse/frames",
        headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert foreign.status_code == 403
    assert "access-control-allow-origin" not in foreign.headers
    assert errors == []
    context.close()
