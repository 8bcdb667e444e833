"""The device endpoint: raw ASGI WebSocket (no framework wrapper on the hot path).

Lifecycle of one connection:

1. Handshake: a token in ``Authorization: Bearer`` or ``?access_token=`` is verified before
   accepting (HTTP 401 if bad). Without one the socket is accepted and must send
   ``authenticate`` within ``auth_timeout`` seconds (else close 4408; bad token 4401).
2. The device id (``tidings_cid`` cookie, or ``?connection_id=``) is bound to the user and the
   socket registered, in one store write (after the node subscribed to the user's events);
   the handshake is answered then, its cookie set when the device had none (or a foreign one).
3. ``welcome``, then the current count; from then on every count change of the user.
4. Frames are parsed by :mod:`tidings.fanout.codec`; each bad one is answered with an
   ``error`` frame and the connection stays up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

import orjson
from starlette.websockets import WebSocketDisconnect

from tidings.auth.base import Principal
from tidings.core.ids import CONNECTION_ID, new_id
from tidings.errors import (
    DelegateUnavailable,
    InvalidArgument,
    InvalidToken,
    IssuerUnavailable,
    NotFound,
    ProtocolError,
    StoreError,
    StoreUnavailable,
    TooManyConnections,
    TopicRefused,
)
from tidings.fanout import codec as protocol
from tidings.fanout.connection import Connection
from tidings.node.metrics import count_error, counters

if TYPE_CHECKING:
    from tidings.node.tidings import Tidings

logger = logging.getLogger("tidings.gateway")

COOKIE_NAME = "tidings_cid"

Scope = dict[str, Any]
Message = dict[str, Any]


class _Handshake:
    """What the handshake settled, until the device is bound to the user."""

    __slots__ = ("cookie_cid", "deliver", "pending", "presented", "principal", "session_id")

    def __init__(
        self,
        principal: Principal,
        presented: str | None,
        session_id: str | None,
        deliver: bool,
        *,
        pending: Scope | None,
        cookie_cid: str | None,
    ) -> None:
        self.principal = principal
        #: the device id asked for (cookie or query), bound if it is free or the user's
        self.presented = presented
        self.session_id = session_id
        self.deliver = deliver
        #: the handshake's scope while it is still to be answered (token at the handshake)
        self.pending = pending
        #: the device id the browser's cookie holds (no Set-Cookie when it stays)
        self.cookie_cid = cookie_cid


class _Closed(Exception):
    """The socket ended before the device was authenticated."""


class Gateway:
    """ASGI application serving device WebSockets for one :class:`Tidings` node."""

    def __init__(self, tidings: Tidings) -> None:
        self.tidings = tidings
        self._active = 0
        # Token bucket of new connections (connection-flood protection).
        self._tokens = tidings.settings.max_connects_per_second
        self._refilled = time.monotonic()
        self._idle = asyncio.Event()
        self._idle.set()

    async def wait_closed(self, timeout: float) -> None:
        """Wait until every connection handler has returned (or ``timeout`` passed)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._idle.wait()

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(self.tidings, receive, send)
            return
        if scope["type"] != "websocket":
            await _plain_response(send, 426, b"this endpoint speaks WebSocket only\n")
            return
        refusal = self._admission()
        if refusal is not None:
            if (await receive())["type"] == "websocket.connect":
                await _deny(scope, send, 503, "overloaded", refusal)
            return
        self._active += 1
        self._idle.clear()
        try:
            # Passed straight on: no frame of the idle connection keeps the handshake.
            await self._run(await self._serve(scope, receive, send), receive, send)
        finally:
            self._active -= 1
            if not self._active:
                self._idle.set()

    def _admission(self) -> str | None:
        """Why a new socket must be refused now (caps of this node), or None."""
        settings = self.tidings.settings
        if self.tidings.draining:
            return "this node is shutting down; connect to another"
        if self._active >= settings.max_connections:
            return f"this node holds its maximum of {settings.max_connections} connections"
        now = time.monotonic()
        rate = settings.max_connects_per_second
        self._tokens = min(rate, self._tokens + (now - self._refilled) * rate)
        self._refilled = now
        if self._tokens < 1:
            return "too many new connections per second; retry shortly"
        self._tokens -= 1
        return None

    async def adopt(
        self,
        scope: Scope,
        receive: Any,
        send: Any,
        *,
        principal: Principal,
        session_id: str | None = None,
        deliver: bool = False,
        accept: bool = True,
        check_origin: bool = True,
    ) -> None:
        """Serve a socket whose user the host application has already authenticated
        (embedded mode); ``accept`` when the handshake is still to be answered. Applications
        authenticate with cookies, so a foreign ``Origin`` is refused unless ``check_origin``
        is off (see :meth:`_origin_allowed`)."""
        if accept and (await receive())["type"] != "websocket.connect":
            return
        if check_origin and not self._origin_allowed(scope, _headers(scope), cookies=True):
            if accept:
                await _deny(scope, send, 403, "forbidden_origin", "this Origin may not connect")
            else:
                await _close_frame(send, 4403, "forbidden origin")
            return
        self._active += 1
        self._idle.clear()
        try:
            headers = _headers(scope)
            cookie_cid = _cookie(headers.get("cookie", ""), COOKIE_NAME)
            query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
            await self._run(
                _Handshake(
                    principal,
                    cookie_cid or _first(query, "connection_id"),
                    session_id,
                    deliver,
                    pending=scope if accept else None,
                    cookie_cid=cookie_cid,
                ),
                receive,
                send,
            )
        finally:
            self._active -= 1
            if not self._active:
                self._idle.set()

    async def _serve(self, scope: Scope, receive: Any, send: Any) -> _Handshake | None:
        """The handshake and authentication: who the device is, or None if it was refused.

        Returning (rather than going on to serve the device from here) lets this frame, with
        the decoded headers, the token and the query, go: an idle device keeps none of it."""
        if (await receive())["type"] != "websocket.connect":
            return None
        tidings = self.tidings
        if not tidings.started:
            await _deny(scope, send, 503, "unavailable", "tidings is not started")
            return None
        headers = _headers(scope)
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        cookie_cid = _cookie(headers.get("cookie", ""), COOKIE_NAME)
        if cookie_cid is not None and not CONNECTION_ID.match(cookie_cid):
            cookie_cid = None
        presented = cookie_cid or _first(query, "connection_id")
        session_id = _first(query, "session_id")
        deliver = _first(query, "deliver") in ("1", "true")
        if session_id is not None and not 0 < len(session_id) <= protocol.MAX_ID_LENGTH:
            await _deny(scope, send, 400, "invalid_request", "session_id is too long")
            return None
        token = _bearer(headers.get("authorization")) or _first(query, "access_token")
        # Delegated mode: the application decides for devices that bring its credentials
        # (cookies, or an Authorization the application issued); others may still use a JWT.
        delegate = tidings.delegate
        delegated = delegate is not None and (
            "cookie" in headers or ("authorization" in headers and not _looks_like_jwt(token))
        )
        # What goes to the delegate may be a browser's ambient credentials, sent along by a
        # page elsewhere: its cookies, or HTTP credentials the browser caches and attaches by
        # itself (a page cannot set Authorization on a WebSocket). Only a principal that comes
        # from a token tidings verifies skips the same-site rule.
        if not self._origin_allowed(scope, headers, cookies=delegated):
            await _deny(scope, send, 403, "forbidden_origin", "this Origin may not connect")
            return None

        if token is not None or delegated:
            try:
                if delegated:
                    assert delegate is not None
                    principal, app_session = await delegate.authenticate_request(headers)
                    session_id = session_id or app_session
                else:
                    assert token is not None
                    principal = await tidings.authenticator.authenticate(token)
            except (DelegateUnavailable, IssuerUnavailable) as exc:
                logger.warning("refusing device: %s", exc)
                await _deny(scope, send, 503, "unavailable", "authentication unavailable, retry")
                return None
            except InvalidToken as exc:
                await _deny(scope, send, 401, "invalid_token", str(exc))
                return None
            # Answered once the device is bound: the Set-Cookie carries its id.
            pending: Scope | None = scope
        else:
            # Before authentication only an id we issue (or the cookie the browser already has)
            # goes into Set-Cookie: a page cannot plant an id of its choosing in a browser.
            explicit = presented if presented and CONNECTION_ID.match(presented) else None
            provisional = explicit or new_id()
            from_query = explicit is not None and cookie_cid is None
            cookie_headers = (
                [] if from_query else self._cookie_header(scope, provisional, cookie_cid)
            )
            await _accept(scope, send, cookie_headers)
            try:
                principal, frame = await self._await_authenticate(receive, send)
            except _Closed:
                return None
            presented, pending = provisional, None
            session_id = frame.session_id or session_id
            deliver = deliver or frame.deliver

        # The request's headers are not read again: release them for as long as the socket
        # stays open (about a kilobyte per idle connection).
        scope["headers"] = []
        return _Handshake(
            principal, presented, session_id, deliver, pending=pending, cookie_cid=cookie_cid
        )

    def _origin_allowed(self, scope: Scope, headers: dict[str, str], *, cookies: bool) -> bool:
        """Cross-site WebSocket hijacking guard (browsers always send ``Origin``).

        With an allow-list, only listed origins. Without one, any origin for token auth, but
        only the node's own site when the browser's own credentials authenticate the device
        (``cookies``: delegated or embedded mode): a page elsewhere would otherwise ride the
        user's cookies or cached HTTP credentials.
        """
        origin = headers.get("origin")
        if origin is None:
            return True  # not a browser: it has to present credentials of its own
        allowed = self.tidings.settings.allowed_origins
        if allowed is not None:
            if _origin_key(origin) in {_origin_key(o) for o in allowed if o != "*"}:
                return True
            if "*" not in allowed:
                return False
            # '*' admits any page that brings its own token, never one riding the user's
            # cookies: with cookie auth it means the node's own site only.
        if not cookies:
            return True
        secure = scope.get("scheme") in ("wss", "https")
        own = _origin_key(f"{'https' if secure else 'http'}://{headers.get('host', '')}")
        return _origin_key(origin) == own

    def _cookie_header(
        self, scope: Scope, cid: str, presented: str | None
    ) -> list[tuple[bytes, bytes]]:
        if cid == presented:
            return []
        settings = self.tidings.settings
        secure = settings.cookie_secure
        if secure is None:
            secure = scope.get("scheme") == "wss" or settings.cookie_samesite == "None"
        value = (
            f"{COOKIE_NAME}={cid}; Path=/; Max-Age={settings.cookie_max_age}; HttpOnly; "
            f"SameSite={settings.cookie_samesite}{'; Secure' if secure else ''}"
        )
        return [(b"set-cookie", value.encode("latin-1"))]

    async def _await_authenticate(
        self, receive: Any, send: Any
    ) -> tuple[Principal, protocol.Authenticate]:
        """Wait for a valid ``authenticate`` frame; closes the socket and raises _Closed if not."""
        settings = self.tidings.settings
        try:
            async with asyncio.timeout(settings.auth_timeout):
                while True:
                    message = await receive()
                    if message["type"] == "websocket.disconnect":
                        raise _Closed
                    text = message.get("text")
                    try:
                        frame = self._parse(text)
                    except ProtocolError as exc:
                        await send(_send_text(protocol.error(exc.frame_id, exc.code, exc.message)))
                        continue
                    if not isinstance(frame, protocol.Authenticate):
                        await send(
                            _send_text(
                                protocol.error(
                                    frame.id,
                                    protocol.NOT_AUTHENTICATED,
                                    "send 'authenticate' first",
                                )
                            )
                        )
                        continue
                    try:
                        principal = await self.tidings.authenticator.authenticate(frame.token)
                    except IssuerUnavailable:
                        await _close_frame(
                            send, protocol.CLOSE_TRY_AGAIN_LATER, "token issuer unavailable"
                        )
                        raise _Closed from None
                    except InvalidToken as exc:
                        await _close_frame(send, protocol.CLOSE_UNAUTHORIZED, str(exc)[:120])
                        raise _Closed from None
                    return principal, frame
        except TimeoutError:
            await _close_frame(send, protocol.CLOSE_AUTH_TIMEOUT, "authentication timeout")
            raise _Closed from None

    def _parse(self, text: str | None) -> protocol.ClientFrame:
        settings = self.tidings.settings
        if text is None:
            raise ProtocolError(protocol.BINARY_FRAME, "frames must be UTF-8 JSON text")
        limit = settings.max_frame_size
        if len(text) > limit or (len(text) * 4 > limit and len(text.encode()) > limit):
            raise ProtocolError(
                protocol.FRAME_TOO_LARGE, f"frame is larger than the limit of {limit} bytes"
            )
        return protocol.parse_frame(text, max_unseen_page=settings.max_unseen_page)

    async def _run(self, handshake: _Handshake | None, receive: Any, send: Any) -> None:
        """Bind the device and register the socket (one store write), answer the handshake
        if it is pending, send ``welcome`` and the count, rejoin the session's topics, start
        the device's queue in deliver mode, then serve the socket's frames until it closes."""
        if handshake is None:
            return
        tidings = self.tidings
        principal = handshake.principal
        # Its ids are set once the device is bound; until then it is not open, so events
        # for it queue behind the welcome.
        conn = Connection(
            send,
            connection_id="",
            user_id=principal.user_id,
            session_id="",
            max_queue=tidings.settings.outbound_queue_size,
            claims=principal.claims,
        )
        del principal
        opened = False
        registered = False  # the socket may be in the store's registry
        try:
            # Subscribe first, then read: a change committed in between reaches the device as
            # an event, and the version filter drops whichever of the two is older.
            await tidings.registry.add(conn)
            pending = handshake.pending
            if not tidings.started:  # the node began shutting down during the handshake
                await _refuse(
                    send,
                    pending,
                    503,
                    "unavailable",
                    "this node is shutting down; connect to another",
                    protocol.CLOSE_GOING_AWAY,
                )
                return
            registered = True
            try:
                device, count, topics = await tidings.store.open_socket(
                    conn.user_id,
                    handshake.presented,
                    socket_id=conn.socket_id,
                    session_id=handshake.session_id,
                    node_id=tidings.node_id,
                    connected_since=conn.connected_since,
                    max_sockets=tidings.settings.max_connections_per_user,
                )
            except TooManyConnections as exc:
                count_error("too_many_connections")
                registered = False
                if exc.device is None:  # a store that did not bind: refuse outright
                    await _refuse(
                        send,
                        pending,
                        429,
                        "too_many_connections",
                        "this user has the most connections allowed; close another first",
                        protocol.CLOSE_TOO_MANY_CONNECTIONS,
                    )
                    return
                device, count, topics = exc.device, None, []
            except StoreError as exc:
                logger.warning("refusing device of %s: store unavailable: %s", conn.user_id, exc)
                await _refuse(
                    send,
                    pending,
                    503,
                    "unavailable",
                    "storage unavailable, retry later",
                    protocol.CLOSE_TRY_AGAIN_LATER,
                )
                return
            conn.connection_id = device.connection_id
            conn.session_id = handshake.session_id or device.connection_id
            conn.deliver = handshake.deliver
            if pending is not None:
                await _accept(
                    pending,
                    send,
                    self._cookie_header(pending, device.connection_id, handshake.cookie_cid),
                )
            del handshake, pending, device
            _release_scope(send)
            counters.connections_opened += 1
            # Open first: the welcome is then written in place, not by a writer task. From
            # now on a close by the node sends its close frame at once (the connection does),
            # and the server answers the pending receive() with a disconnect.
            opened = True
            conn.open(
                protocol.welcome(
                    connection_id=conn.connection_id,
                    session_id=conn.session_id,
                    user_id=conn.user_id,
                    node=tidings.node_id,
                )
            )
            if count is None:
                conn.close(
                    protocol.CLOSE_TOO_MANY_CONNECTIONS,
                    "this user has the most connections allowed; close another first",
                )
                return
            conn.push_count(count.count, count.version)
            del count
            await tidings.reactivate_session(conn, topics)
            del topics
            if conn.deliver:
                await tidings.open_queue(conn)
            if not conn.closed:
                try:
                    await self._read_loop(conn, receive)
                except (OSError, WebSocketDisconnect):
                    pass  # the client is gone
                except Exception:
                    logger.exception(
                        "connection %s failed", conn.connection_id, extra=conn.log_fields()
                    )
                    conn.close(protocol.CLOSE_INTERNAL_ERROR, "internal error")
        finally:
            tidings.registry.remove(conn)
            conn.abort()  # the client went away (if nothing closed it before)
            if opened:  # a flushing close sends its queue, then the close frame
                with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                    async with asyncio.timeout(4.5):
                        await conn.finished()
            if registered:
                await asyncio.shield(tidings.forget_presence(conn))

    async def _read_loop(self, conn: Connection, receive: Any) -> None:
        # A token bucket per connection (locals: nothing is kept for idle connections).
        rate = self.tidings.settings.max_frames_per_second
        tokens, refilled, refused = 2 * rate, time.monotonic(), 0
        while not conn.closed:
            # Stop reading while this client's answers pile up: TCP then slows the client.
            await conn.wait_writable()
            message = await receive()
            if message["type"] == "websocket.disconnect":
                return
            if message["type"] != "websocket.receive":
                continue
            counters.frames_in += 1
            now = time.monotonic()
            tokens = min(2 * rate, tokens + (now - refilled) * rate)
            refilled = now
            if tokens < 1:
                refused += 1
                count_error(protocol.RATE_LIMITED)
                if refused == 1:
                    logger.warning(
                        "device sends over %g frames per second; refusing",
                        rate,
                        extra=conn.log_fields(),
                    )
                if refused > 10 * rate:  # it ignores the refusals: stop reading it at all
                    conn.close(protocol.CLOSE_POLICY_VIOLATION, "too many frames")
                    return
                conn.push(
                    protocol.error(None, protocol.RATE_LIMITED, f"over {rate:g} frames per second")
                )
                continue
            tokens -= 1
            refused = 0
            try:
                frame = self._parse(message.get("text"))
            except ProtocolError as exc:
                count_error(exc.code)
                conn.push(protocol.error(exc.frame_id, exc.code, exc.message))
                continue
            await self._dispatch(conn, frame)

    async def _dispatch(self, conn: Connection, frame: protocol.ClientFrame) -> None:
        tidings = self.tidings
        try:
            if isinstance(frame, protocol.GetUnseen):
                notes = await tidings.unseen(conn.user_id, frame.limit)
                budget = tidings.settings.max_unseen_bytes
                conn.push(protocol.notification_data(frame.id, notes, max_bytes=budget))
            elif isinstance(frame, protocol.MarkSeen):
                result = await tidings.mark_seen(conn.user_id, frame.notification_ids)
                conn.push(protocol.reply(frame.id, marked=len(result.marked)))
            elif isinstance(frame, protocol.Ack):
                if not conn.deliver:
                    conn.push(
                        protocol.error(
                            frame.id,
                            protocol.NOT_DELIVER_MODE,
                            "ack needs deliver mode (query deliver=1 or authenticate deliver)",
                        )
                    )
                    return
                acked = await tidings.ack(conn.user_id, conn.connection_id, frame.notification_ids)
                conn.push(protocol.reply(frame.id, acked=len(acked.acked)))
            elif isinstance(frame, protocol.Subscribe):
                topics = await tidings.subscribe_topics(conn, frame.topics)
                conn.push(protocol.reply(frame.id, topics=topics))
            elif isinstance(frame, protocol.Unsubscribe):
                topics = await tidings.unsubscribe_topics(conn, frame.topics)
                conn.push(protocol.reply(frame.id, topics=topics))
            elif isinstance(frame, protocol.ReadNotifications):
                outcome = await tidings.replay(conn, frame.topic, frame.since)
                conn.push(
                    protocol.reply(
                        frame.id,
                        topic=frame.topic,
                        recovered=outcome.recovered,
                        last_seq=outcome.last_seq,
                    )
                )
            elif isinstance(frame, protocol.ForgetDevice):
                await tidings.forget_device(
                    conn.user_id,
                    conn.connection_id,
                    before_close=protocol.reply(frame.id, forgotten=conn.connection_id),
                )
            else:
                conn.push(
                    protocol.error(
                        frame.id, protocol.ALREADY_AUTHENTICATED, "this connection is authenticated"
                    )
                )
        except NotFound as exc:
            conn.push(
                protocol.error(
                    frame.id,
                    protocol.NOT_FOUND,
                    "unknown notification ids; nothing was marked",
                    notification_ids=exc.ids,
                )
            )
        except TopicRefused as exc:
            conn.push(
                protocol.error(
                    frame.id,
                    protocol.FORBIDDEN_TOPIC,
                    f"not allowed: {', '.join(exc.topics)}; nothing was changed",
                    topics=exc.topics,
                )
            )
        except StoreUnavailable:
            count_error("store_unavailable")
            conn.push(protocol.error(frame.id, protocol.UNAVAILABLE, "storage unavailable, retry"))
        except InvalidArgument as exc:
            count_error(protocol.INVALID_FRAME)
            conn.push(protocol.error(frame.id, protocol.INVALID_FRAME, str(exc)))
        except Exception:
            count_error("internal")
            logger.exception(
                "frame %s of %s failed",
                type(frame).__name__,
                conn.connection_id,
                extra=conn.log_fields(),
            )
            conn.push(protocol.error(frame.id, protocol.INTERNAL, "internal error"))


def _release_scope(send: Any) -> None:
    """The handshake is answered and nothing reads its scope again: on tidings' own transport
    (which reads it no more either) let it go, about 2 KiB per idle connection. Other servers
    keep theirs: they may read it later."""
    release = getattr(getattr(send, "__self__", None), "release_scope", None)
    if release is not None:
        release()


async def _refuse(
    send: Any, pending: Scope | None, status: int, code: str, message: str, close_code: int
) -> None:
    """Turn a device away before its ``welcome``: with an HTTP status while the handshake is
    pending, else with a close frame."""
    if pending is not None:
        await _deny(pending, send, status, code, message)
    else:
        await _close_frame(send, close_code, message)


async def _close_frame(send: Any, code: int, reason: str = "") -> None:
    await send({"type": "websocket.close", "code": code, "reason": reason})


def _send_text(text: str) -> Message:
    return {"type": "websocket.send", "text": text}


def _headers(scope: Scope) -> dict[str, str]:
    found: dict[str, str] = {}
    for name, value in scope.get("headers", ()):
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        # Repeated Cookie headers are joined; for others the first one counts.
        if key == "cookie" and key in found:
            found[key] = f"{found[key]}; {text}"
        else:
            found.setdefault(key, text)
    return found


def _first(query: dict[str, list[str]], key: str) -> str | None:
    values = query.get(key)
    return values[0] if values and values[0] else None


def _bearer(value: str | None) -> str | None:
    if not value:
        return None
    scheme, _, credentials = value.partition(" ")
    if scheme.lower() != "bearer" or not credentials.strip():
        return None
    return credentials.strip()


def _cookie(header: str, name: str) -> str | None:
    """The value of cookie ``name``, parsed leniently as browsers send it (one odd cookie of
    the host application must not hide ours)."""
    for part in header.split(";"):
        key, sep, value = part.partition("=")
        if sep and key.strip() == name:
            value = value.strip().strip('"')
            return value or None
    return None


async def _accept(scope: Scope, send: Any, headers: list[tuple[bytes, bytes]]) -> None:
    message: Message = {"type": "websocket.accept"}
    if headers:
        message["headers"] = headers
    await send(message)


async def _deny(scope: Scope, send: Any, status: int, code: str, message: str) -> None:
    """Refuse the handshake with an HTTP response when the server allows it."""
    if "websocket.http.response" in (scope.get("extensions") or {}):
        body = orjson.dumps({"error": code, "message": message})
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ]
        if status == 401:
            headers.append((b"www-authenticate", b'Bearer error="invalid_token"'))
        if status == 503:
            headers.append((b"retry-after", b"1"))
        await send({"type": "websocket.http.response.start", "status": status, "headers": headers})
        await send({"type": "websocket.http.response.body", "body": body})
    else:
        code_map = {401: protocol.CLOSE_UNAUTHORIZED, 400: 1008}
        await _close_frame(send, code_map.get(status, 1013))


async def _plain_response(send: Any, status: int, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"text/plain"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _lifespan(tidings: Tidings, receive: Any, send: Any) -> None:
    """Start and close ``tidings`` when the gateway is served on its own."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            try:
                await tidings.start()
            except Exception as exc:
                await send({"type": "lifespan.startup.failed", "message": str(exc)})
                return
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await tidings.close()
            await send({"type": "lifespan.shutdown.complete"})
            return


def _origin_key(origin: str) -> tuple[str, str, int]:
    """``(scheme, host, port)`` of an origin, with default ports filled in and case folded."""
    parts = urlsplit(origin.strip().lower().rstrip("/"))
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    try:
        port = parts.port or (443 if scheme == "https" else 80)
    except ValueError:
        port = -1
    return scheme, parts.hostname or "", port


def _looks_like_jwt(token: str | None) -> bool:
    return token is not None and token.count(".") == 2
