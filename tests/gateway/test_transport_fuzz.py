"""Property tests of the WebSocket transport's frame reader, driven without sockets.

Whatever bytes a client sends after the handshake, and however TCP splits them, the transport
never raises, never writes anything but well-formed server frames, and either hands the
application exactly the messages that were sent, in order, or closes with a code of RFC 6455.
"""

from __future__ import annotations

import asyncio
import base64
import os
import struct
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tidings.gateway.transport import WebSocketProtocol

MAX_SIZE = 4096
#: what the server may close with: its own codes, or a valid code the client sent (echoed)
CLOSE_CODES = {1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014}


class FakeTransport:
    """What the protocol uses of an asyncio transport, recording writes."""

    def __init__(self) -> None:
        self.written = bytearray()
        self.closing = False

    def write(self, data: bytes) -> None:
        assert not self.closing, "write after close"
        self.written += data

    def close(self) -> None:
        self.closing = True

    def is_closing(self) -> bool:
        return self.closing

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        pass

    def get_extra_info(self, name: str) -> Any:
        return ("127.0.0.1", 4000) if name in ("sockname", "peername") else None

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


class Config:
    loaded = True
    ws_max_size = MAX_SIZE
    root_path = ""
    asgi_version = "3.0"
    access_log = False
    ws_ping_interval = None

    def __init__(self, app: Any) -> None:
        self.loaded_app = app


class ServerState:
    def __init__(self) -> None:
        self.connections: set[Any] = set()
        self.tasks: set[Any] = set()
        self.default_headers: list[tuple[bytes, bytes]] = []


def masked(opcode: int, payload: bytes, *, fin: bool = True) -> bytes:
    mask = os.urandom(4)
    n = len(payload)
    head = bytes([(0x80 if fin else 0) | opcode])
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + struct.pack("!H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", n)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def server_frames(data: bytes) -> list[tuple[int, bytes]]:
    """Parse what the server wrote after the 101: unmasked, final frames only."""
    head, _, rest = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101 ")
    frames = []
    while rest:
        b0, b1 = rest[0], rest[1]
        assert b0 & 0x80 and not b0 & 0x70, "server frames are final, without RSV bits"
        assert not b1 & 0x80, "server frames are not masked"
        n, at = b1 & 0x7F, 2
        if n == 126:
            n, at = struct.unpack("!H", rest[2:4])[0], 4
        elif n == 127:
            n, at = struct.unpack("!Q", rest[2:10])[0], 10
        assert len(rest) >= at + n, "a truncated server frame"
        frames.append((b0 & 0x0F, bytes(rest[at : at + n])))
        rest = rest[at + n :]
    return frames


async def drive(chunks: list[bytes]) -> tuple[list[dict[str, Any]], FakeTransport]:
    """Open a connection to an app that accepts and records what it receives; feed ``chunks``."""
    received: list[dict[str, Any]] = []
    finished = asyncio.Event()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert (await receive())["type"] == "websocket.connect"
        await send({"type": "websocket.accept"})
        while True:
            message = await receive()
            received.append(message)
            if message["type"] == "websocket.disconnect":
                finished.set()
                return

    protocol = WebSocketProtocol(Config(app), ServerState(), {}, _loop=asyncio.get_running_loop())
    transport = FakeTransport()
    protocol.connection_made(transport)  # type: ignore[arg-type]
    key = base64.b64encode(os.urandom(16))
    protocol.data_received(
        b"GET /ws HTTP/1.1\r\nhost: x\r\nupgrade: websocket\r\nconnection: Upgrade\r\n"
        b"sec-websocket-version: 13\r\nsec-websocket-key: " + key + b"\r\n\r\n"
    )
    for _ in range(3):
        await asyncio.sleep(0)  # the app accepts
    for chunk in chunks:
        protocol.data_received(chunk)
        await asyncio.sleep(0)
    if not transport.closing:
        protocol.connection_lost(None)
    async with asyncio.timeout(2):
        await finished.wait()
    await asyncio.sleep(0)
    return received, transport


messages = st.lists(
    st.tuples(st.sampled_from([0x1, 0x2]), st.binary(max_size=300), st.integers(1, 3)),
    max_size=8,
)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, last = [], 0
    for point in [*points, len(data)]:
        pieces.append(data[last:point])
        last = point
    return [p for p in pieces if p]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages, st.lists(st.integers(0, 10_000), max_size=12))
def test_valid_messages_arrive_whole_and_in_order_however_tcp_splits_them(
    sent: list[tuple[int, bytes, int]], cuts: list[int]
) -> None:
    """Text and binary messages, each sent in 1 to 3 fragments with pings between them, reach
    the application whole and in order, whatever the TCP segmentation."""
    wire = b""
    pings = 0
    expected: list[dict[str, Any]] = []
    for opcode, payload, parts in sent:
        if opcode == 0x1:
            payload = payload.decode("latin-1").encode()  # valid UTF-8
            expected.append({"type": "websocket.receive", "text": payload.decode()})
        else:
            expected.append({"type": "websocket.receive", "bytes": payload})
        size = max(1, -(-len(payload) // parts))
        pieces = [payload[i : i + size] for i in range(0, len(payload), size)] or [b""]
        for i, piece in enumerate(pieces):
            wire += masked(opcode if i == 0 else 0x0, piece, fin=i == len(pieces) - 1)
            wire += masked(0x9, b"p")
            pings += 1
    received, transport = asyncio.run(drive(split(wire, cuts)))
    assert received[:-1] == expected
    assert received[-1]["type"] == "websocket.disconnect"
    assert server_frames(bytes(transport.written)) == [(0xA, b"p")] * pings


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=600), st.lists(st.integers(0, 10_000), max_size=8))
def test_arbitrary_bytes_never_crash_and_close_with_a_protocol_code(
    garbage: bytes, cuts: list[int]
) -> None:
    """Random bytes after the handshake: no exception, only well-formed frames written, and if
    the server closes, it says why with a code of RFC 6455; the app always learns the end."""
    received, transport = asyncio.run(drive(split(garbage, cuts)))
    assert received[-1]["type"] == "websocket.disconnect"
    for opcode, payload in server_frames(bytes(transport.written)):
        assert opcode in (0x8, 0xA), "only pongs and a close are ever sent to this client"
        if opcode == 0x8 and payload:  # an empty close echoes a client's empty close
            assert len(payload) >= 2
            code = struct.unpack("!H", payload[:2])[0]
            assert code in CLOSE_CODES or 3000 <= code <= 4999
            payload[2:].decode()  # the reason is valid UTF-8


async def test_a_send_waiting_for_room_ends_when_the_connection_is_lost() -> None:
    """While the socket's buffer is full, write_text refuses and send() waits; if the client
    is lost meanwhile, the waiting send raises (an OSError, as servers report a gone client)
    instead of hanging, and the application's receive() reports the disconnect."""
    accepted = asyncio.Event()
    parked = asyncio.Event()
    calls: dict[str, Any] = {}

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        calls["send"], calls["receive"] = send, receive
        accepted.set()
        await parked.wait()

    protocol = WebSocketProtocol(Config(app), ServerState(), {}, _loop=asyncio.get_running_loop())
    transport = FakeTransport()
    protocol.connection_made(transport)  # type: ignore[arg-type]
    protocol.data_received(
        b"GET /ws HTTP/1.1\r\nupgrade: websocket\r\nconnection: Upgrade\r\n"
        b"sec-websocket-version: 13\r\nsec-websocket-key: "
        + base64.b64encode(os.urandom(16))
        + b"\r\n\r\n"
    )
    async with asyncio.timeout(2):
        await accepted.wait()
    protocol.pause_writing()  # the transport says its buffer is over the high-water mark
    assert protocol.write_text("refused") is False
    pending = asyncio.ensure_future(calls["send"]({"type": "websocket.send", "text": "waits"}))
    await asyncio.sleep(0.01)
    assert not pending.done()
    protocol.connection_lost(ConnectionResetError("peer gone"))
    async with asyncio.timeout(2):
        try:
            await pending
        except OSError:
            pass
        else:
            raise AssertionError("the send succeeded on a lost connection")
        assert (await calls["receive"]())["type"] == "websocket.disconnect"
    parked.set()
