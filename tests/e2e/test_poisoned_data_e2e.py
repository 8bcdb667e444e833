"""Data nested past what the encoders write is refused at every door, and an item already
stored that the node cannot read or write (an older version's, or written into the database by
hand) never blocks its user's ``getUnseen`` or deliver queue: it comes with its data replaced by
a marker, later items still flow, and it can be marked seen and acknowledged."""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import orjson
import pytest

from conftest import ServerProcess, device_token
from tidings.client import DeviceClient

#: tidings.core.limits.MAX_DATA_DEPTH, as docs/protocol.md states it
MAX_DATA_DEPTH = 64
#: the marker that stands in for data the node cannot read or write
UNREADABLE_DATA = "unreadable_data"


def nest(levels: int, kind: str = "list") -> Any:
    value: Any = 1
    for level in range(levels):
        value = [value] if kind == "list" or level % 2 else {"k": value}
    return value


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def user() -> str:
    return f"u-{uuid.uuid4().hex[:10]}"


def test_a_batch_item_nested_past_the_limit_is_refused_alone(
    server: ServerProcess, notify_token: str
) -> None:
    """The issue's 254 levels: that item is answered 422 naming the limit and not written; the
    other items are committed; the user's inbox still answers."""
    alice = user()
    items = [
        {"user_id": alice, "data": nest(254)},
        {"user_id": alice, "data": {"text": "fine"}},
        {"user_id": alice, "data": nest(MAX_DATA_DEPTH + 1, "dict")},
        {"user_id": alice, "data": nest(MAX_DATA_DEPTH, "dict")},
    ]
    response = httpx.post(
        f"{server.url}/notify/batch",
        json={"notifications": items},
        headers=bearer(notify_token),
    )
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["status"] for r in results] == [422, 201, 422, 201]
    for refused in (results[0], results[2]):
        assert refused["error"] == "invalid_argument"
        assert str(MAX_DATA_DEPTH) in refused["message"]

    async def inbox() -> list[dict[str, Any]]:
        async with DeviceClient(server.ws_url, token=device_token(alice)) as device:
            notes = await device.get_unseen(1000)
            assert await device.mark_seen([n["notification_id"] for n in notes]) == 2
            return notes

    notes = asyncio.run(inbox())
    assert [n["data"] for n in notes] == [{"text": "fine"}, nest(MAX_DATA_DEPTH, "dict")]


@pytest.mark.parametrize("levels", [MAX_DATA_DEPTH + 1, 150, 199, 254, 400])
def test_notify_and_publish_refuse_data_nested_past_the_limit(
    server: ServerProcess, notify_token: str, levels: int
) -> None:
    """A clear 422, whichever parser met the body first; nothing is written."""
    publish_token = server.service_token("publish")
    alice = user()
    response = httpx.post(
        f"{server.url}/notify",
        json={"user_id": alice, "data": nest(levels)},
        headers=bearer(notify_token),
    )
    assert response.status_code == 422, response.text
    response = httpx.post(
        f"{server.url}/publish",
        json={"topic": "deep", "data": nest(levels, "dict")},
        headers=bearer(publish_token),
    )
    assert response.status_code == 422, response.text
    assert f"limit is {MAX_DATA_DEPTH}" in response.json()["message"]

    async def count() -> int:
        async with DeviceClient(server.ws_url, token=device_token(alice)) as device:
            return await device.wait_for_count(0)

    assert asyncio.run(count()) == 0


def test_messages_refuse_data_the_in_app_notification_could_not_carry(
    server: ServerProcess,
) -> None:
    """The in-app channel puts a message's data one level down in its notification: /messages
    refuses data deeper than MAX_DATA_DEPTH - 1 with 422, and takes that depth."""
    token = server.service_token("messages")
    body: dict[str, Any] = {
        "recipients": {"user_ids": [user()]},
        "channels": ["in_app"],
        "content": {"text": "hi"},
    }
    deep = httpx.post(
        f"{server.url}/messages",
        json={**body, "data": {"x": nest(MAX_DATA_DEPTH - 1)}},
        headers=bearer(token),
    )
    assert deep.status_code == 422, deep.text
    assert str(MAX_DATA_DEPTH - 1) in deep.text
    fits = httpx.post(
        f"{server.url}/messages",
        json={**body, "data": {"x": nest(MAX_DATA_DEPTH - 2)}},
        headers=bearer(token),
    )
    assert fits.status_code == 202, fits.text


# Poisoned rows written into the database behind the node's back.

#: (stored text, what a reader should get back: the data itself or the marker)
POISONS: list[tuple[str | bytes, bool]] = [
    (orjson.dumps(nest(254)).decode(), False),  # the item: readable, not writable
    ("[" * 1100 + "]" * 1100, False),  # beyond orjson's reader
    ('{"odd": "\\ud800"}', False),  # a lone surrogate
    (orjson.dumps(nest(MAX_DATA_DEPTH + 10)).decode(), True),  # deep, yet every encoder copes
]
SQLITE_ONLY: list[tuple[str | bytes, bool]] = [
    ("not json at all", False),
    (b'{"bytes": "\xff\xfe"}', False),  # not UTF-8
]


async def check_poison_does_not_block(
    server: ServerProcess,
    notify_token: str,
    insert: Callable[[str, list[str | bytes]], Any],
    poisons: list[tuple[str | bytes, bool]],
) -> None:
    alice = user()
    token = device_token(alice)
    headers = bearer(notify_token)
    async with httpx.AsyncClient(base_url=server.url, headers=headers) as http:
        # a device in deliver mode that connected before any of them: all are in its queue
        async with DeviceClient(server.ws_url, token=token, deliver=True, auto_ack=False) as dev:
            first = (await http.post("/notify", json={"user_id": alice, "data": "first"})).json()
            event = await dev.next_event()
            while event is not None and event["type"] != "notification":
                event = await dev.next_event()
            assert event is not None and event["notification"]["data"] == "first"
            poisoned = await asyncio.to_thread(insert, alice, [text for text, _ in poisons])
            last = (await http.post("/notify", json={"user_id": alice, "data": "last"})).json()
            delivered: list[dict[str, Any]] = []
            while len(delivered) < len(poisons) + 1:
                event = await dev.next_event()
                assert event is not None
                if event["type"] == "notification":
                    delivered.append(event["notification"])
            ids = [n["notification_id"] for n in delivered]
            assert ids == [*poisoned, last["notification_id"]]
            for note, (text, readable) in zip(delivered, poisons, strict=False):
                if readable:
                    assert note["data"] == orjson.loads(text)
                else:
                    assert note["data"]["tidings_error"] == UNREADABLE_DATA
            assert delivered[-1]["data"] == "last"
            assert await dev.ack([first["notification_id"], *ids]) == len(ids) + 1

        # the inbox: every one of them comes, page after page, and each can be marked seen
        async with DeviceClient(server.ws_url, token=token) as device:
            fetched: list[str] = []
            for limit in (1, 2, 1000):
                page = await device.get_unseen(limit)
                assert page, "getUnseen answered nothing while notifications are unseen"
                fetched += [n["notification_id"] for n in page]
                assert await device.mark_seen([n["notification_id"] for n in page]) == len(page)
                if len(fetched) == len(poisons) + 2:
                    break
            assert fetched == [first["notification_id"], *poisoned, last["notification_id"]]
            assert await device.wait_for_count(0) == 0
            assert await device.get_unseen() == []
        # and the node is still fine
        assert (await http.get("/health")).status_code == 200


def sqlite_insert(server: ServerProcess) -> Callable[[str, list[str | bytes]], list[str]]:
    def insert(user_id: str, texts: list[str | bytes]) -> list[str]:
        ids = []
        db = sqlite3.connect(server.db_path, timeout=10)
        try:
            with db:
                for text in texts:
                    nid = f"poison-{uuid.uuid4().hex[:12]}"
                    db.execute(
                        "INSERT INTO notifications (notification_id, user_id, data, creation_date)"
                        " VALUES (?, ?, ?, strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))",
                        (nid, user_id, text),
                    )
                    ids.append(nid)
                db.execute(
                    "UPDATE user_counts SET unseen = unseen + ?, version = version + ? "
                    "WHERE user_id = ?",
                    (len(texts), len(texts), user_id),
                )
        finally:
            db.close()
        return ids

    return insert


async def test_poisoned_rows_never_block_sqlite(server: ServerProcess, notify_token: str) -> None:
    await check_poison_does_not_block(
        server, notify_token, sqlite_insert(server), POISONS + SQLITE_ONLY
    )


async def test_poisoned_rows_never_block_postgres(
    start_server: Callable[..., ServerProcess], postgres_url: str
) -> None:
    import asyncpg

    node = start_server(TIDINGS_STORE=postgres_url)
    token = node.service_token("notify")

    def insert(user_id: str, texts: list[str | bytes]) -> list[str]:
        async def run() -> list[str]:
            conn = await asyncpg.connect(postgres_url)
            ids = []
            try:
                async with conn.transaction():
                    for text in texts:
                        nid = f"poison-{uuid.uuid4().hex[:12]}"
                        await conn.execute(
                            "INSERT INTO notifications (notification_id, user_id, data, "
                            "creation_date) VALUES ($1, $2, $3::json, now())",
                            nid,
                            user_id,
                            text,
                        )
                        ids.append(nid)
                    await conn.execute(
                        "UPDATE user_counts SET unseen = unseen + $1, version = version + $1 "
                        "WHERE user_id = $2",
                        len(texts),
                        user_id,
                    )
            finally:
                await conn.close()
            return ids

        return asyncio.run(run())

    await check_poison_does_not_block(node, token, insert, POISONS)
