"""A real ``tidings serve`` under hostile clients: it keeps answering and keeps its memory.

Each client here is a plain blocking socket in a thread that writes RFC 6455 frames by hand
(a conformant library would not misbehave on purpose); the node is a child process whose
``/health`` latency and resident memory are measured from outside while the client works.
"""

from __future__ import annotations

import base64
import os
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import httpx
import pytest

from conftest import ServerProcess, device_token

MASK = b"\x11\x22\x33\x44"
OP_CONT, OP_TEXT, OP_PING, OP_PONG = 0x0, 0x1, 0x9, 0xA


def frame(opcode: int, payload: bytes = b"", *, fin: bool = True) -> bytes:
    """A masked client frame."""
    b0 = (0x80 if fin else 0) | opcode
    size = len(payload)
    if size < 126:
        head = bytes((b0, 0x80 | size))
    elif size < 65536:
        head = struct.pack("!BBH", b0, 0x80 | 126, size)
    else:
        head = struct.pack("!BBQ", b0, 0x80 | 127, size)
    key = (MASK * (size // 4 + 1))[:size]
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(size, "big")
    return head + MASK + (masked if size else b"")


def open_ws(
    server: ServerProcess, token: str | None = None, rcvbuf: int | None = None
) -> socket.socket:
    """A raw WebSocket to the node's ``/ws``, the 101 read; with ``rcvbuf``, a small receive
    buffer so that a client that never reads fills it soon."""
    sock = socket.socket()
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(5)
    sock.connect(("127.0.0.1", server.port))
    key = base64.b64encode(os.urandom(16)).decode()
    query = f"?access_token={token}" if token else ""
    sock.sendall(
        (
            f"GET /ws{query} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(1)
        assert chunk, "closed during the handshake"
        head += chunk
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


class Probe:
    """Measures ``GET /health`` and the node's RSS every 50 ms from its own thread."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.latencies: list[float] = []
        self.rss: list[float] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        assert self.server.process is not None
        with httpx.Client(timeout=10) as client:
            while not self._stop.is_set():
                started = time.perf_counter()
                try:
                    client.get(f"{self.server.url}/health").raise_for_status()
                except httpx.HTTPError as exc:
                    self.failures.append(repr(exc))
                self.latencies.append(time.perf_counter() - started)
                self.rss.append(rss_mib(self.server.process.pid))
                self._stop.wait(0.05)

    def __enter__(self) -> Probe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(15)

    def assert_responsive(self, limit: float = 0.5) -> None:
        assert not self.failures, self.failures[:3]
        assert self.latencies, "no /health probe ran"
        worst = max(self.latencies)
        assert worst < limit, f"/health took {worst:.3f} s (over {len(self.latencies)} probes)"


@contextmanager
def running(target: Callable[[threading.Event], None]) -> Iterator[threading.Event]:
    """Run ``target(stop)`` in a thread for the block's duration."""
    stop = threading.Event()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            target(stop)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield stop
    finally:
        stop.set()
        thread.join(30)
    if errors:
        raise errors[0]


def test_a_run_of_empty_continuation_frames_does_not_hold_the_node(
    start_server: Callable[..., ServerProcess],
) -> None:
    """An unauthenticated client streams a text frame without FIN and 100,000 empty
    continuation frames: /health keeps answering within 0.5 s, and the client is closed with
    1009 (too many fragments) instead of freezing the node."""
    server = start_server()
    closes: list[bytes] = []

    def flood(stop: threading.Event) -> None:
        sock = open_ws(server)
        try:
            sock.sendall(frame(OP_TEXT, b"", fin=False))
            empty = frame(OP_CONT, b"", fin=False)
            for _ in range(100):
                sock.sendall(empty * 1000)
        except OSError:
            pass  # closed by the node, as it should be
        sock.settimeout(5)
        try:
            closes.append(sock.recv(256))
        finally:
            sock.close()

    with Probe(server) as probe, running(flood):
        time.sleep(2.0)
    probe.assert_responsive()
    assert closes and closes[0][:1] == b"\x88" and closes[0][2:4] == struct.pack("!H", 1009)


def test_a_large_message_in_small_fragments_does_not_hold_the_node(
    start_server: Callable[..., ServerProcess],
) -> None:
    """Under a raised limit (frames of 1 MiB: messages of up to 4 MiB), a 4 MiB message in
    64-byte fragments is read while /health keeps answering within 0.5 s, and the gateway
    answers it (an error frame: over the frame size) instead of taking most of a minute."""
    server = start_server(TIDINGS_MAX_FRAME_SIZE=str(1024 * 1024))
    answered: list[bytes] = []

    def send(stop: threading.Event) -> None:
        sock = open_ws(server, device_token("fragments"))
        try:
            sock.settimeout(30)
            chunk = b'"' + b"x" * 62 + b'"'
            body = frame(OP_CONT, chunk, fin=False)
            count = 4 * 1024 * 1024 // 64
            sock.sendall(frame(OP_TEXT, b"[" + b" " * 63, fin=False))
            for _ in range((count - 2) // 1024):
                sock.sendall(body * 1024)
            sock.sendall(body * ((count - 2) % 1024) + frame(OP_CONT, b"]" + b" " * 63))
            data = b""
            deadline = time.monotonic() + 30
            while b"frame_too_large" not in data and time.monotonic() < deadline:
                data += sock.recv(65536)
            answered.append(data)
        finally:
            sock.close()

    with Probe(server) as probe, running(send):
        while not answered and probe.latencies.__len__() < 600:
            time.sleep(0.1)
    probe.assert_responsive()
    assert answered and b"frame_too_large" in answered[0], answered[:1]


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_ping_floods_from_clients_that_never_read_do_not_grow_the_node(
    start_server: Callable[..., ServerProcess],
) -> None:
    """For 10 s, a device with a token and an unauthenticated client (reconnecting when the
    node closes it) send pings as fast as they can, slipping in unsolicited pongs, and never
    read: the node's RSS stays within 50 MiB of its start and /health keeps answering."""
    server = start_server()
    assert server.process is not None
    # A few requests and sockets first, so the baseline is the node at work, not at birth.
    for _ in range(20):
        httpx.get(f"{server.url}/health")
    baseline = rss_mib(server.process.pid)
    batch = (frame(OP_PING, b"p" * 125) + frame(OP_PONG, b"alive")) * 500
    sent = {"token": 0, "anonymous": 0}

    def flooder(name: str, token: str | None) -> Callable[[threading.Event], None]:
        def flood(stop: threading.Event) -> None:
            while not stop.is_set():
                try:
                    sock = open_ws(server, token, rcvbuf=4096)
                except (OSError, AssertionError):
                    time.sleep(0.1)
                    continue
                sock.settimeout(0.5)
                try:
                    while not stop.is_set():
                        try:
                            sock.sendall(batch)
                            sent[name] += len(batch)
                        except TimeoutError:
                            continue  # the node stopped reading: keep pushing
                except OSError:
                    pass  # closed by the node: come back
                finally:
                    sock.close()

        return flood

    with (
        Probe(server) as probe,
        running(flooder("token", device_token("pinger"))),
        running(flooder("anonymous", None)),
    ):
        time.sleep(10)
    peak = max(probe.rss)
    assert peak - baseline < 50, f"RSS grew from {baseline:.0f} to {peak:.0f} MiB; sent {sent}"
    probe.assert_responsive(limit=1.0)
    assert sent["token"] > 0 and sent["anonymous"] > 0


def test_connections_that_never_finish_a_request_head_are_closed_in_time(
    start_server: Callable[..., ServerProcess],
) -> None:
    """1,000 connections that send nothing, half a ``GET /ws`` head or half a ``POST
    /notify`` head are all closed by the node within its head timeout (here 2 s), while
    /health and a real notify keep being served."""
    server = start_server(TIDINGS_HEAD_TIMEOUT="2")
    token = server.service_token("notify")
    socks: list[socket.socket] = []
    starts = [b"", b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n", b"POST /notify HT"]
    try:
        with Probe(server) as probe:
            opened = time.monotonic()
            for i in range(1000):
                sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
                if starts[i % 3]:
                    sock.sendall(starts[i % 3])
                socks.append(sock)
            response = httpx.post(
                f"{server.url}/notify",
                json={"user_id": "someone", "data": {"n": 1}},
                headers={"Authorization": f"Bearer {token}"},
            )
            assert response.status_code == 201
            closed = 0
            for sock in socks:
                sock.settimeout(max(0.1, opened + 6 - time.monotonic()))
                try:
                    while sock.recv(4096):
                        pass
                    closed += 1
                except TimeoutError:
                    break
            elapsed = time.monotonic() - opened
        assert closed == 1000, f"{1000 - closed} connections still open after {elapsed:.1f} s"
        probe.assert_responsive()
    finally:
        for sock in socks:
            sock.close()
