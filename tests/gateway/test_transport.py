"""tidings' own WebSocket transport (:class:`tidings.gateway.transport.WebSocketProtocol`).

Each test runs a real uvicorn server in-process on a free loopback port with the transport as
its ``ws=`` protocol and a small ASGI application, and talks to it with real clients: the
``websockets`` asyncio client for the normal paths, and raw sockets (handshake written by hand,
frames built and masked here) where the client must misbehave. The specification is RFC 6455
and the ASGI WebSocket spec, not the implementation.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import socket
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import pytest
import uvicorn
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tidings.gateway.flusher import FANOUT_SOCKETS, FANOUT_WINDOW, Flusher
from tidings.gateway.front import MAX_HEAD, FrontConfig
from tidings.gateway.transport import WebSocketProtocol

#: upper bound for anything that waits on the network or on the server
TIMEOUT = 5.0

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
#: the nonce of RFC 6455 section 1.3 and the accept value the RFC computes for it
RFC_KEY = "dGhlIHNhbXBsZSBub25jZQ=="
RFC_ACCEPT = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
#: a fixed masking key (RFC 6455 section 5.7), so that frames are reproducible
MASK = b"\x37\xfa\x21\x3d"

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]


async def within(awaitable: Awaitable[Any], timeout: float = TIMEOUT) -> Any:
    return await asyncio.wait_for(awaitable, timeout)


# Server


class QuickServer(uvicorn.Server):
    """uvicorn's server with a stop that takes milliseconds instead of 0.2 s per test: it polls
    ``should_exit`` every 2 ms (uvicorn: 100 ms) and its shutdown waits for the connections
    and application tasks by polling instead of fixed pauses. Connections are still stopped
    through the transport's own ``shutdown()``. The shutdown test uses uvicorn's own server."""

    async def main_loop(self) -> None:
        counter = 0
        while not await self.on_tick(counter):
            counter = (counter + 1) % 864000
            await asyncio.sleep(0.002)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for server in self.servers:
            server.close()
        state = self.server_state
        for connection in list(state.connections):
            connection.shutdown()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + TIMEOUT
        while (state.connections or state.tasks) and loop.time() < deadline:
            await asyncio.sleep(0.002)
        for task in list(state.tasks):
            task.cancel()


@dataclass
class Running:
    server: uvicorn.Server
    task: asyncio.Task[None]
    port: int

    def url(self, path: str = "/") -> str:
        return f"ws://127.0.0.1:{self.port}{path}"


@pytest.fixture
async def serve() -> AsyncIterator[Callable[..., Awaitable[Running]]]:
    """``await serve(app, **config)``: a uvicorn server on the transport, stopped at the end."""
    started: list[Running] = []

    async def start(
        app: App, server_class: type[uvicorn.Server] = QuickServer, **options: Any
    ) -> Running:
        settings: dict[str, Any] = {
            "host": "127.0.0.1",
            "port": 0,
            "ws": WebSocketProtocol,
            "lifespan": "off",
            "log_config": None,
            "log_level": "warning",
            "access_log": False,
            "ws_ping_interval": None,
            "timeout_graceful_shutdown": 2,
        }
        settings.update(options)
        server = server_class(FrontConfig(app, **settings))
        task = asyncio.create_task(server.serve())
        loop = asyncio.get_running_loop()
        deadline = loop.time() + TIMEOUT
        while not server.started:
            if task.done():
                task.result()
                raise RuntimeError("uvicorn stopped before it started")
            if loop.time() > deadline:
                raise RuntimeError("uvicorn did not start")
            await asyncio.sleep(0.005)
        port = server.servers[0].sockets[0].getsockname()[1]
        running = Running(server, task, port)
        started.append(running)
        return running

    yield start
    for running in started:
        running.server.should_exit = True
    for running in started:
        await asyncio.wait_for(running.task, 10)


# Applications


@dataclass
class AppLog:
    """What the application saw: its scopes and every message ``receive()`` returned after
    the connect event."""

    scopes: list[Scope] = field(default_factory=list)
    connected: asyncio.Event = field(default_factory=asyncio.Event)
    received: asyncio.Queue[Message] = field(default_factory=asyncio.Queue)

    async def next(self) -> Message:
        return await within(self.received.get())

    async def disconnect(self) -> Message:
        """The application's ``websocket.disconnect`` message (data messages are skipped)."""
        while True:
            message = await self.next()
            if message["type"] == "websocket.disconnect":
                return message


def echo_app(
    log: AppLog,
    *,
    subprotocol: str | None = None,
    headers: Iterable[tuple[bytes, bytes]] = (),
    gate: asyncio.Event | None = None,
    read_gate: asyncio.Event | None = None,
) -> App:
    """Accept (after ``gate``, if given), then echo every message until the disconnect;
    with ``read_gate``, ``receive()`` is not called before it is set."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "websocket"
        log.scopes.append(scope)
        assert (await receive())["type"] == "websocket.connect"
        log.connected.set()
        if gate is not None:
            await gate.wait()
        accept: Message = {"type": "websocket.accept", "headers": list(headers)}
        if subprotocol is not None:
            accept["subprotocol"] = subprotocol
        await send(accept)
        if read_gate is not None:
            await read_gate.wait()
        while True:
            message = await receive()
            await log.received.put(message)
            if message["type"] == "websocket.disconnect":
                return
            await send(
                {
                    "type": "websocket.send",
                    "text": message.get("text"),
                    "bytes": message.get("bytes"),
                }
            )

    return app


# Raw client


def mask_bytes(data: bytes, mask: bytes) -> bytes:
    if not data:
        return b""
    key = (mask * (len(data) // 4 + 1))[: len(data)]
    return (int.from_bytes(data, "big") ^ int.from_bytes(key, "big")).to_bytes(len(data), "big")


def frame(
    opcode: int,
    payload: bytes = b"",
    *,
    fin: bool = True,
    rsv: int = 0,
    masked: bool = True,
) -> bytes:
    """A client frame (RFC 6455 section 5.2), masked unless told otherwise."""
    b0 = (0x80 if fin else 0) | (rsv << 4) | opcode
    size = len(payload)
    bit = 0x80 if masked else 0
    if size < 126:
        head = bytes((b0, bit | size))
    elif size < 65536:
        head = struct.pack("!BBH", b0, bit | 126, size)
    else:
        head = struct.pack("!BBQ", b0, bit | 127, size)
    if masked:
        return head + MASK + mask_bytes(payload, MASK)
    return head + payload


def close_frame(code: int, reason: str = "") -> bytes:
    return frame(OP_CLOSE, struct.pack("!H", code) + reason.encode())


def upgrade_request(
    path: str = "/",
    *,
    key: str | None = RFC_KEY,
    version: str | None = "13",
    extra: Iterable[tuple[str, str]] = (),
) -> bytes:
    lines = [
        f"GET {path} HTTP/1.1",
        "Host: 127.0.0.1",
        "Upgrade: websocket",
        "Connection: Upgrade",
    ]
    if key is not None:
        lines.append(f"Sec-WebSocket-Key: {key}")
    if version is not None:
        lines.append(f"Sec-WebSocket-Version: {version}")
    lines.extend(f"{name}: {value}" for name, value in extra)
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


@dataclass
class Frame:
    fin: bool
    rsv: int
    opcode: int
    payload: bytes
    #: the header's length field as sent: 7-bit, or the 126/127 extended forms
    length_form: int

    def close_code(self) -> int | None:
        assert self.opcode == OP_CLOSE
        return struct.unpack("!H", self.payload[:2])[0] if len(self.payload) >= 2 else None

    def close_reason(self) -> str:
        return self.payload[2:].decode()


@dataclass
class Response:
    status: int
    headers: list[tuple[str, str]]

    def header(self, name: str) -> str | None:
        values = [value for key, value in self.headers if key.lower() == name.lower()]
        return ", ".join(values) if values else None


class RawClient:
    """A hand-driven WebSocket client on a plain non-blocking socket.

    It reads only when asked (a client that "stops reading" really leaves the bytes in the
    kernel) and, like a real client's protocol, keeps every byte that arrived before a TCP
    reset: a reset then reads as the end of the stream, recorded in :attr:`reset`.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.loop = asyncio.get_running_loop()
        self.buffer = bytearray()
        self.eof = False
        self.reset = False

    async def _fill(self) -> None:
        if self.eof:
            raise EOFError("the server closed the connection")
        try:
            data = await within(self.loop.sock_recv(self.sock, 65536))
        except ConnectionResetError:
            data = b""
            self.reset = True
        if not data:
            self.eof = True
        self.buffer += data

    async def readexactly(self, size: int) -> bytes:
        while len(self.buffer) < size:
            await self._fill()
        data = bytes(self.buffer[:size])
        del self.buffer[:size]
        return data

    async def readuntil(self, separator: bytes) -> bytes:
        while (at := self.buffer.find(separator)) < 0:
            await self._fill()
        return await self.readexactly(at + len(separator))

    async def read_all(self) -> bytes:
        while not self.eof:
            await self._fill()
        data = bytes(self.buffer)
        self.buffer.clear()
        return data

    async def send(self, *frames: bytes) -> None:
        await within(self.loop.sock_sendall(self.sock, b"".join(frames)))

    async def response(self) -> Response:
        head = await self.readuntil(b"\r\n\r\n")
        lines = head[:-4].decode("latin-1").split("\r\n")
        version, status, *_ = lines[0].split(" ", 2)
        assert version == "HTTP/1.1"
        headers = []
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers.append((name.strip(), value.strip()))
        return Response(int(status), headers)

    async def body(self, response: Response) -> bytes:
        length = response.header("content-length")
        if length is not None:
            return await self.readexactly(int(length))
        return await self.read_all()

    async def handshake(self, path: str = "/", **request: Any) -> Response:
        await self.send(upgrade_request(path, **request))
        response = await self.response()
        assert response.status == 101, response
        return response

    async def read_frame(self) -> Frame:
        b0, b1 = await self.readexactly(2)
        assert not b1 & 0x80, "a server must not mask its frames (RFC 6455 section 5.1)"
        size = form = b1 & 0x7F
        if size == 126:
            (size,) = struct.unpack("!H", await self.readexactly(2))
        elif size == 127:
            (size,) = struct.unpack("!Q", await self.readexactly(8))
        payload = await self.readexactly(size)
        return Frame(bool(b0 & 0x80), (b0 >> 4) & 7, b0 & 0x0F, payload, form)

    async def read_close(self) -> Frame:
        """The next frame, which must be a close frame."""
        got = await self.read_frame()
        assert got.opcode == OP_CLOSE, f"expected a close frame, got {got}"
        assert len(got.payload) <= 125, "control frames are at most 125 bytes (section 5.5)"
        return got

    async def expect_eof(self) -> None:
        """The server closes the TCP connection (nothing else arrives first)."""
        rest = await self.read_all()
        assert rest == b"", f"unexpected data before the TCP close: {rest[:100]!r}"

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
async def raw() -> AsyncIterator[Callable[..., Awaitable[RawClient]]]:
    """``await raw(port, rcvbuf=None)``: a connected raw client, closed at the end."""
    clients: list[RawClient] = []

    async def open_client(port: int, rcvbuf: int | None = None) -> RawClient:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client = RawClient(sock)
        clients.append(client)
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        await within(client.loop.sock_connect(sock, ("127.0.0.1", port)))
        return client

    yield open_client
    for client in clients:
        client.close()


def ws_connect(url: str, **options: Any) -> connect:
    return connect(
        url, compression=None, proxy=None, open_timeout=TIMEOUT, close_timeout=TIMEOUT, **options
    )


async def fail_with(client: RawClient, log: AppLog, code: int) -> None:
    """The server fails the connection: a close frame with ``code``, then the TCP close; the
    application learns of it with ``websocket.disconnect``."""
    closing = await client.read_close()
    assert closing.close_code() == code, closing
    await client.expect_eof()
    disconnect = await log.disconnect()
    assert disconnect["code"] == code, disconnect


# Handshake


async def test_handshake_answers_101_with_the_accept_key(
    serve: Callable[..., Awaitable[Running]], raw: Callable[..., Awaitable[RawClient]]
) -> None:
    """101 with Upgrade/Connection headers and Sec-WebSocket-Accept = base64(SHA-1(key + GUID))
    (RFC 6455 sections 1.3 and 4.2.2); no extension is negotiated."""
    log = AppLog()
    server = await serve(echo_app(log))
    client = await raw(server.port)
    response = await client.handshake()
    assert response.header("sec-websocket-accept") == RFC_ACCEPT
    assert (response.header("upgrade") or "").lower() == "websocket"
    assert "upgrade" in (response.header("connection") or "").lower()
    assert response.header("sec-websocket-extensions") is None

    key = base64.b64encode(bytes(range(16))).decode()
    other = await raw(server.port)
    response = await other.handshake(key=key)
    expected = base64.b64encode(hashlib.sha1(key.encode() + GUID).digest()).decode()
    assert response.header("sec-websocket-accept") == expected


@pytest.mark.parametrize(
    "key",
    [None, "", "not base64!", base64.b64encode(b"fifteen bytes!!").decode(), "AAAA"],
    ids=["missing", "empty", "not-base64", "15-bytes", "3-bytes"],
)
async def test_handshake_without_a_valid_key_is_400(
    serve: Callable[..., Awaitable[Running]],
    raw: Callable[..., Awaitable[RawClient]],
    key: str | None,
) -> None:
    """A Sec-WebSocket-Key that is missing or not 16 base64-encoded bytes is answered with 400
    (RFC 6455 section 4.2.1 item 5, 4.2.2), and the application is never called."""
    log = AppLog()
    server = await serve(echo_app(log))
    client = await raw(server.port)
    await client.send(upgrade_request(key=key))
    response = await client.response()
    assert response.status == 400
    await client.body(response)
    await client.expect_eof()
    assert log.scopes == []


async def test_handshake_with_another_version_is_426(
    serve: Callable[..., Awaitable[Running]], raw: Callable[..., Awaitable[RawClient]]
) -> None:
    """Sec-WebSocket-Version other than 13 gets 426 Upgrade Required with
    ``Sec-WebSocket-Version: 13`` (RFC 6455 sections 4.2.2 and 4.4); no application call."""
    log = AppLog()
    server = await serve(echo_app(log))
    client = await raw(server.port)
    await client.send(upgrade_request(version="8"))
    response = await client.response()
    assert response.status == 426
    assert response.header("sec-websocket-version") == "13"
    await client.body(response)
    await client.expect_eof()
    assert log.scopes == []


async def test_scope_carries_path_query_headers_and_subprotocols(
    serve: Callable[..., Awaitable[Running]],
) -> None:
    """The ASGI scope: type websocket, decoded path, raw_path, query_string as bytes,
    lower-cased header names, the offered subprotocols in order, the
    websocket.http.response extension."""
    log = AppLog()
    server = await serve(echo_app(log))
    async with ws_connect(
        server.url("/some%20place/x?a=1&b=two"),
        subprotocols=["chat", "superchat"],
        additional_headers={"X-Test": "yes"},
    ):
        await within(log.connected.wait())
    scope = log.scopes[0]
    assert scope["type"] == "websocket"
    assert scope["path"] == "/some place/x"
    assert scope["raw_path"] == b"/some%20place/x"
    assert scope["query_string"] == b"a=1&b=two"
    assert scope["scheme"] == "ws"
    assert scope["subprotocols"] == ["chat", "superchat"]
    headers = scope["headers"]
    assert all(isinstance(n, bytes) and isinstance(v, bytes) for n, v in headers)
    assert (b"x-test", b"yes") in headers
    assert all(name == name.lower() for name, _ in headers)
    assert scope["client"][0] == "127.0.0.1"
    assert scope["server"] == ("127.0.0.1", server.port)
    assert "websocket.http.response" in scope["extensions"]


async def test_scope_is_released_only_after_the_accept_and_only_on_request(
    serve: Callable[..., Awaitable[Running]],
) -> None:
    """``release_scope()`` (what tidings' gateway calls once it has answered the handshake)
    empties the scope, so an idle connection keeps none of the request; before the accept it
    does nothing (the accept still reads the scope), and a socket whose application never
    asks keeps its scope whole."""
    seen: list[tuple[int, int]] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        release = send.__self__.release_scope  # type: ignore[attr-defined]
        assert (await receive())["type"] == "websocket.connect"
        release()  # too early: ignored
        before = len(scope)
        await send({"type": "websocket.accept"})
        if scope["query_string"] == b"release=1":
            release()
        seen.append((before, len(scope)))
        while (message := await receive())["type"] != "websocket.disconnect":
            await send({"type": "websocket.send", "text": message.get("text")})

    server = await serve(app)
    for query in ("release=1", "keep=1"):
        async with ws_connect(server.url(f"/?{query}")) as ws:
            await ws.send("after")
            assert await within(ws.recv()) == "after"
    assert seen[0][0] > 10 and seen[0][1] == 0
    assert seen[1][0] == seen[1][1] > 10


async def test_accept_sends_subprotocol_and_extra_headers(
    serve: Callable[..., Awaitable[Running]],
) -> None:
    """websocket.accept's subprotocol becomes Sec-WebSocket-Protocol and its headers (here a
    set-cookie) are sent in the 101 response."""
    log = AppLog()
    server = await serve(
        echo_app(log, subprotocol="superchat", headers=[(b"set-cookie", b"session=abc; Path=/")])
    )
    async with ws_connect(server.url(), subprotocols=["chat", "superchat"]) as ws:
        assert ws.subprotocol == "superchat"
        assert ws.response is not None
        assert ws.response.headers["set-cookie"] == "session=abc; Path=/"
        await ws.send("still works")
        assert await within(ws.recv()) == "still works"


async def test_refusal_with_an_http_response(
    serve: Callable[..., Awaitable[Running]], raw: Callable[..., Awaitable[RawClient]]
) -> None:
    """websocket.http.response.start/body before accept: the client gets that HTTP response
    (status, headers, the body of all parts) instead of a 101, then the TCP close; the
    application's next receive() is websocket.disconnect."""
    log = AppLog()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        assert "websocket.http.response" in scope["extensions"]
        await receive()
        await send(
            {
                "type": "websocket.http.response.start",
                "status": 401,
                "headers": [(b"content-type", b"text/plain"), (b"x-why", b"no token")],
            }
        )
        await send({"type": "websocket.http.response.body", "body": b"go ", "more_body": True})
        await send({"type": "websocket.http.response.body", "body": b"away"})
        await log.received.put(await receive())

    server = await serve(app)
    client = await raw(server.port)
    await client.send(upgrade_request())
    response = await client.response()
    assert response.status == 401
    assert response.header("x-why") == "no token"
    assert response.header("sec-websocket-accept") is None
    assert await client.body(response) == b"go away"
    await client.expect_eof()
    assert (await log.next())["type"] == "websocket.disconnect"


async def test_close_before_accept_is_403(
    serve: Callable[..., Awaitable[Running]], raw: Callable[..., Awaitable[RawClient]]
) -> None:
    """websocket.close before accept: HTTP 403, no 101 (ASGI spec, websocket.close)."""
    log = AppLog()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.close"})
        await log.received.put(await receive())

    server = await serve(app)
    client = await raw(server.port)
    await client.send(upgrade_request())
    response = await client.response()
    assert response.status == 403
    await client.body(response)
    await client.expect_eof()
    assert (await log.next())["type"] == "websocket.disconnect"


async def test_exception_before_accept_is_500(
    serve: Callable[..., Awaitable[Running]], raw: Callable[..., Awaitable[RawClient]]
) -> None:
    """An application that raises before accepting: HTTP 500, no 101."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        raise RuntimeError("boom (expected by the test)")

    server = await serve(app)
    client = await raw(server.port)
    await client.send(upgrade_request())
    response = await client.response()
    assert response.status == 500
    await client.body(response)
    await client.expect_eof()


# Messages


SIZES = [0, 1, 125, 126, 127, 65535, 65536, 100_000]


@pytest.mark.parametrize("size", SIZES)
async def test_text_and_binary_echo(serve: Callable[..., Awaitable[Running]], size: int) -> None:
    """Text and binary messages of every length encoding (7-bit, 16-bit, 64-bit; RFC 6455
    section 5.2) reach the application intact and its answers reach the client intact."""
    log = AppLog()
    server = await serve(echo_app(log))
    text = ("é" + "abcdefghij" * (size // 10 + 1))[:size] if size else ""
    data = bytes(i % 251 for i in range(size))
    async with ws_connect(server.url()) as ws:
        await ws.send(text)
        assert await within(ws.recv()) == text
        await ws.send(data)
        assert await within(ws.recv()) == data
    assert (await log.next()) == {"type": "websocket.receive", "text": text}
    assert (await log.next()) == {"type": "websocket.receive", "bytes": data}


@pytest.mark.parametrize(("size", "form"), [(125, 125), (126, 126), (65535, 126), (65536, 127)])
async def test_server_frames_use_the_minimal_length_encoding(
    serve: Callable[..., Awaitable[Running]],
    raw: Callable[..., Awaitable[RawClient]],
    size: int,
    form: int,
) -> None:
    """Server frames are final, unmasked, without RSV bits, and use the minimal length form
    (RFC 6455 section 5.2: "the minimal number of bytes MUST be used")."""
    log = AppLog()
    server = await serve(echo_app(log))
    client = await raw(server.port)
    await client.handshake()
    payload = b"z" * size
    await client.send(frame(OP_BINARY, payload))
    echoed = await client.read_frame()
    assert (echoed.fin, echoed.rsv, echoed.opcode) == (True, 0, OP_BINARY)
    assert echoed.length_form == form
    assert echoed.payload == payload


async def test_fragmented_messages_are_reassembled(
    serve: Callable[..., Awaitable[Running]], raw: Callable[..., Awaitable[RawClient]]
) -> None:
    """A message in a start frame and continuation frames is one ASGI message (RFC 6455
    section 5.4), for text (with a UTF-8 character split across fragments, section 8.1) and
    for binary; an empty fragment is allowed."""
    log = AppLog()
    server = await serve(echo_app(log))
    client = await raw(server.port)
    await client.handshake()
    e_acute = "é".encode()
    await client.send(
        frame(OP_TEXT, b"caf" + e_acute[:1], fin=False),
        frame(OP_CONT, e_acute[1:] + b" au ", fin=False),
        frame(OP_CONT, b"", fin=False),
        frame(OP_CONT, b"lait"),
    )
    assert await log.next() == {"type": "websocket.receive", "text": "café au lait"}
    echoed = await client.read_frame()
    assert (echoed.opcode, echoed.payload) == (OP_TEXT, "café au lait".encode())

    await client.send(frame(OP_BINARY, b"\x00\x01", fin=False), frame(OP_CONT, b"\x02"))
    assert await log.next() == {"type": "websocket.receive", "bytes": b"\x00\x01\x02"}
    echoed = await client.read_frame()
    assert (echoed.opcode, echoed.payload) == (OP_BINARY, b"\x00\x01\x02")


async def test_fragments_in_separate_tcp_writes(
    serve: Callable[..., Awaitable[Running]], raw: Callable[..., Awaitable[RawClient]]
) -> None:
    """Frames split at any byte across TCP segments are parsed whole (the server buffers a
    partial header or payload)."""
    log = AppLog()
    server = await serve(echo_app(log))
    client = await raw(server.port)
    await client.handshake()
    data = frame(OP_TEXT, b"x" * 300)
    for cut in (1, 2, 3, 5, 9, 100):
        await client.send(data[:cut])
        # Only so that the server most likely reads the two parts separately; the outcome
        # must be the same either way.
        await asyncio.sleep(0.005)
        await client.send(data[cut:])
        echoed = await client.read_frame()
        assert echoed.payload == b"x" * 300


async def test_ping_is_answered_with_a_pong_of_the_same_payload(
    serve: Callable[..., Awaitable[Running]], raw: Callable[..., Awaitable[RawClient]]
) -> None:
    """A ping gets a pong with the identical application data (RFC 6455 section 5.5.2/5.5.3),
    also a 125-byte one and an empty one; an unsolicited pong is ignored."""
    log = AppLog()
    server = await serve(echo_app(log))
    client = await raw(server.port)
    await client.handshake()
    for payload in (b"hello", b"", bytes(range(125))):
        await client.send(frame(OP_PING, payload))
        pong = await client.read_frame()
        assert (pong.fin, pong.opcode, pong.payload) == (True, OP_PONG, payload)
    await client.send(frame(OP_PONG, b"unsolicited"), frame(OP_TEXT, b"after"))
    echoed = await client.read_frame()
    assert (echoed.opcode, echoed.payload) == (OP_TEXT, b"after")
    assert await log.next() == {"type": "websocket.receive", "text": "after"}


async def test_ping_inside_a_fragmented_message(
    serve: Callable[..., Awaitable[Running]], raw: Callable[..., Awaitable[RawClient]]
) -> None:
    """Control frames may be injected between fragments (RFC 6455 section 5.4): the ping is
    answered at once and the message is still reassembled."""
    log = AppLog()
    server = await serve(echo_app(log))
    client = await raw(server.port)
    await client.handshake()
    await client.send(frame(OP_TEXT, b"Hel", fin=False), frame(OP_PING, b"mid"))
    pong = await client.read_frame()
    assert (pong.opcode, pong.payload) == (OP_PONG, b"mid")
    await client.send(frame(OP_CONT, b"lo", fin=False), frame(OP_PING, b"again"))
    await client.send(frame(OP_CONT, b"!"))
    pong = await client.read_frame()
    assert (pong.opcode, pong.payload) == (OP_PONG, b"again")
    echoed = await client.read_frame()
    assert (echoed.opcode, echoed.payload) == (OP_TEXT, b"Hello!")
    assert await log.next() == {"type": "websocket.receive", "text": "Hello!"}


async def test_many_messages_while_the_application_is_not_reading(
    serve: Callable[..., Awaitable[Running]], raw: Callable[..., Awaitable[RawClient]]
) -> None:
    """Messages sent while the application does not call receive() are all delivered, in
    order, once it does (whatever the transport does to bound its backlog)."""
    log = AppLog()
    read_gate = asyncio.Event()
    server = await serve(echo_app(log, read_gate=read_gate))
    client = await raw(server.port)
    await client.handshake()
    count = 300
    await client.send(*(frame(OP_TEXT, f"m{i}".encode() + b"." * 1000) for i in range(count)))
    read_gate.set()
    for i in range(count):
        message = await log.next()
        assert message["text"] == f"m{i}" + "." * 1000
        echoed = await client.read_frame()
        assert echoed.payload == f"m{i}".encode() + b"." * 1000


# Protocol errors


async def open_echo(
    serve: Callable[..., Awaitable[Running]],
    raw: Callable[..., Awaitable[RawClient]],
    **config: Any,
) -> tuple[AppLog, RawClient]:
    log = AppLog()
    server = await serve(echo_app(log), **config)
    client = await raw(server.port)
    await client.handshake()
    return log, client


async def test_unmasked_client_frame_is_1002(
    serve: Callable[..., Awaitable[Running]], raw: Callable[..., Awaitable[RawClient]]
) -> None:
    """A server MUST close the connection on an unmasked client frame, with 1002 (RFC 6455
    section 5.1)."""
    log, client = await open_echo(serve, raw)
    await client.send(frame(OP_TEXT, b"bare", masked=False))
    await fail_with(client, log, 1002)


@pytest.mark.parametrize("rsv", [4, 2, 1], ids=["rsv1", "rsv2", "rsv3"])
async def test_rsv_bits_without_extension_are_1002(
    serve: Callable[..., Awaitable[Running]], raw: Callable[..., Awaitable[RawClient]], rsv: int
) -> None:
    """RSV bits set with no negotiated extension fail the connection (RFC 6455 section 5.2)."""
    log, client = await open_echo(serve, raw)
    await client.send(frame(OP_TEXT, b"x", rsv=rsv))
    await fail_with(client, log, 1002)


@pytest.mark.parametrize("opcode", [0x3, 0x7, 0xB, 0xF])
async def test_unknown_opcode_is_1002(
    serve: Callable[..., Awaitable[Running]],
    raw: Callable[..., Awaitable[RawClient]],
    opcode: int,
) -> None:
    """A reserved opcode (data 0x3-0x7, control 0xB-0xF) fails the connection (RFC 6455
    section 5.2)."""
    log, client = await open_echo(serve, raw)
    await client.send(frame(opcode, b"x"))
    await fail_with(client, log, 1002)


async def test_continuation_without_a_start_is_1002(
    serve: Callable[..., Awaitable[Running]], raw: Callable[..., Awaitable[RawClient]]
) -> None:
    """A continuation frame with no message in progress is a protocol error (section 5.4)."""
    log, client = await open_echo(serve, raw)
    await client.send(frame(OP_CONT, b"orphan"))
    await fail_with(client, log, 1002)


async def test_new_message_inside_a_fragmented_one_is_1002(
    serve: Callable[..., Awaitable[Running]], raw: Callable[..., Awaitable[RawClient]]
) -> None:
    """Fragments of different messages must not be interleaved: a text frame while a
    fragmented message is open is a protocol error (RFC 6455 section 5.4)."""
    log, client = await open_echo(serve, raw)
    await client.send(frame(OP_TEXT, b"one", fin=False), frame(OP_TEXT, b"two"))
    await fail_with(client, log, 1002)


@pytest.mark.parametrize(
    "bad",
    [
        frame(OP_PING, b"p" * 126),
        frame(OP_PONG, b"p" * 126),
        frame(OP_CLOSE, struct.pack("!H", 1000) + b"r" * 124),
        frame(OP_PING, b"p", fin=False),
        frame(OP_CLOSE, struct.pack("!H", 1000), fin=False),
    ],
    ids=["ping-126", "pong-126", "close-126", "fragmented-ping", "fragmented-close"],
)
async def test_long_or_fragmented_control_frame_is_1002(
    serve: Callable[..., Awaitable[Running]], raw: Callable[..., Awaitable[RawClient]], bad: bytes
) -> None:
    """Control frames have at most 125 bytes of payload and MUST NOT be fragmented (RFC 6455
    section 5.5)."""
    log, client = await open_echo(serve, raw)
    await client.send(bad)
    await fail_with(client, log, 1002)


@pytest.mark.parametrize(
    "frames",
    [
        [frame(OP_TEXT, b"\xff\xfe")],
        [frame(OP_TEXT, b"\xc0\xaf")],
        [frame(OP_TEXT, b"\xed\xa0\x80")],
        [frame(OP_TEXT, b"ok\xf4\x90\x80\x80")],
        [frame(OP_TEXT, b"caf\xc3", fin=False), frame(OP_CONT, b"")],
        [frame(OP_TEXT, b"good", fin=False), frame(OP_CONT, b"\x80bad")],
    ],
    ids=["ff-fe", "overlong", "surrogate", "above-max", "truncated-fragments", "bad-fragment"],
)
async def test_invalid_utf8_text_is_1007(
    serve: Callable[..., Awaitable[Running]],
    raw: Callable[..., Awaitable[RawClient]],
    frames: list[bytes],
) -> None:
    """A text message that is not valid UTF-8 (also when the fragments are) fails the
    connection with 1007 (RFC 6455 sections 8.1 and 7.4.1)."""
    log, client = await open_echo(serve, raw)
    await client.send(*frames)
    await fail_with(client, log, 1007)


async def test_message_at_ws_max_size_is_accepted(
    serve: Callable[..., Awaitable[Running]], raw: Callable[..., Awaitable[RawClient]]
) -> None:
    """A message of exactly ws_max_size bytes, whole or in fragments, is delivered."""
    log, client = await open_echo(serve, raw, ws_max_size=1024)
    await client.send(frame(OP_BINARY, b"a" * 1024))
    assert await log.next() == {"type": "websocket.receive", "bytes": b"a" * 1024}
    await client.send(frame(OP_BINARY, b"b" * 512, fin=False), frame(OP_CONT, b"b" * 512))
    assert await log.next() == {"type": "websocket.receive", "bytes": b"b" * 1024}


@pytest.mark.parametrize(
    "frames",
    [
        [frame(OP_BINARY, b"a" * 1025)],
        [frame(OP_TEXT, b"a" * 70_000)],
        [frame(OP_BINARY, b"a" * 600, fin=False), frame(OP_CONT, b"a" * 600)],
        [
            frame(OP_TEXT, b"a" * 400, fin=False),
            frame(OP_CONT, b"a" * 400, fin=False),
            frame(OP_CONT, b"a" * 400, fin=False),
        ],
    ],
    ids=["one-frame", "64-bit-length", "two-fragments", "unfinished-fragments"],
)
async def test_message_over_ws_max_size_is_1009(
    serve: Callable[..., Awaitable[Running]],
    raw: Callable[..., Awaitable[RawClient]],
    frames: list[bytes],
) -> None:
    """A message over ws_max_size fails the connection with 1009 (RFC 6455 section 7.4.1),
    also when the limit is only crossed by a later fragment (before the final one)."""
    log, client = await open_echo(serve, raw, ws_max_size=1024)
    await client.send(*frames)
    await fail_with(client, log, 1009)


async def test_failing_with_unread_input_closes_tcp_without_a_reset(
    serve: Callable[..., Awaitable[Running]], raw: Callable[..., Awaitable[RawClient]]
) -> None:
    """When the server fails the connection while the rest of an oversized frame is still
    unread, it closes TCP cleanly (FIN, not RST): RFC 6455 section 7.1.1 (the server closes
    first, cleanly; its example is shutdown(SHUT_WR), then read until EOF, then close). A reset
    lets the client's TCP stack discard the unread 1009 close frame."""
    log, client = await open_echo(serve, raw, ws_max_size=1024)
    await client.send(frame(OP_BINARY, b"a" * 70_000))
    closing = await client.read_close()
    assert closing.close_code() == 1009
    await client.expect_eof()
    assert not client.reset, "the server reset the TCP connection"
    assert (await log.disconnect())["code"] == 1009


@pytest.mark.parametrize("code", [0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2999, 5000, 65535])
async def test_invalid_close_code_is_1002(
    serve: Callable[..., Awaitable[Running]], raw: Callable[..., Awaitable[RawClient]], code: int
) -> None:
    """A close frame with a code that is reserved, unassigned or never to be sent on the wire
    (1005, 1006, 1015) is a protocol error (RFC 6455 sections 7.4.1, 7.4.2)."""
    log, client = await open_echo(serve, raw)
    await client.send(close_frame(code))
    await fail_with(client, log, 1002)


async def test_one_byte_close_payload_is_1002(
    serve: Callable[..., Awaitable[Running]], raw: Callable[..., Awaitable[RawClient]]
) -> None:
    """A close body, if present, starts with a 2-byte code: one byte is a protocol error
    (RFC 6455 section 5.5.1)."""
    log, client = await open_echo(serve, raw)
    await client.send(frame(OP_CLOSE, b"\x03"))
    await fail_with(client, log, 1002)


async def test_invalid_utf8_close_reason_is_1007(
    serve: Callable[..., Awaitable[Running]], raw: Callable[..., Awaitable[RawClient]]
) -> None:
    """The close reason is UTF-8; invalid bytes there fail the connection with 1007 (RFC 6455
    sections 5.5.1 and 8.1)."""
    log, client = await open_echo(serve, raw)
    await client.send(frame(OP_CLOSE, struct.pack("!H", 1000) + b"\xff"))
    await fail_with(client, log, 1007)


async def test_frames_after_a_protocol_error_are_ignored(
    serve: Callable[..., Awaitable[Running]], raw: Callable[..., Awaitable[RawClient]]
) -> None:
    """Once the connection is failed, nothing sent after the bad frame (in the same segment)
    reaches the application (RFC 6455 section 7.1.7: no further data is processed)."""
    log, client = await open_echo(serve, raw)
    await client.send(frame(OP_TEXT, b"before"))
    assert (await client.read_frame()).payload == b"before"
    assert await log.next() == {"type": "websocket.receive", "text": "before"}
    await client.send(frame(OP_TEXT, b"x", rsv=4), frame(OP_TEXT, b"after"))
    await fail_with(client, log, 1002)
    assert log.received.empty()


# Closing


async def test_client_close_reaches_the_application_and_is_echoed(
    serve: Callable[..., Awaitable[Running]], raw: Callable[..., Awaitable[RawClient]]
) -> None:
    """A client close (4000, reason): the application receives websocket.disconnect with that
    code and reason; the server answers with a close frame carrying the same code (RFC 6455
    section 5.5.1) and then closes the TCP connection (sections 5.5.1, 7.1.1)."""
    log, client = await open_echo(serve, raw)
    await client.send(close_frame(4000, "bye now"))
    echoed = await client.read_close()
    assert echoed.close_code() == 4000
    await client.expect_eof()
    disconnect = await log.disconnect()
    assert disconnect["code"] == 4000
    assert disconnect["reason"] == "bye now"


async def test_client_close_with_the_websockets_client(
    serve: Callable[..., Awaitable[Running]],
) -> None:
    """The same with a real client: its closing handshake completes cleanly (it receives a
    close frame with its own code)."""
    log = AppLog()
    server = await serve(echo_app(log))
    async with ws_connect(server.url()) as ws:
        await ws.send("hi")
        assert await within(ws.recv()) == "hi"
        await within(ws.close(4000, "done here"))
        assert ws.protocol.close_rcvd is not None
        assert ws.protocol.close_rcvd.code == 4000
    disconnect = await log.disconnect()
    assert (disconnect["code"], disconnect["reason"]) == (4000, "done here")


async def test_client_close_without_a_code(
    serve: Callable[..., Awaitable[Running]], raw: Callable[..., Awaitable[RawClient]]
) -> None:
    """An empty close frame: the application sees code 1005 (no status received, RFC 6455
    section 7.1.5); the server's answer is a close frame that does not carry 1005 (section
    7.4.1: 1005 MUST NOT be sent)."""
    log, client = await open_echo(serve, raw)
    await client.send(frame(OP_CLOSE))
    echoed = await client.read_close()
    assert echoed.close_code() in (None, 1000)
    await client.expect_eof()
    assert (await log.disconnect())["code"] == 1005


@pytest.mark.parametrize("code", [1000, 1001, 1003, 1007, 1008, 1011, 3000, 4999])
async def test_valid_close_codes_are_echoed(
    serve: Callable[..., Awaitable[Running]], raw: Callable[..., Awaitable[RawClient]], code: int
) -> None:
    """Every defined or private-use code (RFC 6455 section 7.4) is accepted and echoed."""
    log, client = await open_echo(serve, raw)
    await client.send(close_frame(code))
    assert (await client.read_close()).close_code() == code
    await client.expect_eof()
    assert (await log.disconnect())["code"] == code


def closing_app(log: AppLog, code: int, reason: str) -> App:
    """Accept, then close with ``code`` and ``reason``; log what receive() gives after."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.close", "code": code, "reason": reason})
        await log.received.put(await receive())

    return app


async def test_application_close_reaches_the_client(
    serve: Callable[..., Awaitable[Running]],
) -> None:
    """websocket.close with 4001 and a reason: the client receives both."""
    log = AppLog()
    server = await serve(closing_app(log, 4001, "kicked out"))
    async with ws_connect(server.url()) as ws:
        with pytest.raises(ConnectionClosed) as closed:
            await within(ws.recv())
    assert closed.value.rcvd is not None
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (4001, "kicked out")
    assert (await log.next())["type"] == "websocket.disconnect"


async def test_application_close_handshake_on_the_wire(
    serve: Callable[..., Awaitable[Running]], raw: Callable[..., Awaitable[RawClient]]
) -> None:
    """After the server's close frame, the client's answering close makes the server close the
    TCP connection (RFC 6455 section 5.5.1)."""
    log = AppLog()
    server = await serve(closing_app(log, 4001, "kicked out"))
    client = await raw(server.port)
    await client.handshake()
    closing = await client.read_close()
    assert (closing.close_code(), closing.close_reason()) == (4001, "kicked out")
    await client.send(close_frame(4001))
    await client.expect_eof()


async def test_long_close_reason_stays_valid_utf8(
    serve: Callable[..., Awaitable[Running]], raw: Callable[..., Awaitable[RawClient]]
) -> None:
    """A close reason longer than fits is cut so that the close payload stays within 125 bytes
    (RFC 6455 section 5.5) and the reason stays valid UTF-8 (sections 5.5.1, 8.1: the client
    would otherwise have to fail the connection)."""
    log = AppLog()
    server = await serve(closing_app(log, 4002, "é" * 100))
    client = await raw(server.port)
    await client.handshake()
    closing = await client.read_close()
    assert closing.close_code() == 4002
    reason = closing.payload[2:].decode("utf-8")  # must not raise
    assert reason and set(reason) == {"é"}


async def test_application_returning_without_close_closes_with_1000(
    serve: Callable[..., Awaitable[Running]],
) -> None:
    """An application that returns after accepting: the client gets a normal close (1000)."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.send", "text": "last words"})

    server = await serve(app)
    async with ws_connect(server.url()) as ws:
        assert await within(ws.recv()) == "last words"
        with pytest.raises(ConnectionClosed) as closed:
            await within(ws.recv())
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1000


async def test_application_raising_after_accept_closes_with_1011(
    serve: Callable[..., Awaitable[Running]],
) -> None:
    """An application that raises after accepting: the client gets close 1011 (RFC 6455
    section 7.4.1: "a server is terminating the connection because it encountered an
    unexpected condition"), not a normal closure 1000."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        raise RuntimeError("boom after accept (expected by the test)")

    server = await serve(app)
    async with ws_connect(server.url()) as ws:
        with pytest.raises(ConnectionClosed) as closed:
            await within(ws.recv())
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1011


async def test_client_dropping_tcp_gives_disconnect_1006(
    serve: Callable[..., Awaitable[Running]], raw: Callable[..., Awaitable[RawClient]]
) -> None:
    """A client that closes TCP without a close frame: the application's receive() returns
    websocket.disconnect with 1006 (abnormal closure, RFC 6455 section 7.1.5)."""
    log, client = await open_echo(serve, raw)
    client.close()
    assert (await log.disconnect())["code"] == 1006


async def test_server_shutdown_closes_open_connections_with_1012(
    serve: Callable[..., Awaitable[Running]],
) -> None:
    """should_exit: every open client gets close 1012 (service restart) and the application
    receives websocket.disconnect."""
    logs = [AppLog(), AppLog()]
    first = echo_app(logs[0])
    second = echo_app(logs[1])

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await (first if scope["path"] == "/one" else second)(scope, receive, send)

    server = await serve(app, server_class=uvicorn.Server)
    async with ws_connect(server.url("/one")) as one, ws_connect(server.url("/two")) as two:
        await one.send("ping")
        assert await within(one.recv()) == "ping"
        server.server.should_exit = True
        for ws in (one, two):
            with pytest.raises(ConnectionClosed) as closed:
                await within(ws.recv())
            assert closed.value.rcvd is not None
            assert closed.value.rcvd.code == 1012
    for log in logs:
        assert (await log.disconnect())["type"] == "websocket.disconnect"
    await within(server.task)


# write_text and flow control


async def test_write_text_sends_a_text_frame_only_while_open(
    serve: Callable[..., Awaitable[Running]], raw: Callable[..., Awaitable[RawClient]]
) -> None:
    """write_text (reached as ``send.__self__.write_text``) is False before accept and after
    the application's close, True while open, and then the text arrives as one text frame."""
    results: list[bool] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        write_text = send.__self__.write_text  # type: ignore[attr-defined]
        await receive()
        results.append(write_text("too early"))
        await send({"type": "websocket.accept"})
        results.append(write_text("héllo"))
        results.append(write_text("y" * 70_000))
        await send({"type": "websocket.close", "code": 1000})
        results.append(write_text("too late"))

    server = await serve(app)
    client = await raw(server.port)
    await client.handshake()
    first = await client.read_frame()
    assert (first.fin, first.opcode, first.payload) == (True, OP_TEXT, "héllo".encode())
    second = await client.read_frame()
    assert (second.opcode, second.length_form, second.payload) == (OP_TEXT, 127, b"y" * 70_000)
    assert (await client.read_close()).close_code() == 1000
    assert results == [False, True, True, False]


@dataclass
class Flood:
    refused: asyncio.Event = field(default_factory=asyncio.Event)
    fast: int = 0
    blocked: asyncio.Task[None] | None = None
    total: int = 0
    still_refused: bool | None = None


def flood_message(i: int) -> str:
    return f"{i:06d}:" + "x" * 16_000


async def test_slow_client_backpressure(
    serve: Callable[..., Awaitable[Running]], raw: Callable[..., Awaitable[RawClient]]
) -> None:
    """A client that stops reading: write_text eventually returns False (bounded buffering),
    ``await send()`` then blocks until the client reads again, and once it does every message
    arrives, in order, followed by the application's close."""
    flood = Flood()
    cap = 2000  # 32 MB: far more than loopback buffering can absorb

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        write_text = send.__self__.write_text  # type: ignore[attr-defined]
        sent = 0
        while sent < cap and write_text(flood_message(sent)):
            sent += 1
        flood.fast = sent
        if sent == cap:
            flood.refused.set()
            return
        flood.still_refused = not write_text(flood_message(sent))
        flood.blocked = asyncio.create_task(
            send({"type": "websocket.send", "text": flood_message(sent)})
        )
        flood.refused.set()
        await flood.blocked
        sent += 1
        for _ in range(5):
            await send({"type": "websocket.send", "text": flood_message(sent)})
            sent += 1
        flood.total = sent
        await send({"type": "websocket.close", "code": 1000})

    server = await serve(app)
    client = await raw(server.port, rcvbuf=4096)
    await client.handshake()  # and then read nothing for a while
    await within(flood.refused.wait(), 15)
    assert 0 < flood.fast < cap, "write_text never refused: the write buffer grows unbounded"
    assert flood.still_refused
    assert flood.blocked is not None
    done, _ = await asyncio.wait({flood.blocked}, timeout=0.3)
    assert not done, "send() completed while the client was not reading"

    index = 0
    while True:
        got = await client.read_frame()
        if got.opcode == OP_CLOSE:
            assert got.close_code() == 1000
            break
        assert got.opcode == OP_TEXT
        assert got.payload.decode() == flood_message(index), f"message {index} lost or mangled"
        index += 1
    assert flood.blocked.done()
    assert index == flood.total == flood.fast + 6


# Early frames


async def test_frames_in_the_same_write_as_the_handshake_are_kept(
    serve: Callable[..., Awaitable[Running]], raw: Callable[..., Awaitable[RawClient]]
) -> None:
    """Frames a client sends in the same TCP write as its upgrade request (before reading the
    101) are neither lost nor reordered: they reach the application after the accept. (The
    ping is answered by the transport as it is read, so its pong may come before the echoes.)"""
    log = AppLog()
    server = await serve(echo_app(log))
    client = await raw(server.port)
    await client.send(
        upgrade_request() + frame(OP_TEXT, b"early") + frame(OP_PING, b"p") + frame(OP_TEXT, b"2nd")
    )
    response = await client.response()
    assert response.status == 101
    await client.send(frame(OP_TEXT, b"late"))
    got: list[tuple[int, bytes]] = []
    while (OP_TEXT, b"late") not in got and len(got) < 4:
        received = await client.read_frame()
        got.append((received.opcode, received.payload))
    assert (OP_PONG, b"p") in got
    assert [payload for opcode, payload in got if opcode == OP_TEXT] == [b"early", b"2nd", b"late"]
    assert [(await log.next())["text"] for _ in range(3)] == ["early", "2nd", "late"]


async def test_frames_sent_before_the_accept_are_kept(
    serve: Callable[..., Awaitable[Running]], raw: Callable[..., Awaitable[RawClient]]
) -> None:
    """Frames that arrive in later TCP segments while the application has not accepted yet
    are delivered after the accept, in order."""
    log = AppLog()
    gate = asyncio.Event()
    server = await serve(echo_app(log, gate=gate))
    client = await raw(server.port)
    await client.send(upgrade_request())
    await within(log.connected.wait())
    await client.send(frame(OP_TEXT, b"one"))
    await client.send(frame(OP_TEXT, b"two"))
    # No event tells when the server has read these bytes; give the loopback a moment so that
    # they are (almost always) buffered before the accept. The outcome is the same either way.
    await asyncio.sleep(0.05)
    gate.set()
    response = await client.response()
    assert response.status == 101
    got = [await client.read_frame() for _ in range(2)]
    assert [f.payload for f in got] == [b"one", b"two"]
    assert [(await log.next())["text"] for _ in range(2)] == ["one", "two"]


# Coalescing writes while fanning out


class _Pending:
    """Stands in for a socket with frames pending: the flusher only calls ``_flush``."""

    def __init__(self, writes: list[float]) -> None:
        self.writes = writes

    def _flush(self) -> None:
        self.writes.append(asyncio.get_running_loop().time())


async def _turns(n: int = 3) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


async def test_a_quiet_node_writes_at_the_end_of_the_turn_a_fanning_out_one_waits() -> None:
    loop = asyncio.get_running_loop()
    flusher = Flusher(loop)
    flusher.coalesce = 0.05
    writes: list[float] = []
    sockets: list[Any] = [_Pending(writes) for _ in range(FANOUT_SOCKETS)]

    flusher.add(sockets[0])  # a notification to one device: written within the turn
    await _turns()
    assert len(writes) == 1

    for sock in sockets:  # a fan-out: written at once too, and the node is now fanning out
        flusher.add(sock)
    await _turns()
    assert len(writes) == 1 + FANOUT_SOCKETS

    writes.clear()
    started = loop.time()
    flusher.add(sockets[0])
    flusher.add(sockets[1])
    await _turns()
    assert writes == []  # the next messages' frames wait to share the write
    await asyncio.sleep(0.2)
    assert len(writes) == 2
    assert writes[0] - started >= 0.04

    writes.clear()
    await asyncio.sleep(FANOUT_WINDOW)  # no fan-out for a while: back to writing at once
    flusher.add(sockets[0])
    await _turns()
    assert len(writes) == 1


async def test_coalescing_can_be_turned_off() -> None:
    flusher = Flusher(asyncio.get_running_loop())
    flusher.coalesce = 0
    writes: list[float] = []
    sockets: list[Any] = [_Pending(writes) for _ in range(FANOUT_SOCKETS)]
    for sock in sockets:
        flusher.add(sock)
    await _turns()
    flusher.add(sockets[0])
    await _turns()
    assert len(writes) == FANOUT_SOCKETS + 1


# The front protocol: the first request decides between the WebSocket transport and HTTP


def http_or_echo_app(log: AppLog) -> App:
    """Answers HTTP requests with their method and path; echoes WebSocket messages."""
    echo = echo_app(log)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            await echo(scope, receive, send)
            return
        assert scope["type"] == "http"
        log.scopes.append(scope)
        while (await receive()).get("more_body"):
            pass
        body = f"{scope['method']} {scope['path']}".encode()
        headers = [(b"content-type", b"text/plain"), (b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app


async def test_plain_http_on_a_kept_alive_connection_goes_to_uvicorn(
    serve: Callable[..., Awaitable[Running]], raw: Callable[..., Awaitable[RawClient]]
) -> None:
    log = AppLog()
    server = await serve(http_or_echo_app(log))
    client = await raw(server.port)
    for path in ("/one", "/two"):
        await client.send(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        response = await client.response()
        assert response.status == 200
        assert await client.body(response) == f"GET {path}".encode()
    await client.send(b"POST /three HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi")
    response = await client.response()
    assert await client.body(response) == b"POST /three"
    assert [scope["type"] for scope in log.scopes] == ["http"] * 3


async def test_an_upgrade_request_arriving_byte_by_byte_is_served(
    serve: Callable[..., Awaitable[Running]], raw: Callable[..., Awaitable[RawClient]]
) -> None:
    log = AppLog()
    server = await serve(http_or_echo_app(log))
    client = await raw(server.port)
    for byte in upgrade_request("/ws?x=1"):
        await client.send(bytes((byte,)))
    response = await client.response()
    assert response.status == 101
    assert log.scopes[0]["path"] == "/ws"
    assert log.scopes[0]["query_string"] == b"x=1"


@pytest.mark.parametrize(
    "request_head",
    [
        # Upgrade without Connection: upgrade is a plain GET (as uvicorn decides)
        b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\n",
        # Connection: upgrade to something else
        b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n",
    ],
)
async def test_what_is_not_a_websocket_upgrade_is_served_as_http(
    serve: Callable[..., Awaitable[Running]],
    raw: Callable[..., Awaitable[RawClient]],
    request_head: bytes,
) -> None:
    log = AppLog()
    server = await serve(http_or_echo_app(log))
    client = await raw(server.port)
    await client.send(request_head)
    response = await client.response()
    assert response.status == 200
    assert (await client.body(response)).endswith(b" /ws")
    assert log.scopes[0]["type"] == "http"


async def test_a_head_over_the_front_limit_is_left_to_uvicorn(
    serve: Callable[..., Awaitable[Running]], raw: Callable[..., Awaitable[RawClient]]
) -> None:
    """A request whose head has not ended after MAX_HEAD bytes is handed to uvicorn's HTTP
    protocol as it is, which goes on parsing it (the front never holds more)."""
    log = AppLog()
    server = await serve(http_or_echo_app(log))
    client = await raw(server.port)
    padding = "a" * (MAX_HEAD + 100)
    await client.send(f"GET /big HTTP/1.1\r\nHost: x\r\nX-Pad: {padding}\r\n".encode())
    await client.send(b"\r\n")
    response = await client.response()
    assert response.status == 200
    assert await client.body(response) == b"GET /big"


async def test_a_connection_that_never_sends_a_request_is_closed_at_shutdown(
    serve: Callable[..., Awaitable[Running]], raw: Callable[..., Awaitable[RawClient]]
) -> None:
    server = await serve(http_or_echo_app(AppLog()))
    client = await raw(server.port)
    await asyncio.sleep(0.05)  # accepted by the server
    server.server.should_exit = True
    await within(server.task)
    assert await client.read_all() == b""


@pytest.mark.parametrize(
    "request_head",
    [
        # a space before the colon
        b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade : websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        # a folded header line
        b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"X-Forwarded-For: 1.2.3.4\r\n 5.6.7.8\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        # a body's length and a transfer coding on the upgrade
        b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    ],
    ids=["space-before-colon", "folded-line", "content-length-and-chunked"],
)
async def test_a_malformed_upgrade_request_gets_uvicorn_s_400(
    serve: Callable[..., Awaitable[Running]],
    raw: Callable[..., Awaitable[RawClient]],
    request_head: bytes,
) -> None:
    """What a strict HTTP parser refuses is not upgraded by the front: it reaches uvicorn's
    parser, which answers 400 (no request reaches the application)."""
    log = AppLog()
    server = await serve(http_or_echo_app(log))
    client = await raw(server.port)
    await client.send(request_head)
    response = await client.response()
    assert response.status == 400
    assert log.scopes == []


@pytest.mark.parametrize(
    "junk",
    [b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", b"GET / HTTP/1.1\nHost: x\n\n", b"HELLO\r\n"],
    ids=["tls-client-hello", "bare-line-feeds", "not-http"],
)
async def test_junk_is_answered_at_once_not_after_16_kib(
    serve: Callable[..., Awaitable[Running]],
    raw: Callable[..., Awaitable[RawClient]],
    junk: bytes,
) -> None:
    server = await serve(http_or_echo_app(AppLog()))
    client = await raw(server.port)
    await client.send(junk)
    answer = await client.read_all()  # uvicorn answers (400, or plain HTTP) and closes
    assert answer.startswith(b"HTTP/1.1 ")


async def test_early_frames_beyond_max_size_are_kept_whole(
    serve: Callable[..., Awaitable[Running]], raw: Callable[..., Awaitable[RawClient]]
) -> None:
    """Frames sent before the accept, more than ``ws_max_size`` bytes of them: reading stops
    until the accept instead of dropping bytes, and every frame then arrives intact."""
    log = AppLog()
    gate = asyncio.Event()
    server = await serve(echo_app(log, gate=gate), ws_max_size=4096)
    client = await raw(server.port)
    messages = [bytes([65 + i]) * 3000 for i in range(6)]  # 18 kB, over 4 kB
    await client.send(upgrade_request(), *(frame(OP_TEXT, m) for m in messages))
    await within(log.connected.wait())
    await asyncio.sleep(0.05)
    gate.set()
    response = await client.response()
    assert response.status == 101
    got = [(await log.next())["text"].encode() for _ in messages]
    assert got == messages


async def test_a_fanning_out_node_waits_as_long_as_its_last_writes_took() -> None:
    """The wait follows the cost of the last fan-out's writes (a slower machine gathers as
    many messages per write), between ``coalesce`` and four times it."""
    loop = asyncio.get_running_loop()
    flusher = Flusher(loop)
    flusher.coalesce = 0.01
    writes: list[float] = []

    class Slow(_Pending):
        def _flush(self) -> None:
            time.sleep(0.0001)  # 256 of these: a flush of ~26 ms or more
            super()._flush()

    sockets: list[Any] = [Slow(writes) for _ in range(FANOUT_SOCKETS)]
    for sock in sockets:
        flusher.add(sock)
    await _turns()
    assert flusher.cost >= 0.025
    writes.clear()
    started = loop.time()
    flusher.add(sockets[0])
    await asyncio.sleep(0.1)
    assert len(writes) == 1
    waited = writes[0] - started
    assert 0.025 <= waited < 0.04 + 0.05  # at most 4 x coalesce, with room for a slow machine


async def test_a_client_gone_in_the_middle_of_its_request_head_leaves_nothing_behind(
    serve: Callable[..., Awaitable[Running]], raw: Callable[..., Awaitable[RawClient]]
) -> None:
    """A connection lost while the front still waits for the rest of the head is forgotten:
    nothing reaches the application, and the server holds no connection for it."""
    log = AppLog()
    server = await serve(http_or_echo_app(log))
    client = await raw(server.port)
    await client.send(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n")
    await asyncio.sleep(0.05)
    assert len(server.server.server_state.connections) == 1
    client.close()
    async with asyncio.timeout(TIMEOUT):
        while server.server.server_state.connections:
            await asyncio.sleep(0.01)
    assert log.scopes == []
