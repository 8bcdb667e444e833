"""The load generator's WebSocket client: picows (Cython, callback-based), many connections per
process, so the clients cost less than the servers they measure.

A :class:`Client` collects text frames; scenario code awaits :meth:`Client.expect` for the
handshake steps of each protocol, then sets :attr:`Client.on_text` to a callback for the
measured phase (no task or coroutine per frame).
"""

from __future__ import annotations

import asyncio
import random
import sys
from collections import deque
from collections.abc import Callable
from typing import Any

from picows import WSFrame, WSInvalidStatusError, WSListener, WSMsgType, WSTransport, ws_connect


class Client(WSListener):  # type: ignore[misc]
    """One WebSocket connection of the load generator."""

    def __init__(self) -> None:
        self.transport: WSTransport | None = None
        self.inbox: deque[bytes] = deque()
        self.waiter: asyncio.Future[None] | None = None
        #: the measured phase: called with each text frame instead of queueing it
        self.on_text: Callable[[Client, bytes], None] | None = None
        self.close_code: int | None = None
        self.closed = asyncio.get_running_loop().create_future()

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        kind = frame.msg_type
        if kind == WSMsgType.TEXT:
            payload = frame.get_payload_as_bytes()
            if payload == b"2":  # engine.io ping
                transport.send(WSMsgType.TEXT, b"3")
            elif self.on_text is not None:
                self.on_text(self, payload)
            else:
                self.inbox.append(payload)
                if self.waiter is not None and not self.waiter.done():
                    self.waiter.set_result(None)
        elif kind == WSMsgType.CLOSE:
            self.close_code = frame.get_close_code()
            transport.send_close(self.close_code)
            transport.disconnect()

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        if not self.closed.done():
            self.closed.set_result(None)
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("disconnected"))

    def send(self, text: str | bytes) -> None:
        assert self.transport is not None
        self.transport.send(WSMsgType.TEXT, text.encode() if isinstance(text, str) else text)

    async def expect(self, prefix: bytes, timeout: float = 60.0) -> bytes:
        """The next text frame starting with ``prefix`` (earlier ones are skipped)."""
        async with asyncio.timeout(timeout):
            while True:
                while self.inbox:
                    payload = self.inbox.popleft()
                    if payload.startswith(prefix):
                        return payload
                self.waiter = asyncio.get_running_loop().create_future()
                await self.waiter

    def pause(self) -> None:
        """Stop reading from the socket (a slow consumer)."""
        assert self.transport is not None
        self.transport.underlying_transport.pause_reading()

    def resume(self) -> None:
        assert self.transport is not None
        self.transport.underlying_transport.resume_reading()

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_disconnected:
            self.transport.send_close()
            self.transport.disconnect()


async def open_client(url: str, headers: dict[str, str] | None = None) -> Client:
    _, client = await ws_connect(
        Client,
        url,
        extra_headers=headers,
        websocket_handshake_timeout=120,
        read_buffer_init_size=4096,
    )
    assert isinstance(client, Client)
    return client


async def open_many(
    count: int, opener: Callable[[int], Any], concurrency: int = 200
) -> tuple[list[Any], int]:
    """Run ``opener(i)`` for ``i`` in ``range(count)`` with at most ``concurrency`` at once;
    returns the results that succeeded and the number that failed. A handshake refused with
    503 (the node's cap on new sockets per second) is retried after a short random pause, as
    a device's client does; the first few failures are printed to stderr, so a scenario's
    missing devices come with their reason."""
    gate = asyncio.Semaphore(concurrency)
    opened: list[Any] = []
    failed = 0

    async def one(i: int) -> None:
        nonlocal failed
        async with gate:
            for attempt in range(20):
                try:
                    opened.append(await opener(i))
                    return
                except WSInvalidStatusError as exc:  # carries the status only in its text
                    if "503" not in str(exc) or attempt == 19:
                        error: Exception = exc
                        break
                except Exception as exc:
                    error = exc
                    break
                await asyncio.sleep(random.uniform(0.1, 0.5))
            failed += 1
            if failed <= 3:
                print(f"open {i} failed: {error!r}", file=sys.stderr, flush=True)

    await asyncio.gather(*(one(i) for i in range(count)))
    return opened, failed
