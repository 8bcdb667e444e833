"""A user's history over HTTP, on a real node (SQLite): pages newest first with cursors that
stay right while new notifications arrive, filters, a service reading any user's with scope
``notify``; a cursor that is forged, another user's or for other filters, an unknown state and
a limit out of bounds get 422; no user reads another's."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from api_support import device, node_api

from tidings import Tidings


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, Tidings, dict[str, str]]]:
    """A client of a node's app, the node, and the headers of a service with ``notify``."""
    async with node_api(tmp_path / "h.db", "notify") as api:
        yield api


async def test_pages_with_cursors_stay_right_while_new_ones_arrive(api: Any) -> None:
    http, node, service = api
    for n in range(5):
        await node.notify("ann", {"n": n})
    first = (await http.get("/me/notifications?limit=2", headers=device("ann"))).json()
    assert [n["data"]["n"] for n in first["notifications"]] == [4, 3]
    assert set(first["notifications"][0]) >= {"category", "seen_date", "read_date", "archived_date"}
    await node.notify("ann", {"n": "new"})
    second = (
        await http.get(
            "/me/notifications",
            params={"limit": 2, "cursor": first["next_cursor"]},
            headers=device("ann"),
        )
    ).json()
    third = (
        await http.get(
            "/me/notifications",
            params={"limit": 2, "cursor": second["next_cursor"]},
            headers=device("ann"),
        )
    ).json()
    assert [n["data"]["n"] for n in second["notifications"] + third["notifications"]] == [2, 1, 0]
    assert third["next_cursor"] is None
    # A service reads any user's, with scope notify.
    page = (await http.get("/users/ann/notifications?limit=1", headers=service)).json()
    assert [n["data"]["n"] for n in page["notifications"]] == ["new"]


async def test_filters(api: Any) -> None:
    http, node, _ = api
    one = await node.notify("ann", {"n": 1})
    await node.notify("ann", {"n": 2})
    await node.mark_seen("ann", [one.notification.notification_id])
    unseen = (await http.get("/me/notifications?state=unseen", headers=device("ann"))).json()
    assert [n["data"]["n"] for n in unseen["notifications"]] == [2]
    archived = (await http.get("/me/notifications?state=archived", headers=device("ann"))).json()
    assert archived == {"notifications": [], "next_cursor": None}
    orders = (await http.get("/me/notifications?category=orders", headers=device("ann"))).json()
    assert orders["notifications"] == []


async def test_bad_cursors_states_and_limits_are_refused(api: Any) -> None:
    http, node, _ = api
    for n in range(3):
        await node.notify("ann", {"n": n})
        await node.notify("bob", {"n": n})
    anns = (await http.get("/me/notifications?limit=1", headers=device("ann"))).json()
    cursor = anns["next_cursor"]
    forged = cursor[:-2] + ("AA" if not cursor.endswith("AA") else "BB")
    for params, headers, expected in (
        ({"cursor": cursor}, device("bob"), "not one of this user's pages"),
        ({"cursor": forged}, device("ann"), "not one of this user's pages"),
        ({"cursor": "garbage!"}, device("ann"), "cursor"),
        ({"cursor": cursor, "state": "unseen"}, device("ann"), "other filters"),
        ({"state": "deleted"}, device("ann"), "state must be one of"),
        ({"limit": 101}, device("ann"), "limit"),
        ({"limit": 0}, device("ann"), "limit"),
    ):
        refused = await http.get("/me/notifications", params=params, headers=headers)
        assert refused.status_code == 422, (params, refused.text)
        assert expected in refused.text, (params, refused.text)


async def test_no_user_reads_anothers(api: Any) -> None:
    http, node, service = api
    await node.notify("ann", {"secret": "ann's"})
    bobs = (await http.get("/me/notifications", headers=device("bob"))).json()
    assert bobs == {"notifications": [], "next_cursor": None}
    for headers in (device("bob"), device("ann")):
        refused = await http.get("/users/ann/notifications", headers=headers)
        assert refused.status_code == 401
    assert (await http.get("/me/notifications")).status_code == 401
    assert (await http.get("/users/ann/notifications", headers=service)).status_code == 200


async def test_notify_with_a_category_and_the_category_filter(api: Any) -> None:
    http, _, service = api
    for body in (
        {"user_id": "ann", "data": {"n": 1}, "category": "orders"},
        {"user_id": "ann", "data": {"n": 2}},
    ):
        answer = await http.post("/notify", json=body, headers=service)
        assert answer.status_code == 201, answer.text
    batch = await http.post(
        "/notify/batch",
        json={"notifications": [{"user_id": "ann", "data": {"n": 3}, "category": "orders"}]},
        headers=service,
    )
    assert batch.status_code == 200, batch.text
    orders = (await http.get("/me/notifications?category=orders", headers=device("ann"))).json()
    assert [(n["data"]["n"], n["category"]) for n in orders["notifications"]] == [
        (3, "orders"),
        (1, "orders"),
    ]
    for bad in ("", "x" * 65):
        refused = await http.post(
            "/notify", json={"user_id": "ann", "data": {}, "category": bad}, headers=service
        )
        assert refused.status_code == 422, refused.text
    assert (
        len((await http.get("/me/notifications", headers=device("ann"))).json()["notifications"])
        == 3
    )


async def test_marks_over_the_id_limit_change_nothing(api: Any) -> None:
    """1,001 ids (one past the limit), an empty list or a body with neither ids nor "all": 422
    on every mark, and nothing changed; the same ids within the limit are taken."""
    http, node, _ = api
    made = await node.notify("ann", {"n": 1})
    nid = made.notification.notification_id
    too_many = [nid] * 1001
    for mark in ("seen", "read", "archive", "unarchive"):
        for body in ({"notification_ids": too_many}, {"notification_ids": []}, {}):
            refused = await http.post(f"/me/notifications/{mark}", json=body, headers=device("ann"))
            assert refused.status_code == 422, (mark, body, refused.text)
    count = await node.count("ann")
    assert (count.count, count.unread, count.version) == (1, 1, 1)
    taken = await http.post(
        "/me/notifications/read", json={"notification_ids": [nid] * 1000}, headers=device("ann")
    )
    assert taken.status_code == 200 and taken.json() == {"marked": 1}
