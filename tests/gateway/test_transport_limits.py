"""What a hostile or broken client cannot do to tidings' transport and front door.

Each test runs a real uvicorn server in-process on the transport (the fixtures of
test_transport.py) and drives it with raw sockets: long runs of fragments, ping floods from a
client that never reads, request heads that never end, more connections than the node may
hold, invalid UTF-8 that must fail at once. The rules are RFC 6455's and the limits
docs/operations.md documents.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest

from gateway.test_transport import (
    OP_CLOSE,
    OP_CONT,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    AppLog,
    RawClient,
    Running,
    echo_app,
    fail_with,
    frame,
    raw,
    serve,
    within,
)
from tidings.gateway.flusher import PING_GROUPS, Flusher
from tidings.gateway.front import FrontProtocol
from tidings.gateway.transport import WebSocketProtocol

__all__ = ["raw", "serve"]  # fixtures

Serve = Callable[..., Awaitable[Running]]
Raw = Callable[..., Awaitable[RawClient]]


async def open_echo(serve: Serve, raw: Raw, **config: Any) -> tuple[AppLog, RawClient, Running]:
    log = AppLog()
    server = await serve(echo_app(log), **config)
    client = await raw(server.port)
    await client.handshake()
    return log, client, server


def protocols(server: Running) -> list[WebSocketProtocol]:
    return [c for c in server.server.server_state.connections if isinstance(c, WebSocketProtocol)]


# Fragments


async def test_a_run_of_empty_continuation_frames_is_cut_off_with_1009(
    serve: Serve, raw: Raw
) -> None:
    """100,000 empty continuation frames after an unfinished text frame: the message is
    refused with 1009 once it has more fragments than its size limit allows, in well under a
    second (the node once re-summed every fragment on each one: minutes of a frozen loop)."""
    log, client, _ = await open_echo(serve, raw, ws_max_size=1024 * 1024)
    started = time.perf_counter()
    flood = frame(OP_TEXT, b"", fin=False) + frame(OP_CONT, b"", fin=False) * 100_000
    sending = asyncio.create_task(client.send(flood))
    closing = await client.read_close()
    assert closing.close_code() == 1009, closing
    assert "fragments" in closing.close_reason()
    assert time.perf_counter() - started < 2.0
    sending.cancel()
    assert (await log.disconnect())["code"] == 1009


async def test_a_large_message_in_64_byte_fragments_is_reassembled(serve: Serve, raw: Raw) -> None:
    """A 4 MiB text message in 64-byte fragments (Autobahn 9.3.1) under a 4 MiB limit is
    delivered whole, and in linear time."""
    size = 4 * 1024 * 1024
    log, client, _ = await open_echo(serve, raw, ws_max_size=size)
    chunk = b"abcdefgh" * 8
    count = size // len(chunk)
    frames = [frame(OP_TEXT, chunk, fin=False)]
    frames += [frame(OP_CONT, chunk, fin=False)] * (count - 2)
    frames.append(frame(OP_CONT, chunk))
    started = time.perf_counter()
    await client.send(*frames)
    message = await within(log.received.get(), 20)
    assert message["type"] == "websocket.receive"
    assert len(message["text"]) == size and message["text"][:64] == chunk.decode()
    assert time.perf_counter() - started < 10
    echoed = await within(client.read_frame(), 20)
    assert len(echoed.payload) == size


async def test_a_message_over_the_limit_is_refused_before_its_last_fragment(
    serve: Serve, raw: Raw
) -> None:
    """A fragment whose header says the message would pass ``ws_max_size`` is refused with
    1009 as soon as its header arrives, not after its payload."""
    log, client, _ = await open_echo(serve, raw, ws_max_size=1000)
    await client.send(frame(OP_TEXT, b"x" * 600, fin=False))
    whole = frame(OP_CONT, b"y" * 600)
    await client.send(whole[:20])  # the header and a little of the payload
    await fail_with(client, log, 1009)


# UTF-8


@pytest.mark.parametrize(
    "parts",
    [
        # Autobahn 6.4.1: a code point past U+10FFFF in the second of three fragments
        (b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5", b"\xf4\x90\x80\x80", b"edited"),
        # Autobahn 6.4.2: the invalid byte is the first of the second fragment
        (b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xf4", b"\x90", b"\x80\x80edited"),
    ],
)
async def test_invalid_utf8_in_a_fragment_fails_at_once(
    serve: Serve, raw: Raw, parts: tuple[bytes, bytes, bytes]
) -> None:
    """A fragmented text message that turns invalid is failed with 1007 when the fragment
    that makes it invalid arrives, before the message ends (RFC 6455 section 8.1)."""
    log, client, _ = await open_echo(serve, raw)
    await client.send(frame(OP_TEXT, parts[0], fin=False))
    await asyncio.sleep(0.05)
    await client.send(frame(OP_CONT, parts[1], fin=False))  # the third never comes
    await fail_with(client, log, 1007)


async def test_invalid_utf8_in_part_of_a_frame_fails_at_once(serve: Serve, raw: Raw) -> None:
    """A text frame whose first bytes are already invalid is failed with 1007 before the
    rest of it arrives (Autobahn 6.4.3 and 6.4.4 send one frame in chops)."""
    log, client, _ = await open_echo(serve, raw)
    whole = frame(OP_TEXT, b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xf4\x90\x80\x80" * 100)
    await client.send(whole[:30])  # header, key and 22 bytes: invalid from byte 12 on
    await fail_with(client, log, 1007)


async def test_a_text_frame_in_chops_is_decoded_across_character_boundaries(
    serve: Serve, raw: Raw
) -> None:
    """A valid text frame that arrives in chops cutting characters in half is delivered
    whole: partial decoding never mistakes a split character for an invalid one."""
    log, client, _ = await open_echo(serve, raw)
    text = "κόσμε €" * 500
    whole = frame(OP_TEXT, text.encode())
    for at in range(0, len(whole), 7):
        await client.send(whole[at : at + 7])
        if at % 700 == 0:
            await asyncio.sleep(0.001)
    assert (await log.next())["text"] == text


# Ping floods


async def test_a_client_that_pings_and_never_reads_stops_being_read(serve: Serve, raw: Raw) -> None:
    """Pings from a client that reads nothing: once the pongs fill the write buffer, the node
    stops reading from it (the client's sends stall) instead of buffering pongs without end;
    unsolicited pongs do not change that. When the client reads again, it gets the pong of
    its last ping and is read again."""
    server = await serve(echo_app(AppLog()))
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
    client = RawClient(sock)
    sock.setblocking(False)
    await client.loop.sock_connect(sock, ("127.0.0.1", server.port))
    try:
        await client.handshake()
        batch = (frame(OP_PING, b"p" * 125) + frame(OP_PONG, b"u")) * 1000  # ~140 KB
        sent = 0
        for _ in range(2000):  # up to 280 MB if the node kept reading
            try:
                await asyncio.wait_for(client.loop.sock_sendall(sock, batch), 0.5)
            except TimeoutError:
                break
            sent += len(batch)
        else:
            pytest.fail(f"the node read {sent} bytes of pings from a client that never reads")
        (protocol,) = protocols(server)
        assert protocol.transport.get_write_buffer_size() < 1024 * 1024
        assert protocol.transport.is_reading() is False
        # The client reads again: the owed pong goes out and reading resumes.
        sock.setblocking(False)
        drained = 0
        deadline = time.monotonic() + 10
        while protocol.transport.is_reading() is False and time.monotonic() < deadline:
            with contextlib.suppress(TimeoutError):
                drained += len(await asyncio.wait_for(client.loop.sock_recv(sock, 1 << 20), 0.2))
        assert protocol.transport.is_reading(), "reading never resumed"
        assert drained > 0
    finally:
        sock.close()


# Keepalive


async def test_fragments_of_a_long_message_count_as_signs_of_life(serve: Serve, raw: Raw) -> None:
    """A client busy sending a long fragmented message is not dropped by the keepalive even
    if its pongs would come only after it: any bytes show it is alive. Once it falls silent
    it is dropped with 1011."""
    interval = 0.2
    log, client, _ = await open_echo(serve, raw, ws_ping_interval=interval)
    await client.send(frame(OP_TEXT, b"start", fin=False))
    started = time.monotonic()
    while time.monotonic() - started < 6 * interval:
        await client.send(frame(OP_CONT, b"more", fin=False))
        await asyncio.sleep(interval / 4)
    await client.send(frame(OP_CONT, b"end"))
    assert (await log.next())["text"].startswith("startmore")
    # Now silent (the pings are never answered): closed within two intervals or so.
    while True:
        got = await within(client.read_frame(), 10 * interval)
        if got.opcode == OP_CLOSE:
            assert got.close_code() == 1011
            break
        assert got.opcode in (OP_PING, OP_TEXT)


def test_the_keepalive_pings_one_group_of_sockets_per_tick() -> None:
    """Sockets are pinged in ``PING_GROUPS`` groups, one per tick of interval/PING_GROUPS:
    each once per interval, never all in the same tick."""
    loop = asyncio.new_event_loop()
    try:
        flusher = Flusher(loop)

        class Socket:
            pings = 0

            def _keepalive(self) -> None:
                self.pings += 1

        sockets = [Socket() for _ in range(4 * PING_GROUPS)]
        for s in sockets:
            flusher.watch(s, 1.0)  # type: ignore[arg-type]
        per_tick = []
        for _ in range(PING_GROUPS):
            before = sum(s.pings for s in sockets)
            flusher.ping(1.0)
            per_tick.append(sum(s.pings for s in sockets) - before)
        assert per_tick == [4] * PING_GROUPS
        assert all(s.pings == 1 for s in sockets)
        for s in sockets:
            flusher.unwatch(s)  # type: ignore[arg-type]
        assert not any(flusher.groups)
        if flusher.pinger is not None:
            flusher.pinger.cancel()
    finally:
        loop.close()


# Close codes


@pytest.mark.parametrize("code", [999, 1004, 1005, 1006, 1010, 1015, 2000, 5000])
async def test_an_application_close_code_that_may_not_be_sent_becomes_1011(
    serve: Serve, raw: Raw, code: int
) -> None:
    """An application that closes with a code RFC 6455 forbids on the wire (1005, 1006,
    1015, reserved or out of range) gets an error, and the client a 1011 close instead of the
    invalid code."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.close", "code": code})

    server = await serve(app)
    client = await raw(server.port)
    await client.handshake()
    closing = await client.read_close()
    assert closing.close_code() == 1011


# Request heads and the descriptor limit


@pytest.fixture
def sockets() -> Iterator[list[socket.socket]]:
    """Sockets a test opens with :func:`open_socket`, closed at its end."""
    opened: list[socket.socket] = []
    _opened.append(opened)
    yield opened
    _opened.remove(opened)
    for sock in opened:
        sock.close()


_opened: list[list[socket.socket]] = []


async def open_socket(port: int) -> socket.socket:
    sock = socket.socket()
    _opened[-1].append(sock)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    return sock


async def closed_by_server(sock: socket.socket, timeout: float) -> bytes:
    """Read until the server closes; what it sent."""
    loop = asyncio.get_running_loop()
    data = b""
    while True:
        chunk = await within(loop.sock_recv(sock, 4096), timeout)
        if not chunk:
            return data
        data += chunk


def http_app(log: AppLog) -> Any:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "websocket":
            await echo_app(log)(scope, receive, send)
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        answer = b"ok:" + body
        headers = [(b"content-length", str(len(answer)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": answer})

    return app


async def test_request_heads_that_never_end_are_closed_in_time(
    serve: Serve, sockets: list[socket.socket]
) -> None:
    """Connections that send nothing, half a WebSocket upgrade, half a POST head, or half the
    head of their second request on a kept-alive connection are closed after
    ``head_timeout`` (408 where a head had begun), while a complete request is served
    meanwhile."""
    server = await serve(http_app(AppLog()), head_timeout=0.5, timeout_keep_alive=30)
    loop = asyncio.get_running_loop()
    silent = await open_socket(server.port)
    half_get = await open_socket(server.port)
    await loop.sock_sendall(half_get, b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n")
    half_post = await open_socket(server.port)
    await loop.sock_sendall(half_post, b"POST /notify HTTP/1.1\r\nHost: x\r\nContent-Le")
    kept = await open_socket(server.port)
    await loop.sock_sendall(kept, b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi")
    first = await within(loop.sock_recv(kept, 4096))
    assert first.startswith(b"HTTP/1.1 200") and first.endswith(b"ok:hi")
    await loop.sock_sendall(kept, b"GET /b HTTP/1.1\r\nHost: x\r\n")
    started = time.monotonic()
    # A well-behaved client is served meanwhile.
    good = await open_socket(server.port)
    await loop.sock_sendall(good, b"GET /c HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert (await closed_by_server(good, 2)).startswith(b"HTTP/1.1 200")
    assert await closed_by_server(silent, 3) == b""
    for sock in (half_get, half_post, kept):
        answer = await closed_by_server(sock, 3)
        assert answer.startswith(b"HTTP/1.1 408"), answer
    assert time.monotonic() - started < 2.5


async def test_a_slowly_sent_but_timely_head_is_served(
    serve: Serve, sockets: list[socket.socket]
) -> None:
    """A head that arrives in pieces within ``head_timeout`` is served as usual."""
    server = await serve(http_app(AppLog()), head_timeout=1.0)
    loop = asyncio.get_running_loop()
    sock = await open_socket(server.port)
    for piece in (b"POST /x HTTP/1.1\r\n", b"Host: x\r\n", b"Content-Length: 1\r\n\r\nz"):
        await loop.sock_sendall(sock, piece)
        await asyncio.sleep(0.2)
    assert (await within(loop.sock_recv(sock, 4096))).endswith(b"ok:z")


async def test_past_max_open_connections_new_ones_get_503(
    serve: Serve, sockets: list[socket.socket]
) -> None:
    """With ``max_open`` connections open, a new one is answered 503 with Retry-After and
    closed at once; once one closes, the next is served."""
    server = await serve(http_app(AppLog()), max_open=4, head_timeout=30)
    held = [await open_socket(server.port) for _ in range(4)]
    await asyncio.sleep(0.05)
    refused = await open_socket(server.port)
    answer = await closed_by_server(refused, 2)
    assert answer.startswith(b"HTTP/1.1 503") and b"retry-after: 1" in answer.lower()
    held.pop().close()
    await asyncio.sleep(0.05)
    loop = asyncio.get_running_loop()
    sock = await open_socket(server.port)
    await loop.sock_sendall(sock, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert (await closed_by_server(sock, 2)).startswith(b"HTTP/1.1 200")


def test_the_front_protocol_is_what_uvicorn_starts_connections_on() -> None:
    """The front door is in place when the transport is chosen."""
    from tidings.gateway.front import FrontConfig

    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise NotImplementedError

    config = FrontConfig(app, ws=WebSocketProtocol, lifespan="off", log_config=None)
    config.load()
    assert config.http_protocol_class is FrontProtocol
    assert config.front_http_class.__name__.startswith("HeadTimeout")
    assert config.max_open > 0
