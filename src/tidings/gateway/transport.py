"""A lean WebSocket transport for uvicorn: RFC 6455 spoken directly on the asyncio transport.

``tidings serve`` hands WebSocket upgrades to :class:`WebSocketProtocol` (uvicorn's ``ws=``
accepts a protocol class). It serves any ASGI WebSocket application, but it exists for the
device gateway's two costs:

- memory: a held connection costs its transport, this object (slots, no per-connection queue,
  event or parser object; a future only while the application waits) and the application's task;
  uvicorn's websockets-based protocol adds several kilobytes of parser, header and queue state;
- fan-out: :meth:`write_text` frames and writes a message synchronously, with no ASGI message
  dict or coroutine per frame. It refuses (returns False) while the socket's write buffer is over
  the high-water mark, so the caller queues instead and a slow client never grows our memory
  unboundedly.

Not supported, on purpose: extensions (permessage-deflate costs 30-40 KiB per connection), so any
frame with RSV bits is a protocol error. Frames from the client must be masked; control frames
must be short and unfragmented; text must be valid UTF-8 (the codes of RFC 6455 section 7.4).

Why not a library: websockets' sans-I/O protocol (what uvicorn uses) and wsproto keep per
connection parser generators, header objects and event queues, which is where the memory went;
picows measured 28 KiB per idle connection here. The framing itself is small and is tested
frame by frame (tests/gateway/test_transport.py) and by every end-to-end test, which all run on it.
"""

from __future__ import annotations

import asyncio
import base64
import contextvars
import hashlib
import logging
import math
import re
import struct
import weakref
from http import HTTPStatus
from typing import Any
from urllib.parse import unquote

import uvicorn

try:  # websockets (a dependency of uvicorn[standard]) ships the masking loop in C
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover - platforms without the compiled helper
    from websockets.utils import apply_mask

logger = logging.getLogger("uvicorn.error")

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
#: messages the application has not read yet before reading from the socket pauses
RECEIVE_BACKLOG = 16
#: close codes a peer may send (RFC 6455 section 7.4)
_VALID_CLOSE = frozenset((1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014))

_S_HANDSHAKE, _S_OPEN, _S_CLOSING, _S_CLOSED = 0, 1, 2, 3


#: seconds a fanning-out node lets frames wait to share a write (``TIDINGS_FANOUT_COALESCE_MS``;
#: set by :func:`set_coalesce_delay` before the server starts)
coalesce_delay = 0.005


def set_coalesce_delay(seconds: float) -> None:
    global coalesce_delay
    coalesce_delay = seconds
    for flusher in _flushers.values():
        flusher.coalesce = seconds


#: the last text frame encoded, by the identity of its str (a fan-out sends one str to many)
_last_text: str | None = None
_last_frame = b""


#: a flush that writes to at least this many sockets means the node is fanning out
FANOUT_SOCKETS = 256
#: how long after such a flush the node still counts as fanning out (seconds)
FANOUT_WINDOW = 0.05


class _Flusher:
    """Per event loop: writes the frames each socket got during one turn of the loop, at its
    end; and pings every open socket from one timer (a timer per socket costs 600 bytes).

    While the node fans out (a flush wrote to ``FANOUT_SOCKETS`` sockets or more in the last
    ``FANOUT_WINDOW`` seconds) the next flush waits ``coalesce`` seconds, or as long as the last
    fan-out's flush took (at most four times ``coalesce``), so that the frames of the following
    messages share the same ``write``: the system call per socket is most of a fan-out's cost
    (docs/benchmarks.md). A node that is not fanning out writes at the end of the loop's turn,
    as before, so a notification's latency does not change."""

    __slots__ = ("busy_at", "coalesce", "cost", "dirty", "loop", "open", "pinger", "scheduled")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.dirty: list[WebSocketProtocol] = []
        self.scheduled = False
        self.open: set[WebSocketProtocol] = set()
        self.pinger: asyncio.TimerHandle | None = None
        self.coalesce = coalesce_delay
        self.busy_at = -math.inf
        #: seconds the last fan-out's flush took
        self.cost = 0.0

    def watch(self, protocol: WebSocketProtocol, interval: float) -> None:
        self.open.add(protocol)
        if self.pinger is None:
            self.pinger = self.loop.call_later(interval, self.ping, interval)

    def unwatch(self, protocol: WebSocketProtocol) -> None:
        self.open.discard(protocol)

    def ping(self, interval: float) -> None:
        for protocol in tuple(self.open):
            protocol._keepalive()
        self.pinger = self.loop.call_later(interval, self.ping, interval) if self.open else None

    def add(self, protocol: WebSocketProtocol) -> None:
        self.dirty.append(protocol)
        if not self.scheduled:
            self.scheduled = True
            if self.coalesce > 0 and self.loop.time() - self.busy_at < FANOUT_WINDOW:
                # Wait as long as the last fan-out's writes took (at least ``coalesce``, at
                # most four times it): a slower machine then gathers as many messages per write.
                self.loop.call_later(
                    min(max(self.coalesce, self.cost), 4 * self.coalesce), self.flush
                )
            else:
                self.loop.call_soon(self.flush)

    def flush(self) -> None:
        self.scheduled = False
        dirty, self.dirty = self.dirty, []
        started = self.loop.time()
        for protocol in dirty:
            protocol._flush()
        if len(dirty) >= FANOUT_SOCKETS:
            self.busy_at = now = self.loop.time()
            self.cost = now - started


_flushers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Flusher] = (
    weakref.WeakKeyDictionary()
)


def _flusher(loop: asyncio.AbstractEventLoop) -> _Flusher:
    flusher = _flushers.get(loop)
    if flusher is None:
        flusher = _flushers[loop] = _Flusher(loop)
    return flusher


class ProtocolFailure(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def frame_header(opcode: int, length: int) -> bytes:
    """The header of an unmasked, final server frame."""
    if length < 126:
        return bytes((0x80 | opcode, length))
    if length < 65536:
        return struct.pack("!BBH", 0x80 | opcode, 126, length)
    return struct.pack("!BBQ", 0x80 | opcode, 127, length)


def close_payload(code: int, reason: str = "") -> bytes:
    # at most 123 bytes of reason, cut on a character boundary (it must stay valid UTF-8)
    return struct.pack("!H", code) + reason.encode()[:123].decode(errors="ignore").encode()


def accept_key(key: bytes) -> bytes:
    return base64.b64encode(hashlib.sha1(key + GUID).digest())


class WebSocketProtocol(asyncio.Protocol):
    """One WebSocket connection; created by uvicorn's HTTP protocol on an upgrade request."""

    __slots__ = (
        "_buf",
        "_close_timer",
        "_flusher",
        "_fragment_op",
        "_fragments",
        "_inbox",
        "_key",
        "_pending",
        "_pong_due",
        "_read_paused",
        "_receiver",
        "_state",
        "_writable",
        "_write_paused",
        "app_state",
        "config",
        "connections",
        "default_headers",
        "loop",
        "max_size",
        "response",
        "scope",
        "tasks",
        "transport",
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
        self.config = config
        self.app_state = app_state
        self.loop = _loop or asyncio.get_event_loop()
        self.connections = server_state.connections
        self.tasks = server_state.tasks
        self.default_headers = server_state.default_headers
        self.max_size: int = config.ws_max_size
        self.transport: Any = None
        self.scope: dict[str, Any] | None = None
        self._state = _S_HANDSHAKE
        self._key = b""
        #: text frames written this turn of the loop (flushed at its end by the flusher)
        self._pending: list[bytes] | None = None
        self._flusher = _flusher(self.loop)
        self._buf = b""
        self._fragments: list[bytes] | None = None
        self._fragment_op = 0
        # Messages for the application (a list: an empty deque costs 600 bytes), and a future
        # only while someone waits.
        self._inbox: list[dict[str, Any]] = []
        self._receiver: asyncio.Future[None] | None = None
        self._read_paused = False
        self._write_paused = False
        self._writable: asyncio.Future[None] | None = None
        self._close_timer: asyncio.TimerHandle | None = None
        self._pong_due = False
        #: the HTTP answer being built: None, or [status, headers, body] of a refusal
        self.response: list[Any] | None = None

    # asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.connections.add(self)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.connections.discard(self)
        self._stop_timers()
        if self._state in (_S_HANDSHAKE, _S_OPEN):
            self._deliver({"type": "websocket.disconnect", "code": 1006})
        self._state = _S_CLOSED
        self._resume_writers()

    def eof_received(self) -> bool | None:
        return None  # let the transport close

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._resume_writers()

    def shutdown(self) -> None:
        """The server stops: close with 1012 (service restart); clients reconnect elsewhere."""
        if self._state == _S_OPEN:
            self._send_close(1012, "server shutting down")
            self._deliver({"type": "websocket.disconnect", "code": 1012})
        elif self._state == _S_HANDSHAKE and self.response is None:
            self._http_response(500, [], b"")
        self._state = _S_CLOSED
        self._close_transport()

    def data_received(self, data: bytes) -> None:
        if self._state == _S_HANDSHAKE:
            if self.scope is None:
                self._handshake(data)
            else:  # early frames wait for the accept
                self._buf += data
                self._hold_early()
            return
        if self._state == _S_CLOSED:
            return
        if self._buf:
            data = self._buf + data
            self._buf = b""
        try:
            self._parse(data)
        except ProtocolFailure as failure:
            self._fail(failure.code, failure.reason)

    # Handshake

    def _handshake(self, request: bytes) -> None:
        """Check the upgrade request (uvicorn hands it over whole) and start the application."""
        head, _, early = request.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        method, _, rest = lines[0].partition(b" ")
        target = rest.rpartition(b" ")[0]
        headers: list[tuple[bytes, bytes]] = []
        key = version = b""
        upgrade = connection = b""
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            value = value.strip()
            headers.append((name, value))
            if name == b"sec-websocket-key":
                key = value
            elif name == b"sec-websocket-version":
                version = value
            elif name == b"upgrade":
                upgrade = value.lower()
            elif name == b"connection":
                connection = value.lower()
        if (
            method != b"GET"
            or b"websocket" not in upgrade
            or b"upgrade" not in connection
            or not _valid_key(key)
        ):
            self._reject(400, b"invalid WebSocket upgrade request\n")
            return
        if version != b"13":
            self._reject(
                426, b"unsupported WebSocket version\n", ((b"sec-websocket-version", b"13"),)
            )
            return
        raw_path, _, query = target.partition(b"?")
        root = self.config.root_path
        transport = self.transport
        ssl = transport.get_extra_info("sslcontext") is not None
        subprotocols = [
            token.strip().decode("latin-1")
            for name, value in headers
            if name == b"sec-websocket-protocol"
            for token in value.split(b",")
        ]
        self.scope = {
            "type": "websocket",
            "asgi": {"version": self.config.asgi_version, "spec_version": "2.4"},
            "http_version": "1.1",
            "scheme": "wss" if ssl else "ws",
            "server": _address(transport.get_extra_info("sockname")),
            "client": _address(transport.get_extra_info("peername")),
            "root_path": root,
            "path": root + unquote(raw_path.decode("latin-1")),
            "raw_path": root.encode("ascii") + raw_path,
            "query_string": query,
            "headers": headers,
            "subprotocols": subprotocols,
            "state": self.app_state.copy(),
            "extensions": {"websocket.http.response": {}},
        }
        self._key = key
        if early:  # frames sent with the request (FrontProtocol hands them over too)
            self._buf = early
            self._hold_early()
        self._inbox.append({"type": "websocket.connect"})
        task = self.loop.create_task(self._run_asgi())
        self.tasks.add(task)
        # A callback that needs no context variables: no copy of the context per connection.
        task.add_done_callback(self.tasks.discard, context=_BARE_CONTEXT)

    def _hold_early(self) -> None:
        """Stop reading while more than ``max_size`` bytes of early frames wait for the accept
        (kept whole: the frames are parsed, and a too large one refused, after it)."""
        if len(self._buf) > self.max_size and not self._read_paused:
            self._read_paused = True
            self.transport.pause_reading()

    def _reject(
        self, status: int, body: bytes, extra: tuple[tuple[bytes, bytes], ...] = ()
    ) -> None:
        self._http_response(status, [(b"content-type", b"text/plain"), *extra], body)
        self._state = _S_CLOSED
        self._close_transport()

    def _http_response(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        phrase = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else ""
        out = [b"HTTP/1.1 %d %s\r\n" % (status, phrase.encode())]
        names = set()
        for name, value in (*self.default_headers, *headers):
            names.add(name.lower())
            out.append(b"%s: %s\r\n" % (name, value))
        if b"content-length" not in names:
            out.append(b"content-length: %d\r\n" % len(body))
        out.append(b"connection: close\r\n\r\n")
        out.append(body)
        self._out(b"".join(out))

    async def _run_asgi(self) -> None:
        scope = self.scope
        assert scope is not None
        try:
            await self.config.loaded_app(scope, self.receive, self.send)
        except BaseException as exc:
            if self._state == _S_HANDSHAKE and self.response is None:
                self._http_response(500, [], b"")
            if not isinstance(exc, (ConnectionError, asyncio.CancelledError)):
                logger.exception("Exception in ASGI application\n")
                self._send_close(1011, "internal error")
            if isinstance(exc, asyncio.CancelledError):
                raise
        else:
            if self._state == _S_HANDSHAKE and self.response is None:
                logger.error("ASGI callable returned without completing handshake.")
                self._http_response(500, [], b"")
        finally:
            self.scope = None
        if self._state == _S_OPEN:
            self._send_close(1000, "")
        if self._close_timer is None or self._state == _S_HANDSHAKE:
            self._state = _S_CLOSED
            self._close_transport()

    # ASGI receive

    async def receive(self) -> dict[str, Any]:
        inbox = self._inbox
        while not inbox:
            if self._state == _S_CLOSED:
                return {"type": "websocket.disconnect", "code": 1006}
            waiter = self._receiver = self.loop.create_future()
            try:
                await waiter
            finally:
                self._receiver = None
        message = inbox.pop(0)
        if self._read_paused and len(inbox) < RECEIVE_BACKLOG // 2:
            self._read_paused = False
            if self._state != _S_CLOSED:
                self.transport.resume_reading()
        return message

    def _deliver(self, message: dict[str, Any]) -> None:
        self._inbox.append(message)
        waiter = self._receiver
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        # Only while open: once closing, the client's close frame must still be read, behind
        # whatever it sent meanwhile (pausing here held a flooder's close for 10 s).
        if not self._read_paused and len(self._inbox) >= RECEIVE_BACKLOG and self._state == _S_OPEN:
            self._read_paused = True
            self.transport.pause_reading()

    # ASGI send

    def write_text(self, text: str) -> bool:
        """Send a text message now, if the socket is open and its buffer has room; False if
        not (the caller keeps the message and sends it through :meth:`send` later).

        Frames written in one turn of the event loop go out in one ``write`` per socket at its
        end (a fan-out of several messages costs one system call per socket, not one each), and
        the same ``str`` sent to many sockets in a row is encoded once."""
        if self._write_paused or self._state != _S_OPEN:
            return False
        global _last_text, _last_frame
        if text is _last_text:
            frame = _last_frame
        else:
            payload = text.encode()
            n = len(payload)
            frame = bytes((0x81, n)) + payload if n < 126 else frame_header(OP_TEXT, n) + payload
            _last_text, _last_frame = text, frame
        self._later(frame)
        return True

    def _later(self, data: bytes) -> None:
        """Write at the end of this turn of the loop, with whatever else this socket gets."""
        pending = self._pending
        if pending is None:
            self._pending = [data]
            self._flusher.add(self)
        else:
            pending.append(data)
            if len(pending) > 64:
                self._flush()

    def _flush(self) -> None:
        pending = self._pending
        if pending is not None:
            self._pending = None
            if not self.transport.is_closing():
                self.transport.write(pending[0] if len(pending) == 1 else b"".join(pending))

    def _out(self, data: bytes) -> None:
        """Write now, after what is pending (for everything but text frames)."""
        self._flush()
        self.transport.write(data)

    def _close_transport(self) -> None:
        self._flush()
        self.transport.close()

    async def send(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        state = self._state
        if state == _S_HANDSHAKE and self.response is None:
            if kind == "websocket.accept":
                self._accept(message)
            elif kind == "websocket.close":
                self._deliver({"type": "websocket.disconnect", "code": 1006})
                self._reject(403, b"")
            elif kind == "websocket.http.response.start":
                status = message["status"]
                if not 100 <= status < 600:
                    raise RuntimeError(f"Invalid HTTP status code '{status}' in response.")
                self.response = [status, list(message.get("headers", ())), b""]
            else:
                raise RuntimeError(
                    "Expected ASGI message 'websocket.accept', 'websocket.close' or "
                    f"'websocket.http.response.start' but got '{kind}'."
                )
            return
        if state == _S_HANDSHAKE:  # an HTTP refusal is being sent
            if kind != "websocket.http.response.body":
                raise RuntimeError(f"Expected 'websocket.http.response.body' but got '{kind}'.")
            assert self.response is not None
            self.response[2] += message.get("body", b"")
            if not message.get("more_body", False):
                status, headers, body = self.response
                self._deliver({"type": "websocket.disconnect", "code": 1006})
                self._http_response(status, headers, body)
                self._state = _S_CLOSED
                self._close_transport()
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
                data = message.get("bytes") or b""
                self._out(frame_header(OP_BINARY, len(data)) + data)
        elif kind == "websocket.close":
            code = message.get("code", 1000) or 1000
            reason = message.get("reason") or ""
            self._send_close(code, reason)
            self._deliver({"type": "websocket.disconnect", "code": code, "reason": reason})
        else:
            raise RuntimeError(
                f"Expected ASGI message 'websocket.send' or 'websocket.close', but got '{kind}'."
            )

    def release_scope(self) -> None:
        """The application will not read the scope again (tidings' gateway says so once the
        handshake is answered): empty it, so an idle connection does not keep the request's
        path, query, addresses and extensions. Before the accept it is still needed."""
        if self._state != _S_HANDSHAKE and self.scope is not None:
            scope, self.scope = self.scope, None
            scope.clear()

    def _accept(self, message: dict[str, Any]) -> None:
        headers = [
            (b"upgrade", b"websocket"),
            (b"connection", b"Upgrade"),
            (b"sec-websocket-accept", accept_key(self._key)),
            *self.default_headers,
            *message.get("headers", ()),
        ]
        subprotocol = message.get("subprotocol")
        if subprotocol:
            headers.append((b"sec-websocket-protocol", subprotocol.encode("latin-1")))
        out = [b"HTTP/1.1 101 Switching Protocols\r\n"]
        out.extend(b"%s: %s\r\n" % (name, value) for name, value in headers)
        out.append(b"\r\n")
        self._key = b""
        self._state = _S_OPEN
        self._later(b"".join(out))  # goes out with the first frames, in one write
        if self.config.access_log and logger.isEnabledFor(logging.INFO):
            assert self.scope is not None
            logger.info('%s - "WebSocket %s" [accepted]', _client(self.scope), _target(self.scope))
        interval = self.config.ws_ping_interval
        if interval:
            self._flusher.watch(self, interval)
        if self._buf:  # frames the client sent before the accept
            data, self._buf = self._buf, b""
            self.loop.call_soon(self.data_received, data)
        if self._read_paused:  # held while early frames waited; the backlog rule applies now
            self._read_paused = False
            self.transport.resume_reading()

    # Closing

    def _send_close(self, code: int, reason: str) -> None:
        """Start the closing handshake; the transport closes on the client's answer or after
        a timeout."""
        if self._state != _S_OPEN:
            return
        payload = close_payload(code, reason)
        self._out(frame_header(OP_CLOSE, len(payload)) + payload)
        self._state = _S_CLOSING
        self._stop_timers()
        if self._read_paused:  # the client's close frame must still be read
            self._read_paused = False
            self.transport.resume_reading()
        self._close_timer = self.loop.call_later(10.0, self.transport.close)

    def _fail(self, code: int, reason: str) -> None:
        """A protocol error by the client: close with ``code`` and drop the connection."""
        if self._state == _S_OPEN:
            payload = close_payload(code, reason)
            self._out(frame_header(OP_CLOSE, len(payload)) + payload)
            self._deliver({"type": "websocket.disconnect", "code": code, "reason": reason})
        self._state = _S_CLOSED
        self._stop_timers()
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

    def _stop_timers(self) -> None:
        self._flusher.unwatch(self)
        if self._close_timer is not None:
            self._close_timer.cancel()
            self._close_timer = None

    def _resume_writers(self) -> None:
        waiter = self._writable
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _keepalive(self) -> None:
        """Ping every ``ws_ping_interval`` seconds; a client that sent nothing (no pong, no
        message) since the previous ping is dropped."""
        if self._state != _S_OPEN:
            return
        if self._pong_due:
            self._fail(1011, "keepalive ping timeout")
            return
        self._pong_due = True
        self._out(b"\x89\x00")

    # Frames from the client

    def _parse(self, data: bytes) -> None:
        size = len(data)
        pos = 0
        while self._state in (_S_OPEN, _S_CLOSING):
            if size - pos < 2:
                break
            b0 = data[pos]
            b1 = data[pos + 1]
            length = b1 & 0x7F
            head = 2
            if length == 126:
                if size - pos < 4:
                    break
                length = int.from_bytes(data[pos + 2 : pos + 4], "big")
                head = 4
            elif length == 127:
                if size - pos < 10:
                    break
                length = int.from_bytes(data[pos + 2 : pos + 10], "big")
                head = 10
            if b0 & 0x70:
                raise ProtocolFailure(1002, "reserved bits set (no extension was negotiated)")
            if not b1 & 0x80:
                raise ProtocolFailure(1002, "client frames must be masked")
            opcode = b0 & 0x0F
            if opcode >= 0x8:
                if length > 125 or not b0 & 0x80:
                    raise ProtocolFailure(1002, "invalid control frame")
            elif length > self.max_size:
                raise ProtocolFailure(1009, f"frame over {self.max_size} bytes")
            end = pos + head + 4 + length
            if end > size:
                break
            mask = data[pos + head : pos + head + 4]
            payload = apply_mask(data[pos + head + 4 : end], mask)
            pos = end
            self._frame(b0 & 0x80, opcode, payload)
        if pos < size and self._state in (_S_OPEN, _S_CLOSING):
            self._buf = data[pos:]

    def _frame(self, fin: int, opcode: int, payload: bytes) -> None:
        if opcode in (OP_TEXT, OP_BINARY):
            if self._fragments is not None:
                raise ProtocolFailure(1002, "new message before the previous one ended")
            if fin:
                self._message(opcode, payload)
            else:
                self._fragments = [payload]
                self._fragment_op = opcode
        elif opcode == OP_CONT:
            fragments = self._fragments
            if fragments is None:
                raise ProtocolFailure(1002, "continuation frame without a message")
            fragments.append(payload)
            if sum(map(len, fragments)) > self.max_size:
                raise ProtocolFailure(1009, f"message over {self.max_size} bytes")
            if fin:
                self._fragments = None
                self._message(self._fragment_op, b"".join(fragments))
        elif opcode == OP_PING:
            if self._state == _S_OPEN:
                self._out(frame_header(OP_PONG, len(payload)) + payload)
        elif opcode == OP_PONG:
            self._pong_due = False
        elif opcode == OP_CLOSE:
            self._peer_close(payload)
        else:
            raise ProtocolFailure(1002, f"unknown opcode {opcode}")

    def _message(self, opcode: int, payload: bytes) -> None:
        self._pong_due = False  # any traffic shows the client is alive
        if self._state != _S_OPEN:
            return  # the application already closed: drop, keep reading for the close
        if opcode == OP_TEXT:
            try:
                text = payload.decode()
            except UnicodeDecodeError:
                raise ProtocolFailure(1007, "invalid UTF-8 in a text message") from None
            self._deliver({"type": "websocket.receive", "text": text})
        else:
            self._deliver({"type": "websocket.receive", "bytes": payload})

    def _peer_close(self, payload: bytes) -> None:
        code, reason = 1005, ""
        if len(payload) == 1:
            raise ProtocolFailure(1002, "close frame with a one-byte payload")
        if len(payload) >= 2:
            code = int.from_bytes(payload[:2], "big")
            if code not in _VALID_CLOSE and not 3000 <= code <= 4999:
                raise ProtocolFailure(1002, f"invalid close code {code}")
            try:
                reason = payload[2:].decode()
            except UnicodeDecodeError:
                raise ProtocolFailure(1007, "invalid UTF-8 in the close reason") from None
        if self._state == _S_OPEN:
            # Echo the close, tell the application, and let the client close the TCP
            # connection first (it is the server's job to close it if the client does not).
            echo = payload[:2] if len(payload) >= 2 else b""
            self._out(frame_header(OP_CLOSE, len(echo)) + echo)
            self._deliver({"type": "websocket.disconnect", "code": code, "reason": reason})
        self._state = _S_CLOSED
        self._stop_timers()
        self._close_transport()


#: bytes of request head the front protocol reads before leaving the request to uvicorn
MAX_HEAD = 16 * 1024


class FrontProtocol(asyncio.Protocol):
    """``tidings serve``'s ``http=`` protocol: the first request of a connection decides who
    serves it. A WebSocket upgrade goes straight to :class:`WebSocketProtocol`; anything else
    to uvicorn's HTTP protocol (httptools, else h11), which then keeps the connection.

    Why: uvicorn parses an upgrade request with its HTTP machinery (a parser, a flow control,
    an HTTP scope, a rebuilt request) only to hand it over; that was a fifth of a device's
    connect. Handing over here also keeps frames a client sends in the same write as its
    request, which uvicorn drops. The WebSocket protocol checks the handshake itself."""

    __slots__ = ("_args", "_buf", "_transport")

    def __init__(
        self,
        config: Any,
        server_state: Any,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self._args = (config, server_state, app_state, _loop)
        self._buf = b""
        self._transport: Any = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport
        self._args[1].connections.add(self)  # a server shutting down closes it

    def connection_lost(self, exc: Exception | None) -> None:
        self._args[1].connections.discard(self)

    def shutdown(self) -> None:
        self._transport.close()

    def data_received(self, data: bytes) -> None:
        buf = self._buf + data if self._buf else data
        end = buf.find(b"\r\n\r\n")
        if (
            end < 0
            and len(buf) <= MAX_HEAD
            and b"GET "[: len(buf)] == buf[:4]
            and b"\n\n" not in buf
        ):
            self._buf = buf  # maybe an upgrade: wait for the rest of the head
            return
        self._buf = b""
        config, server_state, app_state, loop = self._args
        server_state.connections.discard(self)
        protocol: asyncio.Protocol
        if end >= 0 and _is_upgrade(buf[:end]):
            protocol = WebSocketProtocol(config, server_state, app_state, loop)
        else:
            protocol = config.front_http_class(
                config=config, server_state=server_state, app_state=app_state, _loop=loop
            )
        transport = self._transport
        protocol.connection_made(transport)
        transport.set_protocol(protocol)
        protocol.data_received(buf)

    def eof_received(self) -> bool | None:
        return None


#: a request head the front hands to the WebSocket transport itself: ``GET``, HTTP/1.1, and
#: header lines of a token, a colon and visible characters (RFC 9110/9112). Anything else
#: (folded lines, space before a colon, control characters, bare line feeds …) goes to
#: uvicorn's parser, which answers 400 as it always did.
_PLAIN_HEAD = re.compile(
    rb"GET [\x21-\x7e]+ HTTP/1\.1"
    rb"(?:\r\n[!#$%&'*+.^_`|~0-9A-Za-z-]+:[\t\x20-\x7e\x80-\xff]*)*"
)


def _is_upgrade(head: bytes) -> bool:
    """A plain ``GET`` with ``Upgrade: websocket`` and ``Connection: upgrade`` (as uvicorn
    decides), no body headers, and nothing a strict parser would refuse."""
    if not _PLAIN_HEAD.fullmatch(head):
        return False
    upgrade = connection = False
    for line in head.lower().split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name == b"upgrade":
            upgrade = value.strip() == b"websocket"
        elif name == b"connection":
            connection = b"upgrade" in (token.strip() for token in value.split(b","))
        elif name in (b"content-length", b"transfer-encoding"):
            return False
    return upgrade and connection


class FrontConfig(uvicorn.Config):
    """uvicorn's config; with ``ws=WebSocketProtocol`` connections start on
    :class:`FrontProtocol`, and the ``http`` protocol chosen serves all but upgrades."""

    front_http_class: Any = None

    def load(self) -> None:
        super().load()
        if self.ws_protocol_class is WebSocketProtocol:
            self.front_http_class = self.http_protocol_class
            self.http_protocol_class = FrontProtocol


#: the context of callbacks that read no context variables
_BARE_CONTEXT = contextvars.Context()


def _valid_key(key: bytes) -> bool:
    try:
        return len(base64.b64decode(key, validate=True)) == 16
    except ValueError:
        return False


def _address(value: Any) -> tuple[str, int] | None:
    if isinstance(value, tuple) and len(value) >= 2:
        return str(value[0]), int(value[1])
    return None


def _client(scope: dict[str, Any]) -> str:
    client = scope.get("client")
    return f"{client[0]}:{client[1]}" if client else "-"


def _target(scope: dict[str, Any]) -> str:
    query = scope.get("query_string", b"")
    path: str = scope["path"]
    return f"{path}?{query.decode('latin-1')}" if query else path
