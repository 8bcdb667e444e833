"""A node's HTTP app in process for the route tests: an ``httpx`` client on it, the node, and a
service token's headers; a device JWT's headers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx

from conftest import JWT_SECRET, device_token
from tidings import Tidings
from tidings.auth.oauth import create_client
from tidings.node.app import TidingsApp


@asynccontextmanager
async def node_api(
    db: Path, scope: str
) -> AsyncIterator[tuple[httpx.AsyncClient, Tidings, dict[str, str]]]:
    """A node on SQLite at ``db``, a client of its app, and a service's headers with
    ``scope``."""
    async with Tidings(store=f"sqlite:///{db}", jwt_secret=JWT_SECRET) as node:
        client, secret = await create_client(node.store, "svc", [scope])
        issued = await node.service_auth.issue(client.client_id, secret, scope)
        service = {"Authorization": f"Bearer {issued.access_token}"}
        transport = httpx.ASGITransport(app=TidingsApp(node, manage_lifespan=False))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            yield http, node, service


def device(user_id: str) -> dict[str, str]:
    """The headers of ``user_id``'s device JWT."""
    return {"Authorization": f"Bearer {device_token(user_id)}"}
