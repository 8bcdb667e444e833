"""The sans-I/O layer under the transport (tidings.gateway.frames), the encode-once broadcast,
and the write settings each server keeps for itself.

The frame reader is fed bytes as a socket would deliver them, with no event loop; the rest
runs the real transport under uvicorn (the fixtures of test_transport.py).
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from gateway.test_transport import RawClient, Running, frame, raw, serve
from tidings.config import Settings
from tidings.core.codes import CloseCode
from tidings.core.counters import Counters
from tidings.errors import ProtocolFailure
from tidings.fanout.broadcast import Broadcast
from tidings.fanout.connection import Connection
from tidings.gateway.flusher import Flushers, flushers_of
from tidings.gateway.frames import (
    Opcode,
    Reader,
    close_frame,
    frame_header,
    parse_close,
    text_frame,
)
from tidings.gateway.front import FrontConfig
from tidings.gateway.transport import WebSocketProtocol
from tidings.server import front_config

__all__ = ["raw", "serve"]  # fixtures

Serve = Callable[..., Awaitable[Running]]
Raw = Callable[..., Awaitable[RawClient]]


# Frames, without I/O


def test_reader_returns_messages_and_control_frames_in_order_however_the_bytes_are_split() -> None:
    """A text, a ping, a fragmented binary message and a close, fed one byte at a time, come
    out whole and in order, and nothing after the close is read."""
    wire = (
        frame(Opcode.TEXT, "héllo".encode())
        + frame(Opcode.PING, b"p")
        + frame(Opcode.BINARY, b"\x00\x01", fin=False)
        + frame(Opcode.CONT, b"\x02")
        + frame(Opcode.CLOSE, struct.pack("!H", 1000) + b"bye")
        + frame(Opcode.TEXT, b"after the close")
    )
    reader = Reader(1024)
    events: list[Any] = []
    for i in range(len(wire)):
        events.extend(reader.feed(wire[i : i + 1]))
    assert events == [
        (Opcode.TEXT, "héllo"),
        (Opcode.PING, b"p"),
        (Opcode.BINARY, b"\x00\x01\x02"),
        (Opcode.CLOSE, struct.pack("!H", 1000) + b"bye"),
    ]
    assert reader.done


def test_reader_fails_invalid_utf8_in_the_middle_of_a_frame() -> None:
    """Invalid UTF-8 in the first bytes of a long text frame fails with 1007 before the rest
    of the frame arrives."""
    whole = frame(Opcode.TEXT, b"ok\xff" + b"x" * 10_000)
    reader = Reader(1024 * 1024)
    events = reader.feed(whole[:100])
    assert len(events) == 1 and isinstance(events[0], ProtocolFailure)
    assert events[0].code == CloseCode.INVALID_DATA
    assert reader.feed(whole[100:]) == []


def test_reader_cuts_off_too_many_fragments_and_too_large_frames() -> None:
    """A message in more fragments than its size allows, or a frame header announcing more
    than the limit, fails with 1009."""
    reader = Reader(1024)
    events = reader.feed(
        frame(Opcode.TEXT, b"", fin=False) + frame(Opcode.CONT, b"", fin=False) * 2000
    )
    assert isinstance(events[-1], ProtocolFailure)
    assert events[-1].code == CloseCode.MESSAGE_TOO_BIG and "fragments" in events[-1].reason
    big = Reader(1024).feed(frame(Opcode.BINARY, b"a" * 1025)[:20])
    assert isinstance(big[0], ProtocolFailure) and big[0].code == CloseCode.MESSAGE_TOO_BIG


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (b"", (CloseCode.NO_STATUS, "")),
        (struct.pack("!H", 1000) + "café".encode(), (1000, "café")),
        (struct.pack("!H", 1010), (1010, "")),
        (struct.pack("!H", 4429), (4429, "")),
    ],
)
def test_parse_close_reads_the_code_and_reason(payload: bytes, expected: tuple[int, str]) -> None:
    """A client's close frame: no payload is 1005; 1010 (the client's own) and 3000-4999 pass."""
    assert parse_close(payload) == expected


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (b"\x03", CloseCode.PROTOCOL_ERROR),
        (struct.pack("!H", 1005), CloseCode.PROTOCOL_ERROR),
        (struct.pack("!H", 999), CloseCode.PROTOCOL_ERROR),
        (struct.pack("!H", 1000) + b"\xff", CloseCode.INVALID_DATA),
    ],
)
def test_parse_close_refuses_what_rfc_6455_forbids(payload: bytes, code: int) -> None:
    """One byte, a code not allowed on the wire, or a reason that is not UTF-8 fail."""
    with pytest.raises(ProtocolFailure) as failure:
        parse_close(payload)
    assert failure.value.code == code


def test_server_frames_use_the_shortest_length_form() -> None:
    """Text frames take the 7-bit, 16-bit or 64-bit length as RFC 6455 section 5.2 says; a
    close reason is cut to 123 bytes on a character boundary."""
    assert text_frame("hi") == b"\x81\x02hi"
    assert text_frame("a" * 200)[:4] == b"\x81\x7e\x00\xc8"
    assert frame_header(Opcode.BINARY, 70_000) == b"\x82\x7f" + struct.pack("!Q", 70_000)
    closing = close_frame(1000, "é" * 100)
    assert closing[1] == 2 + 122 and closing[4:].decode() == "é" * 61


# Encode once


def test_a_broadcast_is_encoded_once() -> None:
    """However many sockets ask, a Broadcast's frame is computed on the first ask."""
    calls: list[str] = []

    def encode(text: str) -> bytes:
        calls.append(text)
        return text_frame(text)

    shared = Broadcast("news")
    frames = [shared.encoded(encode) for _ in range(1000)]
    assert calls == ["news"] and all(f is frames[0] for f in frames)


async def test_a_fanout_writes_one_broadcast_to_every_socket(serve: Serve, raw: Raw) -> None:
    """Connections on the transport that are pushed the same Broadcast (the registry's
    fan-out) all receive it as a text frame; the frame was encoded by the first of them."""
    conns: list[Connection] = []
    counters = Counters()
    ready = asyncio.Event()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        conn = Connection(send, connection_id="c", user_id="u", session_id="s", counters=counters)
        conn.open()
        conns.append(conn)
        if len(conns) == 3:
            ready.set()
        await receive()

    server = await serve(app)
    clients = [await raw(server.port) for _ in range(3)]
    for client in clients:
        await client.handshake()
    await asyncio.wait_for(ready.wait(), 5)
    shared = Broadcast('{"type":"topicMessage"}')
    for conn in conns:
        conn.push_topic("t", 1, shared)
    for client in clients:
        got = await client.read_frame()
        assert (got.opcode, got.payload) == (Opcode.TEXT, b'{"type":"topicMessage"}')
    assert shared._encoded == text_frame(shared.text)
    assert counters.frames_out == 3


async def test_a_broadcast_reaches_other_asgi_servers_as_text() -> None:
    """On an ASGI server without tidings' direct write, a Broadcast is sent as its str."""
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    conn = Connection(send, connection_id="c", user_id="u", session_id="s", counters=Counters())
    conn.open()
    conn.push(Broadcast("hello"))
    assert sent == [{"type": "websocket.send", "text": "hello"}]
    conn.close()
    await asyncio.wait_for(conn.finished(), 2)


# Settings per server


def test_each_server_keeps_its_own_coalescing_delay() -> None:
    """Two FrontConfigs in one process keep their own delay and flushers, one per loop."""
    quick = FrontConfig(lambda: None, coalesce_delay=0)
    slow = FrontConfig(lambda: None, coalesce_delay=0.02)
    loop = asyncio.new_event_loop()
    try:
        assert flushers_of(quick).for_loop(loop).coalesce == 0
        assert flushers_of(slow).for_loop(loop).coalesce == 0.02
        assert flushers_of(slow).for_loop(loop) is flushers_of(slow).for_loop(loop)
    finally:
        loop.close()
    other = asyncio.new_event_loop()
    try:
        assert flushers_of(slow).for_loop(other) is not None
    finally:
        other.close()


def test_a_plain_uvicorn_config_gets_default_flushers_of_its_own() -> None:
    """The transport under a plain uvicorn.Config uses default settings kept on that config."""
    import uvicorn

    config = uvicorn.Config(lambda: None, ws=WebSocketProtocol)
    flushers = flushers_of(config)
    assert isinstance(flushers, Flushers) and flushers_of(config) is flushers


def test_serve_takes_its_transport_options_from_settings() -> None:
    """front_config() (what `tidings serve` runs) passes TIDINGS_FANOUT_COALESCE_MS and the
    size limit to the transport; overrides replace single options."""
    settings = Settings(fanout_coalesce_ms=7, max_frame_size=512 * 1024)
    config = front_config(lambda: None, settings)
    assert config.ws is WebSocketProtocol
    assert flushers_of(config).coalesce == pytest.approx(0.007)
    assert config.ws_max_size == 2 * 1024 * 1024
    assert front_config(lambda: None, settings, ws_max_size=1).ws_max_size == 1


async def test_the_registry_fans_a_topic_message_out_as_one_broadcast() -> None:
    """Registry.deliver_topic pushes one Broadcast to every follower but the publisher's
    session, and counts whom it offered the message to."""
    from tidings.bus import create_bus
    from tidings.fanout.registry import Registry

    got: dict[str, list[object]] = {}

    def direct(name: str) -> Any:
        class Socket:
            def write_text(self, message: object) -> bool:
                got.setdefault(name, []).append(message)
                return True

            async def send(self, message: dict[str, Any]) -> None:
                raise AssertionError("the direct write path is taken")

        return Socket().send

    registry = Registry(create_bus("memory://"))
    conns = [
        Connection(
            direct(f"c{i}"),
            connection_id=f"c{i}",
            user_id=f"u{i}",
            session_id=session,
            counters=Counters(),
        )
        for i, session in enumerate(["s0", "s1", "origin"])
    ]
    for conn in conns:
        conn.open()
        await registry.join_topics(conn, ["t"])
    assert registry.deliver_topic("t", 1, '{"seq":1}', skip_session="origin") == 2
    assert sorted(got) == ["c0", "c1"]
    first, second = got["c0"][0], got["c1"][0]
    assert isinstance(first, Broadcast) and first is second and first.text == '{"seq":1}'
    assert registry.deliver_topic("t", 1, '{"seq":1}') == 3  # c0 and c1 already had seq 1
    assert sorted(got) == ["c0", "c1", "c2"] and len(got["c0"]) == 1
    for conn in conns:
        registry.remove(conn)
        conn.close()
    await registry.drain()
