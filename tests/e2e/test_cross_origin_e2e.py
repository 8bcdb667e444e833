"""A page on the application's own site imports /tidings.js from a separate tidings service
and connects, in Debian's Chromium: the module answers CORS for the allowed origins (and only
for them), its socket follows the same list."""

from __future__ import annotations

import http.server
import threading
import uuid
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import httpx
import pytest

from conftest import ServerProcess, device_token, free_port
from e2e.test_browser_e2e import browser

__all__ = ["browser"]  # the fixture

PAGE = """<!doctype html><meta charset="utf-8"><title>shop</title><body>
<script type="module">
  try {
    const { Tidings } = await import("%(tidings)s/tidings.js");
    const tidings = new Tidings("%(ws)s/ws", { token: "%(token)s" });
    tidings.addEventListener("count", (e) => (document.body.dataset.count = e.detail.count));
    tidings.connect();
  } catch (error) {
    document.body.dataset.failed = String(error);
  }
</script>"""


@pytest.fixture
def site(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """The application's own site: a folder served on another port (another origin)."""
    root = tmp_path / "site"
    root.mkdir()
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield root, f"http://localhost:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_a_page_of_another_origin_imports_the_module_and_connects(
    browser: object, site: tuple[Path, str], start_server: Callable[..., ServerProcess]
) -> None:
    root, origin = site
    node = start_server(TIDINGS_ALLOWED_ORIGINS=origin)
    user = f"shopper-{uuid.uuid4().hex[:6]}"
    ws = node.url.replace("http", "ws", 1)
    (root / "index.html").write_text(
        PAGE % {"tidings": node.url, "ws": ws, "token": device_token(user)}
    )
    context = browser.new_context()  # type: ignore[attr-defined]
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(f"{origin}/index.html")
    page.wait_for_function("document.body.dataset.count === '0'", timeout=15_000)
    headers = {"Authorization": f"Bearer {node.service_token('notify')}"}
    sent = httpx.post(f"{node.url}/notify", json={"user_id": user, "data": {}}, headers=headers)
    assert sent.status_code == 201, sent.text
    page.wait_for_function("document.body.dataset.count === '1'", timeout=15_000)
    assert errors == []

    # A site not in the list: the browser refuses the module (no CORS header for it).
    (root / "other.html").write_text(
        PAGE % {"tidings": node.url, "ws": ws, "token": device_token(user)}
    )
    stranger = context.new_page()
    stranger.goto(f"{origin.replace('localhost', '127.0.0.1')}/other.html")
    stranger.wait_for_function("document.body.dataset.failed !== undefined", timeout=15_000)
    assert stranger.evaluate("document.body.dataset.count") is None
    context.close()
