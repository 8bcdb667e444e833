"""``/docs`` (Swagger UI) and ``/redoc`` (ReDoc) without internet: the pages and every file they
load come from the node itself. In Debian's Chromium, driven by Playwright, with every request
to another host aborted and recorded; screenshots are kept in tests/artifacts/."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urljoin

import httpx
import pytest

from conftest import ServerProcess
from e2e.test_browser_e2e import ARTIFACTS, browser

__all__ = ["browser"]  # the fixture

PAGES = ("/docs", "/redoc")
METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}


@pytest.fixture(scope="module")
def operations(server: ServerProcess) -> list[tuple[str, str, str]]:
    """(method, path, operationId) of every operation in the node's OpenAPI document."""
    paths = httpx.get(f"{server.url}/openapi.json").json()["paths"]
    return [
        (method, path, operation["operationId"])
        for path, item in paths.items()
        for method, operation in item.items()
        if method in METHODS
    ]


class OfflineTab:
    """A page whose requests to any host but the node's are aborted (and recorded), recording
    console errors and uncaught exceptions."""

    def __init__(self, browser: object, server: ServerProcess) -> None:
        self.context = browser.new_context()  # type: ignore[attr-defined]
        self.origin = server.url
        self.elsewhere: list[str] = []
        self.errors: list[str] = []
        self.context.route("**/*", self.route)
        self.page = self.context.new_page()
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))
        self.page.on(
            "console",
            lambda message: self.errors.append(message.text) if message.type == "error" else None,
        )

    def route(self, route: Any) -> None:
        url = route.request.url
        if url == self.origin or url.startswith(self.origin + "/"):
            route.continue_()
        else:
            self.elsewhere.append(url)
            route.abort("internetdisconnected")

    def open(self, path: str) -> None:
        self.page.goto(self.origin + path)

    def close(self, shot: str) -> None:
        self.page.screenshot(path=str(ARTIFACTS / f"{shot}.png"))
        self.context.close()


def test_the_pages_reference_only_files_of_the_node(server: ServerProcess) -> None:
    """The HTML of /docs and /redoc names no other host (no CDN, no fonts, no favicon), and each
    file it names answers from the node, cached for good under a name of its content."""
    for page in PAGES:
        answer = httpx.get(server.url + page)
        assert answer.status_code == 200, page
        assert answer.headers["content-type"].startswith("text/html")
        html = answer.text
        assert re.findall(r"\b(?:https?:)?//", html) == [], f"{page} names another host"
        urls = re.findall(r'(?:src|href)="([^"]+)"', html)
        assert len(urls) >= 2, (page, urls)  # a script and a favicon at least
        for url in urls:
            assert url.startswith("/docs/assets/"), (page, url)
            asset = httpx.get(urljoin(server.url, url))
            assert asset.status_code == 200, url
            assert asset.headers["cache-control"] == "public, max-age=31536000, immutable"
            cached = {"If-None-Match": asset.headers["etag"]}
            assert httpx.get(urljoin(server.url, url), headers=cached).status_code == 304, url
            if url.endswith("redoc.standalone.js"):
                # Its menu logo, on Redocly's CDN, is the one file it would fetch at start.
                assert "cdn.redoc.ly" not in asset.text
        assert httpx.head(server.url + page).status_code == 200
    # Swagger UI's OAuth2 redirect page stays where FastAPI had it; unknown files are 404.
    assert httpx.get(f"{server.url}/docs/oauth2-redirect").status_code == 200
    asset_dir = re.search(r'src="(/docs/assets/[^/]+/)', httpx.get(f"{server.url}/docs").text)
    assert asset_dir is not None
    assert httpx.get(f"{server.url}{asset_dir[1]}nothing.js").status_code == 404
    assert httpx.get(f"{server.url}/docs/assets/0000/swagger-ui.css").status_code == 404
    # The pages are not operations of the API.
    paths = httpx.get(f"{server.url}/openapi.json").json()["paths"]
    assert not [p for p in paths if p.startswith(("/docs", "/redoc"))]


def test_swagger_ui_lists_every_operation_offline(
    browser: object, server: ServerProcess, operations: list[tuple[str, str, str]]
) -> None:
    """/docs with no other host reachable: Swagger UI renders, POST /notify among the
    operations, one block per operation of the OpenAPI document, and no console error."""
    tab = OfflineTab(browser, server)
    tab.open("/docs")
    notify = tab.page.locator(".opblock-post .opblock-summary-path[data-path='/notify']")
    notify.wait_for(state="visible", timeout=15_000)
    assert tab.page.locator(".opblock").count() == len(operations)
    assert tab.page.locator(".opblock-summary-method").first.inner_text() in {"POST", "GET"}
    # An operation opens with its parameters and "Try it out".
    notify.click()
    tab.page.locator(".opblock-post.is-open .try-out__btn").wait_for(state="visible")
    tab.close("docs-offline")
    assert tab.elsewhere == [], f"/docs asked other hosts: {tab.elsewhere}"
    assert tab.errors == []


def test_redoc_lists_every_operation_offline(
    browser: object, server: ServerProcess, operations: list[tuple[str, str, str]]
) -> None:
    """/redoc with no other host reachable: ReDoc renders the title, every operation in its
    menu and POST /notify's section, and no console error."""
    tab = OfflineTab(browser, server)
    tab.open("/redoc")
    tab.page.get_by_role("heading", name="tidings (0.1.0)").wait_for(timeout=15_000)
    menu = tab.page.locator("[data-item-id*='/operation/']")
    assert menu.count() == len(operations)
    notify_id = next(op for method, path, op in operations if (method, path) == ("post", "/notify"))
    section = tab.page.locator(f"[data-section-id='tag/notifications/operation/{notify_id}']")
    heading = section.locator("h2").first
    heading.wait_for(state="visible")
    assert heading.inner_text().strip() == "Notify"
    assert "/notify" in section.inner_text()  # the operation's method and path
    tab.close("redoc-offline")
    assert tab.elsewhere == [], f"/redoc asked other hosts: {tab.elsewhere}"
    assert tab.errors == []
