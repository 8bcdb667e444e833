"""The browser's files over HTTP: /tidings.js, its pinned URL and its types, and /static, with
CORS for the allowed origins and content ETags (304 when the browser has them)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from tidings import Tidings
from tidings.node.app import TidingsApp

WEB = Path(__file__).resolve().parents[2] / "src" / "tidings" / "web"


async def client(tmp_path: Path, **settings: object) -> AsyncIterator[httpx.AsyncClient]:
    store = f"sqlite:///{tmp_path}/a.db"
    async with Tidings(store=store, jwt_secret="assets-" + "x" * 40, **settings) as node:
        transport = httpx.ASGITransport(app=TidingsApp(node, manage_lifespan=False))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            yield http


@pytest.fixture
async def http(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    async for found in client(tmp_path):
        yield found


async def test_the_module_is_public_revalidated_and_pinned(http: httpx.AsyncClient) -> None:
    first = await http.get("/tidings.js", headers={"Origin": "https://shop.example"})
    assert first.status_code == 200
    assert first.content == (WEB / "tidings.js").read_bytes()
    assert first.headers["content-type"].startswith("text/javascript")
    assert first.headers["access-control-allow-origin"] == "*"
    assert first.headers["cache-control"] == "no-cache"
    etag, pinned = first.headers["etag"], first.headers["content-location"]
    again = await http.get("/tidings.js", headers={"If-None-Match": f'W/"x", {etag}'})
    assert again.status_code == 304 and again.content == b""
    assert again.headers["etag"] == etag
    assert (await http.get("/tidings.js", headers={"If-None-Match": '"other"'})).status_code == 200
    kept = await http.get(pinned, headers={"Origin": "https://shop.example"})
    assert kept.status_code == 200 and kept.content == first.content
    assert kept.headers["cache-control"] == "public, max-age=31536000, immutable"
    assert kept.headers["access-control-allow-origin"] == "*"
    assert (await http.get("/tidings.0000000000000000.js")).status_code == 404
    types = await http.get("/tidings.d.ts")
    assert types.status_code == 200 and b"export class Tidings" in types.content
    assert types.headers["content-type"].startswith("application/typescript")
    style = await http.get("/static/style.css", headers={"Origin": "https://shop.example"})
    assert style.status_code == 200 and style.headers["access-control-allow-origin"] == "*"
    assert style.headers["cache-control"] == "no-cache" and "etag" in style.headers


async def test_listed_origins_only_when_origins_are_set(tmp_path: Path) -> None:
    async for http in client(tmp_path, allowed_origins=["https://shop.example"]):
        for path in ("/tidings.js", "/tidings.d.ts", "/static/style.css"):
            mine = await http.get(path, headers={"Origin": "https://shop.example"})
            assert mine.headers["access-control-allow-origin"] == "https://shop.example", path
            assert "origin" in mine.headers["vary"].lower(), path
            other = await http.get(path, headers={"Origin": "https://evil.example"})
            assert other.status_code == 200, path  # the file, but no browser lets evil use it
            assert "access-control-allow-origin" not in other.headers, path


async def test_the_demo_sends_with_a_category(tmp_path: Path) -> None:
    async for http in client(tmp_path, demo=True):
        sent = await http.post(
            "/demo/notify", json={"user_id": "ann", "text": "hi", "category": "orders"}
        )
        assert sent.status_code == 201 and sent.json()["category"] == "orders"
        plain = await http.post("/demo/notify", json={"user_id": "ann", "text": "hi"})
        assert plain.status_code == 201 and plain.json()["category"] is None
        long = await http.post(
            "/demo/notify", json={"user_id": "ann", "text": "hi", "category": "x" * 65}
        )
        assert long.status_code == 422


async def test_the_react_hooks_are_served_beside_the_module(http: httpx.AsyncClient) -> None:
    hooks = await http.get("/tidings-react.js", headers={"Origin": "https://shop.example"})
    assert hooks.status_code == 200 and hooks.content == (WEB / "tidings-react.js").read_bytes()
    assert b'from "./tidings.js"' in hooks.content
    assert hooks.headers["access-control-allow-origin"] == "*"
    types = await http.get("/tidings-react.d.ts")
    assert types.status_code == 200 and b"useUnseenCount" in types.content
