"""The inbox in a real Chromium (Debian's), driven by Playwright as in test_browser_e2e.py:
tidings.js's feed and the demo page's tabs, read and archive actions, mark-all, badge and
counts, across two tabs of one user. Screenshots are kept in tests/artifacts/.

The unread count of the Unread tab and the category chips come from protocol 1.1's
``unread`` and ``categories`` in ``newNotificationCountChanged``:
``test_unread_and_category_counts_follow_in_both_tabs`` checks them."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from test_browser_e2e import ARGS, ARTIFACTS, CHROMIUM, Tab

from conftest import ServerProcess

playwright_api = pytest.importorskip("playwright.sync_api")
expect = playwright_api.expect
DOCS = Path(__file__).resolve().parents[2] / "docs" / "browser.md"
PAGE_SIZE = 10  # the demo's


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    ARTIFACTS.mkdir(exist_ok=True)
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One demo server for the module: each test has users of its own."""
    db = tmp_path_factory.mktemp("inbox") / "tidings.db"
    proc = ServerProcess(db, env={"TIDINGS_DEMO": "true"}).start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def send(demo: ServerProcess) -> Any:
    """``send(user, text, category=None)``: POST /notify as a service; returns the id."""
    headers = {"Authorization": f"Bearer {demo.service_token('notify')}"}

    def send(user: str, text: str, category: str | None = None) -> str:
        body: dict[str, Any] = {"user_id": user, "data": {"text": text}}
        if category:
            body["category"] = category
        response = httpx.post(f"{demo.url}/notify", json=body, headers=headers)
        assert response.status_code == 201, response.text
        return str(response.json()["notification_id"])

    return send


class Inbox(Tab):
    """The demo page as a user sees it."""

    def note(self, text: str) -> Any:
        return self.page.locator("#notes li.note", has_text=text)

    def texts(self) -> Any:
        return self.page.locator("#notes li.note .text")

    def click(self, selector: str) -> None:
        # As a person would, in the tab in front: a background page draws no frames, and
        # Playwright waits for two frames to call an element stable.
        self.page.bring_to_front()
        self.page.click(selector)

    def tab(self, state: str) -> None:
        self.click(f"[role=tab][data-state={state}]")
        expect(self.page.locator("#notes li").first).not_to_have_text("Loading…")

    def act(self, text: str, action: str) -> None:
        self.page.bring_to_front()
        self.note(text).locator(f"button[data-action={action}]").click()

    def badge_hidden(self) -> None:
        expect(self.page.locator("#badge")).to_be_hidden()


def user_id(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:6]}"


def test_two_tabs_follow_one_inbox(browser: Any, demo: ServerProcess, send: Any) -> None:
    """A notification sent over HTTP comes in at the top of both tabs (one of them on a
    phone-sized screen); reading it in one restyles it and lowers the badge in the other;
    archive and unarchive move it between the tabs; Mark all read empties Unread and hides the
    badge everywhere."""
    user = user_id("alice")
    context = browser.new_context()
    one, two = (Inbox(context, f"{demo.url}/demo?user={user}") for _ in range(2))
    two.page.set_viewport_size({"width": 390, "height": 844})  # the other one on a phone
    for tab in (one, two):
        tab.online()
        expect(tab.page.locator("#notes li")).to_have_text(["Nothing yet."])
        tab.badge("0")
        tab.badge_hidden()

    send(user, "Your order shipped", "orders")
    send(user, "Invoice ready", "billing")
    for tab in (one, two):
        expect(tab.texts()).to_have_text(["Invoice ready", "Your order shipped"])
        tab.badge("2")
        expect(tab.page.locator("#badge")).to_be_visible()
        expect(tab.note("Invoice ready")).to_have_class(re.compile(r"\bunread\b"))
    one.shot("inbox-two-new")

    one.act("Invoice ready", "markRead")
    for tab in (one, two):  # the other tab learns it from the count's version
        expect(tab.note("Invoice ready")).to_have_class(re.compile(r"\bread\b"))
        expect(tab.note("Invoice ready").locator("[data-action=markRead]")).to_have_count(0)
        tab.badge("1")
    expect(two.note("Your order shipped")).to_have_class(re.compile(r"\bunread\b"))
    width = two.page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390, f"the inbox scrolls sideways on a phone ({width}px)"
    two.shot("inbox-phone-one-read")

    one.act("Your order shipped", "archive")
    expect(one.texts()).to_have_text(["Invoice ready"])
    one.badge("0")  # archiving reads (and so sees)
    expect(two.texts()).to_have_text(["Invoice ready"])
    one.tab("archived")
    expect(one.texts()).to_have_text(["Your order shipped"])
    expect(one.note("Your order shipped").locator("[data-action=unarchive]")).to_be_visible()
    one.shot("inbox-archived")
    one.act("Your order shipped", "unarchive")
    expect(one.page.locator("#notes li")).to_have_text(["Nothing archived."])
    one.tab("all")
    expect(one.texts()).to_have_text(["Invoice ready", "Your order shipped"])
    expect(one.note("Your order shipped")).to_have_class(re.compile(r"\bread\b"))

    send(user, "Parcel at the door", "orders")
    send(user, "Password changed")
    two.tab("unread")
    expect(two.texts()).to_have_text(["Password changed", "Parcel at the door"])
    for tab in (one, two):
        tab.badge("2")
    two.click("#markAllRead")
    expect(two.page.locator("#notes li")).to_have_text(["All read."])
    for tab in (one, two):
        tab.badge("0")
        tab.badge_hidden()
    expect(one.page.locator("#notes li.note.unread")).to_have_count(0)
    two.shot("inbox-all-read")
    assert one.errors == [] and two.errors == []
    context.close()


def test_unread_and_category_counts_follow_in_both_tabs(
    browser: Any, demo: ServerProcess, send: Any
) -> None:
    """Protocol 1.1's counts: the Unread tab's number and the unseen count of each category,
    the same in both tabs, following a read in either."""
    user = user_id("bob")
    context = browser.new_context()
    one, two = (Inbox(context, f"{demo.url}/demo?user={user}") for _ in range(2))
    for tab in (one, two):
        tab.online()
        expect(tab.page.locator("#categories")).to_be_hidden()
    send(user, "Shipped", "orders")
    send(user, "Delivered", "orders")
    send(user, "Invoice", "billing")
    send(user, "No category")
    for tab in (one, two):
        tab.badge("4")
        expect(tab.page.locator("#unreadCount")).to_have_text("4")
        expect(tab.page.locator("#categories .chip")).to_have_text(["billing 1", "orders 2"])
    one.act("Invoice", "markRead")
    one.act("Shipped", "markRead")
    for tab in (one, two):
        expect(tab.page.locator("#unreadCount")).to_have_text("2")
        expect(tab.page.locator("#categories .chip")).to_have_text(["orders 1"])
    two.click("#bell")  # seen, still unread
    for tab in (one, two):
        tab.badge("0")
        expect(tab.page.locator("#categories")).to_be_hidden()
        expect(tab.page.locator("#unreadCount")).to_have_text("2")
    one.shot("inbox-counts")
    assert one.errors == [] and two.errors == []
    context.close()


def test_paging_brings_older_ones_without_duplicates(browser: Any, demo: ServerProcess) -> None:
    """With more notifications than a page: the first page, then "Load older", then scrolling
    to the end bring the rest, newest first, each once; a new one still comes in on top."""
    user = user_id("carol")
    items = [{"user_id": user, "data": {"text": f"note {i:02}"}} for i in range(1, 26)]
    batch = httpx.post(
        f"{demo.url}/notify/batch",
        json={"notifications": items},
        headers={"Authorization": f"Bearer {demo.service_token('notify')}"},
    )
    assert batch.json()["created"] == 25, batch.text
    # Tall enough for the first page and its button without scrolling: clicking the button
    # then scrolls nothing, so scrolling cannot have loaded the page the click asks for.
    context = browser.new_context(viewport={"width": 1024, "height": 1600})
    tab = Inbox(context, f"{demo.url}/demo?user={user}")
    tab.online()
    newest_first = [f"note {i:02}" for i in range(25, 0, -1)]
    expect(tab.texts()).to_have_text(newest_first[:PAGE_SIZE])
    more = tab.page.locator("#more")
    more.click()
    expect(tab.texts()).to_have_text(newest_first[: 2 * PAGE_SIZE])
    expect(more).to_be_visible()
    tab.page.evaluate("window.scrollTo(0, document.documentElement.scrollHeight)")
    expect(tab.texts()).to_have_text(newest_first)
    expect(more).to_be_hidden()
    tab.shot("inbox-paged")
    httpx.post(f"{demo.url}/demo/notify", json={"user_id": user, "text": "note 26"})
    expect(tab.texts()).to_have_text(["note 26", *newest_first])
    assert tab.errors == []
    context.close()


DELIVER_FEED = """
async (user) => {
  const { Tidings } = await import("/tidings.js");
  const client = new Tidings("/ws", {
    deliver: true,
    getToken: async () => (await (await fetch("/demo/token", {
      method: "POST", headers: { "content-type": "application/json" },
      body: JSON.stringify({ user_id: user }),
    })).json()).token,
  });
  const fetches = [];
  const getNotifications = client.getNotifications.bind(client);
  client.getNotifications = (options) => {
    fetches.push(options);
    return getNotifications(options);
  };
  const feed = client.feed({ pageSize: 2 });
  client.connect();
  await feed.loadMore();
  Object.assign(window, { client, feed, fetches });
  return feed.items.map((n) => n.data.text);
}
"""


def test_feed_in_deliver_mode_takes_new_ones_from_frames(browser: Any, demo: ServerProcess) -> None:
    """In deliver mode the feed puts pushed notifications on top, once each, without reading
    the first page again."""
    user = user_id("dana")
    for text in ("one", "two", "three"):
        httpx.post(f"{demo.url}/demo/notify", json={"user_id": user, "text": text})
    context = browser.new_context()
    page = context.new_page()
    page.goto(f"{demo.url}/static/style.css")  # any page of the origin
    assert page.evaluate(DELIVER_FEED, user) == ["three", "two"]
    httpx.post(f"{demo.url}/demo/notify", json={"user_id": user, "text": "four"})
    page.wait_for_function("feed.items.length === 3 && feed.items[0].data.text === 'four'")
    page.wait_for_timeout(300)  # the backlog's acks, and any refetch, would be done by now
    assert page.evaluate("feed.items.map((n) => n.data.text)") == ["four", "three", "two"]
    assert page.evaluate("fetches.length") == 1
    assert page.evaluate("feed.loadMore().then(() => feed.items.map((n) => n.data.text))") == [
        "four",
        "three",
        "two",
        "one",
    ]
    context.close()


def feed_snippet() -> str:
    """The html block of docs/browser.md that shows the feed."""
    blocks = re.findall(r"```html\n(.*?)```", DOCS.read_text(), re.S)
    [block] = [b for b in blocks if ".feed(" in b]
    return str(block)


def test_the_docs_feed_snippet_runs_as_written(browser: Any, demo: ServerProcess) -> None:
    """docs/browser.md's feed example, written into a page of the node's origin with the
    application's token endpoint it names, lists the unread ones, takes a new one on top and
    marks them all read."""
    user = user_id("erin")
    token = httpx.post(f"{demo.url}/demo/token", json={"user_id": user}).json()["token"]
    for text in ("older", "newer"):
        httpx.post(f"{demo.url}/demo/notify", json={"user_id": user, "text": text})
    context = browser.new_context()
    context.route(
        f"{demo.url}/my-app/push-token",
        lambda route: route.fulfill(body=token, content_type="text/plain"),
    )
    # A page the node served (a synthesized one would be refused the local socket by
    # Chromium's local network access checks), its document replaced by the example.
    tab = Tab(context, f"{demo.url}/static/style.css")
    tab.page.set_content(feed_snippet())
    items = tab.page.locator("#inbox li")
    expect(items).to_have_text(["newer", "older"])
    httpx.post(f"{demo.url}/demo/notify", json={"user_id": user, "text": "newest"})
    expect(items).to_have_text(["newest", "newer", "older"])
    items.filter(has_text="newer").click()  # read: it leaves the unread feed
    expect(items).to_have_text(["newest", "older"])
    tab.page.click("#readAll")
    expect(items).to_have_count(0)
    assert tab.errors == []
    context.close()
