"""The backends the store contract runs on, and what its tests share.

The node's store interface (:class:`tidings.storage.Store`) is split into facets, each an
abstract class in ``src/tidings/storage/facets/``, and each has its suite here:

============================  ============================================================
``test_store_notifications``  notifications, counts and versions, the notification log
``test_store_devices``        device ids and each device's durable queue
``test_store_topics``         topic messages, replay, session subscriptions
``test_store_cluster``        node heartbeats and the registry of open sockets
``test_store_credentials``    service clients and keys
``test_store_push_tokens``    each user's push tokens (APNs, FCM, Expo)
``test_store_lifecycle``      start, close and ping, and the calls that span facets
                              (``attach``, ``open_socket``)
============================  ============================================================

A new backend is written facet by facet: give :func:`create_store` its URL scheme, add a
parameter to the ``store`` fixture below that makes an empty one, and make one suite pass
at a time::

    pytest tests/contract/store/test_store_devices.py -k mybackend
    pytest tests/contract/store -k mybackend    # every facet, once each passes alone

A suite's tests touch only its facet where they can; those that set up or check through
another facet say which in their docstrings, so a suite may need that facet's basic calls
too. The ``postgres`` parameter needs the server of ``TIDINGS_TEST_POSTGRES_URL`` (skipped
without it, failed in CI); a backend on a service does the same through
``conftest.require_service``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from conftest import create_database, drop_database
from tidings.core.models import Presence, utcnow
from tidings.storage import Store, create_store


@pytest.fixture(params=["sqlite", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    """A started, empty store of each backend (PostgreSQL: a database of its own)."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/contract.db"
    else:
        url = await asyncio.to_thread(create_database)
    try:
        async with create_store(url) as store:
            yield store
    finally:
        if request.param == "postgres":
            await asyncio.to_thread(drop_database, url)


def presence(socket_id: str, user_id: str, node_id: str) -> Presence:
    """A socket of ``user_id`` open on ``node_id`` now (its device id derived from its id)."""
    return Presence(socket_id, f"cid-{socket_id}", user_id, "session", node_id, utcnow())
