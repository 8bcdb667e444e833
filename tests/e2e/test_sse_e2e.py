"""Server-Sent Events on real server processes: ``GET /sse`` streams the same frames as the
socket (welcome, counts, answers, deliver mode), ``POST /sse/frames`` carries the client's,
answered on the stream; a POST to another node reaches the stream's node through the bus; bad
input (another user's stream, malformed bodies, oversize, no credentials) is refused and
changes nothing."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import orjson
import pytest

from conftest import REDIS_URL, ServerProcess, device_token, require_service
from e2e.test_client_reconnect_e2e import delegate

__all__ = ["delegate"]  # the fixture


class Events:
    """One stream's frames, by type, read as they come (frames of other types are kept for
    their own turn: a count may come before the reply that caused it)."""

    def __init__(self) -> None:
        self.kinds: dict[str, asyncio.Queue[dict[str, Any]]] = {}
        self.closes: list[dict[str, Any]] = []
        self.reader: asyncio.Future[None] = asyncio.Future()

    def of(self, kind: str) -> asyncio.Queue[dict[str, Any]]:
        return self.kinds.setdefault(kind, asyncio.Queue())

    async def next(self, kind: str, timeout: float = 10.0) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            getting = asyncio.ensure_future(self.of(kind).get())
            await asyncio.wait({getting, self.reader}, return_when=asyncio.FIRST_COMPLETED)
            if not getting.done():
                getting.cancel()
                self.reader.result()  # the stream ended: its error, if any
                raise AssertionError(f"the stream ended before a {kind} frame")
            return getting.result()


@contextlib.asynccontextmanager
async def stream(
    http: httpx.AsyncClient,
    url: str,
    user: str,
    query: str = "",
    headers: dict[str, str] | None = None,
) -> AsyncIterator[Events]:
    events = Events()
    headers = headers or {"Authorization": f"Bearer {device_token(user)}"}
    headers = {**headers, "Accept": "text/event-stream"}

    async def read() -> None:
        async with http.stream("GET", f"{url}/sse{query}", headers=headers) as answer:
            assert answer.status_code == 200, await answer.aread()
            assert answer.headers["content-type"].startswith("text/event-stream")
            kind = "message"
            async for line in answer.aiter_lines():
                if line.startswith("event: "):
                    kind = line[7:]
                elif line.startswith("data: "):
                    data = orjson.loads(line[6:])
                    if kind == "close":
                        events.closes.append(data)
                    else:
                        events.of(str(data.get("type"))).put_nowait(data)
                    kind = "message"

    reader = events.reader = asyncio.ensure_future(read())
    try:
        yield events
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, httpx.HTTPError):
            await reader


def post(url: str, user: str, body: Any, raw: bytes | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {device_token(user)}"}
    if raw is not None:
        return httpx.post(f"{url}/sse/frames", content=raw, headers=headers)
    return httpx.post(f"{url}/sse/frames", json=body, headers=headers)


async def test_a_stream_carries_the_socket_s_frames(
    start_server: Callable[..., ServerProcess],
) -> None:
    node = start_server()
    ann, bob = f"ann-{uuid.uuid4().hex[:6]}", f"bob-{uuid.uuid4().hex[:6]}"
    service = {"Authorization": f"Bearer {node.service_token('notify')}"}
    async with httpx.AsyncClient(timeout=None) as http, stream(http, node.url, ann) as events:
        welcome = await events.next("welcome")
        assert welcome["user_id"] == ann
        first = await events.next("newNotificationCountChanged")
        assert (first["count"], first["version"]) == (0, 0)
        sent = await http.post(
            f"{node.url}/notify", json={"user_id": ann, "data": {"n": 1}}, headers=service
        )
        assert sent.status_code == 201
        assert (await events.next("newNotificationCountChanged"))["count"] == 1
        cid = welcome["connection_id"]
        answer = await asyncio.to_thread(
            post, node.url, ann, {"connection_id": cid, "frames": [{"type": "getUnseen", "id": 7}]}
        )
        assert answer.status_code == 202 and answer.json() == {"accepted": 1}
        data = await events.next("newNotificationData")
        assert data["id"] == 7 and data["notifications"][0]["data"] == {"n": 1}
        nid = data["notifications"][0]["notification_id"]
        mark = {"type": "markSeen", "id": 8, "notification_ids": [nid]}
        assert (
            await asyncio.to_thread(post, node.url, ann, {"connection_id": cid, "frames": [mark]})
        ).status_code == 202
        assert (await events.next("reply"))["marked"] == 1
        assert (await events.next("newNotificationCountChanged"))["count"] == 0

        # Bad input: each refused, nothing changed, the stream stays.
        refused = [
            (post, (node.url, bob, {"connection_id": cid, "frames": [mark]}), 404),
            (post, (node.url, ann, {"connection_id": cid, "frames": []}), 422),
            (post, (node.url, ann, {"connection_id": cid, "frames": ["x"]}), 422),
            (post, (node.url, ann, {"frames": [mark]}), 422),
            (post, (node.url, ann, None, b"{not json"), 422),
            (post, (node.url, ann, {"connection_id": cid, "frames": [mark] * 101}), 422),
        ]
        for function, args, status in refused:
            answer = await asyncio.to_thread(function, *args)
            assert answer.status_code == status, (args, answer.text)
            assert answer.json()["error"], answer.text
        nobody = await asyncio.to_thread(
            httpx.post, f"{node.url}/sse/frames", json={"connection_id": cid, "frames": [mark]}
        )
        assert nobody.status_code == 401
        huge = {"connection_id": cid, "frames": [{"type": "getUnseen", "pad": "x" * 2_000_000}]}
        assert (await asyncio.to_thread(post, node.url, ann, huge)).status_code == 413
        # A malformed frame is answered on the stream as on a socket.
        bad = {"connection_id": cid, "frames": [{"type": "markSeen", "id": 9}]}
        assert (await asyncio.to_thread(post, node.url, ann, bad)).status_code == 202
        assert (await events.next("error"))["code"] == "invalid_frame"
        ping = {"connection_id": cid, "frames": [{"type": "getUnseen", "id": 10}]}
        assert (await asyncio.to_thread(post, node.url, ann, ping)).status_code == 202
        assert (await events.next("newNotificationData"))["notifications"] == []
    no_token = await asyncio.to_thread(httpx.get, f"{node.url}/sse", timeout=5)
    assert no_token.status_code == 401


async def test_deliver_mode_and_a_post_to_another_node(
    postgres_url: str, start_server: Callable[..., ServerProcess]
) -> None:
    require_service("Redis", REDIS_URL)
    bus = f"{REDIS_URL}?prefix=s{uuid.uuid4().hex[:8]}:"
    a, b = (start_server(TIDINGS_STORE=postgres_url, TIDINGS_BUS=bus) for _ in range(2))
    ann = f"ann-{uuid.uuid4().hex[:6]}"
    service = {"Authorization": f"Bearer {a.service_token('notify')}"}
    async with httpx.AsyncClient(timeout=None) as http:
        async with stream(http, a.url, ann, "?deliver=1") as events:
            cid = (await events.next("welcome"))["connection_id"]
            sent = await http.post(
                f"{b.url}/notify", json={"user_id": ann, "data": {"n": 2}}, headers=service
            )
            assert sent.status_code == 201
            note = (await events.next("notification"))["notification"]
            assert note["data"] == {"n": 2}
            ack = {"type": "ack", "id": 3, "notification_ids": [note["notification_id"]]}
            answer = await asyncio.to_thread(
                post, b.url, ann, {"connection_id": cid, "frames": [ack]}
            )
            assert answer.status_code == 202, answer.text
            assert (await events.next("reply"))["acked"] == 1
        # Acknowledged through the other node: a new stream of the device gets nothing again.
        async with stream(http, a.url, ann, f"?deliver=1&connection_id={cid}") as again:
            assert (await again.next("welcome"))["connection_id"] == cid
            await again.next("newNotificationCountChanged")
            with pytest.raises(TimeoutError):
                await again.next("notification", timeout=1.0)


async def test_the_application_s_cookie_authenticates_a_stream_and_its_frames(
    start_server: Callable[..., ServerProcess], delegate: tuple[str, list[dict[str, str]]]
) -> None:
    """Delegated mode: the application's cookie opens the stream and carries its frames;
    another user's cookie cannot post to it, nor a page of another site riding the cookie."""
    url, _ = delegate
    node = start_server(TIDINGS_DELEGATE_URL=url, TIDINGS_DELEGATE_CACHE_TTL="0")
    alice, bob = f"u-alice-{uuid.uuid4().hex[:6]}", f"u-bob-{uuid.uuid4().hex[:6]}"
    cookie = {"Cookie": f"app_session={alice}"}
    async with (
        httpx.AsyncClient(timeout=None) as http,
        stream(http, node.url, alice, headers=cookie) as events,
    ):
        welcome = await events.next("welcome")
        assert welcome["user_id"] == alice
        frames = {
            "connection_id": welcome["connection_id"],
            "frames": [{"type": "getUnseen", "id": 4}],
        }
        mine = await http.post(f"{node.url}/sse/frames", json=frames, headers=cookie)
        assert mine.status_code == 202, mine.text
        assert (await events.next("newNotificationData"))["id"] == 4
        other = {"Cookie": f"app_session={bob}"}
        theirs = await http.post(f"{node.url}/sse/frames", json=frames, headers=other)
        assert theirs.status_code == 404
        riding = {**cookie, "Origin": "http://elsewhere.example"}
        refused = await http.post(f"{node.url}/sse/frames", json=frames, headers=riding)
        assert refused.status_code == 403
        async with http.stream("GET", f"{node.url}/sse", headers=riding) as answer:
            assert answer.status_code == 403
        nobody = await http.post(
            f"{node.url}/sse/frames", json=frames, headers={"Cookie": "app_session=x"}
        )
        assert nobody.status_code == 401
