"""Regression tests for the review of the in-app core: limits, cookies, odd input."""

from __future__ import annotations

import uuid

import httpx
import orjson
import pytest
from websockets.asyncio.client import connect

from conftest import ServerProcess, device_token
from tidings.client import DeviceClient
from tidings.errors import ClientError


def test_chunked_body_over_limit_is_refused_before_auth(server: ServerProcess) -> None:
    """A chunked body without Content-Length is cut off at the limit with 413."""

    def body():  # type: ignore[no-untyped-def]
        for _ in range(200):
            yield b"x" * 8192

    response = httpx.post(f"{server.url}/oauth/token", content=body(), timeout=30)
    assert response.status_code == 413
    response = httpx.post(f"{server.url}/notify", content=body(), timeout=30)
    assert response.status_code == 413
    assert httpx.get(f"{server.url}/health").status_code == 200


async def test_odd_host_cookies_do_not_hide_ours(server: ServerProcess) -> None:
    """Cookies the host application sets in odd shapes do not lose tidings_cid."""
    alice = f"alice-{uuid.uuid4().hex[:6]}"
    first = DeviceClient(server.ws_url, token=device_token(alice))
    cid = (await first.connect())["connection_id"]
    await first.close()
    odd = f'a={{"x":1}}; foo=bar baz; b=é; tidings_cid={cid}; c="unterminated'
    headers = {"Authorization": f"Bearer {device_token(alice)}", "Cookie": odd}
    async with connect(server.ws_url, additional_headers=headers) as ws:
        assert orjson.loads(await ws.recv())["connection_id"] == cid
        assert "set-cookie" not in ws.response.headers


async def test_query_connection_id_is_not_planted_as_cookie(server: ServerProcess) -> None:
    """Before authentication a connection_id from the query is never put into Set-Cookie."""
    async with connect(f"{server.ws_url}?connection_id=attacker-chosen-id") as ws:
        assert "set-cookie" not in ws.response.headers
        token = device_token(f"victim-{uuid.uuid4().hex[:6]}")
        await ws.send(orjson.dumps({"type": "authenticate", "token": token}).decode())
        assert orjson.loads(await ws.recv())["connection_id"] == "attacker-chosen-id"


async def test_nul_in_ids_is_an_invalid_frame(server: ServerProcess) -> None:
    """Ids with NUL characters are refused as invalid frames; the connection stays up."""
    async with DeviceClient(server.ws_url, token=device_token(f"u-{uuid.uuid4().hex}")) as d:
        with pytest.raises(ClientError) as info:
            await d.mark_seen(["a\x00b"])
        assert info.value.code == "invalid_frame"
        assert await d.get_unseen() == []


def test_nul_in_user_id_is_422(server: ServerProcess, notify_token: str) -> None:
    """/notify refuses a user id PostgreSQL could not store, with 422 rather than 500."""
    response = httpx.post(
        f"{server.url}/notify",
        json={"user_id": "bob\x00", "data": 1},
        headers={"Authorization": f"Bearer {notify_token}"},
    )
    assert response.status_code == 422


def test_access_tokens_are_redacted_from_logs(server: ServerProcess) -> None:
    """A token in the query string never reaches the server's log."""
    import asyncio

    token = device_token("log-user")

    async def touch() -> None:
        async with connect(f"{server.ws_url}?access_token={token}") as ws:
            await ws.recv()

    asyncio.run(touch())
    assert token not in server.log()


def test_nan_and_infinity_are_refused(server: ServerProcess, notify_token: str) -> None:
    """JSON has no NaN or Infinity: /notify refuses them instead of storing null."""
    headers = {"Authorization": f"Bearer {notify_token}", "Content-Type": "application/json"}
    for body in (
        b'{"user_id":"u-nan","data":{"x":NaN}}',
        b'{"user_id":"u-nan","data":[1,Infinity]}',
    ):
        response = httpx.post(f"{server.url}/notify", content=body, headers=headers)
        assert response.status_code == 422, response.text
    listed = httpx.get(f"{server.url}/health")
    assert listed.status_code == 200
