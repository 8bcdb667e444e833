"""The admin console's JSON routes on a real node (SQLite), in process: ``/admin/stats`` reads
the node's own metrics, ``/admin/users/{user_id}`` a user's counts, notifications and pipeline
deliveries; both want scope ``admin``; the page is served as HTML."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from api_support import node_api

from tidings import Tidings
from tidings.api.admin import node_stats
from tidings.auth.oauth import create_client


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, Tidings, dict[str, str]]]:
    async with node_api(tmp_path / "a.db", "admin") as api:
        yield api


async def test_stats_count_notifies_from_the_nodes_metrics(api: Any) -> None:
    http, node, admin = api
    before = (await http.get("/admin/stats", headers=admin)).json()
    for n in range(3):
        await node.notify("ann", {"n": n})
    after = (await http.get("/admin/stats", headers=admin)).json()
    assert after["node_id"] == node.node_id
    assert after["notifies"] - before["notifies"] == 3
    assert after["notify_seconds"] > before["notify_seconds"]
    assert after["notify_buckets"][-1][1] == after["notifies"]  # the widest finite bucket
    assert after["at"] >= before["at"]
    assert {"connections", "users_connected", "frames_sent", "errors", "pipeline", "sends"} <= set(
        after
    )


async def test_a_user_with_counts_notifications_and_deliveries(api: Any) -> None:
    http, node, admin = api
    await node.notify("bob", {"text": "one"}, category="billing")
    await node.notify("bob", {"text": "two"})
    client, secret = await create_client(node.store, "sender", ["messages"])
    issued = await node.service_auth.issue(client.client_id, secret, "messages")
    posted = await http.post(
        "/messages",
        headers={"Authorization": f"Bearer {issued.access_token}"},
        json={
            "recipients": {"user_ids": ["bob", "eve"]},
            "channels": ["webhook"],
            "content": {"text": "hi"},
        },
    )
    assert posted.status_code == 202, posted.text
    response = await http.get("/admin/users/bob", headers=admin)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["counts"] == {
        "count": 2,
        "unread": 2,
        "categories": {"billing": 1},
        "version": body["counts"]["version"],
    }
    assert [n["data"]["text"] for n in body["notifications"]] == ["two", "one"]
    assert body["devices"] == [] and body["push_tokens"] == []
    [delivery] = body["deliveries"]
    assert delivery["message_id"] == posted.json()["message_id"]
    assert (delivery["user_id"], delivery["channel"], delivery["state"]) == (
        "bob",
        "webhook",
        "failed",
    )
    for limit in (1, 100):
        assert (await http.get(f"/admin/users/bob?limit={limit}", headers=admin)).status_code == 200
    for limit in (0, 101):
        assert (await http.get(f"/admin/users/bob?limit={limit}", headers=admin)).status_code == 422
    nobody = (await http.get("/admin/users/nobody", headers=admin)).json()
    assert nobody["counts"]["count"] == 0 and nobody["deliveries"] == []


async def test_admin_routes_want_scope_admin(api: Any) -> None:
    http, node, _ = api
    client, secret = await create_client(node.store, "notifier", ["notify"])
    issued = await node.service_auth.issue(client.client_id, secret, "notify")
    notifier = {"Authorization": f"Bearer {issued.access_token}"}
    for path in ("/admin/stats", "/admin/users/bob", "/admin/overview"):
        assert (await http.get(path)).status_code == 401
        assert (await http.get(path, headers=notifier)).status_code == 403
    page = await http.get("/admin")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "admin/stats" in page.text


def test_stats_parse_an_exposition() -> None:
    text = (
        "# TYPE tidings_connections gauge\ntidings_connections 4.0\n"
        "# TYPE tidings_notify_seconds histogram\n"
        'tidings_notify_seconds_bucket{le="0.001"} 1.0\n'
        'tidings_notify_seconds_bucket{le="+Inf"} 2.0\n'
        "tidings_notify_seconds_count 2.0\ntidings_notify_seconds_sum 0.5\n"
        "# TYPE tidings_pipeline_deliveries gauge\n"
        'tidings_pipeline_deliveries{channel="email",state="pending"} 3.0\n'
        "# TYPE tidings_errors counter\n"
        'tidings_errors_total{kind="internal"} 2.0\n'
    )
    stats = node_stats("n1", text)
    assert stats["connections"] == 4 and stats["notifies"] == 2
    assert stats["notify_seconds"] == 0.5 and stats["notify_buckets"] == [[0.001, 1]]
    assert stats["pipeline"] == {"email": {"pending": 3}} and stats["errors"] == 2
