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

What a client cannot do to the node: a message is bounded in bytes (``ws_max_size``, refused as
soon as a frame header announces too much) and in fragments (one per ``BYTES_PER_FRAGMENT`` of
that); its fragments are summed as they come, so a long run costs linear time; a text message
is decoded as it arrives, so invalid UTF-8 fails at once; pings get no pong while the write
buffer is full, and reading waits until it drains, so a client that pings and never reads
holds nothing but its socket buffers. The front door (connection limit, request-head timeout)
is :mod:`tidings.gateway.front`.

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
import codecs
import contextvars
import enum
import hashlib
import logging
import math
import struct
import weakref
from http import HTTPStatus
from typing import Any
from urllib.parse import unquote

from tidings.errors import ProtocolFailure

# Moved to tidings.errors; importable from here for one release.

try:  # websockets (a dependency of uvicorn[standard]) ships the masking loop in C
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover - platforms without the compiled helper
    from websockets.utils import apply_mask

logger = logging.getLogger("uvicorn.error")

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
#: messages the application has not read yet before reading from the socket pauses
RECEIVE_BACKLOG = 16
#: a fragmented message may have one fragment per this many bytes of ``max_size`` (and at
#: least ``MIN_FRAGMENTS``): a 4 MiB limit allows a 4 MiB message in 64-byte fragments
#: (Autobahn 9.3.1), while a run of empty continuation frames is cut off early (1009)
BYTES_PER_FRAGMENT = 64
MIN_FRAGMENTS = 1024


class CloseCode(enum.IntEnum):
    """The close codes this transport sends or names (RFC 6455 section 7.4.1 and the IANA
    registry). 1005, 1006 and 1015 are never sent on the wire."""

    NORMAL = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    UNSUPPORTED_DATA = 1003
    NO_STATUS = 1005
    ABNORMAL = 1006
    INVALID_DATA = 1007
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    MANDATORY_EXTENSION = 1010
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012
    TRY_AGAIN_LATER = 1013
    BAD_GATEWAY = 1014


#: close codes that may appear in a close frame (RFC 6455 section 7.4; 1012-1014 registered
#: since); 3000-4999 are for libraries and applications
_VALID_CLOSE = frozenset(
    code for code in CloseCode if code not in (CloseCode.NO_STATUS, CloseCode.ABNORMAL)
)


def valid_close_code(code: int) -> bool:
    """Whether a server may send ``code`` in a close frame (1010 is the client's: a server
    cannot miss an extension it would have had to negotiate itself)."""
    return (code in _VALID_CLOSE and code != CloseCode.MANDATORY_EXTENSION) or 3000 <= code <= 4999


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


#: the keepalive pings a node's sockets in this many groups, one group every
#: ``interval / PING_GROUPS`` seconds: each socket is pinged once an interval, but a tick never
#: writes to every socket at once and the pongs do not all come back in the same moment
PING_GROUPS = 8

#: a flush that writes to at least this many sockets means the node is fanning out
FANOUT_SOCKETS = 256
#: how long after such a flush the node still counts as fanning out (seconds)
FANOUT_WINDOW = 0.05


class _Flusher:
    """Per event loop: writes the frames each socket got during one turn of the loop, at its
    end; and pings every open socket from one timer (a timer per socket costs 600 bytes), a
    group of them at each tick (``PING_GROUPS``).

    While the node fans out (a flush wrote to ``FANOUT_SOCKETS`` sockets or more in the last
    ``FANOUT_WINDOW`` seconds) the next flush waits ``coalesce`` seconds, or as long as the last
    fan-out's flush took (at most four times ``coalesce``), so that the frames of the following
    messages share the same ``write``: the system call per socket is most of a fan-out's cost
    (docs/benchmarks.md). A node that is not fanning out writes at the end of the loop's turn,
    as before, so a notification's latency does not change."""

    __slots__ = (
        "busy_at",
        "coalesce",
        "cost",
        "dirty",
        "groups",
        "loop",
        "next_group",
        "pinger",
        "scheduled",
        "tick",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.dirty: list[WebSocketProtocol] = []
        self.scheduled = False
        #: open sockets by keepalive group; ``next_group`` takes the next one watched, ``tick``
        #: is pinged next
        self.groups: list[set[WebSocketProtocol]] = [set() for _ in range(PING_GROUPS)]
        self.next_group = 0
        self.tick = 0
        self.pinger: asyncio.TimerHandle | None = None
        self.coalesce = coalesce_delay
        self.busy_at = -math.inf
        #: seconds the last fan-out's flush took
        self.cost = 0.0

    def watch(self, protocol: WebSocketProtocol, interval: float) -> None:
        self.groups[self.next_group].add(protocol)
        self.next_group = (self.next_group + 1) % PING_GROUPS
        if self.pinger is None:
            self.pinger = self.loop.call_later(interval / PING_GROUPS, self.ping, interval)

    def unwatch(self, protocol: WebSocketProtocol) -> None:
        for group in self.groups:
            group.discard(protocol)

    def ping(self, interval: float) -> None:
        """Ping one group. A socket is pinged a whole interval before the ping that finds it
        silent, whenever it joined its group."""
        group = self.groups[self.tick]
        self.tick = (self.tick + 1) % PING_GROUPS
        for protocol in tuple(group):
            protocol._keepalive()
        self.pinger = (
            self.loop.call_later(interval / PING_GROUPS, self.ping, interval)
            if any(self.groups)
            else None
        )

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
        "_inbox",
        "_key",
        "_message",
        "_owed_pong",
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
        "max_fragments",
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
        self.max_fragments = max(MIN_FRAGMENTS, self.max_size // BYTES_PER_FRAGMENT)
        self.transport: Any = None
        self.scope: dict[str, Any] | None = None
        self._state = _S_HANDSHAKE
        self._key = b""
        #: text frames written this turn of the loop (flushed at its end by the flusher)
        self._pending: list[bytes] | None = None
        self._flusher = _flusher(self.loop)
        #: bytes received and not parsed yet: the start of a frame (a bytearray, appended to
        #: in place, while a frame arrives in several reads)
        self._buf: bytes | bytearray = b""
        #: the message whose frames are arriving, once it spans more than one read or frame
        self._message: _Message | None = None
        # Messages for the application (a list: an empty deque costs 600 bytes), and a future
        # only while someone waits.
        self._inbox: list[dict[str, Any]] = []
        self._receiver: asyncio.Future[None] | None = None
        self._read_paused = False
        self._write_paused = False
        self._writable: asyncio.Future[None] | None = None
        self._close_timer: asyncio.TimerHandle | None = None
        self._pong_due = False
        #: the pong for the client's last ping, while the write buffer is full (reading then
        #: waits: a client that pings and never reads must not grow our memory)
        self._owed_pong: bytes | None = None
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
        pong = self._owed_pong
        if pong is not None:
            self._owed_pong = None
            if self._state == _S_OPEN:
                self._out(pong)
            self._resume_reading()
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
                self._keep(data)
                self._hold_early()
            return
        if self._state == _S_CLOSED:
            return
        # Any bytes show that the client is alive: its pong may wait behind a long fragment.
        self._pong_due = False
        received: bytes | bytearray = data
        buf = self._buf
        if buf:
            buf += data  # a bytearray: a long frame arriving in many reads is copied once
            received = buf
        try:
            self._parse(received)
        except ProtocolFailure as failure:
            self._fail(failure.code, failure.reason)

    def _keep(self, data: bytes | bytearray) -> None:
        """Keep unparsed bytes for the next read."""
        if self._buf:
            self._buf += data
        else:
            self._buf = bytearray(data)

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
            self._keep(early)
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
            if not valid_close_code(code):
                raise RuntimeError(f"Invalid WebSocket close code {code} (RFC 6455 7.4).")
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
            self.loop.call_soon(self.data_received, bytes(data))
        if self._read_paused:  # held while early frames waited; the backlog rule applies now
            self._resume_reading()

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
        self._owed_pong = None  # pings are not answered once closing
        self._resume_reading()  # the client's close frame must still be read
        self._close_timer = self.loop.call_later(10.0, self.transport.close)

    def _fail(self, code: int, reason: str) -> None:
        """A protocol error by the client: close with ``code`` and drop the connection."""
        if self._state == _S_OPEN:
            payload = close_payload(code, reason)
            self._out(frame_header(OP_CLOSE, len(payload)) + payload)
            self._deliver({"type": "websocket.disconnect", "code": code, "reason": reason})
        self._state = _S_CLOSED
        self._stop_timers()
        self._message = None
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

    def _parse(self, data: bytes | bytearray) -> None:
        """Handle every whole frame in ``data`` and keep the rest (the start of a frame) in
        ``_buf``. A text frame still arriving is decoded as far as it came, so invalid UTF-8
        fails the connection at once, not once a long message is complete."""
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
            start = pos + head + 4
            end = start + length
            if end > size:
                if opcode < 0x8 and size > start:
                    self._partial_frame(opcode, data, start, length, data[start - 4 : start])
                break
            mask = data[start - 4 : start]
            pos = end
            if opcode >= 0x8:
                self._control(opcode, apply_mask(data[start:end], mask))
            elif b0 & 0x80 and opcode != OP_CONT and self._message is None:
                # a whole message in one frame: the common case, without a _Message
                self._deliver_message(opcode, apply_mask(data[start:end], mask))
            else:
                self._fragment(b0 & 0x80, opcode, data, start, end, mask)
        if pos >= size or self._state not in (_S_OPEN, _S_CLOSING):
            self._buf = b""
        elif data is self._buf:
            del data[:pos]  # type: ignore[union-attr]  # only a bytearray is kept
        else:
            self._buf = bytearray(data[pos:])

    def _message_for(self, opcode: int) -> _Message:
        """The message a data frame belongs to (RFC 6455 section 5.4): a text or binary frame
        starts one, a continuation frame needs one; the rest of a frame that arrived in part
        belongs to the message its start did."""
        if opcode not in (OP_CONT, OP_TEXT, OP_BINARY):
            raise ProtocolFailure(1002, f"unknown opcode {opcode}")
        message = self._message
        if message is None:
            if opcode == OP_CONT:
                raise ProtocolFailure(1002, "continuation frame without a message")
            message = self._message = _Message(opcode)
        elif message.in_frame is None and opcode != OP_CONT:
            raise ProtocolFailure(1002, "new message before the previous one ended")
        return message

    def _partial_frame(
        self, opcode: int, data: bytes | bytearray, start: int, length: int, mask: bytes | bytearray
    ) -> None:
        """Part of a data frame's payload has arrived: check that the message will fit, and
        decode what is new of a text message."""
        if opcode == OP_BINARY and self._message is None:
            return  # a binary message's first frame: nothing to check before its end
        message = self._message_for(opcode)
        message.in_frame = opcode
        if message.size + length > self.max_size:
            raise ProtocolFailure(1009, f"message over {self.max_size} bytes")
        available = min(len(data), start + length)
        if message.decoder is not None:
            done = message.checked
            if available - start > done:
                message.decode(apply_mask(data[start + done : available], _rotate(mask, done)))
                message.checked = available - start

    def _fragment(
        self,
        fin: int,
        opcode: int,
        data: bytes | bytearray,
        start: int,
        end: int,
        mask: bytes | bytearray,
    ) -> None:
        """A whole data frame of a message in several frames (or that arrived in several
        reads)."""
        message = self._message_for(opcode)
        message.in_frame = None
        message.fragments += 1
        message.size += end - start
        if message.size > self.max_size:
            raise ProtocolFailure(1009, f"message over {self.max_size} bytes")
        if message.fragments > self.max_fragments:
            raise ProtocolFailure(1009, f"message in over {self.max_fragments} fragments")
        done = message.checked
        message.checked = 0
        payload = apply_mask(data[start + done : end], _rotate(mask, done))
        if message.decoder is not None:
            message.decode(payload, final=bool(fin))
        else:
            message.chunks.append(payload)
        if fin:
            self._message = None
            if self._state == _S_OPEN:
                if message.decoder is not None:
                    text = "".join(message.texts)
                    self._deliver({"type": "websocket.receive", "text": text})
                else:
                    body = b"".join(message.chunks)
                    self._deliver({"type": "websocket.receive", "bytes": body})

    def _control(self, opcode: int, payload: bytes) -> None:
        if opcode == OP_PING:
            if self._state == _S_OPEN:
                pong = frame_header(OP_PONG, len(payload)) + payload
                if self._write_paused:
                    # Answer the last ping (RFC 6455 section 5.5.3) once there is room, and
                    # read nothing more until then.
                    self._owed_pong = pong
                    self._pause_reading()
                else:
                    self._out(pong)
        elif opcode == OP_PONG:
            self._pong_due = False
        elif opcode == OP_CLOSE:
            self._peer_close(payload)
        else:
            raise ProtocolFailure(1002, f"unknown opcode {opcode}")

    def _deliver_message(self, opcode: int, payload: bytes) -> None:
        self._pong_due = False  # any traffic shows the client is alive
        if opcode not in (OP_TEXT, OP_BINARY):
            raise ProtocolFailure(1002, f"unknown opcode {opcode}")
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


class _Message:
    """A message whose frames are still arriving: its parts so far, and for text the UTF-8
    decoder that checks each part as it comes (RFC 6455 section 8.1 asks to fail fast)."""

    __slots__ = ("checked", "chunks", "decoder", "fragments", "in_frame", "size", "texts")

    def __init__(self, opcode: int) -> None:
        self.decoder = _utf8_decoder() if opcode == OP_TEXT else None
        self.texts: list[str] = []
        self.chunks: list[bytes] = []
        #: bytes and whole frames so far
        self.size = 0
        self.fragments = 0
        #: the opcode of a frame of which only a part has arrived (else None), and how many
        #: bytes of its payload were already decoded
        self.in_frame: int | None = None
        self.checked = 0

    def decode(self, data: bytes, final: bool = False) -> None:
        assert self.decoder is not None
        try:
            text = self.decoder.decode(data, final)
        except UnicodeDecodeError:
            raise ProtocolFailure(1007, "invalid UTF-8 in a text message") from None
        if text:
            self.texts.append(text)


_utf8_decoder = codecs.getincrementaldecoder("utf-8")


def _rotate(mask: bytes | bytearray, offset: int) -> bytes | bytearray:
    """The masking key for a payload that starts ``offset`` bytes into a frame's."""
    k = offset % 4
    return mask[k:] + mask[:k] if k else mask


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
