"""PostgreSQL writes concurrent notifications in one transaction; a value PostgreSQL refuses
must fail only the caller who sent it."""

from __future__ import annotations

import asyncio

from tidings.errors import InvalidArgument
from tidings.storage.postgres import PostgresStore


async def test_a_refused_value_fails_only_its_own_caller(postgres_url: str) -> None:
    """A user id PostgreSQL cannot store (a NUL character: the core refuses it earlier, a
    direct store caller may not) rolls its group back; the others are written again one by
    one and succeed, the sender alone gets the refusal, and nothing is counted twice."""
    async with PostgresStore(postgres_url) as store:
        users = [f"user-{i}" for i in range(8)]
        users[3] = "bad\x00user"
        results = await asyncio.gather(
            *(store.create_notification(user, {"i": i}) for i, user in enumerate(users)),
            return_exceptions=True,
        )
        assert isinstance(results[3], InvalidArgument)
        for i, result in enumerate(results):
            if i != 3:
                assert not isinstance(result, BaseException)
                assert result.created and result.count is not None
                assert (result.count.count, result.count.version) == (1, 1)
                assert (await store.count(users[i])).count == 1


async def test_a_batch_with_a_refused_value_is_refused_whole(postgres_url: str) -> None:
    """create_notifications is one transaction: a refused value refuses the whole batch and
    writes nothing (the caller sent them together and may retry)."""
    from tidings.core.models import NewNotification

    async with PostgresStore(postgres_url) as store:
        batch = [NewNotification("good", 1), NewNotification("bad\x00", 2)]
        try:
            await store.create_notifications(batch)
        except InvalidArgument:
            pass
        else:
            raise AssertionError("the batch was accepted")
        assert (await store.count("good")).count == 0
