"""Random frame sequences against a live ``tidings serve`` (docs/protocol.md as the oracle).

Hypothesis builds sequences of WebSocket messages for three connections (a device with a header
token, a deliver-mode device with a query token and a fixed ``connection_id``, and a socket that
must send ``authenticate`` first), interleaved with ``POST /notify`` and ``POST /publish``.
Messages are valid frames of every client type with random and edge field values, malformed
JSON, wrong types, unknown types, huge ids, deeply nested values, binary messages, fragmented
messages, invalid UTF-8 and frames around ``max_frame_size`` (4 KiB here) and the transport's
cut-off (1 MiB). Each message is sent, its direct answer awaited and checked; bursts are sent
back to back and their answers checked in order.

Properties: the server never crashes; every server frame is a JSON object with a known ``type``;
every ``error`` has a documented ``code`` (never ``internal_error``) and a ``message``; a direct
answer repeats the frame's ``id``; a connection closes only with a documented code for the
message that caused it (1009 past the cut-off, 1007 for invalid UTF-8 as RFC 6455 requires,
1000 after ``forgetDevice``, 4401 for a bad ``authenticate``); each still-open connection answers
a probe at the end; ``/notify`` and ``/publish`` never answer 5xx; once the clients are gone,
``/health`` reports 0 connections and ``/metrics`` (when present) 0 connections and as many
asyncio tasks as before the fuzz. Failures found are kept, minimised, in ``FOUND``.

About 10 s with the default 40 examples; ``TIDINGS_FUZZ_EXAMPLES=800`` for a longer hunt.
A failing run also shrinks its example, which can take a few minutes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from conftest import ServerProcess, device_token

MAX_FRAME = 4096
CUT_OFF = 1024 * 1024  # max(4 x max_frame_size, 1 MiB): the transport closes with 1009 past it
ANSWER_TIMEOUT = 10.0
NESTED_DEPTH = 3000
DIRECT = {"reply", "newNotificationData", "error"}
SERVER_TYPES = DIRECT | {
    "welcome",
    "newNotificationCountChanged",
    "notification",
    "queueGap",
    "topicMessage",
}
ERROR_CODES = {
    "invalid_json",
    "invalid_frame",
    "unknown_type",
    "frame_too_large",
    "binary_frame",
    "not_authenticated",
    "already_authenticated",
    "not_found",
    "not_deliver_mode",
    "forbidden_topic",
    "unavailable",
}
# 400: a body nested too deep for any JSON reader to parse (FastAPI's answer, which the fast
# routes give too)
NOTIFY_STATUSES = {200, 201, 400, 409, 413, 422}
PUBLISH_STATUSES = {202, 400, 413, 422}
OMIT = object()  # a field left out
SAME_OR_NULL = object()  # the answer may carry the id or null (a frame too large to be read)
SETTINGS = settings(
    max_examples=int(os.environ.get("TIDINGS_FUZZ_EXAMPLES", "40")),  # more for a long hunt
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


# Messages and actions. Placeholders (@A, @B, @tokB, @n0..@n3, @cid) are replaced per example.


@dataclass(frozen=True)
class Msg:
    """One WebSocket message: text, bytes (binary), a list of text fragments, or invalid UTF-8.
    With ``size``, the text's ``@pad`` is filled with ``pad`` characters (then ASCII) up to
    ``size`` bytes, so that big frames do not bloat the examples hypothesis prints."""

    payload: str | bytes | tuple[str, ...]
    bad_utf8: bool = False
    size: int = 0
    pad: str = "x"


@dataclass(frozen=True)
class Send:
    conn: int
    msg: Msg


@dataclass(frozen=True)
class Burst:
    conn: int
    msgs: tuple[Msg, ...]


@dataclass(frozen=True)
class Http:
    path: str
    body: bytes


@dataclass(frozen=True)
class Ping:
    conn: int


# Strategies. Each field has values the contract accepts ("valid") and values of any shape.

leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
json_value = st.recursive(
    leaf,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=10,
)
edge_ints = st.sampled_from([0, -1, 1, 2**31, 2**53 - 1, 2**53, -(2**53), 2**63 - 1, 2**63, 2**64])
name_text = st.text(
    st.characters(min_codepoint=32, exclude_characters="\x7f", codec="utf-8"), min_size=1
)
good_ids = st.one_of(
    st.just(OMIT), st.integers(-(2**53) + 1, 2**53 - 1), st.text(max_size=128), st.just("i" * 128)
)
frame_ids = st.one_of(
    good_ids, st.none(), st.integers(), edge_ints, st.just("i" * 129), st.text(), json_value
)
present_ids = frame_ids.filter(lambda value: value is not OMIT)
known_ids = st.sampled_from(["@n0", "@n1", "@n2", "@n3"])
good_nid = st.one_of(known_ids, known_ids, name_text.filter(lambda s: len(s) <= 128))
any_nid = st.one_of(good_nid, st.text(max_size=130), st.sampled_from(["", "a\x00b"]), leaf)
good_topic = st.one_of(
    st.sampled_from(["fz-pet", "fz-news", "user:@A", "user:@B", "user:someone-else", "t" * 200]),
    name_text.filter(lambda s: len(s) <= 200),
)
any_topic = st.one_of(good_topic, st.text(max_size=201), st.sampled_from(["t" * 201, "a\nb", ""]))
good_since = st.one_of(st.integers(0, 5), st.integers(0, 2**63 - 1), st.just(2**63 - 1))
VALID: dict[str, dict[str, Any]] = {
    "authenticate": {
        "token": st.just("@tokB"),
        "session_id": name_text.filter(lambda s: len(s) <= 128),
        "deliver": st.booleans(),
    },
    "getUnseen": {"limit": st.integers(1, 1000)},
    "markSeen": {"notification_ids": st.lists(good_nid, min_size=1, max_size=5)},
    "ack": {"notification_ids": st.lists(good_nid, min_size=1, max_size=5)},
    "forgetDevice": {},
    "subscribe": {"topics": st.lists(good_topic, min_size=1, max_size=4)},
    "unsubscribe": {"topics": st.lists(good_topic, min_size=1, max_size=4)},
    "readNotifications": {"topic": good_topic, "since": good_since},
}
ANY_SHAPE: dict[str, dict[str, Any]] = {
    "authenticate": {
        "token": st.one_of(st.sampled_from(["@tokB", "not-a-jwt", "", "a.b.c"]), st.text(), leaf),
        "session_id": st.one_of(st.text(max_size=130), leaf),
        "deliver": st.one_of(st.booleans(), leaf),
    },
    "getUnseen": {"limit": st.one_of(st.integers(-3, 1003), edge_ints, json_value)},
    "markSeen": {"notification_ids": st.one_of(st.lists(any_nid, max_size=5), json_value)},
    "ack": {"notification_ids": st.one_of(st.lists(any_nid, max_size=5), json_value)},
    "forgetDevice": {},
    "subscribe": {"topics": st.one_of(st.lists(any_topic, max_size=4), json_value)},
    "unsubscribe": {"topics": st.one_of(st.just(["fz-pet"] * 101), json_value)},
    "readNotifications": {
        "topic": st.one_of(any_topic, leaf),
        "since": st.one_of(st.integers(), edge_ints, leaf),
    },
}
SAFE_TYPES = sorted(set(VALID) - {"authenticate", "forgetDevice"})


def dump(value: Any) -> str:
    """JSON text (the stdlib writes integers of any size)."""
    return json.dumps(value, ensure_ascii=False)


@st.composite
def frame_dict(draw: st.DrawFn, types: list[str], valid: bool) -> dict[str, Any]:
    """A client frame of one of ``types``: valid, or with fields absent or of any shape."""
    kind = draw(st.sampled_from(types))
    frame: dict[str, Any] = {"type": kind}
    frame_id = draw(good_ids if valid else frame_ids)
    if frame_id is not OMIT:
        frame["id"] = frame_id
    fields = (VALID if valid else ANY_SHAPE)[kind]
    for name, values in fields.items():
        if valid or draw(st.integers(0, 3)):
            frame[name] = draw(values)
    if draw(st.integers(0, 5)) == 0:  # unknown fields must be ignored
        frame[draw(st.sampled_from(["x", "extra", "data"]))] = draw(json_value)
    return frame


def frames(types: list[str]) -> st.SearchStrategy[str]:
    """Frame texts, half of them valid."""
    return st.builds(dump, st.one_of(frame_dict(types, True), frame_dict(types, False)))


def nested(depth: int, kind: str) -> str:
    return "[" * depth + "]" * depth if kind == "list" else '{"a":' * depth + "1" + "}" * depth


@st.composite
def odd_text(draw: st.DrawFn) -> str:
    """Malformed JSON, wrong shapes, unknown types, deep nesting."""
    frame = draw(frames(SAFE_TYPES))
    depth = draw(st.sampled_from([10, 500, 1023, 1024, 1025, 1900]))
    where = draw(st.sampled_from(["list", "dict"]))
    return draw(
        st.one_of(
            st.text(max_size=60),
            st.just(frame[: draw(st.integers(0, max(0, len(frame) - 1)))]),  # truncated
            st.sampled_from(["", "null", "[]", "{}", '"getUnseen"', "NaN", "{'type':'x'}"]),
            st.just(frame + draw(st.sampled_from([" x", "}", ",", "\x00"]))),
            st.builds(lambda t, i: dump({"type": t, "id": i}), st.text(max_size=30), present_ids),
            st.builds(lambda v: dump({"type": v, "id": 1}), json_value),
            st.just('{"type":"getUnseen","id":7,"x":' + nested(depth, where) + "}"),
            st.just('{"type":"getUnseen","id":' + nested(depth, where) + "}"),
            st.just(nested(depth, where)),
        )
    )


def sized(size: int, pad: str = "x") -> Msg:
    """A getUnseen frame of exactly ``size`` bytes."""
    return Msg('{"type":"getUnseen","id":"big","pad":"@pad"}', size=size, pad=pad)


def padded(text: str, size: int, pad: str) -> str:
    head, _, tail = text.partition("@pad")
    room = size - len((head + tail).encode())
    filler = pad * (room // len(pad.encode()))
    return head + filler + "x" * (room - len(filler.encode())) + tail


def fragments(text: str, parts: int) -> Msg:
    step = max(1, len(text) // parts)
    return Msg(tuple(text[i : i + step] for i in range(0, len(text), step)) or ("",))


def _bytes(text: str) -> bytes:
    """UTF-8, lone surrogates included (as invalid bytes): hypothesis may draw them."""
    return text.encode("utf-8", "surrogatepass")


def safe_msg() -> st.SearchStrategy[Msg]:
    """A message that must never close the connection."""
    return st.one_of(
        st.builds(Msg, frames(SAFE_TYPES)),
        st.builds(Msg, frames(SAFE_TYPES)),
        st.builds(Msg, odd_text()),
        st.builds(
            sized,
            st.sampled_from([MAX_FRAME - 1, MAX_FRAME, MAX_FRAME + 1, 20_000, CUT_OFF]),
            st.sampled_from(["x", "é"]),  # characters and bytes differ
        ),
        st.builds(Msg, st.one_of(st.binary(max_size=64), frames(SAFE_TYPES).map(_bytes))),
        st.builds(fragments, frames(SAFE_TYPES), st.integers(2, 5)),
    )


def closing_msg() -> st.SearchStrategy[Msg]:
    """A message that may close the connection: authenticate, forgetDevice, too big, not
    UTF-8."""
    return st.one_of(
        st.builds(Msg, frames(["authenticate"])),
        st.builds(Msg, frames(["forgetDevice"])),
        st.builds(sized, st.sampled_from([CUT_OFF + 1, 2 * CUT_OFF])),
        st.builds(
            lambda b: Msg(b'{"type":"getUnseen","x":"' + b + b'"}', bad_utf8=True),
            st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80"]),
        ),
    )


@st.composite
def http_body(draw: st.DrawFn, path: str) -> bytes:
    """A /notify or /publish body: mostly valid, sometimes odd, garbage or deeply nested."""
    if path == "/notify":
        body: Any = {"user_id": draw(st.sampled_from(["@A", "@A", "@B", "", "u\x00"]))}
        body["data"] = draw(st.one_of(json_value, st.just({"pad": "x" * 70_000})))
        if draw(st.integers(0, 3)):
            body["notification_id"] = draw(st.one_of(known_ids, any_nid))
    else:
        body = {"topic": draw(st.one_of(st.sampled_from(["fz-pet", "fz-news"]), any_topic))}
        body["data"] = draw(json_value)
        if draw(st.booleans()):
            body["origin_session_id"] = draw(st.sampled_from(["@A-s0", "x"]))
    raw = draw(st.sampled_from(["json"] * 6 + ["garbage", "nested"]))
    if raw == "garbage":
        return draw(st.binary(max_size=40))
    if raw == "nested":
        data = nested(NESTED_DEPTH, "list")
        return ('{"user_id":"@A","topic":"fz-pet","data":' + data + "}").encode()
    return _bytes(dump(body))


@st.composite
def actions(draw: st.DrawFn) -> list[Send | Burst | Http | Ping]:
    """A sequence of messages on three connections, bursts, HTTP calls and pings."""
    steps: list[Send | Burst | Http | Ping] = []
    kinds = ["send"] * 4 + ["close", "burst", "/notify", "/notify", "/publish", "ping"]
    for _ in range(draw(st.integers(1, 12))):
        kind = draw(st.sampled_from(kinds))
        conn = draw(st.integers(0, 2))
        if kind == "send":
            steps.append(Send(conn, draw(safe_msg())))
        elif kind == "close":
            steps.append(Send(conn, draw(closing_msg())))
        elif kind == "burst":
            steps.append(Burst(conn, tuple(draw(st.lists(safe_msg(), min_size=2, max_size=6)))))
        elif kind == "ping":
            steps.append(Ping(conn))
        else:
            steps.append(Http(kind, draw(http_body(kind))))
    return steps


# The oracle.


def valid_id(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return -(2**53) < value < 2**53
    return isinstance(value, str) and len(value) <= 128


def expected_id(msg: Msg, text: str | None) -> Any:
    """The id the direct answer must carry, per docs/protocol.md."""
    if text is None or len(text.encode()) > MAX_FRAME:
        return SAME_OR_NULL if text is not None else None  # binary, or never parsed
    try:
        frame = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(frame, dict):
        return None
    value = frame.get("id")
    if isinstance(value, int) and not isinstance(value, bool) and not valid_id(value):
        return ("big", value)  # the docs say "an integer"; the server takes |id| < 2**53
    return value if valid_id(value) else None


def frame_type(text: str | None) -> Any:
    try:
        frame = orjson.loads(text or "")
    except orjson.JSONDecodeError:
        return None
    return frame.get("type") if isinstance(frame, dict) else None


def check_id(answer: dict[str, Any], expected: Any, msg: Msg) -> None:
    got = answer.get("id", "<missing>")
    if isinstance(expected, tuple):  # an integer id past 2**53: echoed, or refused with null
        ok = got == expected[1] or (answer["type"] == "error" and got is None)
    elif expected is SAME_OR_NULL:
        ok = True
    else:
        ok = got == expected and type(got) is type(expected)
    assert ok, f"answer {answer} to {msg!r}: id should be {expected!r}"


def check_server_frame(raw: str | bytes) -> dict[str, Any]:
    """Every server frame is a JSON text object with a known string type."""
    assert isinstance(raw, str), f"binary frame from the server: {raw!r}"
    frame = orjson.loads(raw)
    assert isinstance(frame, dict) and isinstance(frame.get("type"), str), raw
    assert frame["type"] in SERVER_TYPES, f"unknown server frame {raw}"
    if frame["type"] == "error":
        assert frame.get("code") in ERROR_CODES, f"undocumented or internal error: {raw}"
        assert isinstance(frame.get("message"), str) and frame["message"], raw
    return frame


# Clients.


@dataclass
class Ctx:
    """Per-example names: users, tokens, notification ids, a deliver-mode connection id."""

    server: ServerProcess
    prefix: str = field(default_factory=lambda: uuid.uuid4().hex[:10])

    def __post_init__(self) -> None:
        self.users = [f"fz-{self.prefix}-a", f"fz-{self.prefix}-b"]
        self.subs = {
            "@tokB": device_token(self.users[1]),
            "@A": self.users[0],
            "@B": self.users[1],
            "@cid": f"cid-{self.prefix}",
            **{f"@n{i}": f"{self.prefix}-{i}" for i in range(4)},
        }
        self.pattern = re.compile("|".join(re.escape(k) for k in sorted(self.subs, key=len)[::-1]))

    def fill(self, text: str) -> str:
        return self.pattern.sub(lambda m: self.subs[m.group()], text)


@dataclass
class Device:
    """One of the three connection slots; reconnects after a documented close."""

    slot: int
    ctx: Ctx
    ws: ClientConnection | None = None
    authed: bool = False
    version: int = -1
    seqs: set[tuple[str, int]] = field(default_factory=set)

    async def open(self) -> ClientConnection:
        if self.ws is not None:
            return self.ws
        url, headers = self.ctx.server.ws_url, {}
        token = device_token(self.ctx.users[0])
        if self.slot == 0:
            headers["Authorization"] = f"Bearer {token}"
        elif self.slot == 1:
            url += f"?access_token={token}&deliver=1&connection_id={self.ctx.subs['@cid']}"
        self.ws = await connect(url, additional_headers=headers, max_size=None, ping_interval=None)
        self.authed, self.version, self.seqs = self.slot != 2, -1, set()
        if self.authed:
            welcome = check_server_frame(await asyncio.wait_for(self.ws.recv(), ANSWER_TIMEOUT))
            assert welcome["type"] == "welcome", welcome
        return self.ws

    def observe(self, frame: dict[str, Any]) -> None:
        """Frames that are not direct answers: counts, deliveries, topic messages."""
        kind = frame["type"]
        assert self.authed and kind != "welcome", f"unexpected {frame} (authed={self.authed})"
        if kind == "newNotificationCountChanged":
            assert frame["count"] >= 0 and frame["version"] >= self.version, frame
            self.version = frame["version"]
        elif kind == "notification":
            user = self.ctx.users[1 if self.slot == 2 else 0]
            assert frame["notification"]["user_id"] == user, f"{frame} on {self.slot}"
        elif kind == "topicMessage":
            key = (frame["topic"], frame["seq"])
            assert key not in self.seqs, f"seq received twice: {frame}"
            self.seqs.add(key)
        elif kind == "queueGap":
            assert frame["reason"] in ("max_length", "max_age"), frame

    async def answer(self) -> dict[str, Any] | None:
        """The next direct answer, or None when the server closed the connection."""
        assert self.ws is not None
        while True:
            try:
                raw = await asyncio.wait_for(self.ws.recv(), ANSWER_TIMEOUT)
            except ConnectionClosed:
                return None
            frame = check_server_frame(raw)
            if frame["type"] in DIRECT or (frame["type"] == "welcome" and not self.authed):
                return frame
            self.observe(frame)

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
            self.ws = None


def render(msg: Msg, ctx: Ctx) -> tuple[str | bytes | list[str], str | None]:
    """What to send for ``msg`` and its text (None for a binary message)."""
    payload = msg.payload
    if isinstance(payload, tuple):
        parts = [ctx.fill(p) for p in payload]
        return parts, "".join(parts)
    if isinstance(payload, bytes):
        return payload, payload.decode(errors="replace") if msg.bad_utf8 else None
    text = ctx.fill(payload)
    if msg.size:
        text = padded(text, msg.size, msg.pad)
    return text, text


async def send_msg(ws: ClientConnection, msg: Msg, ctx: Ctx) -> str | None:
    """Send ``msg``; returns its text (None for binary)."""
    wire, text = render(msg, ctx)
    await ws.send(wire, text=True if msg.bad_utf8 else None)
    return text


def allowed_close(msg: Msg, text: str | None, authed: bool) -> int | None:
    """The close code this message may cause (None: it must be answered)."""
    if msg.bad_utf8:
        return 1007  # RFC 6455 section 8.1, as docs/protocol.md lists it
    if text is not None and len(text.encode()) > CUT_OFF:
        return 1009
    if not authed and frame_type(text) == "authenticate":
        return 4401
    return None


async def exchange(device: Device, msg: Msg) -> None:
    """Send one message and check what comes back."""
    ws = await device.open()
    wire, text = render(msg, device.ctx)
    with contextlib.suppress(ConnectionClosed):  # the server may close before the end of it
        await ws.send(wire, text=True if msg.bad_utf8 else None)
    closing = allowed_close(msg, text, device.authed)
    answer = await device.answer()
    event(f"close {ws.close_code}" if answer is None else f"{answer['type']} {answer.get('code')}")
    if answer is None:
        code = ws.close_code
        assert closing is not None and code == closing, (
            f"connection {device.slot} closed with {code} after {msg!r} (allowed: {closing})"
        )
        device.ws = None
        return
    assert closing is None or closing == 4401, f"{msg!r} answered {answer}, expected {closing}"
    check_answer(device, msg, text, answer)
    if answer["type"] == "reply" and "forgotten" in answer:
        event("forgotten, then close")
        assert await device.answer() is None and ws.close_code == 1000, "forgetDevice: no 1000"
        device.ws = None


def check_answer(device: Device, msg: Msg, text: str | None, answer: dict[str, Any]) -> None:
    if answer["type"] == "welcome":
        assert frame_type(text) == "authenticate", f"welcome answered {msg!r}"
        assert answer["user_id"] == device.ctx.users[1], answer
        device.authed = True
        return
    check_id(answer, expected_id(msg, text), msg)
    if not device.authed:
        assert answer["type"] == "error", f"{answer} before authenticate, to {msg!r}"
    elif frame_type(text) == "authenticate" and answer["type"] == "error":
        assert answer["code"] != "not_authenticated", answer


async def burst(device: Device, msgs: tuple[Msg, ...]) -> None:
    """Messages sent back to back; answers must come in order, one each."""
    ws = await device.open()
    texts = [await send_msg(ws, msg, device.ctx) for msg in msgs]
    for msg, text in zip(msgs, texts, strict=True):
        answer = await device.answer()
        assert answer is not None, f"closed ({ws.close_code}) in a burst, at {msg!r}"
        check_answer(device, msg, text, answer)


async def probe(device: Device) -> None:
    """A still-open connection answers a frame at the end."""
    if device.ws is None:
        return
    await device.ws.send('{"type":"getUnseen","id":"probe","limit":1}')
    answer = await device.answer()
    assert answer is not None, f"connection {device.slot} closed ({device.ws.close_code})"
    want = "newNotificationData" if device.authed else "error"
    assert (answer["type"], answer["id"]) == (want, "probe"), answer


async def post(http: httpx.AsyncClient, step: Http, ctx: Ctx, tokens: dict[str, str]) -> None:
    scope = "notify" if step.path == "/notify" else "publish"
    body = ctx.fill(step.body.decode(errors="replace")).encode()
    response = await http.post(
        step.path,
        content=body,
        headers={"Authorization": f"Bearer {tokens[scope]}", "Content-Type": "application/json"},
    )
    allowed = NOTIFY_STATUSES if scope == "notify" else PUBLISH_STATUSES
    assert response.status_code in allowed, (
        f"POST {step.path} {body[:300]!r} -> {response.status_code} {response.text[:300]}"
    )


async def run_steps(server: ServerProcess, tokens: dict[str, str], steps: list[Any]) -> None:
    ctx = Ctx(server)
    devices = [Device(i, ctx) for i in range(3)]
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
            for step in steps:
                if isinstance(step, Send):
                    await exchange(devices[step.conn], step.msg)
                elif isinstance(step, Burst):
                    await burst(devices[step.conn], step.msgs)
                elif isinstance(step, Ping):
                    ws = await devices[step.conn].open()
                    await asyncio.wait_for(await ws.ping(), ANSWER_TIMEOUT)
                else:
                    await post(http, step, ctx, tokens)
            for device in devices:
                await probe(device)
    finally:
        for device in devices:
            await device.close()


# Server state.


def health(server: ServerProcess) -> dict[str, Any]:
    response = httpx.get(f"{server.url}/health", timeout=10)
    assert response.status_code == 200, response.text
    return dict(response.json())


def metrics(server: ServerProcess) -> dict[str, float] | None:
    """``GET /metrics`` as {name: value} (labels dropped, values summed), None on 404."""
    response = httpx.get(f"{server.url}/metrics", timeout=10)
    if response.status_code == 404:
        return None
    assert response.status_code == 200, response.text
    values: dict[str, float] = {}
    for line in response.text.splitlines():
        found = re.match(r"^([a-zA-Z_:][\w:]*)(?:\{[^}]*\})?\s+(\S+)", line)
        if found and not line.startswith("#"):
            values[found[1]] = values.get(found[1], 0.0) + float(found[2])
    return values


def wait_until(predicate: Any, seconds: float = 5.0) -> Any:
    deadline = time.monotonic() + seconds
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.1)


def assert_alive_and_clean(server: ServerProcess) -> None:
    assert server.process is not None and server.process.poll() is None, "server exited"
    drained = wait_until(lambda: health(server)["connections"] == 0)
    assert drained, f"connections left open: {health(server)}"


@dataclass
class Fuzzed:
    server: ServerProcess
    tokens: dict[str, str]
    before: dict[str, float] | None


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fuzzed]:
    """A server with a 4 KiB frame limit, its service tokens and its metrics before the fuzz."""
    db: Path = tmp_path_factory.mktemp("fuzz") / "tidings.db"
    env = {"TIDINGS_MAX_FRAME_SIZE": str(MAX_FRAME), "TIDINGS_AUTH_TIMEOUT": "60"}
    proc = ServerProcess(db, env=env).start()
    try:
        tokens = {s: proc.service_token(s) for s in ("notify", "publish")}
        yield Fuzzed(proc, tokens, metrics(proc))
    finally:
        if proc.process is not None and proc.process.poll() is None:
            proc.stop()
        else:
            print(proc.log()[-4000:])


@pytest.mark.timeout(240)  # a failing run shrinks; a passing one takes about half a minute
@SETTINGS
@given(steps=actions())
def test_random_frame_sequences_keep_the_contract(fuzzed: Fuzzed, steps: list[Any]) -> None:
    """Random frame sequences get contract answers, documented closes only, and no leak."""
    asyncio.run(run_steps(fuzzed.server, fuzzed.tokens, steps))
    assert_alive_and_clean(fuzzed.server)


# Failures the fuzz found, minimised.
FOUND = [
    # A body nested >= ~976 deep: pydantic refuses it (json_invalid), then the 422's
    # error locator re-parses it with the stdlib json module, whose RecursionError is not a
    # ValueError: 500 instead of 422.
    ("/notify", b"[" * 1000 + b"]" * 1000),
    ("/publish", b'{"topic":"t","data":' + b"[" * 1000 + b"]" * 1000 + b"}"),
    # An integer outside [-2**63, 2**64) where a string is expected: the 422 body repeats the
    # input, and orjson cannot write it (its default= is not called for ints): 500.
    ("/notify", b'{"user_id":"u","data":null,"notification_id":18446744073709551616}'),
    ("/notify", b"18446744073709551616"),
    ("/publish", b'{"topic":-9223372036854775809,"data":1}'),
]


@pytest.mark.parametrize(
    ("path", "body"), FOUND, ids=["nest-notify", "nest-publish", "int-id", "int-body", "int-topic"]
)
def test_found_http_bodies_are_refused_not_5xx(fuzzed: Fuzzed, path: str, body: bytes) -> None:
    """Minimised bodies the fuzz found answering 500 are refused with a 4xx."""
    scope = "notify" if path == "/notify" else "publish"
    response = httpx.post(
        f"{fuzzed.server.url}{path}",
        content=body,
        headers={"Authorization": f"Bearer {fuzzed.tokens[scope]}"},
        timeout=10,
    )
    # A body too deep for the JSON reader is a malformed body (400, as FastAPI answers it); the
    # others are well-formed bodies with invalid values (422).
    expected = 400 if body.count(b"[") >= 1000 else 422
    assert response.status_code == expected, (
        f"{body[:80]!r} -> {response.status_code} {response.text}"
    )


def test_server_log_has_no_traceback(fuzzed: Fuzzed) -> None:
    """Nothing the fuzz sent made the server log an exception."""
    log = fuzzed.server.log()
    assert "Traceback" not in log, log[-4000:]


def test_metrics_return_to_baseline(fuzzed: Fuzzed) -> None:
    """After the fuzz /metrics shows 0 connections and about as many tasks as before."""
    if fuzzed.before is None:
        pytest.skip("GET /metrics answers 404 (not implemented yet); leak check via /health only")
    assert_alive_and_clean(fuzzed.server)
    before = fuzzed.before["tidings_asyncio_tasks"]

    def settled() -> dict[str, float] | None:
        now = metrics(fuzzed.server)
        assert now is not None
        ok = now["tidings_connections"] == 0 and now["tidings_asyncio_tasks"] <= before + 5
        return now if ok else None

    now = wait_until(settled, 10.0)
    assert now is not None, f"before {fuzzed.before}, after {metrics(fuzzed.server)}"
