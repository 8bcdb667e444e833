"""Server-Sent Events: the WebSocket's frames over plain HTTP, for networks that block
WebSockets (a proxy that strips ``Upgrade``).

``GET /sse`` is a device's session as on ``/ws`` (the same handshake rules, authentication,
``welcome``, counts, deliver mode, topics), its frames written as events (``data:`` one frame;
a close as ``event: close``). The client's frames come by ``POST /sse/frames``
``{"connection_id": …, "frames": [...]}`` with the same credentials, answered on the stream;
any node may take the POST: one that does not hold the stream hands the frames to the bus, and
the node that holds it serves them.

The session is the WebSocket's own: :class:`Stream` speaks the ASGI WebSocket messages the
gateway sends and receives, and carries them over the HTTP response and the POSTs, so every
rule of the socket (frame limits and rate, slow clients, versions, replay) holds unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import orjson

from tidings.core.limits import MAX_ID_LENGTH
from tidings.fanout.broadcast import text_of
from tidings.gateway.handshake import (
    bearer,
    first,
    for_the_application,
    origin_allowed,
    read_headers,
    read_query,
)

logger = logging.getLogger("tidings.gateway")

SSE_PATH = "/sse"
FRAMES_PATH = "/sse/frames"
#: frames one POST may carry
MAX_FRAMES_PER_POST = 100
#: seconds between comments that keep proxies from closing an idle stream
KEEPALIVE = 15.0
#: frames waiting for a stream's session to read them; more is a client not waiting for
#: answers, refused with 429
MAX_WAITING = 256

HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache, no-transform"),
    # nginx buffers responses unless told not to: events would wait in it
    (b"x-accel-buffering", b"no"),
]


def cors_headers(
    scope: dict[str, Any], allowed: Sequence[str] | None, *, delegation: bool
) -> list[tuple[bytes, bytes]] | None:
    """The CORS headers of a request to ``/sse`` or ``/sse/frames`` from a page of another
    origin ([] from no browser), or None when that origin may not use them. The rule is the
    socket's (:func:`~tidings.gateway.handshake.origin_allowed`): a listed origin, or any that
    brings its own token when no list is set; never a page elsewhere riding the browser's
    cookies. A preflight carries no credentials: it is judged as a token's."""
    headers = read_headers(scope)
    origin = headers.get("origin")
    if origin is None:
        return []
    token = bearer(headers.get("authorization"))
    ambient = for_the_application(headers, token, delegation=delegation)
    if not origin_allowed(scope, headers, allowed, cookies=ambient):
        return None
    return [
        (b"access-control-allow-origin", origin.encode("latin-1")),
        (b"access-control-allow-credentials", b"true"),
        (b"vary", b"Origin"),
    ]


#: what a preflight of a stream or of its frames is told besides the origin
PREFLIGHT = [
    (b"access-control-allow-methods", b"GET, POST"),
    (b"access-control-allow-headers", b"authorization, content-type"),
    (b"access-control-max-age", b"600"),
]


class Stream:
    """One device's event stream: the gateway's ASGI WebSocket side on one end, the HTTP
    response and the frames POSTed for it on the other."""

    def __init__(
        self,
        receive: Any,
        send: Any,
        on_open: Callable[[Stream], None],
        cors: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        self._cors = cors or []
        self._http_receive = receive
        self._http_send = send
        self._on_open = on_open
        self._frames: asyncio.Queue[str] = asyncio.Queue(MAX_WAITING)
        self._gone = asyncio.Event()
        self._connected = False
        self._started = False
        self._ended = False
        self._keepalive: asyncio.Task[None] | None = None
        self._watch: asyncio.Task[None] | None = None
        self.user_id = ""
        self.connection_id = ""

    # The gateway's side: ASGI WebSocket messages.

    async def receive(self) -> dict[str, Any]:
        if not self._connected:
            self._connected = True
            self._watch = asyncio.ensure_future(self._watch_disconnect())
            return {"type": "websocket.connect"}
        if self._gone.is_set():
            return {"type": "websocket.disconnect", "code": 1001}
        getting = asyncio.ensure_future(self._frames.get())
        gone = asyncio.ensure_future(self._gone.wait())
        try:
            await asyncio.wait({getting, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
            if not getting.done():
                getting.cancel()
        if getting.done() and not getting.cancelled():
            return {"type": "websocket.receive", "text": getting.result()}
        return {"type": "websocket.disconnect", "code": 1001}

    async def send(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if self._ended:
            return
        if kind == "websocket.accept":
            await self._start(200, HEADERS + list(message.get("headers") or []))
            await self._write(b": connected\n\n")
            self._keepalive = asyncio.ensure_future(self._keep_alive())
        elif kind == "websocket.send":
            text = text_of(message["text"])
            if not self.connection_id and text.startswith('{"type":"welcome"'):
                welcome = orjson.loads(text)
                self.user_id, self.connection_id = welcome["user_id"], welcome["connection_id"]
                self._on_open(self)
            await self._write(b"data: " + text.encode() + b"\n\n")
        elif kind == "websocket.close":
            close = {"code": message.get("code", 1000), "reason": message.get("reason", "")}
            if not self._started:
                await self._start(403, [(b"content-type", b"application/json")])
                await self._end(orjson.dumps({"error": "closed", **close}))
                return
            await self._end(b"event: close\ndata: " + orjson.dumps(close) + b"\n\n")
        elif kind == "websocket.http.response.start":  # a refused handshake
            await self._start(message["status"], list(message.get("headers") or []))
        elif kind == "websocket.http.response.body":
            body = message.get("body", b"")
            if message.get("more_body", False):
                await self._write(body)
            else:
                await self._end(body)

    # The client's side.

    def offer(self, frames: list[str]) -> bool:
        """Queue frames POSTed for this stream; False when too many wait already."""
        if self._frames.qsize() + len(frames) > MAX_WAITING:
            return False
        for frame in frames:
            self._frames.put_nowait(frame)
        return True

    async def _watch_disconnect(self) -> None:
        with contextlib.suppress(Exception):
            while (await self._http_receive())["type"] != "http.disconnect":
                pass
        self._gone.set()

    async def _keep_alive(self) -> None:
        while not self._ended:
            await asyncio.sleep(KEEPALIVE)
            with contextlib.suppress(Exception):
                await self._write(b": keep-alive\n\n")

    async def _start(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self._started = True
        headers = headers + self._cors
        await self._http_send({"type": "http.response.start", "status": status, "headers": headers})

    async def _write(self, body: bytes) -> None:
        if self._gone.is_set():
            raise OSError("the client went away")
        await self._http_send({"type": "http.response.body", "body": body, "more_body": True})

    async def _end(self, body: bytes) -> None:
        self._ended = True
        with contextlib.suppress(Exception):
            await self._http_send({"type": "http.response.body", "body": body})

    async def finish(self) -> None:
        """After the session: end the response if it is still open, stop the helpers."""
        if self._started and not self._ended:
            await self._end(b"")
        for task in (self._keepalive, self._watch):
            if task is not None:
                task.cancel()


class Streams:
    """The streams this node holds, by user and device; POSTed frames reach them here, from
    a request or from the bus."""

    def __init__(self) -> None:
        self._open: dict[tuple[str, str], Stream] = {}

    def add(self, stream: Stream) -> None:
        self._open[(stream.user_id, stream.connection_id)] = stream

    def remove(self, stream: Stream) -> None:
        if self._open.get((stream.user_id, stream.connection_id)) is stream:
            del self._open[(stream.user_id, stream.connection_id)]

    def offer(self, user_id: str, connection_id: str, frames: list[str]) -> bool | None:
        """Hand frames to the device's stream here: None when it is not here, False when it
        has too many waiting."""
        stream = self._open.get((user_id, connection_id))
        return None if stream is None else stream.offer(frames)


async def serve_stream(
    gateway: Callable[[dict[str, Any], Any, Any], Awaitable[None]],
    streams: Streams,
    scope: dict[str, Any],
    receive: Any,
    send: Any,
    *,
    delegation: bool,
    allowed: Sequence[str] | None = None,
) -> None:
    """``GET /sse``: the gateway serves the request as a WebSocket carried by a stream. The
    credentials come with the request (a stream has no first frame to bring them): a token
    (``Authorization: Bearer`` or ``access_token``), or in delegated mode the application's
    cookies or header; without them, 401."""
    headers = read_headers(scope)
    if not (
        "authorization" in headers
        or first(read_query(scope), "access_token")
        or (delegation and "cookie" in headers)
    ):
        body = orjson.dumps({"error": "invalid_token", "message": "no credentials"})
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"www-authenticate", b"Bearer"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
        return
    cors = cors_headers(scope, allowed, delegation=delegation)
    stream = Stream(receive, send, streams.add, cors)
    socket_scope = dict(
        scope,
        type="websocket",
        scheme="wss" if scope.get("scheme") == "https" else "ws",
        subprotocols=[],
        # refusals are answered as HTTP (the stream's status and body)
        extensions={"websocket.http.response": {}},
    )
    try:
        await gateway(socket_scope, stream.receive, stream.send)
    finally:
        streams.remove(stream)
        await stream.finish()


def read_frames_body(body: bytes) -> tuple[str, list[str]] | str:
    """``(connection_id, frames as text)`` of a ``POST /sse/frames`` body, or why it is
    refused."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return "the body is not JSON"
    if not isinstance(data, dict):
        return "the body must be an object"
    connection_id, frames = data.get("connection_id"), data.get("frames")
    if not isinstance(connection_id, str) or not 0 < len(connection_id) <= MAX_ID_LENGTH:
        return "connection_id must be the stream's (from its welcome)"
    if not isinstance(frames, list) or not 0 < len(frames) <= MAX_FRAMES_PER_POST:
        return f"frames must be a list of 1 to {MAX_FRAMES_PER_POST} frames"
    if not all(isinstance(frame, dict) for frame in frames):
        return "each frame must be an object"
    return connection_id, [orjson.dumps(frame).decode() for frame in frames]
