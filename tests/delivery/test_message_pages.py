"""A message's deliveries are listed a page at a time; its counts always cover all of them."""

from __future__ import annotations

from pathlib import Path

import pytest

from tidings import Tidings
from tidings.delivery.models import Content, NewMessage
from tidings.delivery.pipeline import body_hash


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/pages.db"
    return str(request.getfixturevalue("postgres_url"))


async def test_deliveries_come_in_pages_with_their_own_history(store_url: str) -> None:
    """250 deliveries: pages of 100 from offsets 0, 100, 200 are disjoint, cover all, keep
    creation order, each delivery with its own history; counts always say 250."""
    async with Tidings(store=store_url, workers=0) as node:
        users = tuple(f"user-{n:03d}" for n in range(250))
        new = NewMessage(
            "svc", ("in_app",), users, None, None, Content("hi"), {}, False, None, body_hash({})
        )
        message, _ = await node.pipeline.create_message(new)
        seen: list[str] = []
        for offset in (0, 100, 200):
            page = await node.pipeline.store.get_message(
                message.message_id, "svc", limit=100, offset=offset
            )
            assert page is not None and page.deliveries is not None
            assert page.counts == {"pending": 250}
            assert len(page.deliveries) == (100 if offset < 200 else 50)
            for delivery in page.deliveries:
                assert [h.reason for h in delivery.history] == ["queued"]
            seen += [d.user_id for d in page.deliveries]
        assert seen == sorted(users)
