"""The front door of ``tidings serve``: every TCP connection starts here.

:class:`FrontProtocol` reads a connection's first request head and hands the connection to
tidings' WebSocket transport (an upgrade) or to uvicorn's HTTP protocol (anything else). It
also keeps the node's descriptors for the clients that use them:

- a connection must send its request head within ``head_timeout`` seconds (408, then closed),
  on its first request here and on every later one in uvicorn's protocol (idle keep-alive
  connections are closed by uvicorn after ``timeout_keep_alive``);
- past ``max_open`` open connections (by default the process's descriptor limit less a
  reserve for the store, the bus and the pipeline's clients: :func:`open_limit`), a new
  connection is answered 503 and closed at once, so that the node never runs out of
  descriptors for everyone.
"""

from __future__ import annotations

import asyncio
import logging
import re
import resource
import time
from typing import Any

import uvicorn

from tidings.gateway.flusher import COALESCE_DELAY, Flushers
from tidings.gateway.transport import WebSocketProtocol

logger = logging.getLogger("uvicorn.error")

#: bytes of request head the front protocol reads before leaving the request to uvicorn
MAX_HEAD = 16 * 1024
#: seconds a client has to send a request head, by default
HEAD_TIMEOUT = 5.0
#: seconds between two warnings that the node refuses connections
_REFUSAL_LOG_INTERVAL = 10.0


def _plain(status: bytes, body: bytes, extra: bytes = b"") -> bytes:
    return (
        b"HTTP/1.1 %s\r\ncontent-type: text/plain\r\ncontent-length: %d\r\n%s"
        b"connection: close\r\n\r\n%s" % (status, len(body), extra, body)
    )


REQUEST_TIMEOUT = _plain(b"408 Request Timeout", b"request head not received in time\n")


def open_limit() -> int:
    """How many connections a node may hold open: its descriptor limit less a reserve (a
    hundredth, at least 256) for what else the process opens: store and bus connections, the
    pipeline's HTTP and SMTP clients, files."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 1_000_000
    return max(16, soft - max(256, soft // 100))


def raise_open_file_limit() -> None:
    """Let the process open as many descriptors as its hard limit allows (the soft limit is
    often 1,024, a thousand devices), as Go and nginx's worker_rlimit_nofile do."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard and (hard == resource.RLIM_INFINITY or soft < hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):  # some systems refuse RLIM_INFINITY: keep the soft one
            logger.debug("could not raise the descriptor limit from %d", soft)


class FrontProtocol(asyncio.Protocol):
    """``tidings serve``'s ``http=`` protocol: the first request of a connection decides who
    serves it. A WebSocket upgrade goes straight to :class:`WebSocketProtocol`; anything else
    to uvicorn's HTTP protocol (httptools, else h11), which then keeps the connection.

    Why: uvicorn parses an upgrade request with its HTTP machinery (a parser, a flow control,
    an HTTP scope, a rebuilt request) only to hand it over; that was a fifth of a device's
    connect. Handing over here also keeps frames a client sends in the same write as its
    request, which uvicorn drops. The WebSocket protocol checks the handshake itself."""

    __slots__ = ("_args", "_buf", "_timer", "_transport")

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
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport
        config, server_state = self._args[0], self._args[1]
        connections = server_state.connections
        if len(connections) >= config.max_open:
            config.refused(len(connections))
            transport.write(  # type: ignore[attr-defined]
                _plain(
                    b"503 Service Unavailable",
                    b"this node holds its maximum of open connections; retry shortly\n",
                    b"retry-after: 1\r\n",
                )
            )
            transport.close()
            return
        connections.add(self)  # a server shutting down closes it
        loop = self._args[3] or asyncio.get_event_loop()
        self._timer = loop.call_later(config.head_timeout, self._head_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._args[1].connections.discard(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def shutdown(self) -> None:
        self._transport.close()

    def _head_timeout(self) -> None:
        """No whole request head in time: 408 if the client began one, and close."""
        self._timer = None
        if self._buf:
            self._transport.write(REQUEST_TIMEOUT)
        self._transport.close()

    def data_received(self, data: bytes) -> None:
        old = len(self._buf)
        buf = self._buf + data if old else data
        end = buf.find(b"\r\n\r\n", max(0, old - 3))
        if (
            end < 0
            and len(buf) <= MAX_HEAD
            and b"GET "[: len(buf)] == buf[:4]
            and b"\n\n" not in buf
        ):
            self._buf = buf  # maybe an upgrade: wait for the rest of the head
            return
        self._buf = b""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
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


def with_head_timeout(base: type[Any]) -> type[Any]:
    """uvicorn's HTTP protocol ``base``, closing a keep-alive connection whose next request
    head does not arrive within ``config.head_timeout`` (uvicorn times only the idle wait
    before it: a client that sends half a head holds the connection forever)."""

    class HeadTimeout(base):  # type: ignore[misc]
        head_timer: asyncio.TimerHandle | None = None

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.transport.is_closing():
                self._stop_head_timer()
            elif self._in_head():
                if self.head_timer is None:
                    self.head_timer = self.loop.call_later(
                        self.config.head_timeout, self._head_timeout
                    )
            else:
                self._stop_head_timer()

        def _in_head(self) -> bool:
            """Whether part of a request head arrived and not all of it."""
            parser = getattr(self, "parser", None)
            conn = getattr(self, "conn", None)
            if conn is not None:  # h11
                import h11

                return conn.their_state is h11.IDLE and bool(conn.trailing_data[0])
            if parser is None:
                return False
            # httptools: a message began (its scope exists) and its headers did not complete
            # (the cycle is made at the end of the headers).
            scope = getattr(self, "scope", None)
            cycle = getattr(self, "cycle", None)
            return scope is not None and (cycle is None or cycle.scope is not scope)

        def _head_timeout(self) -> None:
            self.head_timer = None
            if not self.transport.is_closing() and self._in_head():
                self.transport.write(REQUEST_TIMEOUT)
                self.transport.close()

        def _stop_head_timer(self) -> None:
            if self.head_timer is not None:
                self.head_timer.cancel()
                self.head_timer = None

        def connection_lost(self, exc: Exception | None) -> None:
            self._stop_head_timer()
            super().connection_lost(exc)

    HeadTimeout.__name__ = HeadTimeout.__qualname__ = f"HeadTimeout{base.__name__}"
    return HeadTimeout


class FrontConfig(uvicorn.Config):
    """uvicorn's config; with ``ws=WebSocketProtocol`` connections start on
    :class:`FrontProtocol`, and the ``http`` protocol chosen serves all but upgrades.

    ``head_timeout``: seconds a client has to send a request head; ``max_open``: connections
    the node holds open at most (None: :func:`open_limit`); ``coalesce_delay``: seconds a
    fanning-out node lets frames wait to share a write (0: never; ``ws_flushers`` holds it, and
    this server's per-loop write schedulers)."""

    front_http_class: Any = None

    def __init__(
        self,
        app: Any,
        *,
        head_timeout: float = HEAD_TIMEOUT,
        max_open: int | None = None,
        coalesce_delay: float = COALESCE_DELAY,
        **options: Any,
    ) -> None:
        super().__init__(app, **options)
        self.head_timeout = head_timeout
        self.max_open = max_open or open_limit()
        self.ws_flushers = Flushers(coalesce_delay)
        self._refused_logged = -_REFUSAL_LOG_INTERVAL

    def load(self) -> None:
        super().load()
        if self.ws_protocol_class is WebSocketProtocol:
            self.front_http_class = with_head_timeout(self.http_protocol_class)
            self.http_protocol_class = FrontProtocol

    def refused(self, open_now: int) -> None:
        """A connection was refused for the limit: say so, at most every ten seconds."""
        now = time.monotonic()
        if now - self._refused_logged >= _REFUSAL_LOG_INTERVAL:
            self._refused_logged = now
            logger.warning(
                "refusing new connections with 503: %d open, the limit is %d "
                "(TIDINGS_MAX_OPEN_CONNECTIONS, or raise the descriptor limit: ulimit -n)",
                open_now,
                self.max_open,
            )
