"""The pipeline from Python (embedded mode): ``tidings.pipeline.post``."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tidings import Tidings
from tidings.delivery.models import Content
from tidings.errors import Conflict, InvalidArgument


async def test_post_reaches_the_user_in_app_and_is_idempotent(tmp_path: Path) -> None:
    """A posted in-app message becomes the user's notification; the same key and arguments
    give the same message, other arguments a conflict."""
    async with Tidings(store=f"sqlite:///{tmp_path}/p.db", pipeline_poll_interval=0.1) as node:
        await node.pipeline.put_template("hello", Content("Hello {{ name }}", subject="Hi"))
        first = await node.pipeline.post(
            ["in_app"],
            user_ids=["ann"],
            template_id="hello",
            data={"name": "Ann"},
            idempotency_key="k1",
        )
        again = await node.pipeline.post(
            ["in_app"],
            user_ids=["ann"],
            template_id="hello",
            data={"name": "Ann"},
            idempotency_key="k1",
        )
        assert again.message_id == first.message_id
        with pytest.raises(Conflict):
            await node.pipeline.post(
                ["in_app"],
                user_ids=["ann"],
                template_id="hello",
                data={"name": "Bob"},
                idempotency_key="k1",
            )
        for _ in range(100):
            notes = await node.unseen("ann")
            if notes:
                break
            await asyncio.sleep(0.05)
        assert [n.data["text"] for n in notes] == ["Hello Ann"]
        assert notes[0].data["message_id"] == first.message_id


@pytest.mark.parametrize(
    "arguments",
    [
        {"channels": ["fax"], "user_ids": ["a"], "content": Content("x")},
        {"channels": [], "user_ids": ["a"], "content": Content("x")},
        {"channels": ["in_app"], "content": Content("x")},
        {"channels": ["in_app"], "user_ids": ["a"], "topic": "t", "content": Content("x")},
        {"channels": ["in_app"], "user_ids": ["a"]},
        {"channels": ["in_app"], "user_ids": [], "content": Content("x")},
    ],
)
async def test_post_refuses_bad_arguments(tmp_path: Path, arguments: dict[str, object]) -> None:
    """Unknown channels, both or neither recipients or sources, no users: InvalidArgument."""
    async with Tidings(store=f"sqlite:///{tmp_path}/p.db", workers=0) as node:
        channels = arguments.pop("channels")
        with pytest.raises(InvalidArgument):
            await node.pipeline.post(channels, **arguments)  # type: ignore[arg-type]


def nested(levels: int) -> dict[str, object]:
    value: dict[str, object] = {}
    for _ in range(levels - 1):
        value = {"x": value}
    return value


async def test_post_refuses_data_too_deep_for_the_in_app_notification(tmp_path: Path) -> None:
    """Template values the in-app notification could not carry (it holds them one level
    down, under the 64-level limit) are refused before anything is written; one level less
    is taken."""
    async with Tidings(store=f"sqlite:///{tmp_path}/p.db", workers=0) as node:
        with pytest.raises(InvalidArgument, match="levels"):
            await node.pipeline.post(
                ["in_app"], user_ids=["deep"], content=Content("x"), data=nested(64)
            )
        taken = await node.pipeline.post(
            ["in_app"], user_ids=["deep"], content=Content("x"), data=nested(63)
        )
        assert taken.message_id


@pytest.mark.parametrize("data", [{"n": 2**70}, {"\udb93": 1}, {"s": "\ud800"}])
async def test_post_refuses_data_that_cannot_be_written_as_json(
    tmp_path: Path, data: dict[str, object]
) -> None:
    """Integers beyond 64 bits and lone surrogates cannot be stored as JSON: InvalidArgument
    (POST /messages: 422) instead of an internal error (found by schemathesis)."""
    async with Tidings(store=f"sqlite:///{tmp_path}/p.db", workers=0) as node:
        with pytest.raises(InvalidArgument, match="JSON"):
            await node.pipeline.post(["in_app"], user_ids=["u"], content=Content("x"), data=data)


async def test_a_delayed_post_waits_for_its_time_and_a_bad_delay_writes_nothing(
    tmp_path: Path,
) -> None:
    """``delay`` seconds: the in-app notification appears only after them, and the same key
    and delay give the same message; ``send_at`` in the past, naive or with ``delay`` too is
    refused before anything is written."""
    async with Tidings(store=f"sqlite:///{tmp_path}/d.db", pipeline_poll_interval=0.05) as node:
        posted = await node.pipeline.post(
            ["in_app"], user_ids=["dee"], content=Content("later"), delay=1.0, idempotency_key="d"
        )
        again = await node.pipeline.post(
            ["in_app"], user_ids=["dee"], content=Content("later"), delay=1.0, idempotency_key="d"
        )
        assert again.message_id == posted.message_id
        await asyncio.sleep(0.6)
        assert await node.unseen("dee") == []  # not before its time
        for _ in range(100):
            if await node.unseen("dee"):
                break
            await asyncio.sleep(0.05)
        assert [n.data["text"] for n in await node.unseen("dee")] == ["later"]
        now = datetime.now(UTC)
        for bad in (
            {"send_at": now - timedelta(hours=1)},
            {"send_at": datetime(2030, 1, 1)},  # naive: no time zone
            {"send_at": now + timedelta(days=91)},
            {"send_at": now + timedelta(hours=1), "delay": 60.0},
            {"delay": 0.0},
        ):
            with pytest.raises(InvalidArgument, match="delay"):
                await node.pipeline.post(
                    ["in_app"], user_ids=["eve"], content=Content("x"), idempotency_key="e", **bad
                )
        assert await node.pipeline.post(
            ["in_app"], user_ids=["eve"], content=Content("x"), idempotency_key="e"
        )
