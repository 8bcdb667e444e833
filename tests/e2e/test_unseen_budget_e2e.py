"""``getUnseen`` is bounded in bytes, not only in count: the node reads no more than about
1 MiB of notifications' data for one answer (at least one notification, oldest first), and
every notification is still fetched, page after page, and marked seen."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from conftest import ServerProcess, device_token
from tidings import Tidings
from tidings.client import DeviceClient
from tidings.core.models import NewNotification

#: the byte budget of one answer (TIDINGS_MAX_UNSEEN_BYTES by default, docs/protocol.md)
BUDGET = 1024 * 1024
#: bytes a frame adds around each notification's data, at most (ids, dates, field names)
PER_NOTE = 400


def big(n: int) -> dict[str, object]:
    return {"n": n, "text": f"{n:05d}" + "x" * 60_000}


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/t.db"
    else:
        yield request.getfixturevalue("postgres_url")


async def test_the_node_reads_one_answers_worth_of_bytes(store_url: str) -> None:
    user = f"u-{uuid.uuid4().hex[:8]}"
    async with Tidings(store=store_url, jwt_secret="s" * 40) as tidings:
        created = await tidings.notify_many([NewNotification(user, big(n)) for n in range(40)])
        ids = [r.notification.notification_id for r in created]  # type: ignore[union-attr]
        fetched: list[str] = []
        while True:
            page = await tidings.unseen(user, 1000)
            if not page:
                break
            size = sum(len(orjson.dumps(n.data)) for n in page)
            assert size <= BUDGET, f"{len(page)} notifications, {size} bytes of data"
            assert len(page) >= min(10, len(ids) - len(fetched))  # the budget, not a page of 1
            fetched += [n.notification_id for n in page]
            await tidings.mark_seen(user, [n.notification_id for n in page])
        assert fetched == ids
        assert (await tidings.count(user)).count == 0
        # One notification is always answered, however small the budget.
        await tidings.notify(user, big(99))
        assert len(await tidings.store.unseen(user, 1000, max_bytes=10)) == 1
        assert len(await tidings.store.unseen(user, 1000)) == 1


async def test_a_device_fetches_everything_in_answers_under_the_budget(
    server: ServerProcess,
) -> None:
    user = f"u-{uuid.uuid4().hex[:8]}"
    token = server.service_token("notify")
    ids: list[str] = []
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        for start in (0, 30):  # two batches: each under the 4 MiB body limit
            response = await http.post(
                "/notify/batch",
                json={
                    "notifications": [
                        {"user_id": user, "data": big(n)} for n in range(start, start + 30)
                    ]
                },
                headers={"Authorization": f"Bearer {token}"},
            )
            assert response.status_code == 200, response.text
            ids += [r["notification"]["notification_id"] for r in response.json()["results"]]
    async with DeviceClient(server.ws_url, token=device_token(user)) as device:
        assert await device.wait_for_count(60) == 60
        fetched: list[str] = []
        answers = 0
        while True:
            page = await device.get_unseen(1000)
            if not page:
                break
            answers += 1
            assert len(orjson.dumps(page)) <= BUDGET + PER_NOTE * len(page)
            fetched += [n["notification_id"] for n in page]
            assert await device.mark_seen([n["notification_id"] for n in page]) == len(page)
        assert fetched == ids
        assert answers >= 3
        assert await device.wait_for_count(0) == 0
    await asyncio.sleep(0)
