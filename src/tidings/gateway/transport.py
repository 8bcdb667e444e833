"""A lean WebSocket transport for uvicorn: RFC 6455 spoken directly on the asyncio transport.

``tidings serve`` hands WebSocket upgrades to :class:`WebSocketProtocol` (uvicorn's ``ws=``
accepts a protocol class). It serves any ASGI WebSocket application, but exists for two costs:

- memory: a held connection costs its transport, this object and its frame reader (slots, no
  per-connection queue or parser generator; a future only while the application waits) and
  the application's task; uvicorn's websockets-based protocol adds several kilobytes;
- fan-out: :meth:`WebSocketProtocol.write_text` frames and writes a message synchronously, with
  no ASGI message or coroutine per frame, and encodes a
  :class:`~tidings.fanout.broadcast.Broadcast` once for all sockets. It refuses (False) while
  the socket's write buffer is over the high-water mark, so the caller queues instead.

This module only does the I/O. The protocol is sans-I/O: frames (and what a client may not
do) in :mod:`tidings.gateway.frames`, the HTTP upgrade in :mod:`tidings.gateway.upgrade`;
write coalescing and keepalive pings are shared per loop by :mod:`tidings.gateway.flusher`
(options per server: ``FrontConfig(coalesce_delay=…)``). Pings get no pong while the write
buffer is full, and reading waits until it drains, so a client that pings and never reads
holds nothing but its socket buffers. The front door is :mod:`tidings.gateway.front`.

Why not a library: websockets' sans-I/O protocol (what uvicorn uses) and wsproto keep per
connection parser generators, header objects and event queues, which is where the memory went;
picows measured 28 KiB per idle connection here. Tested frame by frame
(tests/gateway/test_transport.py), by Autobahn|Testsuite (tests/conformance) and by every
end-to-end test.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from typing import Any

# CloseCode, valid_close_code, GUID, accept_key, close_payload and frame_header are importable
# from here for one release (they moved to tidings.core.codes and tidings.gateway.frames).
from tidings.core.codes import CloseCode, valid_close_code
from tidings.errors import ProtocolFailure as ProtocolFailure
from tidings.fanout.broadcast import Broadcast
from tidings.gateway.flusher import FrameWriter
from tidings.gateway.frames import GUID as GUID
from tidings.gateway.frames import (
    PING,
    Opcode,
    Reader,
    binary_frame,
    close_frame,
    parse_close,
    pong_frame,
    text_frame,
)
from tidings.gateway.frames import accept_key as accept_key
from tidings.gateway.frames import close_payload as close_payload
from tidings.gateway.frames import frame_header as frame_header
from tidings.gateway.upgrade import (
    HttpAnswer,
    Refusal,
    accept_response,
    client_label,
    http_response,
    read_upgrade,
    target_label,
    websocket_scope,
)

logger = logging.getLogger("uvicorn.error")

#: messages the application has not read yet before reading from the socket pauses
RECEIVE_BACKLOG = 16

_S_HANDSHAKE, _S_OPEN, _S_CLOSING, _S_CLOSED = 0, 1, 2, 3

#: the context of callbacks that read no context variables
_BARE_CONTEXT = contextvars.Context()


class WebSocketProtocol(FrameWriter):
    """One WebSocket connection; created by uvicorn's HTTP protocol on an upgrade request."""

    __slots__ = (
        "_close_timer",
        "_inbox",
        "_key",
        "_owed_pong",
        "_pong_due",
        "_read_paused",
        "_reader",
        "_receiver",
        "_state",
        "app_state",
        "config",
        "connections",
        "default_headers",
        "response",
        "scope",
        "tasks",
    )

    def __init__(
        self,
        config: Any,
        server_state: Any,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        if not config.loaded:
            config.load()  # pragma: no cover
        super().__init__(config, _loop or asyncio.get_event_loop())
        self.config = config
        self.app_state = app_state
        self.connections = server_state.connections
        self.tasks = server_state.tasks
        self.default_headers = server_state.default_headers
        self.scope: dict[str, Any] | None = None
        self._state = _S_HANDSHAKE
        self._key = b""
        self._reader = Reader(config.ws_max_size)
        # Messages for the application (a list: an empty deque costs 600 bytes), and a future
        # only while someone waits.
        self._inbox: list[dict[str, Any]] = []
        self._receiver: asyncio.Future[None] | None = None
        self._read_paused = False
        self._close_timer: asyncio.TimerHandle | None = None
        self._pong_due = False
        #: the pong for the client's last ping, while the write buffer is full (reading then
        #: waits: a client that pings and never reads must not grow our memory)
        self._owed_pong: bytes | None = None
        #: the HTTP answer the application refuses the upgrade with, while it sends it
        self.response: HttpAnswer | None = None

    # asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.connections.add(self)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.connections.discard(self)
        self._stop_timers()
        if self._state in (_S_HANDSHAKE, _S_OPEN):
            self._deliver({"type": "websocket.disconnect", "code": CloseCode.ABNORMAL})
        self._state = _S_CLOSED
        self._resume_writers()

    def eof_received(self) -> bool | None:
        return None  # let the transport close

    def resume_writing(self) -> None:
        pong = self._owed_pong
        if pong is not None:
            self._owed_pong = None
            if self._state == _S_OPEN:
                self._write_paused = False
                self._out(pong)
            self._resume_reading()
        super().resume_writing()

    def shutdown(self) -> None:
        """The server stops: close with 1012 (service restart); clients reconnect elsewhere."""
        if self._state == _S_OPEN:
            self._send_close(CloseCode.SERVICE_RESTART, "server shutting down")
            self._deliver({"type": "websocket.disconnect", "code": CloseCode.SERVICE_RESTART})
        elif self._state == _S_HANDSHAKE and self.response is None:
            self._out(http_response(500, self.default_headers, b""))
        self._state = _S_CLOSED
        self._close_transport()

    def data_received(self, data: bytes) -> None:
        state = self._state
        if state == _S_HANDSHAKE:
            if self.scope is None:
                self._handshake(data)
            else:  # early frames wait for the accept
                self._reader.keep(data)
                self._hold_early()
            return
        if state == _S_CLOSED:
            return
        # Any bytes show that the client is alive: its pong may wait behind a long fragment.
        self._pong_due = False
        for event in self._reader.feed(data):
            if isinstance(event, ProtocolFailure):
                self._fail(event.code, event.reason)
                return
            opcode, payload = event
            if isinstance(payload, str):
                if self._state == _S_OPEN:  # else the application closed: keep reading
                    self._deliver({"type": "websocket.receive", "text": payload})
            elif opcode == Opcode.BINARY:
                if self._state == _S_OPEN:
                    self._deliver({"type": "websocket.receive", "bytes": payload})
            elif opcode == Opcode.PING:
                self._ping(payload)
            elif opcode == Opcode.PONG:
                self._pong_due = False
            else:
                self._peer_close(payload)

    # Handshake

    def _handshake(self, request: bytes) -> None:
        """Check the upgrade request (uvicorn hands it over whole) and start the application."""
        upgrade = read_upgrade(request)
        if isinstance(upgrade, Refusal):
            self._reject(upgrade.status, upgrade.body, upgrade.headers)
            return
        transport = self.transport
        self.scope = websocket_scope(
            upgrade,
            root_path=self.config.root_path,
            asgi_version=self.config.asgi_version,
            ssl=transport.get_extra_info("sslcontext") is not None,
            server=transport.get_extra_info("sockname"),
            client=transport.get_extra_info("peername"),
            state=self.app_state.copy(),
        )
        self._key = upgrade.key
        if upgrade.early:  # frames sent with the request (FrontProtocol hands them over too)
            self._reader.keep(upgrade.early)
            self._hold_early()
        self._inbox.append({"type": "websocket.connect"})
        task = self.loop.create_task(self._run_asgi())
        self.tasks.add(task)
        # A callback that needs no context variables: no copy of the context per connection.
        task.add_done_callback(self.tasks.discard, context=_BARE_CONTEXT)

    def _hold_early(self) -> None:
        """Stop reading while more than ``max_size`` bytes of early frames wait for the accept
        (kept whole: the frames are parsed, and a too large one refused, after it)."""
        if self._reader.buffered > self._reader.max_size and not self._read_paused:
            self._read_paused = True
            self.transport.pause_reading()

    def _reject(
        self, status: int, body: bytes, extra: tuple[tuple[bytes, bytes], ...] = ()
    ) -> None:
        headers = (*self.default_headers, (b"content-type", b"text/plain"), *extra)
        self._out(http_response(status, headers, body))
        self._state = _S_CLOSED
        self._close_transport()

    async def _run_asgi(self) -> None:
        scope = self.scope
        assert scope is not None
        try:
            await self.config.loaded_app(scope, self.receive, self.send)
        except BaseException as exc:
            if self._state == _S_HANDSHAKE and self.response is None:
                self._out(http_response(500, self.default_headers, b""))
            if not isinstance(exc, (ConnectionError, asyncio.CancelledError)):
                logger.exception("Exception in ASGI application\n")
                self._send_close(CloseCode.INTERNAL_ERROR, "internal error")
            if isinstance(exc, asyncio.CancelledError):
                raise
        else:
            if self._state == _S_HANDSHAKE and self.response is None:
                logger.error("ASGI callable returned without completing handshake.")
                self._out(http_response(500, self.default_headers, b""))
        finally:
            self.scope = None
        if self._state == _S_OPEN:
            self._send_close(CloseCode.NORMAL, "")
        if self._close_timer is None or self._state == _S_HANDSHAKE:
            self._state = _S_CLOSED
            self._close_transport()

    def release_scope(self) -> None:
        """The application will not read the scope again (tidings' gateway says so once the
        handshake is answered): empty it, so an idle connection does not keep the request's
        path, query, addresses and extensions. Before the accept it is still needed."""
        if self._state != _S_HANDSHAKE and self.scope is not None:
            scope, self.scope = self.scope, None
            scope.clear()

    def _accept(self, message: dict[str, Any]) -> None:
        headers = (*self.default_headers, *message.get("headers", ()))
        response = accept_response(self._key, headers, message.get("subprotocol"))
        self._key = b""
        self._state = _S_OPEN
        self._later(response)  # goes out with the first frames, in one write
        if self.config.access_log and logger.isEnabledFor(logging.INFO):
            assert self.scope is not None
            logger.info(
                '%s - "WebSocket %s" [accepted]', client_label(self.scope), target_label(self.scope)
            )
        interval = self.config.ws_ping_interval
        if interval:
            self._flusher.watch(self, interval)
        if self._reader.buffered:  # frames the client sent before the accept: read them next
            self.loop.call_soon(self.data_received, b"")
        if self._read_paused:  # held while early frames waited; the backlog rule applies now
            self._resume_reading()

    # Closing

    def _send_close(self, code: int, reason: str) -> None:
        """Start the closing handshake; the transport closes on the client's answer or after
        a timeout."""
        if self._state != _S_OPEN:
            return
        self._out(close_frame(code, reason))
        self._state = _S_CLOSING
        self._stop_timers()
        self._owed_pong = None  # pings are not answered once closing
        self._resume_reading()  # the client's close frame must still be read
        self._close_timer = self.loop.call_later(10.0, self.transport.close)

    def _fail(self, code: int, reason: str) -> None:
        """A protocol error by the client: close with ``code`` and drop the connection."""
        if self._state == _S_OPEN:
            self._out(close_frame(code, reason))
            self._deliver({"type": "websocket.disconnect", "code": code, "reason": reason})
        self._state = _S_CLOSED
        self._stop_timers()
        self._owed_pong = None
        # Half-close and read on (discarding) until the client's EOF: closing with unread input
        # would send a TCP reset, which can destroy the close frame before the client reads it.
        transport = self.transport
        self._flush()
        if transport.can_write_eof():
            transport.write_eof()
            if self._read_paused:
                self._read_paused = False
                transport.resume_reading()
            self._close_timer = self.loop.call_later(2.0, transport.close)
        else:
            transport.close()

    def _peer_close(self, payload: bytes) -> None:
        try:
            code, reason = parse_close(payload)
        except ProtocolFailure as failure:
            self._fail(failure.code, failure.reason)
            return
        if self._state == _S_OPEN:
            # Echo the close, tell the application, and let the client close the TCP
            # connection first (it is the server's job to close it if the client does not).
            echo = payload[:2]
            self._out(bytes((0x80 | Opcode.CLOSE, len(echo))) + echo)
            self._deliver({"type": "websocket.disconnect", "code": code, "reason": reason})
        self._state = _S_CLOSED
        self._stop_timers()
        self._close_transport()

    def _stop_timers(self) -> None:
        self._flusher.unwatch(self)
        if self._close_timer is not None:
            self._close_timer.cancel()
            self._close_timer = None

    # Pings

    def _keepalive(self) -> None:
        """Ping every ``ws_ping_interval`` seconds; a client that sent nothing (no pong, no
        message) since the previous ping is dropped."""
        if self._state != _S_OPEN:
            return
        if self._pong_due:
            self._fail(CloseCode.INTERNAL_ERROR, "keepalive ping timeout")
            return
        self._pong_due = True
        self._out(PING)

    def _ping(self, payload: bytes) -> None:
        if self._state == _S_OPEN:
            pong = pong_frame(payload)
            if self._write_paused:
                # Answer the last ping (RFC 6455 section 5.5.3) once there is room, and read
                # nothing more until then.
                self._owed_pong = pong
                self._pause_reading()
            else:
                self._out(pong)

    # ASGI receive

    async def receive(self) -> dict[str, Any]:
        inbox = self._inbox
        while not inbox:
            if self._state == _S_CLOSED:
                return {"type": "websocket.disconnect", "code": CloseCode.ABNORMAL}
            waiter = self._receiver = self.loop.create_future()
            try:
                await waiter
            finally:
                self._receiver = None
        message = inbox.pop(0)
        if self._read_paused and len(inbox) < RECEIVE_BACKLOG // 2:
            self._resume_reading()
        return message

    def _resume_reading(self) -> None:
        """Read again, unless the inbox is still full or a pong still waits for room."""
        if (
            self._read_paused
            and self._state != _S_CLOSED
            and self._owed_pong is None
            and (len(self._inbox) < RECEIVE_BACKLOG // 2 or self._state != _S_OPEN)
        ):
            self._read_paused = False
            self.transport.resume_reading()

    def _pause_reading(self) -> None:
        if not self._read_paused:
            self._read_paused = True
            self.transport.pause_reading()

    def _deliver(self, message: dict[str, Any]) -> None:
        self._inbox.append(message)
        waiter = self._receiver
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        # Only while open: once closing, the client's close frame must still be read, behind
        # whatever it sent meanwhile (pausing here held a flooder's close for 10 s).
        if len(self._inbox) >= RECEIVE_BACKLOG and self._state == _S_OPEN:
            self._pause_reading()

    # ASGI send

    def write_text(self, message: str | Broadcast) -> bool:
        """Send a text message now, if the socket is open and its buffer has room; False if
        not (the caller keeps the message and sends it through :meth:`send` later).

        Frames written in one turn of the event loop go out in one ``write`` per socket at its
        end (a fan-out of several messages costs one system call per socket, not one each). A
        :class:`~tidings.fanout.broadcast.Broadcast` is encoded by the first socket that
        writes it; the others reuse those bytes."""
        if self._write_paused or self._state != _S_OPEN:
            return False
        if isinstance(message, str):
            self._later(text_frame(message))
        else:
            self._later(message.encoded(text_frame))
        return True

    async def send(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        state = self._state
        if state == _S_HANDSHAKE:
            self._send_handshake(kind, message)
            return
        if state != _S_OPEN:
            if state == _S_CLOSED:
                raise ConnectionResetError("the WebSocket is closed")
            raise RuntimeError(f"Unexpected ASGI message '{kind}' after 'websocket.close'.")
        if kind == "websocket.send":
            while self._write_paused and self._state == _S_OPEN:
                waiter = self._writable = self.loop.create_future()
                try:
                    await waiter
                finally:
                    self._writable = None
            if self._state != _S_OPEN:
                raise ConnectionResetError("the WebSocket closed while sending")
            text = message.get("text")
            if text is not None:
                self.write_text(text)  # the buffer has room now: this cannot refuse
            else:
                self._out(binary_frame(message.get("bytes") or b""))
        elif kind == "websocket.close":
            code = message.get("code", CloseCode.NORMAL) or CloseCode.NORMAL
            if not valid_close_code(code):
                raise RuntimeError(f"Invalid WebSocket close code {code} (RFC 6455 7.4).")
            reason = message.get("reason") or ""
            self._send_close(code, reason)
            self._deliver({"type": "websocket.disconnect", "code": code, "reason": reason})
        else:
            raise RuntimeError(
                f"Expected ASGI message 'websocket.send' or 'websocket.close', but got '{kind}'."
            )

    def _send_handshake(self, kind: str, message: dict[str, Any]) -> None:
        """The application's answer to the upgrade: accept, refuse, or an HTTP response."""
        if self.response is None:
            if kind == "websocket.accept":
                self._accept(message)
            elif kind == "websocket.close":
                self._deliver({"type": "websocket.disconnect", "code": CloseCode.ABNORMAL})
                self._reject(403, b"")
            elif kind == "websocket.http.response.start":
                self.response = HttpAnswer(message)
            else:
                raise RuntimeError(
                    "Expected ASGI message 'websocket.accept', 'websocket.close' or "
                    f"'websocket.http.response.start' but got '{kind}'."
                )
            return
        # an HTTP refusal is being sent
        if kind != "websocket.http.response.body":
            raise RuntimeError(f"Expected 'websocket.http.response.body' but got '{kind}'.")
        if self.response.add(message):
            self._deliver({"type": "websocket.disconnect", "code": CloseCode.ABNORMAL})
            self._out(self.response.encode(self.default_headers))
            self._state = _S_CLOSED
            self._close_transport()
