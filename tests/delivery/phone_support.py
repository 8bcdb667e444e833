"""What the phone channels' end-to-end tests share: a node's app with a service token, push
tokens registered as a device does, messages posted as a service does, and waiting for a
message's deliveries to settle."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx

from conftest import device_token
from tidings import Tidings
from tidings.auth.oauth import create_client
from tidings.delivery.models import Message
from tidings.node.app import TidingsApp


@asynccontextmanager
async def service_api(node: Tidings) -> AsyncIterator[tuple[httpx.AsyncClient, dict[str, str]]]:
    """An HTTP client of the node's app, and the headers of a service with scope ``messages``."""
    client, secret = await create_client(node.store, "svc", ["messages"])
    issued = await node.service_auth.issue(client.client_id, secret, "messages")
    transport = httpx.ASGITransport(app=TidingsApp(node, manage_lifespan=False))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        yield http, {"Authorization": f"Bearer {issued.access_token}"}


async def register(
    http: httpx.AsyncClient, user: str, platform: str, token: str, app_id: str | None = None
) -> None:
    """Register ``token`` as the user's device does (``POST /me/push-tokens``)."""
    body = {"platform": platform, "token": token, **({"app_id": app_id} if app_id else {})}
    answer = await http.post(
        "/me/push-tokens", json=body, headers={"Authorization": f"Bearer {device_token(user)}"}
    )
    assert answer.status_code == 201, answer.text


async def post(http: httpx.AsyncClient, service: dict[str, str], user: str, channel: str) -> str:
    """A message to ``user`` on ``channel`` (subject and text rendered with ``n`` = 42)."""
    answer = await http.post(
        "/messages",
        json={
            "recipients": {"user_ids": [user]},
            "channels": [channel],
            "content": {"subject": "Order {{ n }}", "text": "Order {{ n }} has shipped"},
            "data": {"n": 42},
        },
        headers=service,
    )
    assert answer.status_code == 202, answer.text
    return str(answer.json()["message_id"])


async def settled(node: Tidings, message_id: str, timeout: float = 10.0) -> Message:
    """The message once every delivery is ``sent`` or ``failed``."""
    deadline = time.monotonic() + timeout
    while True:
        found = await node.pipeline.store.get_message(message_id, None)
        assert found is not None
        if found.deliveries and all(d.state in ("sent", "failed") for d in found.deliveries):
            return found
        assert time.monotonic() < deadline, f"not settled: {found}"
        await asyncio.sleep(0.05)
