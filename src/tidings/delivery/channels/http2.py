"""A lean HTTP/2 client for the push providers: one connection to one origin, every request
of the node multiplexed on it, the protocol done by ``h2`` and TLS by asyncio's own transport.

Why not httpx (which the other channels use): sending to APNs, httpx's layers (connection
pool, anyio's TLS stream, cookies, per-request objects) cost the node several times what ``h2``
itself costs per request, and the node's event loop was the bound of ``bench/push.py``
(docs/benchmarks.md, "Phones"). This client keeps only what a push provider needs: requests
with a small body, answers read whole, the server's limit of concurrent streams and its flow
control honoured, and the requests a closing connection never took (GOAWAY, ``REFUSED_STREAM``)
told apart, so they can be sent again safely.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass, field
from typing import Any, cast
from urllib.parse import urlsplit

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import hpack
from hpack import NeverIndexedHeaderTuple

#: how long a connection that lost its server may take to be made again
CONNECT_TIMEOUT = 10.0


class Http2Error(Exception):
    """The request failed on the way (connection lost, protocol error, no answer in time):
    the server may or may not have acted on it."""


class Unanswered(Http2Error):
    """The connection ended before any answer to the request: the server may have taken it
    or not (some servers announce with GOAWAY that they will answer, then close)."""


class Unsent(Unanswered):
    """The server never took the request (it was closing the connection, or refused the
    stream): sending it again cannot make it twice."""


@dataclass(slots=True)
class Response:
    status: int
    headers: dict[str, str]
    body: bytes


@dataclass(slots=True)
class _Stream:
    answer: asyncio.Future[Response]
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    body: list[bytes] = field(default_factory=list)


class _LiteralEncoder(hpack.Encoder):
    """HPACK without Huffman coding: the header values a push request carries (a device
    token, a JWT, ids) are unique or never indexed (h2 keeps ``authorization`` out of the
    table), so Huffman-coding them on every request was the client's largest cost
    (``bench/push.py``) for a quarter fewer bytes on the wire."""

    def encode(self, headers: Any, huffman: bool = False) -> bytes:
        return super().encode(headers, huffman=False)


class _Connection(asyncio.Protocol):
    """One HTTP/2 connection: the ``h2`` state machine fed by an asyncio transport."""

    def __init__(self) -> None:
        config = h2.config.H2Configuration(client_side=True, header_encoding=None)
        self.h2 = h2.connection.H2Connection(config)
        self.h2.encoder = _LiteralEncoder()
        self.transport: asyncio.Transport | None = None
        self.streams: dict[int, _Stream] = {}
        #: set once the server sent GOAWAY or the connection ended: no new requests on it
        self.closing = False
        #: woken when a stream ends or the server opens its flow-control window
        self._room = asyncio.Event()

    # asyncio's side

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        self.h2.initiate_connection()
        self._flush()

    def data_received(self, data: bytes) -> None:
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            self._fail_all(Http2Error(f"HTTP/2 protocol error: {exc}"))
            if self.transport is not None:
                self.transport.close()
            return
        for event in events:
            self._handle(event)
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        why = f"the connection was lost: {exc or 'closed by the server'}"
        for stream in self.streams.values():
            if not stream.answer.done():
                kind = Http2Error if stream.status else Unanswered
                stream.answer.set_exception(kind(why))
        self._room.set()

    # requests

    async def request(self, headers: list[Any], body: bytes) -> Response:
        while self._full():
            self._room.clear()
            await self._room.wait()
        if self.closing:
            raise Unsent("the connection is closing")
        stream_id = self.h2.get_next_available_stream_id()
        stream = _Stream(asyncio.get_running_loop().create_future())
        self.streams[stream_id] = stream
        try:
            self.h2.send_headers(stream_id, headers, end_stream=not body)
            await self._send_body(stream_id, body)
            self._flush()
            return await stream.answer
        except asyncio.CancelledError:  # timed out or cancelled: the server may drop it
            self._reset(stream_id)
            raise
        finally:
            self.streams.pop(stream_id, None)
            self._room.set()

    def _full(self) -> bool:
        limit = self.h2.remote_settings.max_concurrent_streams
        return not self.closing and self.h2.open_outbound_streams >= limit

    async def _send_body(self, stream_id: int, body: bytes) -> None:
        sent = 0
        while sent < len(body):
            window = min(
                self.h2.local_flow_control_window(stream_id), self.h2.max_outbound_frame_size
            )
            if window <= 0:  # wait for the server's WINDOW_UPDATE
                self._flush()
                self._room.clear()
                await self._room.wait()
                if self.closing:
                    raise Http2Error("the connection ended while the request was sent")
                continue
            chunk = body[sent : sent + window]
            sent += len(chunk)
            self.h2.send_data(stream_id, chunk, end_stream=sent == len(body))

    def _reset(self, stream_id: int) -> None:
        if not self.closing:
            try:
                self.h2.reset_stream(stream_id, h2.errors.ErrorCodes.CANCEL)
                self._flush()
            except h2.exceptions.ProtocolError:
                pass  # the stream had ended already

    def shut(self) -> None:
        """Say goodbye (GOAWAY) and close; requests under way fail as on a lost connection."""
        self.closing = True
        if self.transport is None:
            return
        try:
            self.h2.close_connection()
            self._flush()
        except h2.exceptions.ProtocolError:
            pass
        self.transport.close()

    # the server's side

    def _handle(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.ResponseReceived):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                for name, value in event.headers:
                    if name == b":status":
                        stream.status = int(value)
                    else:
                        stream.headers[name.decode("latin-1")] = value.decode("latin-1")
        elif isinstance(event, h2.events.DataReceived):
            self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.body.append(event.data)
        elif isinstance(event, h2.events.StreamEnded):
            stream = self.streams.get(event.stream_id)
            if stream is not None and not stream.answer.done():
                stream.answer.set_result(
                    Response(stream.status, stream.headers, b"".join(stream.body))
                )
        elif isinstance(event, h2.events.StreamReset):
            stream = self.streams.get(event.stream_id)
            if stream is not None and not stream.answer.done():
                refused = event.error_code == h2.errors.ErrorCodes.REFUSED_STREAM
                kind = Unsent if refused else Http2Error
                stream.answer.set_exception(kind(f"the server reset the stream: {event}"))
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.closing = True
            last = event.last_stream_id or 0
            for stream_id, stream in self.streams.items():
                if stream_id > last and not stream.answer.done():
                    stream.answer.set_exception(Unsent("the server is closing the connection"))
            self._room.set()
        elif isinstance(event, h2.events.WindowUpdated | h2.events.RemoteSettingsChanged):
            self._room.set()

    def _fail_all(self, error: Http2Error) -> None:
        for stream in self.streams.values():
            if not stream.answer.done():
                stream.answer.set_exception(error)
        self._room.set()

    def _flush(self) -> None:
        data = self.h2.data_to_send()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)


class Http2Client:
    """Requests to one origin (``https://host[:port]``) on one HTTP/2 connection, made when
    first needed and again when the server closed it."""

    def __init__(self, url: str, context: ssl.SSLContext | None, timeout: float) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("https", "http") or not parts.hostname:
            raise ValueError(f"{url!r} is not an http(s) URL")
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.scheme = parts.scheme.encode()
        self.authority = parts.netloc.encode()
        self.timeout = timeout
        self._ssl: ssl.SSLContext | None = None
        if parts.scheme == "https":
            self._ssl = context or ssl.create_default_context()
            self._ssl.set_alpn_protocols(["h2"])
        self._connection: _Connection | None = None
        self._connecting = asyncio.Lock()

    async def post(self, path: str, headers: list[tuple[bytes, bytes]], body: bytes) -> Response:
        """``POST path`` with ``headers`` and ``body``, its answer read whole.

        A request its connection ended without answering is sent once more, on a new
        connection: one the server never took (GOAWAY, ``REFUSED_STREAM``), and one it may
        have taken (the connection closed before any answer), which may then reach the
        server twice; for a push, twice is better than never.

        Raises:
            Http2Error: no answer (connection failed or lost, protocol error, timeout).
        """
        request = [
            (b":method", b"POST"),
            (b":scheme", self.scheme),
            (b":authority", self.authority),
            # A path differs per request (a device token in it): kept out of the HPACK table
            # so it evicts nothing worth keeping.
            NeverIndexedHeaderTuple(b":path", path.encode()),
            *headers,
        ]
        try:
            return await self._send(request, body)
        except Unanswered:
            return await self._send(request, body)

    async def _send(self, request: list[Any], body: bytes) -> Response:
        try:
            async with asyncio.timeout(self.timeout):
                connection = await self._connect()
                return await connection.request(request, body)
        except TimeoutError:
            raise Http2Error(f"no answer within {self.timeout:g} s") from None

    async def _connect(self) -> _Connection:
        connection = self._connection
        if connection is not None and not connection.closing:
            return connection
        async with self._connecting:
            connection = self._connection
            if connection is None or connection.closing:
                connection = self._connection = await self._open()
        return connection

    async def _open(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            transport, connection = await asyncio.wait_for(
                loop.create_connection(_Connection, self.host, self.port, ssl=self._ssl),
                CONNECT_TIMEOUT,
            )
        except (OSError, ssl.SSLError, TimeoutError) as exc:
            raise Http2Error(f"cannot connect to {self.host}:{self.port}: {exc}") from None
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is not None and ssl_object.selected_alpn_protocol() != "h2":
            transport.close()
            raise Http2Error(f"{self.host}:{self.port} does not speak HTTP/2 (ALPN)")
        return connection

    async def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.shut()
