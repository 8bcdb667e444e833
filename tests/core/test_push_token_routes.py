"""The push-token routes over HTTP, on a real node (SQLite): a device registers, lists and
deletes its own tokens with its device JWT; a service does for any user with scope
``messages``; bad input gets a clear 4xx and changes nothing; no user sees or deletes
another's."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from api_support import device, node_api

from conftest import device_token
from tidings import Tidings

APNS = "a1" * 32


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, Tidings, dict[str, str]]]:
    """A client of a node's app, the node, and the headers of a service with ``messages``."""
    async with node_api(tmp_path / "t.db", "messages") as api:
        yield api


async def test_a_device_registers_lists_and_deletes_its_tokens(api: Any) -> None:
    http, node, _ = api
    made = await http.post(
        "/me/push-tokens",
        json={"platform": "apns", "token": APNS, "app_id": "com.example.app"},
        headers=device("ann"),
    )
    assert made.status_code == 201, made.text
    body = made.json()
    assert {k: body[k] for k in ("platform", "token", "app_id", "last_used_at")} == {
        "platform": "apns",
        "token": APNS,
        "app_id": "com.example.app",
        "last_used_at": None,
    }
    again = await http.post(
        "/me/push-tokens", json={"platform": "apns", "token": APNS}, headers=device("ann")
    )
    assert (again.status_code, again.json()["id"], again.json()["app_id"]) == (
        200,
        body["id"],
        None,
    )
    await http.post(
        "/me/push-tokens", json={"platform": "fcm", "token": "fcm:tok-1"}, headers=device("ann")
    )
    listed = await http.get("/me/push-tokens", headers=device("ann"))
    assert [(t["platform"], t["token"]) for t in listed.json()] == [
        ("apns", APNS),
        ("fcm", "fcm:tok-1"),
    ]
    gone = await http.delete(f"/me/push-tokens/{body['id']}", headers=device("ann"))
    assert gone.status_code == 204
    assert [
        t["platform"] for t in (await http.get("/me/push-tokens", headers=device("ann"))).json()
    ] == ["fcm"]
    assert [t.platform for t in await node.store.push_tokens("ann")] == ["fcm"]


async def test_a_token_moves_to_the_user_who_registers_it_last(api: Any) -> None:
    """One phone signs into another account: its token is the new user's (201, a new id)
    and no longer the first user's."""
    http, _, _ = api
    first = await http.post(
        "/me/push-tokens",
        json={"platform": "expo", "token": "ExponentPushToken[x]"},
        headers=device("ann"),
    )
    moved = await http.post(
        "/me/push-tokens",
        json={"platform": "expo", "token": "ExponentPushToken[x]"},
        headers=device("bob"),
    )
    assert moved.status_code == 201 and moved.json()["id"] != first.json()["id"]
    assert (await http.get("/me/push-tokens", headers=device("ann"))).json() == []
    assert len((await http.get("/me/push-tokens", headers=device("bob"))).json()) == 1


async def test_a_service_manages_any_users_tokens(api: Any) -> None:
    http, _, service = api
    made = await http.post(
        "/users/carol/push-tokens", json={"platform": "fcm", "token": "svc-token"}, headers=service
    )
    assert made.status_code == 201
    listed = await http.get("/users/carol/push-tokens", headers=service)
    assert [t["id"] for t in listed.json()] == [made.json()["id"]]
    assert [
        t["token"] for t in (await http.get("/me/push-tokens", headers=device("carol"))).json()
    ] == ["svc-token"]
    wrong_user = await http.delete(f"/users/dave/push-tokens/{made.json()['id']}", headers=service)
    assert wrong_user.status_code == 404
    assert (
        await http.delete(f"/users/carol/push-tokens/{made.json()['id']}", headers=service)
    ).status_code == 204


@pytest.mark.parametrize(
    "body",
    [
        {"platform": "blackberry", "token": "t"},
        {"platform": "apns", "token": ""},
        {"platform": "apns", "token": "x" * 4097},
        {"platform": "apns", "token": "with space"},
        {"platform": "apns", "token": "not-hexadecimal-" * 4},
        {"platform": "apns", "token": "ab" * 31},
        {"platform": "fcm", "token": "a/b"},
        {"platform": "expo", "token": "fcm-looking-token"},
        {"platform": "expo", "token": "ExponentPushToken[]"},
        {"platform": "apns"},
        {"token": "t"},
        {"platform": "fcm", "token": "t", "app_id": ""},
        {"platform": "fcm", "token": "t", "extra": 1},
        {"platform": "fcm", "token": 5},
    ],
)
async def test_bad_input_is_refused_and_changes_nothing(api: Any, body: dict[str, Any]) -> None:
    http, node, _ = api
    refused = await http.post("/me/push-tokens", json=body, headers=device("ann"))
    assert refused.status_code == 422, refused.text
    assert await node.store.push_tokens("ann") == []


async def test_no_user_sees_or_deletes_anothers_tokens(api: Any) -> None:
    """Another user's token id in DELETE is 404 and deletes nothing; lists are per user;
    without a device JWT, or with a forged one, nothing is answered but 401."""
    http, node, service = api
    anns = await http.post(
        "/me/push-tokens", json={"platform": "fcm", "token": "ann-phone"}, headers=device("ann")
    )
    stolen = await http.delete(f"/me/push-tokens/{anns.json()['id']}", headers=device("bob"))
    assert stolen.status_code == 404 and stolen.json()["error"] == "not_found"
    assert (await http.get("/me/push-tokens", headers=device("bob"))).json() == []
    assert len(await node.store.push_tokens("ann")) == 1
    assert (await http.get("/me/push-tokens")).status_code == 401
    forged = {"Authorization": "Bearer " + device_token("ann")[:-4] + "AAAA"}
    assert (await http.get("/me/push-tokens", headers=forged)).status_code == 401
    assert (await http.get("/users/ann/push-tokens", headers=device("ann"))).status_code == 401
    assert (await http.get("/users/ann/push-tokens")).status_code == 401
    assert (
        await http.get("/users/" + "u" * 257 + "/push-tokens", headers=service)
    ).status_code == 422


async def test_a_token_of_another_platforms_shape_says_what_was_expected(api: Any) -> None:
    http, node, _ = api
    refused = await http.post(
        "/me/push-tokens",
        json={"platform": "apns", "token": "ExponentPushToken[abc]"},
        headers=device("ann"),
    )
    assert refused.status_code == 422
    assert "apns token is the device token in hexadecimal" in refused.text
    assert await node.store.push_tokens("ann") == []
