"""Tenant isolation against a real ``tidings serve``: every test tries to cross users (or
services) through a frame or an endpoint and checks that nothing of the other side is read,
changed or delivered (docs/security.md)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from conftest import JWT_SECRET, ServerProcess, device_token, free_port

Frame = dict[str, Any]


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def jwt(header: Frame, claims: Frame, key: bytes | None, digest: Any = hashlib.sha256) -> str:
    """A compact JWS built by hand, so that it can be forged in every way."""
    signing = f"{b64(orjson.dumps(header))}.{b64(orjson.dumps(claims))}"
    signature = b"" if key is None else hmac.new(key, signing.encode(), digest).digest()
    return f"{signing}.{b64(signature)}"


def device_claims(user_id: str, **extra: Any) -> Frame:
    now = int(time.time())
    return {"sub": user_id, "iat": now, "exp": now + 600, **extra}


def service_claims() -> Frame:
    now = int(time.time())
    return {
        "iss": "tidings",
        "aud": "tidings:service",
        "sub": "tc_forged",
        "client_id": "tc_forged",
        "scope": "admin messages notify publish",
        "iat": now,
        "exp": now + 600,
    }


class Socket:
    """A raw device socket that keeps every frame it received in ``seen``."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.seen: list[Frame] = []
        self.welcome: Frame = {}
        self.count: Frame = {}
        self._ids = 0

    async def recv(self, timeout: float = 5.0) -> Frame:
        async with asyncio.timeout(timeout):
            frame: Frame = orjson.loads(await self.ws.recv())
        self.seen.append(frame)
        return frame

    async def expect(self, kind: str) -> Frame:
        while True:
            frame = await self.recv()
            if frame["type"] == kind:
                return frame

    async def send(self, frame: Frame) -> None:
        await self.ws.send(orjson.dumps(frame).decode())

    async def request(self, frame: Frame) -> Frame:
        """Send ``frame`` with a fresh id; its direct answer (reply, data or error)."""
        self._ids += 1
        await self.send({**frame, "id": self._ids})
        while True:
            answer = await self.recv()
            if answer.get("id") == self._ids and answer["type"] != "topicMessage":
                return answer

    async def quiet(self, wait: float = 0.4) -> list[Frame]:
        """Every frame that arrives within ``wait`` seconds."""
        frames: list[Frame] = []
        try:
            while True:
                frames.append(await self.recv(wait))
        except TimeoutError:
            return frames

    def of_type(self, kind: str) -> list[Frame]:
        return [f for f in self.seen if f["type"] == kind]


@asynccontextmanager
async def raw_socket(
    server: ServerProcess, query: str = "", headers: dict[str, str] | None = None
) -> AsyncIterator[Socket]:
    async with connect(
        server.ws_url + query,
        additional_headers=headers,
        open_timeout=5,
        close_timeout=2,
        proxy=None,
    ) as ws:
        yield Socket(ws)


@asynccontextmanager
async def device(
    server: ServerProcess,
    user_id: str,
    *,
    cookie: str | None = None,
    query: str = "",
    **claims: Any,
) -> AsyncIterator[Socket]:
    """A device authenticated at the handshake, past its welcome and first count."""
    headers = bearer(device_token(user_id, **claims))
    if cookie is not None:
        headers["Cookie"] = f"tidings_cid={cookie}"
    async with raw_socket(server, query, headers) as sock:
        sock.welcome = await sock.expect("welcome")
        sock.count = await sock.expect("newNotificationCountChanged")
        yield sock


async def refused_at_handshake(server: ServerProcess, token: str) -> int:
    """The HTTP status a handshake with ``token`` in ``Authorization`` gets."""
    with pytest.raises(InvalidStatus) as info:
        async with raw_socket(server, headers=bearer(token)):
            pass
    return info.value.response.status_code


async def closed_after_authenticate(server: ServerProcess, token: str) -> int | None:
    """The close code after sending ``token`` in an ``authenticate`` frame."""
    async with raw_socket(server) as sock:
        await sock.send({"type": "authenticate", "token": token})
        async with asyncio.timeout(5):
            await sock.ws.wait_closed()
        assert not sock.of_type("welcome"), sock.seen
        return sock.ws.close_code


def http(server: ServerProcess) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=server.url, trust_env=False, timeout=10)


async def notify(server: ServerProcess, token: str, user_id: str, data: Any) -> Frame:
    async with http(server) as client:
        response = await client.post(
            "/notify", json={"user_id": user_id, "data": data}, headers=bearer(token)
        )
    assert response.status_code == 201, response.text
    return dict(response.json())


async def publish(server: ServerProcess, token: str, topic: str, data: Any) -> int:
    async with http(server) as client:
        response = await client.post(
            "/publish", json={"topic": topic, "data": data}, headers=bearer(token)
        )
    assert response.status_code == 202, response.text
    return int(response.json()["seq"])


@pytest.fixture(scope="module")
def tokens(server: ServerProcess) -> dict[str, str]:
    """Service tokens of five distinct clients, one per role."""
    return {
        "notify": server.service_token("notify"),
        "publish": server.service_token("publish"),
        "messages_a": server.service_token("messages"),
        "messages_b": server.service_token("messages"),
        "admin": server.service_token("admin"),
    }


# --------------------------------------------------------------------------------------------
# Frames: notifications, device queues, topics, sessions, re-authentication
# --------------------------------------------------------------------------------------------


async def test_bob_cannot_read_mark_or_ack_alices_notifications(
    server: ServerProcess, tokens: dict[str, str]
) -> None:
    """getUnseen, markSeen and ack by bob never read or change alice's notifications."""
    alice, bob = uid("alice"), uid("bob")
    hers = await notify(server, tokens["notify"], alice, {"secret": "alice"})
    his = await notify(server, tokens["notify"], bob, {"mine": "bob"})
    async with device(server, alice) as a, device(server, bob, query="?deliver=1") as b:
        assert a.count["count"] == 1 and b.count["count"] == 1

        unseen = await b.request({"type": "getUnseen", "limit": 1000})
        assert [n["notification_id"] for n in unseen["notifications"]] == [his["notification_id"]]

        for ids in ([hers["notification_id"]], [his["notification_id"], hers["notification_id"]]):
            refused = await b.request({"type": "markSeen", "notification_ids": ids})
            assert refused["type"] == "error" and refused["code"] == "not_found", refused
            assert refused["notification_ids"] == [hers["notification_id"]]
            refused = await b.request({"type": "ack", "notification_ids": ids})
            assert refused["type"] == "error" and refused["code"] == "not_found", refused

        # Nothing moved on alice's side, and bob's own notification stayed unseen too.
        assert not [f for f in await a.quiet() if f["type"] == "newNotificationCountChanged"]
        mine = await a.request({"type": "getUnseen"})
        assert [(n["notification_id"], n["seen_date"]) for n in mine["notifications"]] == [
            (hers["notification_id"], None)
        ]
        assert not any(
            n["notification_id"] == hers["notification_id"]
            for f in b.of_type("notification") + b.of_type("newNotificationData")
            for n in ([f["notification"]] if "notification" in f else f["notifications"])
        )
    async with device(server, alice) as a, device(server, bob) as b:
        assert a.count["count"] == 1 and b.count["count"] == 1


@pytest.mark.parametrize("how", ["cookie", "query", "frame"])
async def test_alices_connection_id_gives_bob_a_new_device_and_none_of_her_queue(
    server: ServerProcess, tokens: dict[str, str], how: str
) -> None:
    """Bob with alice's tidings_cid gets a new device id, none of her queue, and cannot ack it."""
    alice, bob = uid("alice"), uid("bob")
    async with device(server, alice, query="?deliver=1") as a:
        cid = a.welcome["connection_id"]
    queued = [await notify(server, tokens["notify"], alice, {"n": i}) for i in range(2)]
    queued_ids = [n["notification_id"] for n in queued]

    if how == "frame":
        cm = raw_socket(server, headers={"Cookie": f"tidings_cid={cid}"})
    elif how == "cookie":
        headers = {**bearer(device_token(bob)), "Cookie": f"tidings_cid={cid}"}
        cm = raw_socket(server, "?deliver=1", headers)
    else:
        cm = raw_socket(server, f"?deliver=1&connection_id={cid}", bearer(device_token(bob)))
    async with cm as b:
        if how == "frame":
            await b.send({"type": "authenticate", "token": device_token(bob), "deliver": True})
        welcome = await b.expect("welcome")
        assert welcome["user_id"] == bob
        assert welcome["connection_id"] != cid
        assert b.ws.response is not None
        assert f"tidings_cid={cid}" not in b.ws.response.headers.get("set-cookie", "")
        await b.quiet()
        assert b.of_type("notification") == []
        empty = await b.request({"type": "getUnseen"})
        assert empty["notifications"] == []
        refused = await b.request({"type": "ack", "notification_ids": queued_ids})
        assert refused["type"] == "error" and refused["code"] == "not_found", refused
        forgotten = await b.request({"type": "forgetDevice"})
        assert forgotten == {
            "type": "reply",
            "id": forgotten["id"],
            "forgotten": welcome["connection_id"],
        }

    # Alice's device and its whole queue are still there.
    async with device(server, alice, cookie=cid, query="?deliver=1") as a:
        assert a.welcome["connection_id"] == cid
        while len(a.of_type("notification")) < 2:
            await a.recv()
        got = [f["notification"]["notification_id"] for f in a.of_type("notification")]
        assert got == queued_ids


async def test_bob_cannot_subscribe_to_or_replay_user_alice(
    server: ServerProcess, tokens: dict[str, str]
) -> None:
    """subscribe and readNotifications of user:alice are refused to bob, even granted in his JWT."""
    alice, bob = uid("alice"), uid("bob")
    private, public = f"user:{alice}", uid("room")
    await publish(server, tokens["publish"], private, {"secret": "for alice only"})
    claims = {"topics": [private, "user:*", "*"]}
    async with device(server, bob, **claims) as b, device(server, alice) as a:
        for topics in ([private], [public, private]):
            refused = await b.request({"type": "subscribe", "topics": topics})
            assert refused["type"] == "error" and refused["code"] == "forbidden_topic", refused
            assert refused["topics"] == [private]
        replay = await b.request({"type": "readNotifications", "topic": private, "since": 0})
        assert replay["type"] == "error" and replay["code"] == "forbidden_topic", replay

        # All or none: the public topic of the refused frame was not subscribed either.
        await publish(server, tokens["publish"], public, {"hello": 1})
        await publish(server, tokens["publish"], private, {"secret": 2})
        await b.quiet()
        assert b.of_type("topicMessage") == []

        # Alice herself may replay her topic (the refusal is about bob, not the topic).
        mine = await a.request({"type": "readNotifications", "topic": private, "since": 0})
        assert mine["type"] == "reply" and mine["last_seq"] == 2
        assert [f["data"] for f in a.of_type("topicMessage")] == [
            {"secret": "for alice only"},
            {"secret": 2},
        ]


async def test_bob_reusing_alices_session_id_inherits_none_of_her_topics(
    server: ServerProcess, tokens: dict[str, str]
) -> None:
    """Bob reusing alice's session_id neither follows nor drops the topics of her session."""
    alice, bob = uid("alice"), uid("bob")
    room, session = uid("room"), uid("tab")
    async with device(server, alice, query=f"?session_id={session}") as a:
        subscribed = await a.request({"type": "subscribe", "topics": [room]})
        assert subscribed["type"] == "reply"
        async with device(server, bob, query=f"?session_id={session}") as b:
            assert b.welcome["session_id"] == session
            await publish(server, tokens["publish"], room, {"to": "room"})
            while not a.of_type("topicMessage"):
                await a.recv()
            await b.quiet()
            assert b.of_type("topicMessage") == []
            unsubscribed = await b.request({"type": "unsubscribe", "topics": [room]})
            assert unsubscribed["type"] == "reply"
        # Bob's unsubscribe under the same session id did not touch alice's subscription.
        await publish(server, tokens["publish"], room, {"to": "room", "n": 2})
        while len(a.of_type("topicMessage")) < 2:
            await a.recv()


@pytest.mark.parametrize("first", ["header", "frame"])
async def test_second_authenticate_cannot_switch_user(
    server: ServerProcess, tokens: dict[str, str], first: str
) -> None:
    """A second authenticate is refused; the socket stays alice's and never sees bob's data."""
    alice, bob = uid("alice"), uid("bob")
    hers = await notify(server, tokens["notify"], alice, {"to": "alice"})
    cm = raw_socket(server, headers=bearer(device_token(alice)) if first == "header" else None)
    async with cm as sock:
        if first == "frame":
            await sock.send({"type": "authenticate", "token": device_token(alice)})
        assert (await sock.expect("welcome"))["user_id"] == alice
        assert (await sock.expect("newNotificationCountChanged"))["count"] == 1

        switch = await sock.request({"type": "authenticate", "token": device_token(bob)})
        assert switch["type"] == "error" and switch["code"] == "already_authenticated", switch

        await notify(server, tokens["notify"], bob, {"to": "bob"})
        await notify(server, tokens["notify"], bob, {"to": "bob", "n": 2})
        assert not [f for f in await sock.quiet() if f["type"] == "newNotificationCountChanged"]
        unseen = await sock.request({"type": "getUnseen"})
        assert [n["notification_id"] for n in unseen["notifications"]] == [hers["notification_id"]]
        assert all(n["user_id"] == alice for n in unseen["notifications"])


# --------------------------------------------------------------------------------------------
# Device tokens and service tokens are not interchangeable; forgeries are refused
# --------------------------------------------------------------------------------------------

SERVICE_CALLS = [
    ("POST", "/notify", {"user_id": "alice", "data": {"x": 1}}),
    ("POST", "/notify/batch", {"notifications": [{"user_id": "alice", "data": {}}]}),
    ("POST", "/publish", {"topic": "news", "data": {}}),
    (
        "POST",
        "/messages",
        {"recipients": {"user_ids": ["alice"]}, "channels": ["in_app"], "content": {"text": "x"}},
    ),
    ("GET", "/messages", None),
    ("GET", "/messages/some-id", None),
    ("GET", "/templates", None),
    ("GET", "/users/alice/preferences", None),
    ("GET", "/admin/overview", None),
    ("GET", "/log/notifications", None),
    ("GET", "/topics/user:alice/messages", None),
    ("DELETE", "/users/alice/devices/abcdefgh1234", None),
    ("DELETE", "/users/alice", None),
]


async def test_device_jwt_is_refused_on_every_service_endpoint(server: ServerProcess) -> None:
    """A device JWT, even one dressed with service claims, gets 401 on the service API."""
    dressed = device_token(
        "bob", iss="tidings", aud="tidings:service", client_id="tc_x", scope="admin notify"
    )
    async with http(server) as client:
        for token in (device_token("bob"), dressed):
            for method, path, body in SERVICE_CALLS:
                response = await client.request(method, path, json=body, headers=bearer(token))
                assert response.status_code == 401, (method, path, response.text)


async def test_service_token_is_refused_as_a_device_token(
    server: ServerProcess, tokens: dict[str, str]
) -> None:
    """A service token is refused as a device token: 401 at handshake, 4401 in frame, 401 on /me."""
    token = tokens["admin"]
    assert await refused_at_handshake(server, token) == 401
    with pytest.raises(InvalidStatus) as info:
        async with raw_socket(server, f"?access_token={token}"):
            pass
    assert info.value.response.status_code == 401
    assert await closed_after_authenticate(server, token) == 4401
    async with http(server) as client:
        response = await client.get("/me/preferences", headers=bearer(token))
    assert response.status_code == 401, response.text


def _forgeries(user_id: str) -> dict[str, str]:
    other_secret = b"not-the-server-secret-" + b"y" * 40
    genuine = device_token("someone-else")
    head, _, signature = genuine.split(".")
    return {
        "alg_none": jwt({"alg": "none", "typ": "JWT"}, device_claims(user_id), None),
        "hs256_other_secret": jwt({"alg": "HS256"}, device_claims(user_id), other_secret),
        "expired": device_token(user_id, exp=int(time.time()) - 3600),
        "hs512_right_secret": jwt(
            {"alg": "HS512"}, device_claims(user_id), JWT_SECRET.encode(), hashlib.sha512
        ),
        "rs256_header_hmac": jwt({"alg": "RS256"}, device_claims(user_id), JWT_SECRET.encode()),
        "payload_swapped": f"{head}.{b64(orjson.dumps(device_claims(user_id)))}.{signature}",
        "no_exp": jwt({"alg": "HS256"}, {"sub": user_id}, JWT_SECRET.encode()),
    }


@pytest.mark.parametrize("kind", list(_forgeries("x")))
async def test_forged_device_jwts_are_refused(server: ServerProcess, kind: str) -> None:
    """Forged device JWTs get 401 at the handshake, close 4401 after authenticate, 401 on /me."""
    token = _forgeries(uid("alice"))[kind]
    assert await refused_at_handshake(server, token) == 401
    assert await closed_after_authenticate(server, token) == 4401
    async with http(server) as client:
        response = await client.get("/me/preferences", headers=bearer(token))
    assert response.status_code == 401, response.text


async def test_forged_service_tokens_are_refused(server: ServerProcess) -> None:
    """Forged service tokens (alg none, other key, device secret) get 401 whatever their scopes."""
    forged = [
        jwt({"alg": "none", "typ": "at+jwt"}, service_claims(), None),
        jwt({"alg": "HS256", "typ": "at+jwt"}, service_claims(), b"z" * 48),
        jwt({"alg": "HS256", "typ": "at+jwt"}, service_claims(), JWT_SECRET.encode()),
    ]
    async with http(server) as client:
        for token in forged:
            for method, path, body in SERVICE_CALLS[:1] + SERVICE_CALLS[8:10]:
                response = await client.request(method, path, json=body, headers=bearer(token))
                assert response.status_code == 401, (method, path, response.text)


# --------------------------------------------------------------------------------------------
# /me and /users/{id}: preferences, contact points, topics
# --------------------------------------------------------------------------------------------


async def test_me_endpoints_never_show_or_change_alices_preferences(
    server: ServerProcess, tokens: dict[str, str]
) -> None:
    """/me/... with bob's JWT reads and writes only bob's preferences, never alice's."""
    alice, bob = uid("alice"), uid("bob")
    service = bearer(tokens["messages_a"])
    async with http(server) as client:
        for method, path, body in (
            ("PUT", f"/users/{alice}/contacts/webhook", {"address": "https://alice.example/h"}),
            ("PUT", f"/users/{alice}/channels/web_push", {"enabled": False}),
            ("PUT", f"/users/{alice}/topics/news", None),
            ("PUT", f"/users/{alice}/locale", {"locale": "fr"}),
            ("PUT", f"/users/{alice}/categories/news/email", {"enabled": False}),
        ):
            response = await client.request(method, path, json=body, headers=service)
            assert response.status_code == 200, (path, response.text)
        before = (await client.get(f"/users/{alice}/preferences", headers=service)).json()
        assert before["contacts"] == {"webhook": "https://alice.example/h"}

        me = bearer(device_token(bob))
        mine = await client.get("/me/preferences", headers=me)
        assert mine.status_code == 200
        assert mine.json() == {
            "user_id": bob,
            "channels": {},
            "topics": [],
            "contacts": {},
            "quiet_hours": None,
            "locale": None,
            "categories": {},
        }

        for method, path, body, status in (
            ("PUT", "/me/locale", {"locale": "de"}, 200),
            ("PUT", "/me/categories/news/email", {"enabled": True}, 200),
            ("DELETE", "/me/locale", None, 200),
            ("PUT", "/me/contacts/webhook", {"address": "https://bob.example/h"}, 200),
            ("DELETE", "/me/contacts/webhook", None, 200),
            ("PUT", "/me/channels/web_push", {"enabled": True}, 200),
            ("DELETE", "/me/topics/news", None, 200),
            ("PUT", f"/me/topics/user:{alice}", None, 403),
            ("PUT", f"/me/topics/{alice}", None, 200),
        ):
            response = await client.request(method, path, json=body, headers=me)
            assert response.status_code == status, (method, path, response.text)

        after = (await client.get(f"/users/{alice}/preferences", headers=service)).json()
        assert after == before
        mine = (await client.get("/me/preferences", headers=me)).json()
        assert mine["user_id"] == bob and mine["topics"] == [alice]
        assert f"user:{alice}" not in mine["topics"]


async def test_device_jwts_cannot_reach_users_routes(
    server: ServerProcess, tokens: dict[str, str]
) -> None:
    """/users/alice/... answers 401 to bob's JWT (and to alice's own), and changes nothing."""
    alice, bob = uid("alice"), uid("bob")
    service = bearer(tokens["messages_a"])
    async with http(server) as client:
        response = await client.put(
            f"/users/{alice}/contacts/webhook",
            json={"address": "https://alice.example/h"},
            headers=service,
        )
        assert response.status_code == 200
        before = (await client.get(f"/users/{alice}/preferences", headers=service)).json()
        for token in (device_token(bob), device_token(alice)):
            for method, path, body in (
                ("GET", f"/users/{alice}/preferences", None),
                ("PUT", f"/users/{alice}/contacts/webhook", {"address": "https://evil.example"}),
                ("DELETE", f"/users/{alice}/contacts/webhook", None),
                ("PUT", f"/users/{alice}/channels/in_app", {"enabled": False}),
                ("PUT", f"/users/{alice}/topics/news", None),
                ("PUT", f"/users/{alice}/locale", {"locale": "de"}),
                ("PUT", f"/users/{alice}/categories/news/email", {"enabled": True}),
                (
                    "PUT",
                    f"/users/{alice}/quiet-hours",
                    {"timezone": "UTC", "start": "01:00", "end": "02:00"},
                ),
                ("DELETE", f"/users/{alice}/devices/abcdefgh1234", None),
                ("DELETE", f"/users/{alice}", None),
                ("DELETE", f"/users/{bob}", None),
            ):
                response = await client.request(method, path, json=body, headers=bearer(token))
                assert response.status_code in (401, 403), (method, path, response.text)
        after = (await client.get(f"/users/{alice}/preferences", headers=service)).json()
        assert after == before


# --------------------------------------------------------------------------------------------
# Services: one client's messages, scopes
# --------------------------------------------------------------------------------------------


async def test_service_cannot_read_delete_or_retry_anothers_message(
    server: ServerProcess, tokens: dict[str, str]
) -> None:
    """Client A gets 404 on client B's message for GET, DELETE and retry; admin reads it."""
    a, b, admin = (bearer(tokens[k]) for k in ("messages_a", "messages_b", "admin"))
    body = {
        "recipients": {"user_ids": [uid("alice")]},
        "channels": ["in_app", "webhook"],
        "content": {"text": "for B's users"},
    }
    async with http(server) as client:
        posted = await client.post("/messages", json=body, headers=b)
        assert posted.status_code == 202, posted.text
        message_id = posted.json()["message_id"]
        path = f"/messages/{message_id}"

        for method, url in (("GET", path), ("DELETE", path), ("POST", f"{path}/retry")):
            response = await client.request(method, url, headers=a)
            assert response.status_code == 404, (method, url, response.text)
            assert response.json()["error"] == "not_found"
            assert "deliveries" not in response.json()
        listing = await client.get("/messages", headers=a)
        assert listing.status_code == 403, listing.text

        seen_by_admin = await client.get(path, headers=admin)
        assert seen_by_admin.status_code == 200, seen_by_admin.text
        assert seen_by_admin.json()["message_id"] == message_id
        assert seen_by_admin.json()["deliveries"]
        own = await client.get(path, headers=b)
        assert own.status_code == 200
        assert "deleted" not in own.json()["counts"]
        assert all(d["reason"] != "deleted_by_request" for d in own.json()["deliveries"])


async def test_notify_only_token_is_403_on_messages_templates_and_admin(
    server: ServerProcess, tokens: dict[str, str]
) -> None:
    """A notify-only token gets 403 on /messages, /templates, /admin, /log and /users routes."""
    notify_only = bearer(tokens["notify"])
    calls = [
        ("POST", "/messages", SERVICE_CALLS[3][2]),
        ("GET", "/messages", None),
        ("GET", "/messages/some-id", None),
        ("DELETE", "/messages/some-id", None),
        ("POST", "/messages/some-id/retry", None),
        ("GET", "/templates", None),
        ("GET", "/templates/welcome", None),
        ("PUT", "/templates/welcome", {"text": "hi"}),
        ("DELETE", "/templates/welcome", None),
        ("GET", "/admin/overview", None),
        ("GET", "/log/notifications", None),
        ("GET", "/users/alice/preferences", None),
        ("PUT", "/users/alice/contacts/webhook", {"address": "https://evil.example"}),
        ("GET", "/topics/user:alice/messages", None),
    ]
    async with http(server) as client:
        for method, path, body in calls:
            response = await client.request(method, path, json=body, headers=notify_only)
            assert response.status_code == 403, (method, path, response.text)
            assert response.json()["error"] == "insufficient_scope"


# --------------------------------------------------------------------------------------------
# Origin allow-list
# --------------------------------------------------------------------------------------------


async def test_foreign_origin_is_refused_with_an_allow_list(
    start_server: Callable[..., ServerProcess],
) -> None:
    """With an Origin allow-list a foreign site is refused (403) despite a valid token."""
    node = start_server(TIDINGS_ALLOWED_ORIGINS='["https://app.example"]')
    headers = {**bearer(device_token(uid("alice"))), "Origin": "https://evil.example"}
    with pytest.raises(InvalidStatus) as info:
        async with raw_socket(node, headers=headers):
            pass
    assert info.value.response.status_code == 403
    headers["Origin"] = "https://APP.example:443"
    async with raw_socket(node, headers=headers) as sock:
        assert (await sock.expect("welcome"))["type"] == "welcome"


class _Delegate(BaseHTTPRequestHandler):
    """The application's subscribe endpoint: the cookie ``app_session=<user>`` is that user."""

    def do_GET(self) -> None:
        cookies = dict(
            part.strip().partition("=")[::2] for part in self.headers.get("Cookie", "").split(";")
        )
        user_id = cookies.get("app_session", "")
        status, body = (200, {"user_id": user_id}) if user_id.startswith("u-") else (401, {})
        payload = orjson.dumps(body)
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def delegate_url() -> Iterator[str]:
    """A delegated-auth endpoint of the application, on a loopback port."""
    httpd = ThreadingHTTPServer(("127.0.0.1", free_port()), _Delegate)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/push-auth"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


async def test_delegated_cookies_admit_only_their_user_and_only_from_the_own_site(
    start_server: Callable[..., ServerProcess], delegate_url: str
) -> None:
    """Delegated cookies admit only their own user, and never from a foreign Origin."""
    node = start_server(TIDINGS_DELEGATE_URL=delegate_url)
    own = f"http://127.0.0.1:{node.port}"
    alice, bob = uid("u-alice"), uid("u-bob")
    for user_id in (alice, bob, alice):
        headers = {"Cookie": f"app_session={user_id}", "Origin": own}
        async with raw_socket(node, headers=headers) as sock:
            assert (await sock.expect("welcome"))["user_id"] == user_id

    for query in ("", f"?access_token={device_token(uid('mallory'))}"):
        headers = {"Cookie": f"app_session={alice}", "Origin": "https://evil.example"}
        with pytest.raises(InvalidStatus) as info:
            async with raw_socket(node, query, headers):
                pass
        assert info.value.response.status_code == 403

    with pytest.raises(InvalidStatus) as info:
        async with raw_socket(node, headers={"Cookie": "app_session=nobody", "Origin": own}):
            pass
    assert info.value.response.status_code == 401


async def test_a_wildcard_origin_never_lets_a_foreign_page_ride_cookies(
    start_server: Callable[..., ServerProcess], delegate_url: str
) -> None:
    """With TIDINGS_ALLOWED_ORIGINS=["*"] and delegated (cookie) auth, a foreign page is still
    refused, while the node's own site and a foreign page with an Authorization header (no
    cookie is forwarded then) are admitted."""
    node = start_server(TIDINGS_DELEGATE_URL=delegate_url, TIDINGS_ALLOWED_ORIGINS='["*"]')
    alice = uid("u-alice")
    own = f"http://127.0.0.1:{node.port}"
    async with raw_socket(node, headers={"Cookie": f"app_session={alice}", "Origin": own}) as s:
        assert (await s.expect("welcome"))["user_id"] == alice
    foreign = {"Cookie": f"app_session={alice}", "Origin": "https://evil.example"}
    with pytest.raises(InvalidStatus) as info:
        async with raw_socket(node, headers=foreign):
            pass
    assert info.value.response.status_code == 403
    mallory = uid("mallory")
    bearer = {"Origin": "https://evil.example", "Authorization": f"Bearer {device_token(mallory)}"}
    async with raw_socket(node, headers=bearer) as sock:
        assert (await sock.expect("welcome"))["user_id"] == mallory
